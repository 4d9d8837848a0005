"""Start-up cost of planning and listing against `import torch`, interleaved in one run.

    .venv/bin/python benchmarks/startup.py --repeats 7

Each round times, in a fresh process each and in a rotated order, `python -c "import torch"`,
`hubbench --help`, `hubbench list` and `hubbench run throughput --dry-run`, so load changes on a
shared machine hit all of them alike. Prints each command's median time, and the median and
p10-p90 of its per-round ratio to `import torch` (target: under 0.25 for list and the dry run).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

HUBBENCH = [sys.executable, "-m", "hubbench"]
COMMANDS = {
    "import torch": [sys.executable, "-c", "import torch"],
    "hubbench --help": [*HUBBENCH, "--help"],
    "hubbench list": [*HUBBENCH, "list"],
    "run throughput --dry-run": [*HUBBENCH, "run", "throughput", "--dry-run"],
}


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, cwd=Path(__file__).parent.parent)
    return time.perf_counter() - start


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    names = list(COMMANDS)
    for argv in COMMANDS.values():  # warm the page cache: the first run of each is not timed
        timed(argv)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            times[name].append(timed(COMMANDS[name]))
    print(f"{'command':28s} {'median s':>9s} {'/ import torch':>15s} {'p10-p90':>11s}")
    for name in names:
        t = times[name]
        ratios = [a / b for a, b in zip(t, times["import torch"], strict=True)]
        spread = f"{quantile(ratios, 0.1):.2f}-{quantile(ratios, 0.9):.2f}"
        median, ratio = statistics.median(t), statistics.median(ratios)
        print(f"{name:28s} {median:9.2f} {ratio:15.2f} {spread:>11s}")


if __name__ == "__main__":
    main()
