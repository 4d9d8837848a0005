"""HubRouter speed and memory on CPU: model ratio, layer scaling, projection floor.

    .venv/bin/python benchmarks/hubrouter_scaling.py                 # everything (long: ~15 min)
    .venv/bin/python benchmarks/hubrouter_scaling.py --part layer    # scaling + floor + memory
    .venv/bin/python benchmarks/hubrouter_scaling.py --part model --model-seqs 8192 --repeats 3

Three parts (d_model 256, 4 heads, batch 1; HubRouter M=8, k=64, C=64, r=1):

- model: hub-gpt against transformer (causal SDPA), 4 layers, one training step each
  (forward, backward, AdamW) from `hubbench.measure.step.build_step`, so exactly the step the
  runner times. The two models' steps are interleaved (the order flips every repeat) so drift on
  a shared machine hits both; the ratio is of medians. Targets: >= 3x at 8192, >= 5x at 16384.
  Beside it, the ideal ratio: the two steps' speed of light (hubbench.measure.roofline: analytic
  FLOPs at the calibrated matmul peak, the byte floor at the calibrated bandwidth), shown once
  `hubbench env --calibrate` has run here.
- layer: one HubRouter layer, forward + backward (`y.sum().backward()`), over n = 1k..16k;
  the log-log slope of median time against n (target <= 1.15). Next to it, at each n, the
  "projection floor": a layer with exactly HubRouter's per-token linear maps (its fused input
  GEMM of width 4d + 1 + hM and the output projection, gate included) and no token mixing.
  The floor and HubRouter are interleaved; target: HubRouter <= 1.5x floor at n >= 4096.
  `--councils auto,masked` (the default) runs HubRouter once per council implementation, all
  interleaved with the floor: auto (the packed council on CPU in fp32) against the dense-mask
  reference. `--model-councils auto,split` runs hub-gpt once per council in the model part.
- memory: each n runs in its own child process. The child builds the layer and its input, runs
  a warm-up step at a small n (so library initialisation is not counted), resets the kernel's
  peak-RSS mark (writes "5" to /proc/self/clear_refs, which sets VmHWM to the current RSS),
  runs one forward + backward at n and reports VmHWM minus the RSS before that step: the extra
  resident memory a step needs. Where clear_refs is not writable it falls back to getrusage
  ru_maxrss. The fitted exponent of that against n has target <= 1.1. One child per council,
  so each council's memory against the masked one is read off the same run.

Allocator: the script runs under the glibc tunables the measuring worker gets
(`hubbench.measure.env.MALLOC_TUNABLES`: big blocks from the heap, kept between steps, so a
step's activations are not mapped and faulted in anew), re-executing itself with them if need
be, so its figures are the runner's; `--malloc default` leaves glibc's own settings.

Correctness first: before timing, the script runs `hubbench.verify.causality.check_mixer` on a small
HubRouter with the same options and refuses to report speed if it leaks.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

import torch
from torch import nn

from hubbench.measure.env import malloc_env
from hubbench.measure.memory import extra_peak_rss
from hubbench.mixers.hubrouter import COUNCIL_IMPLS, HubRouter

D_MODEL, HEADS, LAYERS = 256, 4, 4
HUB = {"hubs": 8, "topk": 64, "neighbours": 1, "chunk": 64}


class ProjectionFloor(nn.Module):
    """HubRouter's per-token linear maps with no token mixing: the cost any such layer pays."""

    def __init__(self, d_model: int, n_heads: int, hubs: int) -> None:
        super().__init__()
        self.d, self.rest = d_model, 1 + n_heads * hubs  # token score + encode logits
        self.in_proj = nn.Linear(d_model, 4 * d_model + 1 + n_heads * hubs)
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.d
        k, v, q, gate, _ = self.in_proj(x).split((d, d, d, d, self.rest), -1)
        return self.out_proj(q + k + v) * torch.sigmoid(gate)


