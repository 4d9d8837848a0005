"""Activation memory of one Mamba layer (ref scan) on CPU, and what it means for jamba on a GPU.

    .venv/bin/python benchmarks/mamba_memory.py                          # n = 1k..8k, ~2 min
    .venv/bin/python benchmarks/mamba_memory.py --seqs 1024,4096 --dtype bf16
    .venv/bin/python benchmarks/mamba_memory.py --list-saved 4096        # what autograd keeps
    .venv/bin/python benchmarks/mamba_memory.py --module mamba_old       # another Mamba (sys.path)

Three parts:

- saved: the tensors autograd keeps after one forward of one Mamba layer (saved_tensors_hooks,
  deduplicated by storage; parameters and the layer input left out), as bytes per token, at
  d_model 256 / batch 1 and, in bf16 autocast, at the GPU width (d_model 1024). Exact and
  linear in n, so a small n is enough.
- peak: each n runs in its own child process. The child builds the layer (d_model 256, batch 1,
  fp32 by default), runs a warm-up step at a small n, resets the kernel's peak-RSS mark (writes
  "5" to /proc/self/clear_refs, which sets VmHWM to the current RSS), runs one forward +
  backward at n and reports VmHWM minus the RSS before that step. Where clear_refs is not
  writable it falls back to getrusage ru_maxrss. Printed: extra peak MiB, bytes per token, and
  the fitted exponent of peak against n (linear memory: ~1).
- gpu: the extrapolation to jamba's GPU defaults (suites' [defaults.cuda]: bf16, batch 8,
  d_model 1024, 12 layers, of which 11 are Mamba; here n = 16384) against 139 GiB (H200). The
  whole-model saved bytes per token are counted with the same hooks on the real jamba model at
  d_model 1024 in bf16 autocast on CPU at a short n, and multiplied by batch x n; parameters,
  gradients and AdamW state are 16 bytes per fp32 parameter (+2 for autocast's bf16 weight
  copies); the backward's transient is one Mamba layer's extra peak minus its saved bytes, scaled
  by d_inner. CUDA autocast casts the same ops (linear, conv) to bf16 as CPU autocast, so the
  saved layout carries over; allocator fragmentation and workspace do not, hence the margin.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import statistics
import subprocess
import sys

import torch

from hubbench.measure.memory import extra_peak_rss

D_MODEL = 256
GIB = 2**30


def mamba_class(module: str):
    return importlib.import_module(module).Mamba


def fit_exponent(ns: list[int], values: list[float]) -> float:
    """Least-squares slope of log(value) against log(n)."""
    xs, ys = [math.log(n) for n in ns], [math.log(v) for v in values]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((a - mx) * (b - my) for a, b in zip(xs, ys, strict=True)) / sum(
        (a - mx) ** 2 for a in xs
    )


def _autocast(dtype: str):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16")


def saved_tensors(fn, skip: list[torch.Tensor]) -> dict[int, tuple[tuple[int, ...], str, int]]:
    """Storage address -> (shape, dtype, storage bytes) of what autograd saves in fn()."""
    seen: dict[int, tuple[tuple[int, ...], str, int]] = {}
    ours = {t.untyped_storage().data_ptr() for t in skip}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        if st.data_ptr() not in ours:
            dtype = str(t.dtype).removeprefix("torch.")
            seen.setdefault(st.data_ptr(), (tuple(t.shape), dtype, st.nbytes()))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return seen


def layer_saved_per_token(module: str, d_model: int, n: int, dtype: str, show: bool = False):
    """Saved bytes per token of one layer: the slope between n and 2n, so that constant terms
    (autocast's bf16 copies of the weights, A, D) drop out."""
    torch.manual_seed(0)
    m = mamba_class(module)(d_model)
    totals = []
    for length in (n, 2 * n):
        x = torch.randn(1, length, d_model, requires_grad=True)

        def fwd(x: torch.Tensor = x) -> None:
            with _autocast(dtype):
                m(x)

        seen = saved_tensors(fwd, [x, *m.parameters()])
        totals.append(sum(v[2] for v in seen.values()))
    if show:
        for shape, dt, nbytes in sorted(seen.values(), key=lambda v: -v[2]):
            print(f"  {nbytes / 2**20:9.3f} MiB  {nbytes / (2 * n):8.0f} B/token  {dt:9s} {shape}")
    return (totals[1] - totals[0]) / n, m.d_inner


def model_saved_per_token(module: str, n: int, cfg: dict) -> tuple[float, int]:
    """Saved bytes per token of the whole jamba model (bf16 autocast), and its parameter count."""
    import hubbench.mixers.mamba as mamba_mod
    from hubbench.models import build_model

    mamba_mod_saved = mamba_mod.Mamba
    mamba_mod.Mamba = mamba_class(module)  # models.builders imports it at build time
    try:
        torch.manual_seed(0)
        model = build_model(
            "jamba", d_model=cfg["d_model"], n_layers=cfg["layers"], n_heads=cfg["heads"]
        )
    finally:
        mamba_mod.Mamba = mamba_mod_saved
    totals = []
    for length in (n, 2 * n):  # the slope: bf16 weight copies and other constants drop out
        tokens = torch.randint(0, 256, (1, length))

        def fwd(tokens: torch.Tensor = tokens) -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                model(tokens)

        totals.append(sum(v[2] for v in saved_tensors(fwd, list(model.parameters())).values()))
    return (totals[1] - totals[0]) / n, sum(p.numel() for p in model.parameters())


def memory_child(n: int, module: str, dtype: str, d_model: int) -> None:
    """Runs in a child process: print the extra peak RSS of one forward + backward at n."""
    torch.manual_seed(0)
    m = mamba_class(module)(d_model)

    def step(x: torch.Tensor) -> None:
        with _autocast(dtype):
            y = m(x)
        y.float().sum().backward()

    step(torch.randn(1, 200, d_model, requires_grad=True))
    x = torch.randn(1, n, d_model, requires_grad=True)
    m.zero_grad(set_to_none=True)
    extra, method = extra_peak_rss(lambda: step(x))
    print(json.dumps({"n": n, "extra_bytes": extra, "method": method}))


def run_peak(seqs: list[int], module: str, dtype: str, d_model: int) -> dict:
    rows = []
    for n in seqs:
        cmd = [sys.executable, __file__, "--memory-child", str(n), "--module", module]
        cmd += ["--dtype", dtype, "--d-model", str(d_model)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(
            f"peak n={n:6d}  extra peak RSS {row['extra_bytes'] / 2**20:8.1f} MiB  "
            f"{row['extra_bytes'] / n:8.0f} B/token  ({row['method']})",
            flush=True,
        )
    res: dict = {"rows": rows}
    if len(rows) >= 2:
        res["exponent"] = fit_exponent(seqs, [max(r["extra_bytes"], 1) for r in rows])
        print(f"peak memory exponent: {res['exponent']:.3f}")
    return res


def run_gpu(module: str, cfg: dict, transient_per_token_per_dinner: float | None) -> dict:
    n_short = cfg["probe_n"]
    mamba_bt, d_inner = layer_saved_per_token(module, cfg["d_model"], n_short, "bf16")
    model_bt, params = model_saved_per_token(module, n_short, cfg)
    tokens = cfg["batch"] * cfg["seq"]
    acts = model_bt * tokens
    state = params * (4 + 4 + 8 + 2)  # fp32 weights, grads, AdamW m and v; bf16 weight copies
    transient = 0.0
    if transient_per_token_per_dinner is not None:
        transient = max(transient_per_token_per_dinner, 0.0) * d_inner * tokens
    total = acts + state + transient
    n_mamba = cfg["layers"] - 1  # jamba_attention_layers(12) = {4}
    print(
        f"gpu extrapolation: jamba, bf16, batch {cfg['batch']}, n {cfg['seq']}, "
        f"d_model {cfg['d_model']}, {cfg['layers']} layers ({n_mamba} Mamba)"
    )
    print(
        f"  one Mamba mixer saves {mamba_bt:.0f} B/token "
        f"({mamba_bt / d_inner:.2f} B/token/d_inner, d_inner {d_inner}); "
        f"x {n_mamba} layers x {tokens} tokens = {mamba_bt * n_mamba * tokens / GIB:.1f} GiB"
    )
    print(
        f"  whole model saves {model_bt:.0f} B/token (hooks, n={n_short} -> {2 * n_short}) "
        f"x {tokens} tokens = {acts / GIB:.1f} GiB"
    )
    print(
        f"  params {params / 1e6:.1f} M x 18 B (fp32 w + grad + AdamW m, v; bf16 copies) "
        f"= {state / GIB:.1f} GiB"
    )
    if transient_per_token_per_dinner is not None:
        print(
            f"  backward transient of one Mamba layer: {transient_per_token_per_dinner:.1f} "
            f"B/token/d_inner (CPU peak - saved) x {d_inner} x {tokens} = "
            f"{transient / GIB:.1f} GiB"
        )
    verdict = "fits" if total < cfg["gib"] * GIB else "does NOT fit"
    print(f"  total {total / GIB:.1f} GiB vs {cfg['gib']} GiB: {verdict}")
    return {
        "mamba_bytes_per_token": mamba_bt,
        "model_bytes_per_token": model_bt,
        "params": params,
        "activations_gib": acts / GIB,
        "state_gib": state / GIB,
        "transient_gib": transient / GIB,
        "total_gib": total / GIB,
        "fits": total < cfg["gib"] * GIB,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seqs", default="1024,2048,4096,8192")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="peak part")
    p.add_argument("--d-model", type=int, default=D_MODEL)
    p.add_argument("--module", default="hubbench.mixers.mamba", help="where Mamba comes from")
    p.add_argument("--list-saved", type=int, metavar="N", help="list the saved tensors at N")
    p.add_argument("--no-gpu", action="store_true", help="skip the GPU extrapolation")
    p.add_argument("--gpu-seq", type=int, default=16384)
    p.add_argument("--gpu-batch", type=int, default=8)
    p.add_argument("--gpu-d-model", type=int, default=1024)
    p.add_argument("--gpu-layers", type=int, default=12)
    p.add_argument("--gpu-heads", type=int, default=16)
    p.add_argument("--gpu-gib", type=float, default=139.0)
    p.add_argument("--probe-n", type=int, default=256, help="n of the whole-model hook count")
    p.add_argument("--json", help="write all figures here")
    p.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args.module, args.dtype, args.d_model)
        return
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, module {args.module}")
    out: dict = {}
    if args.list_saved:
        for dtype in ("fp32", "bf16"):
            print(f"saved tensors, d_model {args.d_model}, n {args.list_saved}, {dtype}:")
            bt, di = layer_saved_per_token(
                args.module, args.d_model, args.list_saved, dtype, show=True
            )
            print(f"  total {bt:.0f} B/token = {bt / di:.2f} B/token/d_inner")
        return
    seqs = [int(s) for s in args.seqs.split(",")]
    saved_bt, d_inner = layer_saved_per_token(args.module, args.d_model, min(seqs), args.dtype)
    print(
        f"saved by one layer, d_model {args.d_model}, {args.dtype}: {saved_bt:.0f} B/token "
        f"= {saved_bt / d_inner:.2f} B/token/d_inner"
    )
    out["saved_bytes_per_token"] = saved_bt
    out["peak"] = run_peak(seqs, args.module, args.dtype, args.d_model)
    # the step's transient: extra peak beyond what is saved, at the largest n
    last = out["peak"]["rows"][-1]
    transient = (last["extra_bytes"] / last["n"] - saved_bt) / d_inner
    if not args.no_gpu:
        cfg = {
            "seq": args.gpu_seq,
            "batch": args.gpu_batch,
            "d_model": args.gpu_d_model,
            "layers": args.gpu_layers,
            "heads": args.gpu_heads,
            "gib": args.gpu_gib,
            "probe_n": args.probe_n,
        }
        out["gpu"] = run_gpu(args.module, cfg, transient)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
