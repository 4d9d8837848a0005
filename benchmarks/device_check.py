"""On a lent GPU, in one command and under ten minutes: the checks and figures issue 34 asks of
hubbench on a GPU, everything written under one folder.

    bash benchmarks/device_check.sh [--out DIR] [--budget 480] [--only PART,...]
    bash benchmarks/device_check.sh --smoke --out /tmp/dc   # the same parts, tiny, on CPU
    bash benchmarks/device_check.sh --dry-run                # the parts and commands; runs nothing

It installs nothing: it records what is importable (triton, flash-attn, mamba-ssm,
causal-conv1d) and runs hubbench from this source tree (PYTHONPATH), so the device's own
python3 with its CUDA torch will do; `.venv` is not needed there. Each part runs in a child
process under its own time budget (a part that runs out is killed and leaves what it wrote: a
`hubbench run` rewrites its parquet file after every round), and no part starts past the
overall budget (480 s by default: with a machine's start it fits a session's 15 minutes of
device time). A run part that runs out keeps the rounds it finished: round 1 of every cell comes
before round 2 of any. Parts:

  env         the GPU, driver, torch / CUDA / cuDNN, L2 size, optional packages' versions
  causal      hubbench's causality checks (hubbench.verify.causality) with the model on the
              device, hub-gpt and hub-jamba, once per council implementation the model accepts
              (council=flex is H2's FlexAttention council: refused there, it is skipped, saying so)
  council     the council implementations against each other and the loop reference on the
              device, outputs and input gradients, ties included; then H2's CPU tests on the
              device if they take HUBBENCH_TEST_DEVICE (else skipped, saying so)
  throughput  hub-gpt against transformer with cuDNN SDPA at n = 1k, 4k, 16k: the throughput
              suite's CUDA defaults (bf16, batch 8, d_model 1024, 12 layers, fwd_bwd), 2 rounds
  decode      per-token decode after a 4k and a 16k prompt, batch 1, with CUDA graphs and
              without (cuda_graphs=on,off), transformer and hub-gpt
  long        n = 64k at batch 1 (batch 8 does not fit): cuDNN and flash SDPA, and hub-gpt
  jamba       jamba and hub-jamba at 16k (mamba-ssm's kernels if installed, else the reference
              scan: a timeout row then says so)
  aa          A/A: the throughput part's 1k and 4k cells again in a second run; the between-
              round spread (coefficient of variation of the round medians) in each run and the
              between-run ratio of medians, from which the CUDA round defaults are to be set

summary.md and summary.json: each part's status and seconds and the headline figures (the ratio
to cuDNN SDPA and measured over ideal, graphs over eager per token, the A/A spread).
`work/` holds every part's output (parquet files, JSON, logs); where the output folder is the
device tool's $OUT (whose copy-back takes at most 8 files, 2 folders deep) it is packed into
work.tar.gz.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("torch", "triton", "flash-attn", "mamba-ssm", "causal-conv1d", "numpy", "pandas")
MODULES = ("triton", "flash_attn", "mamba_ssm", "causal_conv1d")
HUB_VARIANTS = ("hub-gpt", "hub-jamba")
H2_TESTS_TIMEOUT_S = 150  # the flex tests compile forward and backward per shape on a GPU
DEVICE_ENV = "HUBBENCH_TEST_DEVICE"  # the variable H2's flex tests would take a device from
H2_TESTS = "tests/mixers/test_hubrouter_flex.py"
RESERVE_S = 15.0  # kept back from the budget for the summary and packing
# 8 minutes: with a machine's start (1-2 minutes) inside a session's 15 minutes of device time
DEFAULT_BUDGET_S = 480.0
SMOKE_BUDGET_S = 3600.0  # a cap against a hang: a quiet 2-core box runs every part in ~4 min


@dataclass(frozen=True)
class Part:
    """One part: its budget in seconds on a GPU, and in the smoke run (a cap against a hang: a
    smoke part takes 5-45 s on a quiet 2-core box, ten times that beside two busy processes
    when it runs under nice 19), and how it runs."""

    name: str
    budget_s: float
    smoke_budget_s: float
    kind: str  # "python": a function of this file in a child; "run": `hubbench run` arguments
    doc: str


PARTS: tuple[Part, ...] = (
    Part("env", 20, 600, "python", "versions and what is importable"),
    Part("causal", 60, 600, "python", "causality on the device, per council"),
    Part("council", 45, 600, "python", "council implementations against the loop reference"),
    Part("throughput", 130, 600, "run", "hub-gpt vs cuDNN SDPA, 1k-16k, suite CUDA defaults"),
    Part("decode", 60, 600, "run", "per-token decode, CUDA graphs on and off"),
    Part("long", 60, 600, "run", "64k, batch 1"),
    Part("jamba", 45, 600, "run", "jamba and hub-jamba at 16k"),
    Part("aa", 45, 600, "run", "A/A: the 1k and 4k throughput cells again"),
)
BY_NAME = {p.name: p for p in PARTS}

# tiny CPU versions of the run parts' models: the smoke run exercises the same plumbing
SMOKE_MODEL = ["--device", "cpu", "--threads", "1", "--set", "dtype=fp32", "--set", "d_model=32",
               "--set", "n_layers=1", "--set", "n_heads=2", "--set", "topk=8", "--set", "chunk=16",
               "--set", "hubs=4", "--rounds", "1", "--repeats", "2", "--warmup", "1"]  # fmt: skip


def run_args(part: str, smoke: bool) -> list[str]:
    """The `hubbench run` arguments of a run part (results dir and run-wide options added by
    the caller)."""
    sdpa = ["--set", "attention=sdpa"]
    if smoke:
        seqs = {"throughput": "128,256", "long": "256", "aa": "128,256", "decode": "64,128",
                "jamba": "256"}  # fmt: skip
        base = {
            "throughput": ["throughput", "--variant", "transformer,hub-gpt", *sdpa],
            "long": ["throughput", "--variant", "transformer,hub-gpt", *sdpa, "--batch", "1"],
            "decode": ["decode", "--mode", "decode", "--variant", "transformer,hub-gpt",
                       "--batch", "1", "--decode-tokens", "16", "--set", "cuda_graphs=auto,off"],
            "jamba": ["throughput", "--variant", "jamba,hub-jamba", *sdpa],
            "aa": ["throughput", "--variant", "transformer,hub-gpt", *sdpa],
        }[part]  # fmt: skip
        return [*base, "--seq", seqs[part], *SMOKE_MODEL]
    cudnn = [*sdpa, "--set", "sdpa_kernel=cudnn"]
    return {
        "throughput": ["throughput", "--device", "cuda", "--variant", "transformer,hub-gpt",
                       *cudnn, "--seq", "1024,4096,16384", "--rounds", "2"],
        "long": ["throughput", "--device", "cuda", "--variant", "transformer,hub-gpt", *sdpa,
                 "--set", "sdpa_kernel=cudnn,flash", "--seq", "65536", "--batch", "1",
                 "--rounds", "1", "--repeats", "5", "--timeout", "40"],
        "decode": ["decode", "--device", "cuda", "--mode", "decode", "--variant",
                   "transformer,hub-gpt", "--batch", "1", "--seq", "4096,16384", "--set",
                   "cuda_graphs=on,off", "--rounds", "2"],
        "jamba": ["throughput", "--device", "cuda", "--variant", "jamba,hub-jamba", *cudnn,
                  "--seq", "16384", "--rounds", "1", "--repeats", "5", "--timeout", "25"],
        "aa": ["throughput", "--device", "cuda", "--variant", "transformer,hub-gpt", *cudnn,
               "--seq", "1024,4096", "--rounds", "2"],
    }[part]  # fmt: skip


# -- the orchestrator -------------------------------------------------------------------------


@dataclass
class Outcome:
    name: str
    status: str  # ok | failed | timeout | skipped
    seconds: float
    note: str = ""
    figures: dict[str, Any] = field(default_factory=dict)


def child_env() -> dict[str, str]:
    """hubbench from this source tree, unbuffered output, one OpenMP thread per child."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def part_command(part: Part, work: Path, smoke: bool) -> list[str]:
    if part.kind == "python":
        cmd = [sys.executable, str(Path(__file__).resolve()), "--part", part.name]
        return [*cmd, "--work", str(work), *(["--smoke"] if smoke else [])]
    results = work / part.name
    return [sys.executable, "-m", "hubbench", "run", *run_args(part.name, smoke),
            "--results-dir", str(results)]  # fmt: skip


