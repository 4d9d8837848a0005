"""A plug-in mixer that misbehaves as $HUBBENCH_HOSTILE says (issue 33, item 3): it exits with
code 0, hangs or crashes at import or in its forward, or raises there. Causal otherwise (a
running mean), so a command that survives it has something to check."""

from __future__ import annotations

import os
import signal
import time

import torch
from torch import nn

HOW = os.environ.get("HUBBENCH_HOSTILE", "")

if HOW == "exit-at-import":
    os._exit(0)
if HOW == "hang-at-import":
    time.sleep(3600)


def _misbehave() -> None:
    if HOW == "exit-in-forward":
        os._exit(0)
    if HOW == "hang-in-forward":
        time.sleep(3600)
    if HOW == "crash-in-forward":
        os.kill(os.getpid(), signal.SIGSEGV)
    if HOW == "raise-in-forward":
        raise ValueError("hostile on purpose")


class Hostile(nn.Module):
    """(B, n, d) -> (B, n, d): the running mean of a projection, with a decode path."""

    def __init__(self, d_model: int, n_heads: int, causal: bool) -> None:
        super().__init__()
        self.proj = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _misbehave()
        steps = torch.arange(1, x.shape[1] + 1, device=x.device, dtype=x.dtype)
        return self.proj(x).cumsum(1) / steps[:, None]

    def empty_state(self, batch: int, capacity: int, like: torch.Tensor) -> dict:
        return {"sum": like.new_zeros(batch, 1, self.proj.out_features), "count": 0}

    def prefill(self, x: torch.Tensor, capacity: int) -> tuple[torch.Tensor, dict]:
        return self(x), {"sum": self.proj(x).sum(1, keepdim=True), "count": x.shape[1]}

    def step(self, x: torch.Tensor, state: dict) -> torch.Tensor:
        _misbehave()
        state["sum"] = state["sum"] + self.proj(x)
        state["count"] += 1
        return state["sum"] / state["count"]
