"""What the ref scan's cache-sized sub-chunks buy: one jamba training update, interleaved.

    .venv/bin/python benchmarks/mamba_subchunks.py                     # quality suite's jamba
    .venv/bin/python benchmarks/mamba_subchunks.py --batch 8 --seq 512 --d-model 128

Three settings of the same model, timed round-robin in one process (so machine noise hits all
three alike; the spread is printed beside each median):

- `whole chunks`: SCAN_WORK_ELEMS unbounded, so every chunk of SCAN_CHUNK tokens is worked on
  (batch, 64, d_inner, d_state) buffers: the scan before sub-chunks;
- `sub-chunks` (the default): buffers of at most SCAN_WORK_ELEMS elements, the state kept once
  per chunk and the sub-chunk states rebuilt in backward;
- `sub-chunks, state kept per sub-chunk`: chunk = sub-chunk, so backward rebuilds nothing, at
  the price of a saved state every few tokens. The gap to the default is the rebuild's cost.

A transformer update of the same size is timed alongside as the yardstick.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

import hubbench.mixers.mamba.scan as mamba
from hubbench.measure.step import build_step
from hubbench.models import build
from hubbench.plan.variants import make_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    scan = mamba.selective_scan_bld
    default_elems = mamba.SCAN_WORK_ELEMS
    chunk = [mamba.SCAN_CHUNK]

    def with_chunk(*a: object, chunk_size: int | None = None, **k: object) -> object:
        return scan(*a, chunk_size=chunk[0], **k)  # type: ignore[arg-type]

    mamba.selective_scan_bld = with_chunk  # type: ignore[assignment]

    def update(variant: str) -> Callable[[], None]:
        torch.manual_seed(0)
        config = make_config(variant, vocab=64, d_model=args.d_model, n_layers=args.layers,
                             n_heads=1)  # fmt: skip
        step = build_step(build(variant, config), "train", args.batch, args.seq)
        return step.fn

    jamba, transformer = update("jamba"), update("transformer")
    d_inner, u = 2 * args.d_model, torch.empty(args.batch, 1, 2 * args.d_model)
    shape = mamba.ScanArgs(u, u, torch.empty(d_inner, 16), u, u, None, None, None, False,
                            torch.float32)  # fmt: skip
    work = mamba.work_tokens(shape, mamba.SCAN_CHUNK)
    settings: dict[str, tuple[Callable[[], None], int, int]] = {
        "whole chunks": (jamba, mamba.SCAN_CHUNK, 1 << 62),
        f"sub-chunks of {work} (default)": (jamba, mamba.SCAN_CHUNK, default_elems),
        "sub-chunks, state per sub-chunk": (jamba, work, default_elems),
        "transformer": (transformer, mamba.SCAN_CHUNK, default_elems),
    }
    times: dict[str, list[float]] = {name: [] for name in settings}
    for fn, *_ in settings.values():
        fn()  # warm-up
    for _ in range(args.repeats):
        for name, (fn, size, elems) in settings.items():
            chunk[0], mamba.SCAN_WORK_ELEMS = size, elems
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    mamba.SCAN_WORK_ELEMS = default_elems
    print(
        f"jamba train update, batch {args.batch}, n {args.seq}, d_model {args.d_model}, "
        f"{args.layers} layers, {args.threads} thread(s), {args.repeats} interleaved repeats"
    )
    base = statistics.median(times["whole chunks"])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:34s} {median * 1e3:7.0f} ms  [{min(values) * 1e3:.0f}, "
              f"{max(values) * 1e3:.0f}]  {base / median:5.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