def run_part(part: Part, work: Path, smoke: bool, limit_s: float) -> Outcome:
    """Run one part in a child process for at most `limit_s` seconds; its output in
    work/<part>.log."""
    out_dir = work / part.name
    out_dir.mkdir(parents=True, exist_ok=True)
    log = work / f"{part.name}.log"
    cmd = part_command(part, work, smoke)
    start = time.monotonic()
    with log.open("w") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=child_env(), stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        try:
            code = proc.wait(timeout=limit_s)
        except subprocess.TimeoutExpired:
            _stop(proc)
            return Outcome(part.name, "timeout", time.monotonic() - start,
                           f"stopped after its {limit_s:.0f} s budget")  # fmt: skip
    seconds = time.monotonic() - start
    if code != 0:
        return Outcome(part.name, "failed", seconds, f"exit {code}: {_tail(log)}")
    return Outcome(part.name, "ok", seconds)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the part's process group (hubbench run saves its rows), then SIGKILL."""
    import signal

    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=wait)
            return
        except (ProcessLookupError, subprocess.TimeoutExpired):
            continue


def _tail(log: Path, lines: int = 3) -> str:
    text = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return " | ".join(text[-lines:])[-400:]


def orchestrate(args: argparse.Namespace) -> int:
    out = Path(args.out).resolve()
    work = out / "work"
    parts = [BY_NAME[name] for name in args.only] if args.only else list(PARTS)
    if args.dry_run:
        for part in parts:
            budget = part.smoke_budget_s if args.smoke else part.budget_s
            print(f"{part.name:<11} {budget:>4.0f} s  {part.doc}")
            print("            " + " ".join(part_command(part, work, args.smoke)))
        total = sum(p.smoke_budget_s if args.smoke else p.budget_s for p in parts)
        print(f"budget: {total:.0f} s of parts, capped at --budget {args.budget:.0f} s")
        return 0
    work.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + args.budget - RESERVE_S
    outcomes = []
    for part in parts:
        left = deadline - time.monotonic()
        budget = part.smoke_budget_s if args.smoke else part.budget_s
        if left < min(budget, 20):
            outcomes.append(Outcome(part.name, "skipped", 0.0, "the overall budget ran out"))
        else:
            outcomes.append(run_part(part, work, args.smoke, min(budget, left)))
        print(f"[device_check] {outcomes[-1].name}: {outcomes[-1].status} "
              f"({outcomes[-1].seconds:.0f} s) {outcomes[-1].note}", flush=True)  # fmt: skip
    summarise(outcomes, work, out, args.smoke)
    if args.pack:
        with tarfile.open(out / "work.tar.gz", "w:gz") as tar:
            tar.add(work, arcname="work")
        shutil.rmtree(work)
    return 0 if all(o.status in ("ok", "skipped") for o in outcomes) else 1


