"""The built-in mixers offer the one interface of hubbench/mixers/base.py, states included."""

from __future__ import annotations

import pytest
import torch

from hubbench.mixers.attention import Attention
from hubbench.mixers.base import DecodeState, DecodingMixer, Mixer
from hubbench.mixers.gdn import GatedDeltaNet
from hubbench.mixers.hubrouter import HubRouter
from hubbench.mixers.mamba import Mamba
from hubbench.mixers.mamba2 import Mamba2
from hubbench.mixers.moba import MoBA
from hubbench.mixers.nsa import NSA
from hubbench.mixers.oryx import Oryx
from hubbench.mixers.swa import SlidingWindow

BUILT_IN = {
    "attention": lambda: Attention(16, 2),
    "hubrouter": lambda: HubRouter(16, 2, hubs=2, topk=2, chunk=4),
    "mamba": lambda: Mamba(16),
    "mamba2": lambda: Mamba2(16, d_state=4, headdim=8, chunk=4),
    "gdn": lambda: GatedDeltaNet(16, 2, chunk=4),
    "oryx-gdn": lambda: Oryx(16, 2, base="gdn", attn_fraction=0.5, chunk=4),
    "oryx-mamba2": lambda: Oryx(16, 2, base="mamba2", attn_fraction=0.5, chunk=4, d_state=4),
    "swa": lambda: SlidingWindow(16, 2, window=4),
    "moba": lambda: MoBA(16, 2, block=2, top_blocks=1),
    "nsa": lambda: NSA(16, 2, cmp_block=2, cmp_stride=1, block=2, top_blocks=1, window=2),
}


@pytest.mark.parametrize("name", BUILT_IN)
def test_built_in_mixers_are_decoding_mixers(name: str) -> None:
    mixer = BUILT_IN[name]()
    assert isinstance(mixer, Mixer) and isinstance(mixer, DecodingMixer)
    x = torch.randn(2, 6, 16)
    y, state = mixer.prefill(x, 8)
    assert y.shape == x.shape and isinstance(state, DecodeState)
    assert isinstance(mixer.empty_state(2, 8, x), DecodeState)
    assert mixer.step(x[:, :1], state).shape == (2, 1, 16)
    assert mixer.last_backend is not None and mixer.causal is True
    assert mixer.analytic_flops(6) > 0 and mixer.decode_flops(6) > 0


def test_a_module_without_the_decode_methods_is_a_mixer_only() -> None:
    class Mean(torch.nn.Module):
        causal, last_backend = True, None

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.cumsum(1)

        def analytic_flops(self, seq: int) -> float:
            return float(seq)

    assert isinstance(Mean(), Mixer) and not isinstance(Mean(), DecodingMixer)
