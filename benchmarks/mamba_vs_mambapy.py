"""Mamba `ref` against mambapy's parallel scan: forward + backward time and peak memory.

    .venv/bin/python benchmarks/mamba_vs_mambapy.py --lengths 1024,4096 --repeats 7

Both blocks get the same weights (mambapy's MambaBlock uses mamba-ssm's parameter names, so its
state dict loads into hubbench's Mamba), and the script refuses to time anything until the two
agree on outputs and input gradients (correctness before speed).

Time: one step = forward, `sum().backward()`; parameter grads are cleared outside the timed
region. The two implementations are interleaved in one process (the order flips every repeat) so
that drift on a shared machine hits both; we report the median, the min, and the ratio of medians.

Memory: each (implementation, length) runs in its own child process, so the peaks do not mix.
The child builds the block and the input, resets the kernel's peak-RSS mark (writes "5" to
/proc/self/clear_refs, which sets VmHWM to the current RSS), runs two steps, and reports VmHWM
minus the RSS before the steps: the extra resident memory one training step needs. Where
clear_refs is not writable it falls back to ru_maxrss (getrusage) minus the RSS before the steps.
tracemalloc cannot see torch's allocations, hence RSS.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

from hubbench.mixers.mamba import Mamba

IMPLS = ("ref", "mambapy")


def build(impl: str, d_model: int, seed: int = 0) -> torch.nn.Module:
    """The block under test; both implementations start from mambapy's initial weights."""
    from mambapy.mamba import MambaBlock, MambaConfig

    torch.manual_seed(seed)
    theirs = MambaBlock(MambaConfig(d_model=d_model, n_layers=1, pscan=True))
    if impl == "mambapy":
        return theirs
    ours = Mamba(d_model)
    ours.load_state_dict(theirs.state_dict())
    return ours


def make_input(batch: int, seq: int, d_model: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(batch, seq, d_model, generator=gen).requires_grad_()


def step(block: torch.nn.Module, x: torch.Tensor) -> None:
    block(x).sum().backward()


def clear(block: torch.nn.Module, x: torch.Tensor) -> None:
    block.zero_grad(set_to_none=True)
    x.grad = None


def check_agreement(d_model: int, seq: int = 300) -> float:
    """Max abs difference of outputs and input grads between the two blocks (same weights)."""
    x = make_input(2, seq, d_model)
    out = {}
    for impl in IMPLS:
        block = build(impl, d_model)
        xi = x.detach().clone().requires_grad_()
        y = block(xi)
        y.square().mean().backward()
        out[impl] = (y.detach(), xi.grad)
    return max((a - b).abs().max().item() for a, b in zip(*out.values(), strict=True))


def time_interleaved(d_model: int, batch: int, seq: int, repeats: int) -> dict[str, list[float]]:
    blocks = {impl: build(impl, d_model) for impl in IMPLS}
    x = make_input(batch, seq, d_model)
    for block in blocks.values():  # warm-up: allocator, thread pool, first-call paths
        step(block, x)
        clear(block, x)
    times: dict[str, list[float]] = {impl: [] for impl in IMPLS}
    for r in range(repeats):
        order = IMPLS if r % 2 == 0 else IMPLS[::-1]
        for impl in order:
            t0 = time.perf_counter()
            step(blocks[impl], x)
            times[impl].append(time.perf_counter() - t0)
            clear(blocks[impl], x)
    return times


def _rss_kib(field: str) -> int | None:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def child_peak_memory(impl: str, d_model: int, batch: int, seq: int) -> dict[str, float | str]:
    """Runs inside the child: extra peak RSS (bytes) of two steps over the RSS before them."""
    block = build(impl, d_model)
    x = make_input(batch, seq, d_model)
    before = _rss_kib("VmRSS") or 0
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        method = "VmHWM after clear_refs"
    except OSError:
        method = "ru_maxrss"
    for _ in range(2):
        step(block, x)
        clear(block, x)
    if method == "ru_maxrss":
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    else:
        peak = _rss_kib("VmHWM") or 0
    return {"peak_bytes": peak * 1024.0, "extra_bytes": (peak - before) * 1024.0, "method": method}


def peak_memory(impl: str, d_model: int, batch: int, seq: int) -> dict[str, float | str]:
    cmd = [sys.executable, __file__, "--child", impl, "--d-model", str(d_model)]
    cmd += ["--batch", str(batch), "--lengths", str(seq)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"memory child for {impl} at L={seq} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="1024,4096", help="comma-separated sequence lengths")
    parser.add_argument("--repeats", type=int, default=7, help="timed steps per implementation")
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--child", choices=IMPLS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    lengths = [int(s) for s in args.lengths.split(",") if s]
    if importlib.util.find_spec("mambapy") is None:
        sys.exit("this benchmark needs mambapy: pip install 'hubbench[test]'")

    if args.child:
        mem = child_peak_memory(args.child, args.d_model, args.batch, lengths[0])
        print(json.dumps(mem))
        return

    diff = check_agreement(args.d_model)
    print(f"agreement (outputs and input grads, max abs diff, L=300): {diff:.2e}")
    if diff > 1e-4:
        sys.exit("ref and mambapy disagree; not timing a wrong implementation")
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, d_model {args.d_model}, "
        f"batch {args.batch}, repeats {args.repeats}, step = forward + backward"
    )
    header = f"{'L':>6} {'impl':>8} {'median ms':>10} {'min ms':>8} {'extra peak MiB':>15}"
    rows, ratios = [header], []
    for seq in lengths:
        times = time_interleaved(args.d_model, args.batch, seq, args.repeats)
        mem = {impl: peak_memory(impl, args.d_model, args.batch, seq) for impl in IMPLS}
        med = {impl: statistics.median(t) * 1e3 for impl, t in times.items()}
        for impl in IMPLS:
            rows.append(
                f"{seq:>6} {impl:>8} {med[impl]:>10.1f} {min(times[impl]) * 1e3:>8.1f} "
                f"{mem[impl]['extra_bytes'] / 2**20:>15.1f}"
            )
        t_ratio = med["ref"] / med["mambapy"]
        m_ratio = mem["ref"]["extra_bytes"] / mem["mambapy"]["extra_bytes"]
        ratios.append(
            f"L={seq}: time ref/mambapy = {t_ratio:.3f} ({1 / t_ratio:.2f}x faster), "
            f"extra peak memory ref/mambapy = {m_ratio:.3f}"
        )
    print("\n".join(rows))
    print("\n".join(ratios))
    print(f"memory method: {mem['ref']['method']}, one child process per (impl, L)")


if __name__ == "__main__":
    main()