# -- summaries (pandas, from the parts' files) ------------------------------------------------


def _rows(results: Path) -> Any:
    """Every row the part's runs wrote, or None."""
    import pandas as pd

    files = sorted(results.rglob("*.parquet"))
    if not files:
        return None
    return pd.concat([pd.read_parquet(f).assign(run_file=f.name) for f in files])


def _label(r: Any) -> str:
    kernel = r.get("sdpa_kernel")
    extra = f" sdpa:{kernel}" if r["variant"] == "transformer" and isinstance(kernel, str) else ""
    return f"{r['variant']}{extra}"


def throughput_figures(results: Path) -> dict[str, Any]:
    """Per seq and batch: each model's tokens/s, hub-gpt over each transformer, and measured
    over ideal (the ratio over the ratio of analytic FLOPs per step)."""
    rows = _rows(results)
    if rows is None:
        return {"rows": 0}
    out: dict[str, Any] = {"rows": len(rows), "not_ok": _not_ok(rows), "points": []}
    ok = rows[rows["status"] == "ok"]
    for (seq, batch), group in ok.groupby(["seq", "batch"]):
        point: dict[str, Any] = {"seq": int(seq), "batch": int(batch)}
        hub = group[group["variant"] == "hub-gpt"]
        for _, r in group.iterrows():
            point[_label(r)] = round(float(r["tokens_per_s"]), 1)
        for _, t in group[group["variant"] == "transformer"].iterrows():
            if hub.empty:
                continue
            h = hub.iloc[0]
            ratio = float(h["tokens_per_s"] / t["tokens_per_s"])
            point[f"hub-gpt / {_label(t)}"] = round(ratio, 3)
            flops_t, flops_h = t.get("flops_per_step_analytic"), h.get("flops_per_step_analytic")
            if _number(flops_t) and _number(flops_h):
                point[f"measured/ideal vs {_label(t)}"] = round(ratio / (flops_t / flops_h), 3)
        out["points"].append(point)
    return out


