"""The regression gate: a candidate against a baseline, or ratios within one run against a suite.

A check fails only when its whole bootstrap CI lies beyond the threshold, so noise alone cannot
fail CI; a point estimate beyond the threshold with a CI that straddles it is reported as
inconclusive (visible, not failing). Baseline mode compares the same cell across two runs; ratio
mode compares two cells of one run (hub-gpt over transformer/sdpa at n = 2048), which stays stable
on shared machines because both sides saw the same load.

Outcomes: pass (exit 0), regression (GateFailure, exit 1), unusable input (ReportError, exit 2).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hubbench import schema
from hubbench.errors import HubbenchError, ReportError
from hubbench.report import format as fmt
from hubbench.report.compare import (
    ENV_REFUSE,
    ENV_WARN,
    MIN_EFFECT,
    env_mismatch,
    join_runs,
)
from hubbench.report.load import (
    join_fields,
    labeller,
    norm_value,
    require_ok,
    run_label,
    varying_fields,
)
from hubbench.report.machine import Machine, machine_change
from hubbench.report.ratios import metric_ratio
from hubbench.stats import CONFIDENCE, MIN_SAMPLES, RESAMPLES, SEED, RatioCI

if TYPE_CHECKING:
    import pandas as pd
    from rich.table import Table

ABSENT = "cell not in the candidate run"


class GateFailure(HubbenchError):
    """At least one check's CI lies entirely beyond its threshold."""

    exit_code = 1


@dataclass
class Check:
    name: str
    metric: schema.Column
    ref: float | None  # baseline value, or the denominator's
    value: float | None  # candidate value, or the numerator's
    ci: RatioCI | None
    min: float | None  # the ratio must not lie entirely below this ...
    max: float | None  # ... nor entirely above this
    verdict: str = "pass"  # pass | regression | inconclusive | missing (not compared)
    note: str = ""
    kind: str = "ratio"  # ratio (value / ref) | value (the metric itself against min / max)


@dataclass
class GateResult:
    mode: str  # "baseline" | "ratio" | "ab" (a same-run A/B, hubbench.report.gate_ab)
    reference: str  # baseline run / suite that holds the rules
    candidate: str
    checks: list[Check]
    confidence: float
    resamples: int
    threshold: str  # one line saying what was enforced
    notes: list[str] = field(default_factory=list)
    machine: Machine | None = None  # baseline mode: what the sentinels say about the machine
    held: int = 0  # checks that would have failed, inconclusive because the machine was slower
    masked: int = 0  # checks that would have passed, inconclusive because it was faster

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.verdict == "regression"]

    @property
    def passed(self) -> bool:
        return not self.failed


def judge(check: Check) -> Check:
    """Set check.verdict from its CI and bounds; a lone point never fails a time metric."""
    ci = check.ci
    if ci is None:
        return check
    if check.metric.time_power != 0 and not ci.bootstrapped:
        check.verdict = "inconclusive"
        check.note = check.note or f"fewer than {MIN_SAMPLES} samples: no CI"
        return check
    below = check.min is not None and ci.high < check.min
    above = check.max is not None and ci.low > check.max
    if below or above:
        check.verdict = "regression"
        return check
    point_out = (check.min is not None and ci.point < check.min) or (
        check.max is not None and ci.point > check.max
    )
    if point_out:
        check.verdict = "inconclusive"
        check.note = check.note or "point beyond threshold, CI straddles it (noise)"
    return check


def _require_judgeable(checks: list[Check], where: str) -> None:
    """A gate none of whose checks could be decided would pass forever: that is unusable input."""
    decided = [
        c
        for c in checks
        if c.kind == "value"
        or (c.ci is not None and (c.ci.bootstrapped or c.metric.time_power == 0))
    ]
    if checks and not decided:
        raise ReportError(
            f"{where}: no check has {MIN_SAMPLES}+ per-step samples on both sides; "
            "re-run with repeats >= 10 so the gate can decide"
        )


