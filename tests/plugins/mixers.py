"""Plug-in mixers for the tests: a causal one, and broken ones that hubbench must catch."""

from __future__ import annotations

import torch
from torch import nn


class CausalMean(nn.Module):
    """Causal running mean of a projection: causal, cheap, with an option and FLOPs."""

    def __init__(self, d_model: int, n_heads: int, causal: bool, *, scale: float = 1.0) -> None:
        super().__init__()
        self.proj = nn.Linear(d_model, d_model, bias=False)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps = torch.arange(1, x.shape[1] + 1, device=x.device, dtype=x.dtype).view(1, -1, 1)
        return self.scale * self.proj(x).cumsum(1) / steps

    def analytic_flops(self, seq: int) -> float:
        return float(2 * seq * self.proj.in_features * self.proj.out_features)

    # decode: the state is a plain dict (hubbench wraps it for bytes and snapshots)
    def empty_state(self, batch: int, capacity: int, like: torch.Tensor) -> dict:
        return {"sum": like.new_zeros(batch, 1, self.proj.out_features), "count": 0}

    def prefill(self, x: torch.Tensor, capacity: int) -> tuple[torch.Tensor, dict]:
        state = {"sum": self.proj(x).sum(1, keepdim=True), "count": x.shape[1]}
        return self(x), state

    def step(self, x: torch.Tensor, state: dict) -> torch.Tensor:
        state["sum"] = state["sum"] + self.proj(x)
        state["count"] += 1
        return self.scale * state["sum"] / state["count"]


class LeakyMean(nn.Module):
    """Claims nothing and leaks: every output sees the mean of the whole sequence."""

    def __init__(self, d_model: int, n_heads: int, causal: bool) -> None:
        super().__init__()
        self.proj = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x) + x.mean(1, keepdim=True)


class WrongShape(nn.Module):
    def __init__(self, d_model: int, n_heads: int, causal: bool) -> None:
        super().__init__()
        self.proj = nn.Linear(d_model, 2 * d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class ReturnsInt64(nn.Module):
    """Rounds its result to integers: an ok row that trained nothing, before it was refused."""

    def __init__(self, d_model: int, n_heads: int, causal: bool) -> None:
        super().__init__()
        self.proj = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).round().long()


class ReturnsFloat64(nn.Module):
    def __init__(self, d_model: int, n_heads: int, causal: bool) -> None:
        super().__init__()
        self.proj = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).double()


class Detached(nn.Module):
    """Computes under no_grad: right shape and dtype, no gradient ever reaches it."""

    def __init__(self, d_model: int, n_heads: int, causal: bool) -> None:
        super().__init__()
        self.proj = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.proj(x)


class Raises(nn.Module):
    def __init__(self, d_model: int, n_heads: int, causal: bool) -> None:
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("this mixer is broken on purpose")


class NoContract(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()


class NotAModule:
    def __init__(self, d_model: int, n_heads: int, causal: bool) -> None:
        pass


class LeakyFlagged(LeakyMean):
    """Leaks, and carries a `causal = False` flag that must not excuse it."""

    def __init__(self, d_model: int, n_heads: int, causal: bool) -> None:
        super().__init__(d_model, n_heads, causal)
        self.causal = False


class FloatDefault(CausalMean):
    def __init__(self, d_model: int, n_heads: int, causal: bool, *, gain: float = 1) -> None:
        super().__init__(d_model, n_heads, causal, scale=gain)