def decode_figures(results: Path) -> dict[str, Any]:
    """Per variant and prompt: the per-token time of each cuda_graphs setting with what ran,
    and eager over replayed where one row replayed a graph and another ran eagerly."""
    rows = _rows(results)
    if rows is None:
        return {"rows": 0}
    out: dict[str, Any] = {"rows": len(rows), "not_ok": _not_ok(rows), "points": []}
    ok = rows[rows["status"] == "ok"]
    for (variant, seq), group in ok.groupby(["variant", "seq"]):
        point: dict[str, Any] = {"variant": variant, "seq": int(seq)}
        graphs, eager = [], []
        for _, r in group.iterrows():
            ms = float(r["time_median_s"]) * 1e3
            point[f"cuda_graphs={r['cuda_graphs']}"] = {"ms_per_token": round(ms, 4),
                                                        "ran": r["cuda_graphs_ran"]}  # fmt: skip
            (graphs if r["cuda_graphs_ran"] == "captured" else eager).append(ms)
        if graphs and eager:
            point["eager / graphs"] = round(min(eager) / min(graphs), 3)
        out["points"].append(point)
    return out


def aa_figures(first: Path, second: Path) -> dict[str, Any]:
    """A/A: the cells the two runs share. Per cell: the between-round coefficient of variation
    of the round medians in each run, and the ratio of the two runs' medians."""
    a, b = _rows(first), _rows(second)
    if a is None or b is None:
        return {"cells": 0}
    a, b = a[a["status"] == "ok"], b[b["status"] == "ok"]
    cells = []
    for _, rb in b.iterrows():
        match = a[a["cell_id"] == rb["cell_id"]]
        if match.empty:
            continue
        ra = match.iloc[0]
        cvs = [_round_cv(r["round_samples_s"]) for r in (ra, rb)]
        cells.append({
            "cell": f"{_label(rb)} n={int(rb['seq'])}",
            "round_cv": [None if c is None else round(c, 4) for c in cvs],
            "run_ratio": round(float(rb["time_median_s"] / ra["time_median_s"]), 4),
            "rounds": [len(ra["round_samples_s"]), len(rb["round_samples_s"])],
            "repeats": int(rb["repeats"]),
        })  # fmt: skip
    known = [c for cell in cells for c in cell["round_cv"] if c is not None]
    return {
        "cells": len(cells),
        "per_cell": cells,
        "round_cv_median": round(statistics.median(known), 4) if known else None,
        "round_cv_max": round(max(known), 4) if known else None,
        "run_ratio_max_dev": round(max(abs(c["run_ratio"] - 1) for c in cells), 4)
        if cells
        else None,
    }


def _round_cv(rounds: Any) -> float | None:
    medians = [statistics.median(list(r)) for r in rounds if len(r)]
    if len(medians) < 2:
        return None
    return statistics.stdev(medians) / statistics.mean(medians)


def _not_ok(rows: Any) -> list[str]:
    bad = rows[rows["status"] != "ok"]
    return [f"{_label(r)} n={int(r['seq'])}: {r['status']}: {str(r['message'])[:160]}"
            for _, r in bad.iterrows()]  # fmt: skip


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def summarise(outcomes: list[Outcome], work: Path, out: Path, smoke: bool) -> None:
    """summary.json and summary.md from the outcomes and what the parts wrote."""
    for o in outcomes:
        try:
            o.figures = _figures(o.name, work)
        except Exception as exc:  # a summary must not lose the other parts' figures
            o.figures = {"summary_error": f"{type(exc).__name__}: {exc}"}
    data = {"smoke": smoke, "parts": [o.__dict__ for o in outcomes]}
    (out / "summary.json").write_text(json.dumps(data, indent=1, default=str))
    lines = [f"# device check{' (CPU smoke run)' if smoke else ''}", ""]
    for o in outcomes:
        lines.append(f"## {o.name}: {o.status} ({o.seconds:.0f} s) {o.note}".rstrip())
        lines.append("```")
        lines.append(json.dumps(o.figures, indent=1, default=str))
        lines.append("```")
    (out / "summary.md").write_text("\n".join(lines) + "\n")