def gate_baseline(
    baseline: pd.DataFrame,
    candidate: pd.DataFrame,
    metric: str = "tokens_per_s",
    max_regression: float = 0.05,
    *,
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = SEED,
    min_effect: float = MIN_EFFECT,
    allow_env_mismatch: bool = False,
    allow_missing: bool = False,
) -> GateResult:
    """Every baseline cell against the same cell in the candidate run.

    The allowed worsening is the larger of `max_regression` and `min_effect` (the noise floor of
    A/A runs). Runs measured in different environments are refused unless allowed. Where the
    noise sentinel says the candidate's machine was slower (report.machine), a time metric's
    check that would have failed is inconclusive: the gate cannot tell that from the code.
    """
    import pandas as pd

    m = schema.metric(metric)
    require_ok(baseline, f"baseline {run_label(baseline)}")
    require_ok(candidate, f"candidate {run_label(candidate)}")
    mismatch = env_mismatch(baseline, candidate, ENV_REFUSE)
    if mismatch and not allow_env_mismatch:
        raise ReportError(
            f"baseline and candidate were measured in different environments ({'; '.join(mismatch)}"
            "); their ratio measures the machines, not the change: pass --allow-env-mismatch "
            "to gate them anyway"
        )
    joined = join_runs(baseline, candidate, "baseline", "candidate")
    base, cand = joined.a, joined.b
    label = labeller(pd.concat([baseline, candidate], ignore_index=True), joined.fields)
    allowed = max(max_regression, min_effect)
    lo, hi = (1 - allowed, None) if m.higher_is_better else (None, 1 + allowed)
    settings = {"resamples": resamples, "confidence": confidence, "seed": seed}
    checks = [
        _baseline_check(Check(label(rb), m, ref=_num(rb, m), value=None, ci=None, min=lo, max=hi),
                        rb, cand.get(key), settings)
        for key, rb in base.items()
    ]  # fmt: skip
    if not allow_missing:
        _refuse_missing(checks, candidate)
    _require_judgeable(checks, "gate")
    machine = machine_change(baseline, candidate, **settings)
    held = _hold(checks, machine) if machine.slower else 0
    masked = _mask(checks, machine) if machine.faster else 0
    word = "drop" if m.higher_is_better else "rise"
    why = (
        f"the larger of --max-regression {100 * max_regression:g}% and --min-effect "
        f"{100 * min_effect:g}%"
    )
    return GateResult(
        mode="baseline",
        reference=run_label(baseline),
        candidate=run_label(candidate),
        checks=checks,
        confidence=confidence,
        resamples=resamples,
        threshold=f"{m.name}: fail when the CI of candidate/baseline lies entirely beyond a "
        f"{100 * allowed:g}% {word} ({why})",
        notes=[
            *([machine.line()] if machine.changed else []),
            *(
                f"Environments differ: {w}."
                for w in [*mismatch, *env_mismatch(baseline, candidate, ENV_WARN)]
            ),
        ],
        machine=machine,
        held=held,
        masked=masked,
    )


def _hold(checks: list[Check], machine: Machine) -> int:
    """Make the time checks that point worse inconclusive, saying how much slower the machine
    was; how many would have failed. Memory and a cell that stopped running stay judged."""
    held = 0
    for c in checks:
        if c.ci is None or not c.ci.bootstrapped or c.metric.time_power == 0:
            continue
        if c.verdict in ("regression", "inconclusive"):
            held += c.verdict == "regression"
            c.verdict, c.note = "inconclusive", machine.words()
    return held


def _mask(checks: list[Check], machine: Machine) -> int:
    """Make the time checks that pass inconclusive when the candidate's machine was faster: the
    faster machine could hide a slowdown; how many would have passed. A regression stands (the
    candidate was slower even on a faster machine), as do memory checks."""
    masked = 0
    for c in checks:
        if c.ci is None or not c.ci.bootstrapped or c.metric.time_power == 0:
            continue
        if c.verdict == "pass":
            masked += 1
            c.verdict = "inconclusive"
            c.note = f"{machine.words()}: a slowdown could hide behind it"
    return masked


