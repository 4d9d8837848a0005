"""A deliberately leaky HubRouter for the tests (tests/mixers/test_hubrouter.py,
tests/test_causality.py): proof that the causality checks catch a leak gradients cannot see."""

from __future__ import annotations

import torch
from torch import Tensor

from hubbench.mixers.hubrouter import HubRouter


class LeakyGlobalTopK(HubRouter):
    """DELIBERATELY BROKEN: the Mixture-of-Depths mistake, kept to prove the causality checks bite.

    Members are the top-k over the WHOLE sequence (so which past tokens are members depends on
    future scores); the council is masked so a token only sees members before its chunk. Every
    gradient into the future is zero, yet output t changes when inputs after t change. It claims
    `causal = True`, and the perturbation check must catch it.
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs["causal"] = True
        super().__init__(*args, **kwargs)

    def _backend_name(self) -> str:
        return "hubrouter:leaky-global-topk"

    def _members(self, sd: Tensor, n: int, nc: int, C: int) -> tuple[Tensor, Tensor]:
        B = sd.shape[0]
        vals, pos = sd.topk(min(self.topk, n), dim=-1)  # (B, k) over ALL positions: the leak
        starts = torch.arange(nc, device=sd.device).view(1, nc, 1) * C
        pos = pos.unsqueeze(1).expand(B, nc, pos.shape[-1])
        valid = (vals.unsqueeze(1) > float("-inf")) & (pos < starts)  # the masked council
        return pos, valid