def layer(kind: str, seed: int = 0, rope: bool = False) -> nn.Module:
    """ "floor", or "hub:<council>" (a HubRouter whose council runs that implementation)."""
    torch.manual_seed(seed)
    if kind == "floor":
        return ProjectionFloor(D_MODEL, HEADS, HUB["hubs"])
    council = kind.partition(":")[2] or "auto"
    return HubRouter(D_MODEL, HEADS, **HUB, rope=rope, council=council)


def layer_step(module: nn.Module, x: torch.Tensor) -> None:
    module.zero_grad(set_to_none=True)
    x.grad = None
    module(x).sum().backward()


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def fit_exponent(ns: list[int], values: list[float]) -> float:
    """Least-squares slope of log(value) against log(n)."""
    xs, ys = [math.log(n) for n in ns], [math.log(v) for v in values]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((a - mx) * (b - my) for a, b in zip(xs, ys, strict=True)) / sum(
        (a - mx) ** 2 for a in xs
    )


def check_correctness() -> None:
    from hubbench.verify.causality import check_mixer

    small = HubRouter(32, 4, hubs=4, topk=4, neighbours=1, chunk=8)
    report = check_mixer(small, n=40, seeds=(0,))
    print(f"causality (small HubRouter, same code path): {report.summary()}")
    if not report.passed:
        sys.exit("HubRouter leaks the future: refusing to report speed")


def run_layers(seqs: list[int], repeats: int, rope: bool, councils: list[str]) -> dict:
    """Each council implementation and the floor, interleaved (order rotates every repeat)."""
    mods = {c: layer(f"hub:{c}", rope=rope) for c in councils} | {"floor": layer("floor")}
    rows = []
    for n in seqs:
        x = torch.randn(1, n, D_MODEL, requires_grad=True)
        for m in mods.values():
            layer_step(m, x)  # warm-up
        times: dict[str, list[float]] = {k: [] for k in mods}
        order = list(mods.items())
        for r in range(repeats):
            shift = r % len(order)
            for name, m in order[shift:] + order[:shift]:
                times[name].append(timed(lambda m=m, x=x: layer_step(m, x)))
        med = {k: statistics.median(v) for k, v in times.items()}
        row = {"n": n, "floor_s": med["floor"], "samples_s": times}
        row |= {f"{c}_s": med[c] for c in councils}
        row |= {f"{c}_over_floor": med[c] / med["floor"] for c in councils}
        backends = {c: mods[c]._backend_name() for c in councils}
        rows.append(row | {"backends": backends})
        hubs = "   ".join(
            f"{c} {med[c] * 1e3:7.1f} ms ({med[c] / med['floor']:.2f}x floor)" for c in councils
        )
        print(f"layer n={n:6d}  floor {med['floor'] * 1e3:7.1f} ms   {hubs}", flush=True)
    out: dict = {"rows": rows}
    if len(rows) >= 2:
        for c in councils:
            exp = fit_exponent([r["n"] for r in rows], [r[f"{c}_s"] for r in rows])
            out[f"{c}_time_exponent"] = exp
            print(f"layer time exponent, {c} council (fwd+bwd): {exp:.3f}  (target <= 1.15)")
    return out


def memory_child(n: int, kind: str) -> None:
    """Runs in a child process: print the extra peak RSS of one forward + backward at n."""
    m = layer(kind)
    layer_step(m, torch.randn(1, 2 * HUB["chunk"] + 3, D_MODEL, requires_grad=True))
    x = torch.randn(1, n, D_MODEL, requires_grad=True)
    m.zero_grad(set_to_none=True)
    extra, method = extra_peak_rss(lambda: m(x).sum().backward())
    print(json.dumps({"n": n, "kind": kind, "extra_bytes": extra, "method": method}))