def _baseline_check(check: Check, rb: Any, rc: Any, settings: dict[str, Any]) -> Check:
    """A baseline cell (rb) against the candidate's (rc: None where it has none), judged;
    `settings` are the bootstrap's (resamples, confidence, seed)."""
    m = check.metric
    if rc is None or rc["status"] == "partial":
        check.verdict = "missing"
        check.note = ABSENT if rc is None else f"{ABSENT} in full: {rc['message']}"
    elif rb["status"] != "ok":
        check.value = _num(rc, m)
        check.verdict = "missing"
        check.note = f"baseline {rb['status']} → {rc['status']}; nothing to compare"
    elif rc["status"] != "ok":
        check.verdict, check.note = "regression", f"ok → {rc['status']}: {rc['message']}"
    else:
        check.value = _num(rc, m)
        check.ci = metric_ratio(m, rc, rb, **settings)
        if check.ci is None:
            check.verdict, check.note = "missing", f"{m.name} not recorded"
        judge(check)
    return check


def _refuse_missing(checks: list[Check], candidate: pd.DataFrame) -> None:
    """A ReportError where the candidate lacks baseline cells (an interrupted run)."""
    absent = [c for c in checks if c.note.startswith(ABSENT)]
    if absent:
        names = ", ".join(c.name for c in absent[:4]) + (", ..." if len(absent) > 4 else "")
        raise ReportError(
            f"the candidate ({run_label(candidate)}) lacks {len(absent)} of {len(checks)} "
            f"baseline cells ({names}): an interrupted run? continue it with --resume, or pass "
            "--allow-missing to gate the cells it has"
        )


def _num(row: Any, m: schema.Column) -> float | None:
    v = norm_value(row[m.name]) if m.name in row.index else None
    return None if v is None else float(v)


def _matches(value: Any, wanted: Any) -> bool:
    v, w = norm_value(value), norm_value(wanted)
    if isinstance(v, (int, float)) and isinstance(w, (int, float)) and not isinstance(v, bool):
        return float(v) == float(w)
    return v == w or (v is not None and str(v) == str(w))


def matching_cells(df: pd.DataFrame, where: dict[str, Any], rule: str, side: str) -> Any:
    """The rows of df matching every key of `where`; ReportError when none does."""
    unknown = [k for k in where if k not in df.columns]
    if unknown:
        raise ReportError(
            f"gate rule {rule!r} {side}: unknown field(s) {', '.join(unknown)}; "
            f"valid: {', '.join(join_fields(df))}"
        )
    mask = [all(_matches(row[k], v) for k, v in where.items()) for _, row in df.iterrows()]
    hits = df[mask]
    if len(hits) == 0:
        spec = ", ".join(f"{k}={v}" for k, v in where.items())
        raise ReportError(
            f"gate rule {rule!r}: no cell matches its {side} ({spec}) in run {run_label(df)}; "
            "check that the run comes from the suite that declares the rule"
        )
    return hits


def select_cell(df: pd.DataFrame, where: dict[str, Any], rule: str, side: str) -> Any:
    """The one row of df matching every key of `where`; ReportError when none or several."""
    hits = matching_cells(df, where, rule, side)
    spec = ", ".join(f"{k}={v}" for k, v in where.items())
    if len(hits) > 1:
        spread = varying_fields(hits, join_fields(hits))
        raise ReportError(
            f"gate rule {rule!r}: its {side} ({spec}) matches {len(hits)} cells; "
            f"add {', '.join(spread) or 'more fields'} to pick one"
        )
    return hits.iloc[0]


