"""One self-contained HTML page per run: figures (inline base64 PNG), tables, environment.

Nothing is fetched when the page opens (no scripts, no web fonts, no external CSS), so it can be
mailed, attached to a CI run or opened years later. The page is built from the same figures as
`hubbench plot` and the same numbers as `hubbench results`; it adds no analysis of its own, except
the headline (hubbench.report.headline: in-run ratios as the gate computes them) and the suite's
ratio gate when the suite declares one.
"""

from __future__ import annotations

import base64
import html
import io
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hubbench import schema
from hubbench.errors import HubbenchError
from hubbench.plan.variants import display_order
from hubbench.report import format as fmt
from hubbench.report.format import fmt_seq
from hubbench.report.load import labeller, norm_value, plain_rows, run_label
from hubbench.report.peaks import beyond_peak
from hubbench.report.runtable import QUALITY_HEADERS, quality_cells
from hubbench.schema import BACKEND_COLUMNS

if TYPE_CHECKING:
    import pandas as pd

PAGE_ENV_FIELDS = ("suite", "run_id", "device_name", *schema.names("env"), "schema_version")

CSS = """
body { font: 15px/1.45 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #1d1d1f;
       max-width: 1180px; margin: 2em auto; padding: 0 1.2em; }
h1 { font-size: 1.6em; margin-bottom: 0.1em; } h2 { margin-top: 1.8em; border-bottom: 1px solid
#ddd; padding-bottom: 0.2em; } .sub { color: #555; margin-top: 0; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 13px; }
th, td { padding: 3px 9px; border-bottom: 1px solid #e4e4e4; text-align: left; }
th { background: #f4f4f6; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.bad td { background: #fff3f0; } .ok { color: #1a7f37; } .fail { color: #c62828; }
.warn { color: #9a6700; } figure { margin: 1.2em 0; } figure img { max-width: 100%;
border: 1px solid #eee; } figcaption { color: #555; font-size: 13px; } code { font-size: 13px; }
.pill { display: inline-block; padding: 1px 8px; border-radius: 10px; background: #eef;
        margin-right: 6px; font-size: 13px; }
"""


def _e(value: Any) -> str:
    v = norm_value(value)
    return "-" if v is None else html.escape(str(v))


