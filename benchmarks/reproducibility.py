"""Do hubbench's verdicts survive a rerun on this machine? Issue 10's acceptance checks.

    .venv/bin/python benchmarks/reproducibility.py --reps 10 [--json out.json]

With no thread variables set, as a user runs it:
1. A/A and a planted slowdown, `reps` times: two plain `hubbench run ci` runs (A, B) and one
   with hub-gpt planted 25% slower (C, through the test builder's HUBBENCH_TEST_SLOWDOWN), in a
   rotated order each repetition. Counts how often `gate --baseline A --candidate B` passes,
   `compare A B` calls no cell changed, `gate --baseline A --candidate C` fails, and `compare A C`
   calls only hub-gpt cells worse; and how often the in-run ratio of the ci suite's first gate
   rule from A and from B have overlapping intervals.
2. hub-gpt's scaling exponent (n 512..8192) from two `scaling` runs: both intervals, whether
   they overlap and their widths.
3. The wall time of `hubbench run throughput --seq 1024`.
4. (`--aa-runs N`, the experiment behind compare's --min-effect and the CPU memory tolerance)
   N plain `ci` runs back to back; for every pair of consecutive runs and every cell, the B/A
   tokens/s interval (min_effect 0), how far it misses 1 when it does, and the memory ratio.
Everything goes to a temporary results directory; the figures print as they come.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BUILDER = f"{ROOT / 'tests' / 'builders.py'}:build"
HUBBENCH = [sys.executable, "-m", "hubbench"]
SLOWED = "hub-gpt"
SLOWDOWN = 0.25
SCALING_SEQS = "512,1024,2048,4096,8192"


def hubbench(args: list[str], results: Path, env: dict[str, str] | None = None) -> int:
    argv = [*HUBBENCH, *args, "--results-dir", str(results)]
    out = subprocess.run(argv, cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True)
    return out.returncode


def run(suite: list[str], results: Path, slow: bool = False) -> str:
    env = {}
    extra = []
    if slow:
        env["HUBBENCH_TEST_SLOWDOWN"] = json.dumps([{"variant": SLOWED, "slowdown": SLOWDOWN}])
        extra = ["--builder", BUILDER]
    code = hubbench(["run", *suite, *extra], results, env)
    if code != 0:
        raise SystemExit(f"hubbench run {' '.join(suite)} exited {code}")
    from hubbench import store

    return store.latest_run(results).stem.rpartition("-")[2]


def compare_calls(a: str, b: str, results: Path) -> list[tuple[str, str]]:
    """(cell label, verdict) for every cell compare calls changed."""
    from hubbench.report.compare import compare_runs, verdicts
    from hubbench.report.load import load_run

    cmp = compare_runs(load_run(a, results), load_run(b, results), ["tokens_per_s"])
    return [(c.label, v) for c in cmp.cells if (v := verdicts(cmp, c)) not in ("same", "-")]


def ratio_interval(run_id: str, results: Path) -> tuple[float, float, float]:
    from hubbench.report.gate import gate_ratios, load_rules
    from hubbench.report.load import load_run

    df = load_run(run_id, results)
    rules, name = load_rules(df, None)
    check = gate_ratios(df, rules[:1], name).checks[0]
    return check.ci.point, check.ci.low, check.ci.high


def verdicts_part(reps: int, results: Path) -> dict[str, Any]:
    tally = {"aa_gate_pass": 0, "aa_compare_quiet": 0, "slow_gate_fail": 0,
             "slow_compare_names_only_it": 0, "ratio_overlap": 0}  # fmt: skip
    details = []
    for rep in range(reps):
        kinds = ["a", "b", "c"]
        kinds = kinds[rep % 3 :] + kinds[: rep % 3]  # rotate, so no role always runs first
        ids = {}
        started = time.perf_counter()
        for kind in kinds:
            ids[kind] = run(["ci"], results, slow=kind == "c")
        a, b, c = ids["a"], ids["b"], ids["c"]
        aa_gate = hubbench(["gate", "--baseline", a, "--candidate", b], results)
        slow_gate = hubbench(["gate", "--baseline", a, "--candidate", c], results)
        aa_calls = compare_calls(a, b, results)
        slow_calls = compare_calls(a, c, results)
        named = bool(slow_calls) and all(
            label.startswith(SLOWED) and "worse" in v for label, v in slow_calls
        )
        ra, rb = ratio_interval(a, results), ratio_interval(b, results)
        overlap = ra[1] <= rb[2] and rb[1] <= ra[2]
        tally["aa_gate_pass"] += aa_gate == 0
        tally["aa_compare_quiet"] += not aa_calls
        tally["slow_gate_fail"] += slow_gate == 1
        tally["slow_compare_names_only_it"] += named
        tally["ratio_overlap"] += overlap
        detail = {"rep": rep, "order": kinds, "aa_gate": aa_gate, "slow_gate": slow_gate,
                  "aa_calls": aa_calls, "slow_calls": slow_calls, "ratio_a": ra, "ratio_b": rb,
                  "seconds": round(time.perf_counter() - started)}  # fmt: skip
        details.append(detail)
        print(json.dumps(detail), flush=True)
    print(f"verdicts over {reps} repetitions: {json.dumps(tally)}", flush=True)
    return {"tally": tally, "details": details}


def scaling_part(results: Path) -> dict[str, Any]:
    from hubbench.report.load import load_run
    from hubbench.report.plots import fits_table

    fits = []
    for _ in range(2):
        run_id = run(["scaling", "--variant", SLOWED, "--seq", SCALING_SEQS], results)
        [(_, label, fit)] = fits_table(load_run(run_id, results))
        fits.append((fit.exponent, fit.low, fit.high))
        print(f"scaling {run_id}: {label} n^{fit.text()}", flush=True)
    (_, l1, h1), (_, l2, h2) = fits
    out = {"fits": fits, "overlap": l1 <= h2 and l2 <= h1, "widths": [h1 - l1, h2 - l2]}
    print(f"scaling exponents: {json.dumps(out)}", flush=True)
    return out


def wall_part(results: Path) -> dict[str, Any]:
    started = time.perf_counter()
    code = hubbench(["run", "throughput", "--seq", "1024"], results)
    seconds = time.perf_counter() - started
    print(f"hubbench run throughput --seq 1024: {seconds:.0f} s (exit {code})", flush=True)
    return {"seconds": seconds, "exit": code}


def aa_part(runs: int, results: Path) -> dict[str, Any]:
    import numpy as np

    from hubbench.report.compare import compare_runs
    from hubbench.report.load import load_run

    ids = [run(["ci"], results) for _ in range(runs)]
    misses, logs, memory, total = [], [], [], 0
    for a, b in itertools.pairwise(ids):
        cmp = compare_runs(load_run(a, results), load_run(b, results),
                           ["tokens_per_s", "peak_mem_bytes"], min_effect=0.0)  # fmt: skip
        for c in cmp.cells:
            ci, mem = c.ratios["tokens_per_s"], c.ratios["peak_mem_bytes"]
            total += 1
            logs.append(abs(np.log(ci.point)))
            memory.append(abs(np.log(mem.point)))
            if not ci.low <= 1.0 <= ci.high:
                misses.append(max(ci.low - 1.0, 1.0 - ci.high))
    out = {"comparisons": total, "intervals_missing_1": len(misses),
           "largest_miss": max(misses, default=0.0),
           "abs_log_ratio_p90": float(np.quantile(logs, 0.9)),
           "memory_abs_log_p90": float(np.quantile(memory, 0.9)),
           "memory_abs_log_max": float(max(memory))}  # fmt: skip
    print(f"A/A over {runs} runs: {json.dumps(out)}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--aa-runs", type=int, default=0, help="part 4: this many plain ci runs")
    parser.add_argument("--skip", default="", help="parts to skip: verdicts,scaling,wall")
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args()
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.pop(name, None)
    skip = set(args.skip.split(","))
    out: dict[str, Any] = {"load_before": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        results = Path(tmp)
        if "verdicts" not in skip:
            out["verdicts"] = verdicts_part(args.reps, results)
        if "scaling" not in skip:
            out["scaling"] = scaling_part(results)
        if "wall" not in skip:
            out["wall"] = wall_part(results)
        if args.aa_runs > 1:
            out["aa"] = aa_part(args.aa_runs, results)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