def gate_ratios(
    run: pd.DataFrame,
    rules: Sequence[Any],
    suite_name: str,
    *,
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = SEED,
) -> GateResult:
    """Each rule's numerator/denominator ratio within `run` against its min / max."""
    if not rules:
        raise ReportError(
            f"suite {suite_name!r} declares no gate.ratio rules; add some (docs/reference.md, "
            "'Gate') or gate against a baseline with --baseline"
        )
    require_ok(run, run_label(run))
    checks = []
    for rule in rules:
        m = schema.metric(rule.metric)
        if rule.min is None and rule.max is None:
            raise ReportError(f"gate rule {rule.name!r} sets neither min nor max")
        if getattr(rule, "kind", "ratio") == "value":
            checks.append(value_check(run, rule, m))
            continue
        num = select_cell(run, dict(rule.numerator), rule.name, "numerator")
        den = select_cell(run, dict(rule.denominator), rule.name, "denominator")
        check = Check(rule.name, m, ref=_num(den, m), value=_num(num, m), ci=None,
                      min=rule.min, max=rule.max)  # fmt: skip
        bad = [(side, r) for side, r in (("numerator", num), ("denominator", den))
               if r["status"] != "ok"]  # fmt: skip
        if bad:
            side, r = bad[0]
            raise ReportError(
                f"gate rule {rule.name!r}: its {side} cell is {r['status']} "
                f"({r['message']}); the ratio cannot be measured"
            )
        check.ci = metric_ratio(m, num, den, resamples=resamples, confidence=confidence, seed=seed)
        if check.ci is None:
            raise ReportError(f"gate rule {rule.name!r}: {m.name} not recorded for its cells")
        checks.append(judge(check))
    _require_judgeable(checks, f"gate (suite {suite_name})")
    from hubbench.report.load import plain_rows
    from hubbench.report.seeds import recipe_notices

    # MQAR (issue 30): where the attention reference did not solve a point, its comparisons are
    # not results; the rules still judge what they name (CI's reference rules among them)
    return GateResult(
        notes=recipe_notices(plain_rows(run)),
        mode="ratio",
        reference=f"suite {suite_name}",
        candidate=run_label(run),
        checks=checks,
        confidence=confidence,
        resamples=resamples,
        threshold="each rule's ratio fails when its whole CI lies beyond min / max",
    )


def value_check(run: pd.DataFrame, rule: Any, m: schema.Column) -> Check:
    """A [[gate.value]] rule: the mean of the metric over the matching cells (the seeds of one
    config) against min / max. A cell that failed, lacks the metric, or leaks under the
    causality checks (causal_check 'fail: ...') is a regression: learning broke, or the number
    is not valid."""
    hits = matching_cells(run, dict(rule.numerator), rule.name, "cell")
    check = Check(rule.name, m, ref=None, value=None, ci=None, min=rule.min, max=rule.max,
                  kind="value")  # fmt: skip
    failed = [r for _, r in hits.iterrows() if r["status"] != "ok"]
    if failed:
        r = failed[0]
        check.verdict, check.note = "regression", f"{r['status']}: {r['message']}"
        return check
    leaks = [str(v) for v in hits.get("causal_check", []) if str(v).startswith("fail")]
    if leaks:
        check.verdict, check.note = "regression", f"the trained model leaks ({leaks[0]})"
        return check
    values = [_num(r, m) for _, r in hits.iterrows()]
    if any(v is None for v in values):
        check.verdict, check.note = "regression", f"{m.name} not recorded"
        return check
    check.value = sum(values) / len(values)  # type: ignore[arg-type]
    if len(values) > 1:
        check.note = f"mean of {len(values)} cells, {min(values):.4g}–{max(values):.4g}"  # type: ignore[type-var]
    below = check.min is not None and check.value < check.min
    above = check.max is not None and check.value > check.max
    check.verdict = "regression" if below or above else "pass"
    return check


def load_rules(run: pd.DataFrame, suite_file: str | None) -> tuple[list[Any], str]:
    """The gate rules for a run: from --suite FILE, else from the suite named in the run."""
    try:
        from hubbench.plan.suite import load_suite
    except ModuleNotFoundError as exc:
        raise ReportError(f"cannot load suites: {exc}") from exc
    if suite_file is not None:
        name = suite_file
    else:
        names = sorted({str(s) for s in run["suite"]})
        if len(names) != 1:
            raise ReportError(
                f"run mixes suites {', '.join(names)}; pass --suite FILE for the gate rules"
            )
        name = names[0]
    try:
        suite = load_suite(name)
    except HubbenchError as exc:
        raise ReportError(f"cannot load gate rules from suite {name!r}: {exc}") from exc
    return list(suite.gate), name


ESTIMATE = {"baseline": "ratio of medians", "ratio": "ratio of medians",
            "ab": "trimmed geometric mean of the paired rounds' ratios of medians"}  # fmt: skip
VERDICT_MARK = {"pass": "✅", "regression": "❌", "inconclusive": "⚠️", "missing": "➖"}


