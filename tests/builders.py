"""Test-only model builders, loaded by the worker by path (`--builder tests/builders.py:build`).

They build a model and, when the test asks through the environment, plant a fault or a slowdown
in its forward pass, so a test can make one chosen cell crash, hang or run slower while the
measured code (hubbench.measure.step, hubbench.measure.cell) carries no test hooks at all.

HUBBENCH_TEST_FAULT: a JSON list of {"fault": F, <conditions>}; a condition is `variant`, `seq`
(the input length, checked at each forward), `build` (the model's build count in this worker,
from 1: a cell's round 2 is its second build), `rank` (the torchrun rank, $RANK; 0 outside
torchrun) or any config field (`seed`, `attention`, ...).
F is crash (os._exit), segv, oom, error, hang, unavailable, interrupt (SIGINT to the runner,
then hang), kill_parent (SIGKILL to the process that started the worker: a submitit job, then
hang), threads (an error that says how many torch threads the worker runs with) or child
(starts `sleep 300` as a plug-in might start a helper process, writes its pid to the item's
`pid_file` and goes on).
HUBBENCH_TEST_SLOWDOWN: a JSON list of {"slowdown": 0.25, <conditions>} that makes
the matching cells' steps that fraction slower. Never set either for real measurements.
"""

from __future__ import annotations

import json
import math
import os
import signal
import statistics
import subprocess
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hubbench.errors import UnavailableError
from hubbench.models import build as build_real

FAULT_ENV = "HUBBENCH_TEST_FAULT"
SLOWDOWN_ENV = "HUBBENCH_TEST_SLOWDOWN"


def faults(*items: dict[str, Any]) -> str:
    """The environment value for HUBBENCH_TEST_FAULT / _SLOWDOWN."""
    return json.dumps(list(items))


class TinyLM(nn.Module):
    """One attention layer with a naive or SDPA kernel: enough surface for the engine."""

    def __init__(self, variant: str, config: Any) -> None:
        super().__init__()
        vocab, d_model = config.vocab, config.d_model
        self.variant, self.config = variant, config
        self.embed = nn.Embedding(vocab, d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.head = nn.Linear(d_model, vocab)
        self.naive = config.attention == "naive"
        self.last: str | None = None

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        h = self.embed(idx)  # (B, n, d)
        q, k, v = (t.unsqueeze(1) for t in self.qkv(h).chunk(3, dim=-1))  # (B, 1, n, d)
        if self.naive:
            n = idx.shape[1]
            scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, 1, n, n)
            mask = torch.ones(n, n, dtype=torch.bool).triu(1)
            y = torch.softmax(scores.masked_fill(mask, float("-inf")), -1) @ v
            self.last = "naive"
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            self.last = "sdpa:test"
        return self.head(h + y.squeeze(1))

    def loss(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self(idx).flatten(0, 1), targets.flatten())

    def backends(self) -> dict[str, str]:
        return {"attention": self.last} if self.last else {}

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_analytic(self, batch: int, seq: int, mode: str) -> float:
        return 1e6 * batch * seq * (1 if mode == "fwd" else 3)


def build_tiny(variant: str, config: Any) -> nn.Module:
    torch.manual_seed(0)
    return plant(TinyLM(variant, config), variant, config)


def build(variant: str, config: Any) -> nn.Module:
    return plant(build_real(variant, config), variant, config)


# ----------------------------------------------------------------------------- planting


BUILDS: dict[str, int] = {}  # builds per variant in this worker process


def _wanted(env: str, variant: str, config: Any) -> list[dict[str, Any]]:
    """The env's items whose conditions (all but `seq`) hold for this model."""
    out = []
    for item in json.loads(os.environ.get(env) or "[]"):
        if "build" in item and item["build"] != BUILDS.get(variant):
            continue
        if "rank" in item and item["rank"] != int(os.environ.get("RANK", "0")):
            continue
        skip = ("fault", "slowdown", "seq", "build", "rank", "pid_file")
        conditions = {k: v for k, v in item.items() if k not in skip}
        if all(
            (variant if k == "variant" else getattr(config, k, None)) == v
            for k, v in conditions.items()
        ):
            out.append(item)
    return out


def plant(model: nn.Module, variant: str, config: Any) -> nn.Module:
    BUILDS[variant] = BUILDS.get(variant, 0) + 1
    planted = _wanted(FAULT_ENV, variant, config)
    slow = _wanted(SLOWDOWN_ENV, variant, config)
    if planted:
        model.register_forward_pre_hook(lambda _m, args: _fail(planted, args[0].shape[1]))
    if slow:
        model.register_forward_pre_hook(Slowdown(float(slow[0]["slowdown"])))
    return model


def _fail(items: list[dict[str, Any]], seq: int) -> None:
    for item in items:
        if item.get("seq", seq) != seq:
            continue
        fault = item["fault"]
        if fault == "child":
            if not os.path.exists(item["pid_file"]):
                child = subprocess.Popen(["sleep", "300"])
                with open(item["pid_file"], "w") as f:
                    f.write(str(child.pid))
            continue
        if fault == "crash":
            os._exit(70)
        if fault == "segv":
            os.kill(os.getpid(), signal.SIGSEGV)
        if fault == "interrupt":  # Ctrl-C as the runner sees it, mid-cell
            os.kill(os.getppid(), signal.SIGINT)
            fault = "hang"
        if fault == "kill_parent":  # the process that started the worker dies (a killed job)
            os.kill(os.getppid(), signal.SIGKILL)
            fault = "hang"
        if fault == "hang":
            while True:
                time.sleep(3600)
        if fault == "oom":
            raise RuntimeError(
                "DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes "
                f"({FAULT_ENV})"
            )
        if fault == "unavailable":
            raise UnavailableError(f"unavailable on purpose ({FAULT_ENV})")
        if fault == "threads":
            raise ValueError(f"threads={torch.get_num_threads()}")
        raise ValueError(f"failing on purpose ({FAULT_ENV}: {fault})")


class Slowdown:
    """A forward pre-hook that makes each step `frac` slower by spinning before it starts.

    It cannot see where a step ends (the backward runs after the forward returns), so it
    measures the period between forward starts: spinning `a = frac / (1 + frac)` of that
    period converges to periods of (1 + frac) x the step's own time. A gap far above the
    typical period (a pause between measurements) is capped at the recent median.
    """

    def __init__(self, frac: float) -> None:
        self.share = frac / (1 + frac)
        self.last: float | None = None
        self.periods: list[float] = []

    def __call__(self, _module: nn.Module, _args: Any) -> None:
        now = time.perf_counter()
        if self.last is not None:
            self.periods.append(now - self.last)
            typical = statistics.median(self.periods[-9:])
            until = now + self.share * min(self.periods[-1], typical)
            while time.perf_counter() < until:
                pass
        self.last = now
