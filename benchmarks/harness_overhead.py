"""How much the benchmark engine itself costs, and how repeatable its numbers are (not a test).

    .venv/bin/python benchmarks/harness_overhead.py            # overhead + A/A + wall times
    .venv/bin/python benchmarks/harness_overhead.py --quick    # overhead + A/A only

1. Overhead per cell: eight copies of one cell (hub-gpt n=512 from the throughput suite; the
   copies differ only in `seed`, so each is a distinct cell doing identical work) through the
   real runner and worker. Overhead = the cell's wall time as the runner sees it (from
   on_start to on_done: request, model build, warm-up bookkeeping, JSON, parquet rewrite)
   minus the measured work (its warm-up steps and timed steps).
2. A/A: the cells of `throughput --seq 1024`, each measured twice in a row within one run, then
   the whole set run twice; per cell, the ratio of the two median tokens/s.
3. Wall time of `hubbench run throughput --seq 1024` and of `hubbench run throughput` (default),
   as a user runs them, startup included.
Results go to a temporary directory. Other processes on the machine inflate every figure; the
script prints the 1-minute load average next to them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from hubbench.plan import expand, load_suite, parse_overrides
from hubbench.run.runner import run_plan


def load() -> str:
    return f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs"


def overhead(results: Path) -> None:
    seeds = ",".join(str(i) for i in range(8))
    plan = expand(
        load_suite("throughput"),
        parse_overrides([f"seed={seeds}"], seq="512", variant="hub-gpt", device="cpu"),
    )
    starts: dict[int, float] = {}
    rows = []

    def on_start(i: int, n: int, cell) -> None:
        starts[cell.index] = time.perf_counter()

    def on_done(row) -> None:
        rows.append((time.perf_counter() - starts[row["cell_index"]], row))

    run_plan(plan, results, on_start=on_start, on_done=on_done)
    print(f"\n1. overhead per cell ({len(rows)} x hub-gpt n=512 fwd_bwd; {load()})")
    extra = []
    for i, (wall, row) in enumerate(rows):
        work = row["warmup_s"] + sum(row["samples_s"])
        extra.append(wall - work)
        first = "  (includes worker start-up)" if i == 0 else ""
        print(
            f"   cell {i}: wall {wall:6.3f} s, work {work:6.3f} s "
            f"({row['time_count']} timed + warm-up), overhead {wall - work:6.3f} s{first}"
        )
    after = extra[1:]
    print(
        f"   after the first: overhead median {statistics.median(after):.3f} s, "
        f"max {max(after):.3f} s"
    )


def aa(results: Path) -> None:
    plan = expand(load_suite("throughput"), parse_overrides(seq="1024", device="cpu"))
    # Back to back: each cell twice in a row, so slow drift in machine load cancels.
    pairs = [replace(c, index=2 * i + k) for i, c in enumerate(plan.cells) for k in (0, 1)]
    result = run_plan(replace(plan, cells=pairs), results)
    rows = result.new_rows
    _print_pairs(f"back to back ({load()})", list(zip(rows[0::2], rows[1::2], strict=True)))
    # Two separate runs, as a user would repeat a measurement.
    runs = [run_plan(plan, results).new_rows for _ in range(2)]
    _print_pairs(f"two runs ({load()})", list(zip(runs[0], runs[1], strict=True)))


def _print_pairs(title: str, pairs: list) -> None:
    print(f"\n2. A/A, throughput --seq 1024, {title}")
    worst = 0.0
    for a, b in pairs:
        if a["status"] != "ok" or b["status"] != "ok":
            continue
        ratio = b["tokens_per_s"] / a["tokens_per_s"]
        worst = max(worst, abs(ratio - 1))
        label = f"{a['variant']} {a['attention'] or ''}".strip()
        print(
            f"   {label:22s} {a['tokens_per_s']:9,.0f} vs {b['tokens_per_s']:9,.0f} tok/s "
            f"({a['time_count']}/{b['time_count']} samples)  ratio {ratio:.3f}"
        )
    print(f"   largest difference: {100 * worst:.1f}%")


def wall(results: Path, args: list[str]) -> None:
    command = [sys.executable, "-m", "hubbench", "run", *args, "--results-dir", str(results)]
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    print(f"   hubbench run {' '.join(args)}: {seconds:.1f} s ({load()})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the full CLI wall times")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = Path(tmp)
        overhead(results)
        aa(results)
        if not opts.quick:
            print("\n3. wall time as a user runs it")
            wall(results, ["throughput", "--seq", "1024"])
            wall(results, ["throughput"])


if __name__ == "__main__":
    main()