def to_markdown(result: GateResult) -> str:
    conf = f"{100 * result.confidence:g}%"
    status = "✅ pass" if result.passed else f"❌ {len(result.failed)} regression(s)"
    unjudged = result.held + result.masked
    if unjudged and result.machine is not None:  # a pass that judged nothing says so
        status = "" if result.passed else status + ", "
        status += f"⚠️ {unjudged} inconclusive: {result.machine.words()}"
    ref_head, val_head = heads(result)
    lines = [
        f"### hubbench gate ({result.mode}): {status}",
        "",
        f"{result.reference} → {result.candidate}. {result.threshold}.",
        "",
        f"| check | {ref_head} | {val_head} | ratio | {conf} CI | ideal | allowed | verdict |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for c in result.checks:
        ci = c.ci
        ratio = "-" if ci is None else fmt.times(ci.point)
        interval = fmt.interval(ci)
        allowed = allowed_range(c)
        verdict = f"{VERDICT_MARK[c.verdict]} {c.verdict}" + (f" ({c.note})" if c.note else "")
        lines.append(
            f"| {fmt.md_cell(c.name)} | {fmt.metric_value(c.metric, c.ref)} | "
            f"{fmt.metric_value(c.metric, c.value)} | {ratio} | {interval} | {fmt.ideal(ci)} | "
            f"{allowed} | "
            f"{fmt.md_cell(verdict)} |"
        )
    lines += [
        "",
        f"CI: {conf} two-stage bootstrap ({result.resamples} resamples of the rounds, then of the "
        f"steps within them; rounds of one run paired), {ESTIMATE[result.mode]}. A check fails "
        "only when its whole CI lies beyond the allowed range. Ideal: the same ratio at both "
        "sides' speed of light (docs/measurement.md), shown, never gated.",
        *result.notes,
        "",
    ]
    return "\n".join(lines)


def heads(result: GateResult) -> tuple[str, str]:
    """The two value columns' headers: a ratio rule's sides, or the two code versions (a
    baseline run's, or a same-run A/B's, whose commits the title names)."""
    return ("denominator", "numerator") if result.mode == "ratio" else ("baseline", "candidate")


def rich_columns(result: GateResult) -> tuple[list[str], list[str]]:
    """(the headers that must stay, those that may go, least wanted first) when to_rich's
    table is fitted to a narrow console (hubbench.cli.fit)."""
    ref, value = heads(result)
    return ["check", "ratio [CI]", "allowed", "verdict"], ["ideal", ref, value]


def to_rich(result: GateResult) -> Table:
    from rich.table import Table
    from rich.text import Text

    conf = f"{100 * result.confidence:g}%"
    table = Table(
        title=f"gate ({result.mode}): {result.reference} → {result.candidate}",
        caption=f"{result.threshold}; CI: {conf} two-stage bootstrap over rounds, "
        f"{result.resamples} resamples",
    )
    ref_head, val_head = heads(result)
    for name, justify in (
        ("check", "left"),
        (ref_head, "right"),
        (val_head, "right"),
        ("ratio [CI]", "right"),
        ("ideal", "right"),
        ("allowed", "right"),
        ("verdict", "left"),
    ):
        table.add_column(name, justify=justify, no_wrap=justify == "right")  # type: ignore[arg-type]
    styles = {"pass": "green", "regression": "bold red", "inconclusive": "yellow", "missing": "dim"}
    for c in result.checks:
        verdict = c.verdict + (f" ({c.note})" if c.note else "")
        table.add_row(
            Text(c.name),  # user-written rule names: never read as Rich markup
            fmt.metric_value(c.metric, c.ref),
            fmt.metric_value(c.metric, c.value),
            fmt.ratio(c.ci),
            fmt.ideal(c.ci),
            allowed_range(c),
            Text(verdict, style=styles[c.verdict]),
        )
    return table


def allowed_range(c: Check) -> str:
    unit = "×" if c.kind == "ratio" else ""
    if c.min is not None and c.max is not None:
        return f"{c.min:g}–{c.max:g}{unit}"
    if c.min is not None:
        return f"≥ {c.min:g}{unit}"
    if c.max is not None:
        return f"≤ {c.max:g}{unit}"
    return "-"
