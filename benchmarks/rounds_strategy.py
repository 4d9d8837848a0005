"""Rounds: keep each cell's model between its rounds, or rebuild it every round? Cost and stability.

    .venv/bin/python benchmarks/rounds_strategy.py --rounds 8 --cells ci

For the cells of a suite (CPU, one thread each), both strategies run in this process, the rounds
interleaved across cells in the runner's order (plan order, then seeded shuffles):
- kept: every model is built and warmed up (measure.warm_up, the CPU defaults) once; each round
  is one re-warm step plus the timed steps;
- rebuilt: each round builds the model afresh and warms it up by the same rule, as the runner
  does.
Prints, per cell and strategy, the median step, the between-round CV of the round medians and
the wall time per round outside the timed steps, and the total wall time of each strategy.
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import time

import torch

from hubbench.measure.step import build_step
from hubbench.measure.timing import time_calls, warm_up
from hubbench.models import build
from hubbench.plan import expand, load_suite
from hubbench.plan.runfields import DEVICE_MEASURE


def measure(cells, rounds: int, kept: bool) -> tuple[dict, float]:
    settings = DEVICE_MEASURE["cpu"]
    steps = {}

    def fresh(cell):
        step = build_step(build(cell.variant, cell.config), cell.mode, cell.batch, cell.seq)
        warm_up(step.fn, steps=settings.warmup, min_s=settings.warmup_min_s,
                max_s=settings.warmup_max_s)  # fmt: skip
        return step

    started = time.perf_counter()
    if kept:
        steps = {c.index: fresh(c) for c in cells}
    medians = {c.index: [] for c in cells}
    extra = {c.index: [] for c in cells}
    for r in range(rounds):
        order = list(cells)
        if r:
            random.Random(r).shuffle(order)
        for cell in order:
            t0 = time.perf_counter()
            if kept:
                step = steps[cell.index]
                step.fn()
            else:
                step = fresh(cell)
            t1 = time.perf_counter()
            samples = time_calls(step.fn, repeats=settings.repeats)
            extra[cell.index].append(t1 - t0)
            medians[cell.index].append(statistics.median(samples))
            if not kept:
                del step
                gc.collect()
    return {"medians": medians, "extra": extra}, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--cells", default="ci", help="suite whose cells to use")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cells = expand(load_suite(args.cells), cuda_available=False).cells
    results = {}
    for kept in (True, False, True, False):  # twice each, alternating
        out, total = measure(cells, args.rounds, kept)
        name = "kept" if kept else "rebuilt"
        results.setdefault(name, []).append((out, total))
    for name, runs in results.items():
        totals = ", ".join(f"{t:.1f} s" for _, t in runs)
        print(f"\n{name}: total {totals}")
        for cell in cells:
            cvs, meds, extras = [], [], []
            for out, _ in runs:
                m = out["medians"][cell.index]
                cvs.append(100 * statistics.stdev(m) / statistics.median(m))
                meds.append(1e3 * statistics.median(m))
                extras.append(1e3 * statistics.median(out["extra"][cell.index]))
            print(
                f"  {cell.label(('attention',)):34s} median {meds[0]:7.1f} / {meds[1]:7.1f} ms"
                f"  between-round CV {cvs[0]:4.1f}% / {cvs[1]:4.1f}%"
                f"  outside timing {extras[0]:5.0f} / {extras[1]:5.0f} ms per round"
            )


if __name__ == "__main__":
    main()