def run_memory(seqs: list[int], councils: list[str], malloc_mode: str) -> dict:
    """Extra peak RSS of one step per n and council, each in a fresh child process."""
    rows = []
    for n in seqs:
        row: dict = {"n": n}
        for c in councils:
            argv = ["--memory-child", str(n), "--kind", f"hub:{c}", "--malloc", malloc_mode]
            out = subprocess.run(
                [sys.executable, __file__, *argv],
                capture_output=True,
                text=True,
                check=True,
            )
            child = json.loads(out.stdout.strip().splitlines()[-1])
            row[f"{c}_bytes"], row["method"] = child["extra_bytes"], child["method"]
        rows.append(row)
        cells = "   ".join(f"{c} {row[f'{c}_bytes'] / 2**20:7.1f} MiB" for c in councils)
        rel = ""
        if "masked" in councils and len(councils) > 1:
            rel = "   " + "   ".join(
                f"{c}/masked {row[f'{c}_bytes'] / row['masked_bytes']:.2f}"
                for c in councils
                if c != "masked"
            )
        print(f"memory n={n:6d}  extra peak RSS  {cells}{rel}  ({row['method']})", flush=True)
    out: dict = {"rows": rows}
    if len(rows) >= 2:
        for c in councils:
            vals = [max(r[f"{c}_bytes"], 1) for r in rows]
            out[f"{c}_memory_exponent"] = exp = fit_exponent([r["n"] for r in rows], vals)
            print(f"peak memory exponent, {c} council: {exp:.3f}  (target <= 1.1)")
    return out


def run_models(seqs: list[int], repeats: int, councils: list[str]) -> dict:
    """hub-gpt (once per council implementation; the first is the headline) against the
    transformer, all interleaved."""
    from hubbench.measure.step import build_step
    from hubbench.models import build_model

    rows = []
    hub_names = ["hub-gpt"] + [f"hub-gpt:{c}" for c in councils[1:]]
    for n in seqs:
        common = {"d_model": D_MODEL, "n_layers": LAYERS, "n_heads": HEADS}
        hub = {"hubs": 8, "topk": 64, "chunk": 64}
        steps = {
            name: build_step(build_model("hub-gpt", **common, **hub, council=c), "train", 1, n)
            for name, c in zip(hub_names, councils, strict=True)
        }
        steps["transformer"] = build_step(
            build_model("transformer", **common, attention="sdpa"), "train", 1, n
        )
        for s in steps.values():
            s.fn()  # warm-up
        times: dict[str, list[float]] = {k: [] for k in steps}
        for r in range(repeats):
            order = list(steps.items())
            for name, s in order if r % 2 == 0 else order[::-1]:
                times[name].append(timed(s.fn))
        med = {k: statistics.median(v) for k, v in times.items()}
        tps = {k: n / v for k, v in med.items()}
        ratio = tps["hub-gpt"] / tps["transformer"]
        spread = [h / t for h, t in zip(times["transformer"], times["hub-gpt"], strict=True)]
        light = {k: speed_of_light_s(s, n) for k, s in steps.items()}
        ideal = light["transformer"] / light["hub-gpt"] if all(light.values()) else None
        backends = steps["hub-gpt"].model.backends() | steps["transformer"].model.backends()
        rows.append(
            {
                "n": n,
                "median_s": med,
                "tokens_per_s": tps,
                "ratio": ratio,
                "ratio_per_repeat": spread,
                "speed_of_light_s": light,
                "ideal_ratio": ideal,
                "backends": backends,
                "samples_s": times,
            }
        )
        for name in hub_names[1:]:  # the other councils, same run
            others = [t / h for h, t in zip(times[name], times["transformer"], strict=True)]
            rows[-1][f"ratio_{name}"] = tps[name] / tps["transformer"]
            rows[-1][f"ratio_per_repeat_{name}"] = others
            print(
                f"model n={n:6d}  {name} {tps[name]:8.0f} tok/s ({med[name]:.2f} s)   ratio "
                f"{tps[name] / tps['transformer']:.2f}x (per repeat {min(others):.2f}-"
                f"{max(others):.2f})",
                flush=True,
            )
        ideal_text = "-" if ideal is None else f"{ideal:.2f}x"
        print(
            f"model n={n:6d}  hub-gpt {tps['hub-gpt']:8.0f} tok/s ({med['hub-gpt']:.2f} s)   "
            f"transformer {tps['transformer']:8.0f} tok/s ({med['transformer']:.2f} s)   "
            f"ratio {ratio:.2f}x measured (per repeat {min(spread):.2f}-{max(spread):.2f}), "
            f"{ideal_text} ideal   backends {backends}",
            flush=True,
        )
    return {"rows": rows}


