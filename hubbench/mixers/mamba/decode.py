"""Mamba's recurrent decoding: the state one layer carries from token to token, and the methods
(`empty_state`, `prefill`, `step`, `decode_flops`) that Mamba takes from `MambaDecoding`."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from hubbench.mixers.mamba import scan
from hubbench.mixers.state import check_step_input, compute_dtype


@dataclass
class MambaState:
    """The recurrent state of one Mamba layer, as mamba-ssm's `step` keeps it.

    conv: the last d_conv - 1 inputs of the depthwise conv, (B, D_inner, d_conv - 1);
    ssm: h after the last token, (B, D_inner, N), in >= fp32. Constant in context length.
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


class MambaDecoding:
    """The recurrent half of Mamba (a mixin: `self` is the Mamba block, whose parameters,
    options, `_conv_silu` and `analytic_flops` these methods use)."""

    def empty_state(self, batch: int, capacity: int, like: Tensor) -> MambaState:
        del capacity  # the state does not grow
        f = torch.promote_types(like.dtype, torch.float32)
        conv = like.new_zeros(batch, self.d_inner, self.d_conv - 1, dtype=compute_dtype(like))
        return MambaState(conv, torch.zeros(batch, self.d_inner, self.d_state, dtype=f,
                                            device=like.device))  # fmt: skip

    def prefill(self, x: Tensor, capacity: int = 0) -> tuple[Tensor, MambaState]:
        """The forward of a prompt x (B, L, d) through the chunked scan, and the state after it.

        Prefill always runs the chunked scan (mamba-ssm's fused prefill is not wired here), so
        on CUDA with impl 'fused' the prefill time is the ref scan's; the row records it.
        """
        del capacity
        L = x.shape[1]
        if L == 0:  # an empty prompt leaves the empty state (the conv refuses a zero length)
            empty = self.out_proj(x.new_zeros(x.shape[0], 0, self.d_inner))
            return empty, self.empty_state(x.shape[0], 0, x)
        xs, z = self.in_proj(x).chunk(2, dim=-1)  # (B, L, D_inner) each
        conv_in = xs.transpose(1, 2)  # (B, D_inner, L)
        keep = self.d_conv - 1
        # the conv window's last d_conv - 1 inputs, zeros before the first token
        tail = F.pad(conv_in, (keep, 0))[..., L:]  # (B, D_inner, keep)
        xs = self._conv_silu(conv_in).transpose(1, 2)
        dt, Bm, Cm = self.x_proj(xs).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight)
        A = -torch.exp(self.A_log.to(torch.promote_types(self.A_log.dtype, torch.float32)))
        y, last = scan.selective_scan_bld(
            xs, dt, A, Bm, Cm, self.D, z, self.dt_proj.bias, delta_softplus=True,
            return_last_state=True,
        )  # fmt: skip
        self.last_backend = "mamba:ref"
        return self.out_proj(y), MambaState(tail.contiguous(), last)

    def step(self, x: Tensor, state: MambaState) -> Tensor:
        """One token per sequence, x (B, 1, d): conv window shift, one SSM update, readout."""
        check_step_input(x, self.d_model, "mamba")
        f = state.ssm.dtype
        xs, z = self.in_proj(x[:, 0]).chunk(2, dim=-1)  # (B, D_inner) each
        window = torch.cat((state.conv, xs.unsqueeze(-1)), -1)  # (B, D_inner, d_conv)
        state.conv.copy_(window[..., 1:])
        w = self.conv1d.weight.squeeze(1)  # (D_inner, d_conv)
        xc = F.silu((window * w).sum(-1) + self.conv1d.bias)  # (B, D_inner)
        dt, Bm, Cm = self.x_proj(xc).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.softplus(F.linear(dt, self.dt_proj.weight).to(f) + self.dt_proj.bias.to(f))
        A = -torch.exp(self.A_log.to(f))  # (D_inner, N)
        u = xc.to(f)
        state.ssm.mul_(torch.exp(dt.unsqueeze(-1) * A)).add_(
            (dt * u).unsqueeze(-1) * Bm.to(f).unsqueeze(1)
        )
        y = (state.ssm * Cm.to(f).unsqueeze(1)).sum(-1) + u * self.D.to(f)
        y = y * F.silu(z.to(f))
        self.last_backend = "mamba:step"
        return self.out_proj(y.to(x.dtype)).unsqueeze(1)

    def decode_flops(self, context: int) -> float:
        """Forward FLOPs of one decoded token: the same per-token work as the scan's."""
        del context
        return self.analytic_flops(1)