def _figures(name: str, work: Path) -> dict[str, Any]:
    if name in ("env", "causal", "council"):
        path = work / name / "result.json"
        return json.loads(path.read_text()) if path.exists() else {}
    if name == "decode":
        return decode_figures(work / name)
    if name == "aa":
        return aa_figures(work / "throughput", work / "aa")
    return throughput_figures(work / name)


# -- the python parts (each in its own child process) -----------------------------------------


def part_env(device: str) -> dict[str, Any]:
    """The machine and what is importable; nothing is installed."""
    import platform

    import torch

    out: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                           "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
                           "cudnn": torch.backends.cudnn.version()}  # fmt: skip
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        out.update(gpu=props.name, sms=props.multi_processor_count,
                   memory_gib=round(props.total_memory / 2**30, 1),
                   l2_mib=round(getattr(props, "L2_cache_size", 0) / 2**20, 1))  # fmt: skip
        smi = shutil.which("nvidia-smi")
        if smi:
            query = [smi, "--query-gpu=driver_version,clocks.max.sm", "--format=csv,noheader"]
            out["nvidia_smi"] = subprocess.run(query, capture_output=True, text=True).stdout.strip()
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    out["versions"] = versions
    out["importable"] = {m: _importable(m) for m in MODULES}
    from hubbench.measure.timing import l2_flush_bytes

    if device == "cuda":
        out["l2_flush_mib"] = l2_flush_bytes(torch.device("cuda")) / 2**20
    return out


def _importable(module: str) -> str:
    try:
        __import__(module)
        return "yes"
    except Exception as exc:  # ImportError, or a CUDA extension built for another torch
        return f"no: {type(exc).__name__}: {str(exc)[:120]}"


def _councils() -> tuple[list[str], str]:
    """The council implementations a hub model config accepts, and how that was found."""
    from hubbench.errors import ConfigError
    from hubbench.plan.variants import make_config

    try:
        make_config("hub-gpt", council="auto")
    except (ConfigError, TypeError) as exc:
        return ["(default)"], f"council is not a config field here: {exc}"
    from hubbench.mixers.hubrouter.config import COUNCIL_IMPLS

    return list(COUNCIL_IMPLS), "config field council"


def part_causal(device: str) -> dict[str, Any]:
    """hubbench's causality checks with each hub variant's model on `device` in fp32 (inputs
    and outputs cross over in float64: the checks' tolerances follow the fp32 rounding)."""
    import torch

    from hubbench.errors import ConfigError
    from hubbench.models import build
    from hubbench.verify.targets import small_config

    councils, how = _councils()
    results: list[dict[str, Any]] = []
    for variant in HUB_VARIANTS:
        for council in councils:
            sets = {} if council == "(default)" else {"council": council}
            label = f"{variant} council={council}"
            try:
                config, _ = small_config(variant, sets)
            except ConfigError as exc:
                results.append({"target": label, "status": "skipped", "why": str(exc)})
                continue
            model = build(variant, config).to(device).eval()
            results.append(_causal_target(model, config, label, device, torch))
            results[-1]["ran"] = model.backends()  # the council that ran, where the row says it
    leaks = [r["target"] for r in results if r["status"] == "leak"]
    return {"councils": how, "targets": results, "leaks": leaks, "passed": not leaks}


