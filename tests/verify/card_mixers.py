"""Plug-in mixers written to hide from `verify causal` (issue 33), and ones that break the check.

Each leaky one is causal on the probes the old `verify causal` ran (eval mode, random inputs,
n = 40) and leaks only outside them; `CausalFp32` is causal but rounds in fp32, which the old
absolute prefix tolerance called a leak.
"""

from __future__ import annotations

import os
import subprocess
import time

import torch
import torch.nn.functional as F
from torch import nn


class _Mean(nn.Module):
    """A causal running mean of a projection: the honest part of every mixer here."""

    def __init__(self, d_model: int, n_heads: int, causal: bool) -> None:
        super().__init__()
        self.proj = nn.Linear(d_model, d_model, bias=False)

    def mean(self, x: torch.Tensor) -> torch.Tensor:
        steps = torch.arange(1, x.shape[1] + 1, dtype=x.dtype).view(1, -1, 1)
        return self.proj(x).cumsum(1) / steps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mean(x)


class LeakPast40(_Mean):
    """Outputs from position 40 on see the next token."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mean(x)
        if x.shape[1] > 41:
            y = torch.cat((y[:, :40], y[:, 40:-1] + x[:, 41:], y[:, -1:]), 1)
        return y


class LeakAt64(_Mean):
    """Every output sees the whole sequence's mean, when n is a multiple of 64."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mean(x)
        return y + x.mean(1, keepdim=True) if x.shape[1] % 64 == 0 else y


class LeakOnRepeats(_Mean):
    """Output t counts the later tokens equal to token t: nothing to see without repeats."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[1]
        same = (x[:, :, None, :] == x[:, None, :, :]).all(-1)  # (B, n, n)
        later = torch.ones(n, n, dtype=torch.bool).triu(1)
        count = (same & later).sum(-1, keepdim=True).to(x.dtype)  # (B, n, 1)
        return self.mean(x) + 0.1 * count


class LeakInTrain(_Mean):
    """BatchNorm over the sequence: running statistics in eval (causal), the batch's own
    statistics in train mode (every position sees the mean of all of them)."""

    def __init__(self, d_model: int, n_heads: int, causal: bool) -> None:
        super().__init__(d_model, n_heads, causal)
        self.norm = nn.BatchNorm1d(d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mean(x) + self.norm(x.transpose(1, 2)).transpose(1, 2)


class CausalFp32(nn.Module):
    """Causal attention computed in fp32 inside: a prefix run rounds differently (the kernel's
    blocks over n change), by about 1e-7 of the output's scale."""

    def __init__(self, d_model: int, n_heads: int, causal: bool) -> None:
        super().__init__()
        self.h = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, n, d = x.shape
        qkv = self.qkv.float()(x.float()).view(B, n, 3, self.h, d // self.h)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, h, n, d_h)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # fp32
        return y.transpose(1, 2).reshape(B, n, d).to(x.dtype)


class NanOut(_Mean):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mean(x) * float("nan")


class Hangs(_Mean):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(3600)
        return x


class ExitsInForward(_Mean):
    """Ends the process with exit code 0: the check must not pass for it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        os._exit(0)


class SpawnsChild(_Mean):
    """Causal, but starts a process that would outlive the check; its pid goes to the file
    named by $CARD_TEST_PIDFILE."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not getattr(self, "started", False):
            self.started = True
            proc = subprocess.Popen(["sleep", "313"])
            with open(os.environ["CARD_TEST_PIDFILE"], "w") as f:
                f.write(str(proc.pid))
        return self.mean(x)
