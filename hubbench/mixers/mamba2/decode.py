"""Mamba-2's recurrent decoding: the state one layer carries from token to token, and the
methods (`empty_state`, `prefill`, `step`) that Mamba2 takes from `Mamba2Decoding`."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from hubbench.errors import ConfigError
from hubbench.mixers.mamba2.ssd import ssd_step
from hubbench.mixers.state import check_step_input, compute_dtype


@dataclass
class Mamba2State:
    """The recurrent state of one Mamba-2 layer, as mamba-ssm's `step` keeps it.

    conv: the last d_conv - 1 inputs of the depthwise conv over (x, B, C),
    (B, conv_dim, d_conv - 1), in the compute dtype; ssm: the SSD state after the last token,
    (B, nheads, headdim, d_state), in >= fp32. Constant in context length.
    """

    conv: Tensor
    ssm: Tensor

    def nbytes(self) -> int:
        return (
            self.conv.numel() * self.conv.element_size()
            + self.ssm.numel() * self.ssm.element_size()
        )

    def snapshot(self) -> tuple[Tensor, Tensor]:
        return self.conv.clone(), self.ssm.clone()

    def restore(self, snap: tuple[Tensor, Tensor]) -> None:
        self.conv.copy_(snap[0])
        self.ssm.copy_(snap[1])


class Mamba2Decoding:
    """The recurrent half of Mamba2 (a mixin: `self` is the block, whose parameters and stages
    these methods use)."""

    def _check_decodable(self, x: Tensor) -> None:
        if not self.causal:
            raise ConfigError("mamba2: incremental decoding needs causal=true")
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ConfigError(f"mamba2: input must be (B, n, {self.d_model}), got {tuple(x.shape)}")

    def empty_state(self, batch: int, capacity: int, like: Tensor) -> Mamba2State:
        del capacity  # the state does not grow
        f = torch.promote_types(like.dtype, torch.float32)
        conv = like.new_zeros(batch, self.conv_dim, self.d_conv - 1, dtype=compute_dtype(like))
        ssm = torch.zeros(batch, self.nheads, self.headdim, self.d_state, dtype=f,
                          device=like.device)  # fmt: skip
        return Mamba2State(conv, ssm)

    def prefill(self, x: Tensor, capacity: int = 0) -> tuple[Tensor, Mamba2State]:
        """The forward of a prompt x (B, n, d) and the state after its last token: the forward
        itself, which carries the state from segment to segment (the fused kernel returns its
        final state too)."""
        del capacity
        self._check_decodable(x)
        self._check_device(x)
        y, state = self._forward(x)
        state.conv = state.conv.contiguous()
        return y, state

    def step(self, x: Tensor, state: Mamba2State) -> Tensor:
        """One token per sequence, x (B, 1, d): conv window shift, one SSD update, readout."""
        check_step_input(x, self.d_model, "mamba2")
        self._check_decodable(x)
        z, xBC, dt = self.split_in_proj(self.in_proj(x[:, 0]))  # (B, *) each
        window = torch.cat((state.conv, xBC.unsqueeze(-1)), -1)  # (B, conv_dim, d_conv)
        state.conv.copy_(window[..., 1:])
        xs, Bm, Cm = self.split_xbc(self.conv_silu(window.transpose(1, 2)))
        f = state.ssm.dtype
        step = F.softplus(dt.to(f) + self.dt_bias.to(f))  # (B, H)
        A = -torch.exp(self.A_log.to(f))
        y = ssd_step(state.ssm, xs[:, 0], step, A, Bm[:, 0], Cm[:, 0], self.D)  # (B, H, P)
        self.last_backend = "mamba2:step"
        return self.gate_out(y.to(xs.dtype), z).unsqueeze(1)