def _causal_target(model, config, label, device, torch) -> dict[str, Any]:
    from hubbench.verify.causality import check_causality
    from hubbench.verify.targets import sizes_of

    def f(x):
        return model.forward_embeddings(x.to(device, torch.float32)).to("cpu", torch.float64)

    start = time.perf_counter()
    checks = []
    seeds = (0,)  # one seed per input kind: a compiled council compiles once per length
    for inputs in ("random", "repeated"):
        try:
            report = check_causality(f, config.d_model, 40, batch=2, seeds=seeds,
                                     chunk=sizes_of(config), inputs=inputs, jacobian_seeds=1,
                                     n_proj=1, extra_times=2)  # fmt: skip
        except Exception as exc:
            return {"target": label, "status": "error", "why": f"{type(exc).__name__}: {exc}"}
        checks.append(f"{inputs}: {report.summary()}")
        if report.unusable is not None:
            return {"target": label, "status": "unusable", "checks": checks}
        if not report.passed:
            return {"target": label, "status": "leak", "checks": checks}
    return {"target": label, "status": "pass", "checks": checks,
            "seconds": round(time.perf_counter() - start, 2)}  # fmt: skip


def part_council(device: str, smoke: bool, work: Path) -> dict[str, Any]:
    """Each council implementation of one HubRouter layer on `device` against the loop
    reference (float64 on the CPU, the same weights): outputs and input gradients, on random and
    tied inputs (top-k ties on every chunk), n not a multiple of C. In float64 on the device
    where the implementation runs in it (tolerance 1e-8); one that does not (a Triton kernel)
    runs in fp32 and is compared with the masked council in fp32 on the device, which scores
    and selects exactly as it does (tolerance 1e-4 of the largest value)."""
    import torch

    from hubbench.mixers.hubrouter import HubRouter, hubrouter_ref

    try:
        from hubbench.mixers.hubrouter.config import COUNCIL_IMPLS
    except ImportError:
        COUNCIL_IMPLS = ("auto",)
    torch.manual_seed(0)
    kw = {"d_model": 32, "n_heads": 2, "hubs": 4, "topk": 5, "neighbours": 1, "chunk": 16}
    n, B = (45, 2) if smoke else (301, 2)
    weights = HubRouter(**kw).state_dict()
    rows = []
    for inputs in ("random", "tied"):
        gen = torch.Generator().manual_seed(1)
        if inputs == "random":
            x64 = torch.randn(B, n, kw["d_model"], generator=gen, dtype=torch.float64)
        else:
            palette = torch.randn(3, kw["d_model"], generator=gen, dtype=torch.float64)
            x64 = palette[torch.randint(0, 3, (B, n), generator=gen)]
        ref = _layer(HubRouter, kw, "auto", weights, "cpu", torch.float64)
        want = _out_and_grad(lambda x, ref=ref: hubrouter_ref(ref, x), x64)
        masked32 = None
        for council in COUNCIL_IMPLS:
            row: dict[str, Any] = {"inputs": inputs, "council": council}
            try:
                row.update(_compare(HubRouter, kw, council, weights, device, x64, want))
            except Exception as exc64:  # not in float64 here: fp32 against masked fp32
                try:
                    if masked32 is None:
                        masked = _layer(HubRouter, kw, "masked", weights, device, torch.float32)
                        masked32 = _out_and_grad(masked, x64.to(device, torch.float32))
                    row.update(_compare(HubRouter, kw, council, weights, device, x64, masked32,
                                        dtype=torch.float32))  # fmt: skip
                    row["float64"] = f"{type(exc64).__name__}: {str(exc64)[:120]}"
                except Exception as exc:
                    row["error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
            rows.append(row)
    failed = [r for r in rows if not r.get("ok")]
    result = {"n": n, "layer": kw, "rows": rows, "passed": not failed}
    # the comparisons are on disk before the flex tests start: if the part's budget kills it
    # while they compile, what was measured is kept
    (work / "council").mkdir(parents=True, exist_ok=True)
    (work / "council" / "result.json").write_text(json.dumps(result, indent=1, default=str))
    return {**result, "h2_tests": _h2_tests(device, work)}


def _layer(cls: Any, kw: dict[str, Any], council: str, weights: Any, device: str, dtype: Any):
    layer = cls(**kw, council=council)
    layer.load_state_dict(weights)
    return layer.to(device, dtype)


def _compare(cls, kw, council, weights, device, x64, want, dtype=None) -> dict[str, Any]:
    """One council's output and input gradient against `want` (out, grad), in `dtype` (float64
    unless given) on `device`."""
    import torch

    dtype = dtype or torch.float64
    mixer = _layer(cls, kw, council, weights, device, dtype)
    got = _out_and_grad(mixer, x64.to(device, dtype))
    tol = 1e-8 if dtype == torch.float64 else 1e-4
    out = {"dtype": str(dtype).removeprefix("torch."), "ran": getattr(mixer, "last_backend", None)}
    for name, g, w in zip(("out", "grad"), got, want, strict=True):
        g, w = g.double().cpu(), w.double().cpu()
        out[f"max_abs_{name}"] = float((g - w).abs().max())
        out[f"ok_{name}"] = out[f"max_abs_{name}"] <= tol * max(float(w.abs().max()), 1.0)
    out["ok"] = out.pop("ok_out") and out.pop("ok_grad")
    return out


def _out_and_grad(fn: Callable, x):
    x = x.detach().clone().requires_grad_(True)
    y = fn(x)
    weights = (y.detach() * 0 + 1).cumsum(-1)  # a fixed, non-uniform cotangent
    (y * weights).sum().backward()
    return y.detach(), x.grad.detach()


def _h2_tests(device: str, work: Path) -> dict[str, Any]:
    """H2's FlexAttention council tests with the device, if they take one from DEVICE_ENV."""
    path = ROOT / H2_TESTS
    if not path.exists():
        return {"status": "skipped", "why": f"{H2_TESTS} is not in this tree"}
    if DEVICE_ENV not in path.read_text():
        return {"status": "skipped",
                "why": f"{H2_TESTS} does not read {DEVICE_ENV}: it runs on CPU only"}  # fmt: skip
    env = {**child_env(), DEVICE_ENV: device}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", H2_TESTS]
    try:
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=H2_TESTS_TIMEOUT_S)  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        out = "".join(x.decode() if isinstance(x, bytes) else x or "" for x in (exc.stdout,))
        (work / "council" / "h2_tests.log").write_text(out)
        return {"status": "timed out", "why": f"after {H2_TESTS_TIMEOUT_S} s (compiling?)"}
    (work / "council" / "h2_tests.log").write_text(done.stdout + done.stderr)
    last = (done.stdout.strip().splitlines() or [""])[-1]
    return {"status": "ok" if done.returncode == 0 else "failed", "last_line": last}


