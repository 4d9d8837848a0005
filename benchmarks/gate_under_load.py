"""Does the baseline gate hold when the candidate ran on a busy machine? Issue 29's figures.

    .venv/bin/python benchmarks/gate_under_load.py --reps 5 --out /tmp/gate_under_load
    .venv/bin/python benchmarks/gate_under_load.py --regate /tmp/gate_under_load

Each repetition records `hubbench run ci` (one worker thread, the CPU default on 2 cores) as:
  A   quiet: the baseline
  B   quiet: the same code again (quiet A/A)
  L   with LOAD busy processes (`python -c "while True: pass"`) beside it (loaded A/A)
  S   quiet, hub-gpt planted 25% slower (tests/builders.py, HUBBENCH_TEST_SLOWDOWN)
  SL  as S, with the busy processes beside it (a real slowdown on a changed machine)
then `hubbench gate --baseline A --candidate X` for X in B, L, S, SL: its exit code, the checks
by verdict, what failed, and the first inconclusive note. The busy processes are started before
the run and killed after it (also on an error or Ctrl-C), never left running.

Beside every run: the 1-minute load average before it started (busy processes not yet started)
and when it ended, so a box loaded by someone else shows. And for the question whether the gate
should normalise by the sentinel: per pair and cell, |log(B/A tokens/s)| as measured, and after
multiplying by the sentinel's slowdown (the run's median over all readings, and the cell's own
rounds'); normalising is sound only if it brings loaded pairs to ~1 without hurting quiet ones.

--regate DIR gates the runs that an earlier invocation recorded in DIR (runs.json) again, with
the code as it is now: the same runs judged before and after a change to the gate.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BUILDER = f"{ROOT / 'tests' / 'builders.py'}:build"
HUBBENCH = [sys.executable, "-m", "hubbench"]
SLOWED = "hub-gpt"
SLOWDOWN = 0.25
KINDS = ("A", "B", "L", "S", "SL")
PAIRS = (("B", "quiet A/A"), ("L", "loaded A/A"), ("S", "quiet, hub-gpt 25% slower"),
         ("SL", "loaded, hub-gpt 25% slower"))  # fmt: skip


def load1() -> float:
    return os.getloadavg()[0]


def autogroup() -> str:
    """Whether the kernel groups processes by session (then `nice` does not protect a
    measurement from another terminal's work: docs/measurement.md)."""
    try:
        return {"0": "off", "1": "on"}.get(
            Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip(), "?"
        )
    except OSError:
        return "not in this kernel"


class Busy:
    """`count` busy Python processes for the length of a with-block; killed on the way out."""

    def __init__(self, count: int) -> None:
        self.count, self.procs = count, []

    def __enter__(self) -> Busy:
        for _ in range(self.count):
            self.procs.append(subprocess.Popen([sys.executable, "-c", "while True: pass"]))
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()
        self.procs = []


def record(kind: str, results: Path, load: int) -> dict[str, Any]:
    env = dict(os.environ)
    extra = []
    if kind.startswith("S"):
        env["HUBBENCH_TEST_SLOWDOWN"] = json.dumps([{"variant": SLOWED, "slowdown": SLOWDOWN}])
        extra = ["--builder", BUILDER]
    before, started = load1(), time.perf_counter()
    with Busy(load if kind in ("L", "SL") else 0):
        out = subprocess.run([*HUBBENCH, "run", "ci", *extra, "--results-dir", str(results)],
                             cwd=ROOT, env=env, capture_output=True, text=True)  # fmt: skip
    if out.returncode != 0:
        raise SystemExit(f"hubbench run ci ({kind}) exited {out.returncode}:\n{out.stderr}")
    from hubbench import store

    path = store.latest_run(results, "ci")
    seconds = round(time.perf_counter() - started)
    return {"kind": kind, "run": path.stem.rpartition("-")[2], "load_before": round(before, 2),
            "load_after": round(load1(), 2), "seconds": seconds,
            "autogroup": autogroup()}  # fmt: skip


def sentinel(df: Any) -> tuple[float, dict[str, float]]:
    """The run's median sentinel reading, and each cell's own (by label)."""
    every, by_cell = [], {}
    for _, row in df.iterrows():
        readings = row["round_sentinel_s"]
        values = [] if readings is None else [float(v) for v in readings if v is not None]
        every += values
        if values:
            by_cell[f"{row['variant']} {row['attention']} {row['seq']}"] = statistics.median(values)
    return statistics.median(every), by_cell


def normalising(a: Any, b: Any) -> dict[str, float]:
    """max and median over cells of |log(B/A)| of tokens/s: raw, and times the sentinel's
    slowdown (run-wide, and the cell's own)."""
    sa, cells_a = sentinel(a)
    sb, cells_b = sentinel(b)
    raw, run_wide, own = [], [], []
    for (_, ra), (_, rb) in zip(a.iterrows(), b.iterrows(), strict=True):
        key = f"{ra['variant']} {ra['attention']} {ra['seq']}"
        r = float(rb["tokens_per_s"]) / float(ra["tokens_per_s"])
        raw.append(abs(math.log(r)))
        run_wide.append(abs(math.log(r * sb / sa)))
        own.append(abs(math.log(r * cells_b[key] / cells_a[key])))
    return {"sentinel_x": round(sb / sa, 3),
            **{f"{name}_max": round(max(v), 3) for name, v in
               (("raw", raw), ("run", run_wide), ("own", own))},
            **{f"{name}_med": round(statistics.median(v), 3) for name, v in
               (("raw", raw), ("run", run_wide), ("own", own))}}  # fmt: skip


def gate(a: str, b: str, results: Path) -> dict[str, Any]:
    from hubbench.report.gate import gate_baseline
    from hubbench.report.load import load_run

    out = subprocess.run([*HUBBENCH, "gate", "--baseline", a, "--candidate", b,
                          "--results-dir", str(results)], cwd=ROOT,
                         capture_output=True, text=True)  # fmt: skip
    ratios = subprocess.run([*HUBBENCH, "gate", "--ratios", b, "--results-dir", str(results)],
                            cwd=ROOT, capture_output=True)  # fmt: skip
    da, db = load_run(a, results), load_run(b, results)
    result = gate_baseline(da, db)
    tally: dict[str, int] = {}
    for c in result.checks:
        tally[c.verdict] = tally.get(c.verdict, 0) + 1
    notes = [c.note for c in result.checks if c.verdict == "inconclusive"]
    machine = getattr(result, "machine", None)  # None: a gate from before issue 29
    seen = "-"
    if machine is not None and machine.ci is not None:
        ci = machine.ci
        seen = f"{ci.point:.2f} [{ci.low:.2f}, {ci.high:.2f}]" + (" changed" * machine.changed)
    norm = normalising(da.sort_values("cell_index"), db.sort_values("cell_index"))
    return {"exit": out.returncode, "verdicts": tally, "failed": [c.name for c in result.failed],
            "note": notes[0] if notes else "", "norm": norm, "machine": seen,
            "ratio_exit": ratios.returncode}  # fmt: skip


def judge_all(reps: list[dict[str, Any]], results: Path) -> None:
    print(
        "\n| rep | candidate | load A→end | load X→end | exit | verdicts | failed | note | "
        "sentinel X/A [CI] | max abs log X/A: raw / run-norm / cell-norm | --ratios X |"
    )
    print("|---|---|---|---|---:|---|---|---|---|---|---:|")
    totals: dict[str, list[int]] = {}
    norms: dict[str, list[dict[str, float]]] = {}
    ratio_exits: dict[str, list[int]] = {}
    for i, rep in enumerate(reps):
        a = rep["A"]
        for kind, what in PAIRS:
            x = rep.get(kind)
            if x is None:
                continue
            g = gate(a["run"], x["run"], results)
            totals.setdefault(what, []).append(g["exit"])
            n = g["norm"]
            norms.setdefault(what, []).append(n)
            verdicts = ", ".join(f"{v} {k}" for k, v in sorted(g["verdicts"].items()))
            print(f"| {i + 1} | {kind} ({what}) | {a['load_before']}→{a['load_after']} | "
                  f"{x['load_before']}→{x['load_after']} | {g['exit']} | {verdicts} | "
                  f"{', '.join(g['failed']) or '-'} | {g['note'][:60]} | {g['machine']} | "
                  f"{n['raw_max']} / {n['run_max']} / {n['own_max']} | {g['ratio_exit']} |",
                  flush=True)  # fmt: skip
            ratio_exits.setdefault(what, []).append(g["ratio_exit"])
    print("\nexit codes by scenario, and |log(X/A tokens/s)| over cells and repetitions "
          "(median; max), raw / normalised by the run's sentinel / by the cell's own:")  # fmt: skip
    for what, codes in totals.items():
        counts = {c: codes.count(c) for c in sorted(set(codes))}
        parts = []
        for name in ("raw", "run", "own"):
            med = statistics.median(n[f"{name}_med"] for n in norms[what])
            top = max(n[f"{name}_max"] for n in norms[what])
            parts.append(f"{name} {med:.3f}; {top:.3f}")
        ratio = {c: ratio_exits[what].count(c) for c in sorted(set(ratio_exits[what]))}
        print(f"  {what}: {len(codes)} repetitions, exit codes {counts} (gate --ratios X: "
              f"{ratio}); " + " / ".join(parts))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--load", type=int, default=3, help="busy processes beside L and SL")
    parser.add_argument("--kinds", default=",".join(KINDS), help="runs per repetition")
    parser.add_argument("--out", type=Path, default=Path("/tmp/gate_under_load"))
    parser.add_argument("--regate", type=Path, help="judge the runs recorded in this folder")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # Busy's cleanup runs on TERM too
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.pop(name, None)
    if args.regate:
        judge_all(json.loads((args.regate / "runs.json").read_text()), args.regate)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    manifest, reps = args.out / "runs.json", []
    kinds = args.kinds.split(",")
    for rep in range(args.reps):
        order = kinds[rep % len(kinds) :] + kinds[: rep % len(kinds)]  # no role always first
        runs = {}
        for kind in order:
            runs[kind] = record(kind, args.out, args.load)
            print(json.dumps({"rep": rep + 1, **runs[kind]}), flush=True)
        reps.append(runs)
        manifest.write_text(json.dumps(reps, indent=1))
    judge_all(reps, args.out)


if __name__ == "__main__":
    main()
