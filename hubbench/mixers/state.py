"""What the mixers' incremental-inference states share."""

from __future__ import annotations

import torch

from hubbench.errors import ConfigError


def compute_dtype(like: torch.Tensor) -> torch.dtype:
    """The dtype projections produce here: autocast's when it is on, else `like`'s.

    A state allocated in it holds keys and values as the step computes them (a bf16 KV cache
    under bf16 autocast, not an fp32 one that every step would cast again).
    """
    device = like.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else like.dtype


def check_step_input(x: torch.Tensor, d_model: int, who: str) -> None:
    """A decode step takes one token per sequence: (B, 1, d_model)."""
    if x.dim() != 3 or x.shape[1] != 1 or x.shape[2] != d_model:
        raise ConfigError(
            f"{who}: a decode step takes one token per sequence, shape (B, 1, {d_model}); "
            f"got {tuple(x.shape)}"
        )