def run_python_part(name: str, work: Path, smoke: bool) -> int:
    """A python part in this (child) process: its result in work/<name>/result.json."""
    import torch

    device = "cpu" if smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print(f"{name}: no CUDA device here (use --smoke on a CPU)", file=sys.stderr)
        return 2
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)) if device == "cuda" else 1)
    result = {
        "env": lambda: part_env(device),
        "causal": lambda: part_causal(device),
        "council": lambda: part_council(device, smoke, work),
    }[name]()
    (work / name).mkdir(parents=True, exist_ok=True)
    (work / name / "result.json").write_text(json.dumps(result, indent=1, default=str))
    print(json.dumps(result, default=str)[:2000])
    return 1 if result.get("passed") is False else 0


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    default_out = os.environ.get("OUT") or str(
        ROOT / "results" / "device-check" / time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    )
    p.add_argument("--out", default=default_out, help="output folder (default: $OUT if set)")
    p.add_argument("--budget", type=float,
                   help=f"seconds for every part together (default {DEFAULT_BUDGET_S:.0f}; "
                   f"--smoke: {SMOKE_BUDGET_S:.0f})")  # fmt: skip
    p.add_argument("--only", type=lambda s: s.split(","), help="parts to run (comma list)")
    p.add_argument("--smoke", action="store_true", help="the same parts, tiny, on CPU")
    p.add_argument("--dry-run", action="store_true", help="print the parts; run nothing")
    p.add_argument("--pack", action=argparse.BooleanOptionalAction, default=None,
                   help="pack work/ into work.tar.gz (default: when --out is $OUT)")  # fmt: skip
    p.add_argument("--part", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    unknown = [n for n in args.only or () if n not in BY_NAME]
    if unknown:
        p.error(f"unknown part(s) {', '.join(unknown)}; valid: {', '.join(BY_NAME)}")
    if args.budget is None:
        args.budget = SMOKE_BUDGET_S if args.smoke else DEFAULT_BUDGET_S
    if args.pack is None:
        args.pack = bool(os.environ.get("OUT")) and Path(args.out) == Path(os.environ["OUT"])
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.part:
        return run_python_part(args.part, Path(args.work), args.smoke)
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