def _png_data_uri(figure: Any) -> str:
    from hubbench.report.plots import save

    buf = io.BytesIO()
    save(figure, buf, "png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _environment(df: pd.DataFrame) -> str:
    rows = []
    for f in PAGE_ENV_FIELDS:
        if f not in df.columns:
            continue
        values = [v for v in dict.fromkeys(norm_value(x) for x in df[f]) if v is not None]
        if f == "utc_time" and len(values) > 1:  # one stamp per cell: show the span
            values = [f"{min(values)} – {max(values)}"]
        text = ", ".join(html.escape(str(v)) for v in values) or "-"
        rows.append(f"<tr><th>{f}</th><td>{text}</td></tr>")
    return "<table>" + "".join(rows) + "</table>"


def _status_pills(df: pd.DataFrame) -> str:
    counts = df["status"].value_counts()
    return "".join(
        f'<span class="pill {"ok" if s == "ok" else "fail"}">{html.escape(str(s))}: {n}</span>'
        for s, n in counts.items()
    )


def _results_table(df: pd.DataFrame) -> str:
    from hubbench.report.load import join_fields

    fields = [f for f in join_fields(df) if f != "seq"]
    label_of = labeller(df, fields)
    quality = bool((df["mode"] == "quality").any())  # the run table's quality columns, too
    head = ["cell", "n", "status", "tokens/s", "step time (p10–p90)", "peak memory", "MFU",
            "speed of light: tokens/s (reached)", "backends",
            *(QUALITY_HEADERS if quality else ())]  # fmt: skip
    out = ["<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
    keyed = [
        (display_order(str(r["variant"])), label_of(r), int(r["seq"]), r) for _, r in df.iterrows()
    ]
    for _, label, _, r in sorted(keyed, key=lambda k: k[:3]):
        ok = r["status"] == "ok"
        cells = _result_cells(r, html.escape(label), quality)
        out.append(f'<tr class="{"" if ok else "bad"}">' + "".join(cells) + "</tr>")
    table = "\n".join(out) + "</table>"
    over = fmt.peak_note(r for _, r in df.iterrows())
    if over:
        table += f"<p class='fail'>{_code(html.escape(over))}.</p>"
    if quality:
        table += (
            "<p class='sub'>Quality rows: tokens/s and step time are per training update; "
            "quality is the held-out accuracy (mqar) or bits per byte (bytes), beside the trivial "
            "model's; routing P/R is the router's precision / recall beside a random "
            "selection's; causal is <code>verify causal</code> on the trained model "
            "(docs/quality.md).</p>"
        )
    return table


def _result_cells(r: Any, label: str, quality: bool) -> list[str]:
    """A row's cells in the results table: its numbers, backends and (quality) scores."""
    ok = r["status"] == "ok"
    backends = ", ".join(
        str(norm_value(r[c])) for c in BACKEND_COLUMNS if norm_value(r[c]) is not None
    )
    spread = (
        f"{fmt.seconds(_f(r['time_median_s']))} "
        f"({fmt.seconds(_f(r['time_p10_s']))}–{fmt.seconds(_f(r['time_p90_s']))})"
        if ok
        else "-"
    )
    mfu = _f(r["mfu"])
    status = _e(r["status"]) + ("" if ok else f": {_e(r['message'])}")
    cells = [
        f"<td>{label}</td>",
        f'<td class="num">{fmt_seq(int(r["seq"]))}</td>',
        f'<td class="{"ok" if ok else "fail"}">{status}</td>',
        f'<td class="num">{fmt.si(_f(r["tokens_per_s"]))}</td>',
        f'<td class="num">{spread}</td>',
        f'<td class="num">{fmt.binary_bytes(_f(r["peak_mem_bytes"]))}</td>',
        f'<td class="{_efficiency_class(mfu)}">{html.escape(fmt.efficiency(mfu))}</td>',
        _speed_of_light(r) if ok else '<td class="num">-</td>',
        f"<td>{html.escape(backends) or '-'}</td>",
    ]
    if quality:
        scores = quality_cells({k: norm_value(v) for k, v in r.items()}) if ok else []
        scores = scores or ["-"] * len(QUALITY_HEADERS)
        cells += [
            f'<td class="{_quality_class(h, v)}">{html.escape(v)}</td>'
            for h, v in zip(QUALITY_HEADERS, scores, strict=True)
        ]
    return cells


def _quality_class(header: str, value: str) -> str:
    """Colour the verdict columns: converged yes/no, the causal check pass / LEAKS."""
    if header == "conv" and value in ("yes", "no"):
        return "ok" if value == "yes" else "warn"
    if header == "causal" and value != "-":
        return "ok" if value == "pass" else "fail"
    return "num" if header != "causal" else ""


def _speed_of_light(r: Any) -> str:
    """'1.2M (31%, compute)': the ideal tokens/s, the fraction of it reached, the bound; a
    fraction over 100% is flagged (fmt.efficiency), in red."""
    ideal = _f(r["speed_of_light_tokens_per_s"])
    if ideal is None:
        return '<td class="num">-</td>'
    basis = html.escape(str(norm_value(r["speed_of_light_basis"]) or ""))
    reached = _f(r["speed_of_light_fraction"])
    text = f"{fmt.si(ideal)} ({html.escape(fmt.efficiency(reached))}, {basis})"
    return f'<td class="{_efficiency_class(reached)}">{text}</td>'


def _efficiency_class(value: float | None) -> str:
    """Red for an MFU or speed-of-light fraction over 100%: the peak is wrong, not the cell."""
    return "num fail" if beyond_peak(value) else "num"


def _code(text: str) -> str:
    """`hubbench ...` in an escaped note as <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", text)


def _f(value: Any) -> float | None:
    v = norm_value(value)
    return None if v is None else float(v)


def _gate_section(df: pd.DataFrame) -> str:
    """The suite's ratio gate on this run, when the suite declares one; otherwise a short note."""
    from hubbench.report.gate import allowed_range, gate_ratios, load_rules

    try:
        rules, name = load_rules(df, None)
        if not rules:
            return "<p>The suite declares no ratio gate.</p>"
        result = gate_ratios(df, rules, name)
    except HubbenchError as exc:
        return f'<p class="warn">Ratio gate not evaluated: {html.escape(str(exc))}</p>'
    rows = []
    for c in result.checks:
        ci = fmt.ratio(c.ci) if c.kind == "ratio" else fmt.metric_value(c.metric, c.value)
        cls = {"pass": "ok", "regression": "fail"}.get(c.verdict, "warn")
        rows.append(
            f"<tr><td>{html.escape(c.name)}</td><td class='num'>{ci}</td>"
            f"<td class='num'>{fmt.ideal(c.ci)}</td>"
            f"<td class='num'>{html.escape(allowed_range(c))}</td>"
            f"<td class='{cls}'>{c.verdict} {html.escape(c.note)}</td></tr>"
        )
    return (
        "<table><tr><th>rule</th><th>ratio [95% CI] or value</th><th>ideal</th><th>allowed</th>"
        "<th>verdict</th></tr>" + "".join(rows) + "</table>"
    )


def build_html(df: pd.DataFrame, card_dir: Path | None = None) -> str:
    """The page for one run (or several pooled runs) as a string; with the newest causality
    card under `card_dir` (default <results>/verify) when there is one."""
    from hubbench.errors import ReportError
    from hubbench.report.plots import render, worth_saying

    try:
        figures, skipped = render(df)
    except ReportError as exc:  # no cell ran: the page still says what happened to each
        figures, skipped = [], {"every figure": str(exc)}
    label = run_label(df)
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>hubbench report: {html.escape(label)}</title><style>{CSS}</style></head><body>",
        f"<h1>hubbench report: {html.escape(label)}</h1>",
        f"<p class='sub'>{_e(df['utc_time'].iloc[0])} · {_e(df['device_name'].iloc[0])} · "
        f"commit {_e(df['git_commit'].iloc[0])}{' (dirty)' if _dirty(df) else ''}</p>",
        f"<p>{len(df)} cells: {_status_pills(df)}</p>",
        _noise_line(df),
        *_headline_section(df),
        "<h2>Figures</h2>",
    ]
    for r in figures:
        parts.append(
            f"<figure><img alt='{html.escape(r.stem)}' src='{_png_data_uri(r.figure)}'>"
            f"<figcaption>{html.escape(r.caption or r.stem)}</figcaption></figure>"
        )
    skipped = worth_saying(skipped, df)  # no 'no learning curves' on a timed run's page
    if skipped:
        items = "".join(f"<li><b>{k}</b>: {html.escape(v)}</li>" for k, v in skipped.items())
        parts.append(f"<p>Not drawn for this run:</p><ul>{items}</ul>")
    parts += [
        *_fits_section(df),
        "<h2>Ratio gate</h2>",
        _gate_section(df),
        *card_section(card_dir),
        "<h2>Results</h2>",
        _results_table(df),
        "<h2>Environment</h2>",
        _environment(df),
        "<p class='sub'>Generated by <code>hubbench report</code>. Step times are medians of the "
        "per-step samples of every round; error bars and brackets are p10–p90 or 95% two-stage "
        "bootstrap intervals (rounds, then steps within them) as labelled.</p></body></html>",
    ]
    return "\n".join(parts)


def _headline_section(df: pd.DataFrame) -> list[str]:
    """Where each hub variant wins and loses against its native and optimised baselines."""
    from hubbench.report.headline import NOTE, headline, quality_headline, ratio_lines, table

    recall = quality_headline(plain_rows(df))  # MQAR: recipe verdicts, or accuracy vs ceilings
    recall_html = []
    if recall:
        items = "".join(f"<li>{_e(x)}</li>" for x in recall)
        recall_html = ["<h3>Recall (MQAR)</h3>", f"<ul>{items}</ul>"]
    rows = headline(df)
    if not rows:
        none = "<p>No hub variant ran next to its baseline in this run: no speedups to state.</p>"
        return ["<h2>Headline</h2>", *(recall_html or [none])]
    head, lines = table(rows)
    numeric = {"best speedup [95% CI]", "ideal", "at n"}
    out = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for line in lines:
        cells = []
        for h, text in zip(head, line, strict=True):
            cls = "num" if h in numeric else None
            if h.startswith("hub slower"):
                cls = "ok" if text == "none" else "fail"
            cells.append(f"<td class='{cls}'>" if cls else "<td>")
            cells[-1] += f"{html.escape(text)}</td>"
        out.append("<tr>" + "".join(cells) + "</tr>")
    note = html.escape(NOTE).replace("`hubbench compare`", "<code>hubbench compare</code>")
    ratios = "".join(f"<li>{html.escape(line)}</li>" for line in ratio_lines(rows))
    return [
        "<h2>Headline</h2>",
        *recall_html,
        f"<p>{note}</p>",
        f"<ul>{ratios}</ul>",
        "\n".join(out) + "</table>",
    ]


def _noise_line(df: pd.DataFrame) -> str:
    from hubbench.report.noise import noise

    level = noise(df.to_dict("records"))
    if level is None:
        return "<p class='sub'>No noise sentinel in this run (written before rounds existed).</p>"
    cls = "warn" if level.slow else "sub"
    return f"<p class='{cls}'>{html.escape(level.line())}.</p>"


def _fits_section(df: pd.DataFrame) -> list[str]:
    """Scaling exponents with their 95% intervals, when any series has two or more n."""
    from hubbench.report.plots import fits_table

    rows = fits_table(df)
    if not rows:
        return []
    body = "".join(
        f"<tr><td>{html.escape(figure)}</td><td>{html.escape(label)}</td>"
        f"<td class='num'>{fit.text()}</td><td class='num'>{fmt_seq(fit.n_lo)}–"
        f"{fmt_seq(fit.n_hi)} ({fit.points} points)</td></tr>"
        for figure, label, fit in rows
    )
    return [
        "<h2>Scaling exponents</h2>",
        "<p>Least-squares slope of log step time on log n over the upper half of each series' "
        "points; brackets: 95% two-stage bootstrap interval (rounds, then steps).</p>",
        "<table><tr><th>figure</th><th>series</th><th>exponent [95% CI]</th><th>fitted n</th>"
        f"</tr>{body}</table>",
    ]


def _dirty(df: pd.DataFrame) -> bool:
    return any(norm_value(v) is True for v in df["git_dirty"])


def write_report(df: pd.DataFrame, out: Path, card_dir: Path | None = None) -> Path:
    from hubbench.outputs import write_text

    write_text(out, build_html(df, card_dir), "--out")
    return out


# ----------------------------------------------------------------------------- causality card
# The card is written by `hubbench verify causal` (hubbench.verify.card) as JSON; the report may
# not import verify, so it reads that JSON here: CARD_KIND and the keys below are the contract.

CARD_KIND = "hubbench causality card"
CARD_COLUMNS = ("variant", "expected", "jacobian", "perturbation", "prefix", "batch",
                "first leak (t_out &lt;- t_in)", "found by", "verdict")  # fmt: skip
CARD_OK = ("pass", "control caught")


def newest_card(card_dir: Path | None = None) -> Path | None:
    """The newest card file (`causal-<UTC stamp>.json`: the last name sorts newest), or None."""
    from hubbench import store

    folder = card_dir if card_dir is not None else store.results_dir() / "verify"
    try:
        cards = sorted(p for p in folder.glob("causal-*.json") if p.is_file())
    except OSError:
        return None
    return cards[-1] if cards else None


def card_section(card_dir: Path | None = None) -> list[str]:
    """'Causality report card': the newest card as a table, or nothing when there is none."""
    import json

    path = newest_card(card_dir)
    if path is None:
        return []
    head = "<h2>Causality report card</h2>"
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
        if card.get("kind") != CARD_KIND:
            raise ValueError(f"not a causality card (kind {card.get('kind')!r})")
        rows = [_card_row(r) for r in card["rows"]]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return [head, f"<p class='warn'>{html.escape(path.name)} unreadable: {_e(exc)}</p>"]
    code = card.get("exit_code")
    verdict = (
        "<span class='ok'>all as expected</span>"
        if code == 0
        else f"<span class='fail'>exit {_e(code)}: {_e(card.get('problems'))}</span>"
    )
    commit = str(card.get("commit") or "unknown")[:12] + (" (dirty)" if card.get("dirty") else "")
    sub = (
        f"<p class='sub'>{html.escape(path.name)} · {_e(card.get('utc'))} · commit "
        f"{html.escape(commit)} (it may differ from this run's) · <code>{_e(card.get('command'))}"
        "</code></p>"
    )
    header = "".join(f"<th>{h}</th>" for h in CARD_COLUMNS)
    return [head, sub, f"<p>{verdict}</p>", f"<table><tr>{header}</tr>{''.join(rows)}</table>"]


def _card_row(r: dict[str, Any]) -> str:
    """One card row: pass/FAIL per check, the first leaking pair and its probe, the verdict."""
    checks = {c["name"]: c for c in r.get("checks", [])}
    cells = [f"<td>{_e(r['label'])}</td>", f"<td>{_e(r['expected'])}</td>"]
    for name in ("jacobian", "perturbation", "prefix", "batch"):
        c = checks.get(name)
        word = "-" if c is None else ("pass" if c["passed"] else "FAIL")
        cls = "" if c is None else ("ok" if c["passed"] else "fail")
        cells.append(f"<td class='{cls}'>{word}</td>")
    bad = [c for c in checks.values() if not c["passed"] and c.get("first_leak")]
    worst = min(bad, key=lambda c: c["first_leak"][0]) if bad else None
    if worst is None:
        cells += ["<td>-</td>", "<td>-</td>"]
    else:
        t, s = worst["first_leak"]
        cells.append(f"<td class='num'>{_e(t)} &lt;- {'other seq' if s is None else _e(s)}</td>")
        cells.append(f"<td>{_e(worst['name'])}, {_e(worst.get('probe'))}</td>")
    verdict = str(r.get("verdict", ""))
    note = f" ({_e(r['message'])})" if r.get("message") else ""
    cls = "ok" if verdict in CARD_OK else "fail"
    cells.append(f"<td class='{cls}'>{_e(verdict)}{note}</td>")
    return "<tr>" + "".join(cells) + "</tr>"