def speed_of_light_s(step, n: int) -> float | None:
    """The step's ideal time (hubbench.measure.roofline) at this machine's calibrated peaks; None
    until `hubbench env --calibrate` has run with this thread count."""
    from hubbench.measure.calibration import load_calibration
    from hubbench.measure.env import device_name
    from hubbench.measure.peaks import peak_bandwidth, peak_flops
    from hubbench.measure.roofline import bytes_floor, speed_of_light

    calibration = load_calibration("cpu")
    peak, _ = peak_flops("cpu", device_name("cpu"), "fp32", calibration)
    bandwidth, _ = peak_bandwidth("cpu", device_name("cpu"), calibration)
    weights = sum(p.numel() * p.element_size() for p in step.model.parameters())
    flops = step.model.flops_analytic(1, n, "train")
    light = speed_of_light(flops, peak, bytes_floor("train", weights, None, 1), bandwidth)
    return None if light is None else light.seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--part", choices=("all", "layer", "memory", "model"), default="all")
    p.add_argument("--seqs", default="1024,2048,4096,8192,16384")
    p.add_argument("--model-seqs", default="8192,16384")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--model-repeats", type=int, default=3)
    p.add_argument("--rope", action="store_true", help="layer part: council with rotary (hub-gpt)")
    p.add_argument(
        "--councils",
        default="auto,masked",
        help="layer and memory parts: HubRouter council implementations to run side by side "
        "(auto, packed, split, masked; masked is the dense-mask reference)",
    )
    p.add_argument(
        "--model-councils",
        default="auto",
        help="model part: hub-gpt once per council implementation, interleaved with the "
        "transformer (the first is the headline ratio), e.g. auto,split",
    )
    p.add_argument("--json", help="write all figures here")
    p.add_argument(
        "--malloc",
        choices=("worker", "default"),
        default="worker",
        help="glibc settings: the measuring worker's (hubbench.measure.env.MALLOC_TUNABLES, "
        "the default, so these figures match the runner's) or glibc's own",
    )
    p.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    p.add_argument("--kind", default="hub:auto", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.malloc == "worker" and malloc_env(dict(os.environ)) != dict(os.environ):
        # glibc reads its tunables at start: run again with the worker's
        os.execve(sys.executable, [sys.executable, *sys.argv], malloc_env(dict(os.environ)))
    malloc = os.environ.get("GLIBC_TUNABLES", "glibc defaults")
    if args.memory_child:
        memory_child(args.memory_child, args.kind)
        return
    seqs = [int(s) for s in args.seqs.split(",")]
    councils = [c for c in args.councils.split(",") if c]
    bad = [c for c in councils if c not in COUNCIL_IMPLS]
    if bad or not councils:
        p.error(f"--councils: {bad or 'none'} not in {COUNCIL_IMPLS}")
    model_councils = [c for c in args.model_councils.split(",") if c]
    bad = [c for c in model_councils if c not in COUNCIL_IMPLS]
    if bad or not model_councils or len(set(model_councils)) != len(model_councils):
        p.error(f"--model-councils: {bad or 'none or repeated'}: each one of {COUNCIL_IMPLS}")
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, d_model {D_MODEL}, "
        f"heads {HEADS}, hub {HUB}, malloc {malloc}"
    )
    check_correctness()
    out: dict = {"threads": torch.get_num_threads(), "hub": HUB, "malloc": malloc}
    if args.part in ("all", "layer"):
        out["layer"] = run_layers(seqs, args.repeats, args.rope, councils)
    if args.part in ("all", "layer", "memory"):
        out["memory"] = run_memory(seqs, councils, args.malloc)
    if args.part in ("all", "model"):
        model_seqs = [int(s) for s in args.model_seqs.split(",")]
        out["model"] = run_models(model_seqs, args.model_repeats, model_councils)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
