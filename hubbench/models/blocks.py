"""The blocks every language model stacks: a pre-norm residual block and the MLPs after a mixer.

Choices (written down because results depend on them):
- Pre-norm residual blocks with RMSNorm: cheaper than LayerNorm (no mean, no bias) and what
  Llama-style and Jamba-style models use.
- MLP: GELU with hidden width `mlp_ratio * d_model` (GPT-2); the MoE MLP routes each token to its
  top-2 of `n_experts` such MLPs, with the Switch-Transformer load-balancing auxiliary loss.
Every stage runs under a `record_function` label (the block's kind, mlp, moe) so profiler traces
and the stage breakdown can attribute time.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import record_function

MOE_AUX_WEIGHT = 0.01  # Switch Transformer's alpha


class MLP(nn.Module):
    def __init__(self, d_model: int, ratio: float) -> None:
        super().__init__()
        hidden = int(ratio * d_model)
        self.up = nn.Linear(d_model, hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with record_function("mlp"):
            return self.down(F.gelu(self.up(x)))


class MoE(nn.Module):
    """Top-k routed mixture of MLP experts with the Switch load-balancing loss as `aux_loss`."""

    def __init__(self, d_model: int, ratio: float, n_experts: int, topk: int) -> None:
        super().__init__()
        self.n_experts, self.topk = n_experts, topk
        self.router = nn.Linear(d_model, n_experts, bias=False)
        self.experts = nn.ModuleList(MLP(d_model, ratio) for _ in range(n_experts))
        self.aux_loss: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with record_function("moe"):
            B, n, d = x.shape
            flat = x.reshape(B * n, d)  # (T, d)
            probs = torch.softmax(self.router(flat).float(), dim=-1)  # (T, E)
            weight, expert = probs.topk(self.topk, dim=-1)  # (T, k)
            weight = (weight / weight.sum(-1, keepdim=True)).to(x.dtype)
            out = torch.zeros_like(flat)
            # A loop over experts (not tokens): each expert runs once on the tokens routed to it.
            for e, mlp in enumerate(self.experts):
                token, slot = (expert == e).nonzero(as_tuple=True)
                if token.numel():
                    out.index_add_(0, token, mlp(flat[token]) * weight[token, slot, None])
            # Switch loss: E * sum_e (fraction of routed slots to e) * (mean router prob of e).
            routed = F.one_hot(expert, self.n_experts).float().sum(1).mean(0) / self.topk  # (E,)
            self.aux_loss = MOE_AUX_WEIGHT * self.n_experts * (routed * probs.mean(0)).sum()
            return out.view(B, n, d)


class Block(nn.Module):
    """Pre-norm residual block: x + mixer(norm(x)), then x + mlp(norm(x)).

    `mlp=None` is a mixer-only block (mlp_ratio 0: Zoology's attention baseline for recall has
    no MLP, and a model that must recall cannot then store the answers in MLP weights).
    """

    def __init__(self, kind: str, mixer: nn.Module, mlp: nn.Module | None, d_model: int) -> None:
        super().__init__()
        self.kind = kind
        self.norm1 = nn.RMSNorm(d_model)
        self.norm2 = nn.RMSNorm(d_model) if mlp is not None else None
        self.mixer, self.mlp = mixer, mlp

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        if self.mlp is None or self.norm2 is None:
            return x
        return x + self.mlp(self.norm2(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with record_function(self.kind):
            x = x + self.mixer(self.norm1(x))
        return self._mlp(x)

    def prefill(self, x: torch.Tensor, capacity: int) -> tuple[torch.Tensor, Any]:
        with record_function(self.kind):
            y, state = self.mixer.prefill(self.norm1(x), capacity)
            x = x + y
        return self._mlp(x), state

    def step(self, x: torch.Tensor, state: Any) -> torch.Tensor:
        with record_function(self.kind):
            x = x + self.mixer.step(self.norm1(x), state)
        return self._mlp(x)
