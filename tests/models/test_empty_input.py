"""Issue 33: a (B, 0) input through the plain forward of every variant gives empty (B, 0, V)
logits, as the transformer always did (jamba and the hub and field hybrids raised from Mamba's
convolution or HubRouter's chunking), in eval and train mode, plug-in variants included."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hubbench import models
from hubbench.plan.variants import REGISTRY, is_plugin

TINY = {"d_model": 32, "n_heads": 2, "n_layers": 2, "vocab": 61}
PLUGIN = f"{Path(__file__).parents[1] / 'plugins' / 'mixers.py'}:CausalMean"


def built(variant: str) -> models.LanguageModel:
    extra = {"mixer": PLUGIN} if is_plugin(variant) else {}
    return models.build_model(variant, **TINY, **extra)


@pytest.mark.parametrize("variant", list(REGISTRY))
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_an_empty_sequence_gives_empty_logits(variant: str, train: bool) -> None:
    model = built(variant).train(train)
    logits = model(torch.zeros(3, 0, dtype=torch.long))
    assert logits.shape == (3, 0, 61) and logits.dtype == torch.float32
    # the same model still maps a real sequence, so the empty case is no dead path
    assert model(torch.randint(0, 61, (3, 5))).shape == (3, 5, 61)
