"""Every causal registry variant passes the three causality checks (plus batch independence) at
tiny sizes; a deliberately non-causal attention, and hub variants with causal=false, fail them."""

from __future__ import annotations

from pathlib import Path

import pytest

from hubbench import models
from hubbench.plan import variants
from hubbench.verify.causality import check_model

TINY = {"d_model": 16, "n_layers": 2, "n_heads": 2, "mlp_ratio": 2.0}
HUB = {"hubs": 3, "topk": 3, "neighbours": 2, "chunk": 6}  # r=2 crosses chunk ends
# the field's mixers small enough that n = 20 crosses their windows, blocks and chunks
FIELD = {"window": 5, "block": 4, "top_blocks": 1, "cmp_block": 4, "cmp_stride": 2,
         "d_state": 4, "headdim": 8, "attn_every": 2, "attn_fraction": 0.5}  # fmt: skip
MIXER_KINDS = {"attention", "hubrouter", "mixer", "mamba2", "gdn", "swa", "moba", "nsa", "oryx"}
LEAK_CHECKS = ("jacobian", "perturbation", "prefix")


def tiny(variant: str, **extra: object) -> models.LanguageModel:
    small = {**TINY, **HUB, **FIELD}
    fields = {k: v for k, v in small.items() if k in variants.config_fields(variant)}
    return models.build_model(variant, **{**fields, **extra})


EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sliding_window.py"


@pytest.mark.parametrize("variant", sorted(variants.REGISTRY))
def test_causal_variant_passes_all_checks(variant: str) -> None:
    plugin = {"mixer": f"{EXAMPLE}:SlidingWindowAttention", "mixer_options": '{"span": 3}'}
    model = tiny(variant, **(plugin if variants.is_plugin(variant) else {}))
    kinds = set(model.layer_kinds)
    assert kinds & MIXER_KINDS, kinds  # the mixer under test is there
    report = check_model(model, n=20, seeds=(0, 1))
    assert report.passed, f"{variant}: {report.summary()}"
    assert {5, 6, 7, 11, 12, 13} <= set(report.times) or "chunk" not in variants.config_fields(
        variant
    )


def test_jamba_with_moe_is_causal() -> None:
    report = check_model(tiny("hub-jamba", moe=True, n_experts=2), n=14, seeds=(0,))
    assert report.passed, report.summary()


def test_transformer_with_bidirectional_attention_fails() -> None:
    model = tiny("transformer")
    flipped = 0
    for module in model.modules():
        if type(module).__name__ == "Attention":
            module.causal = False
            flipped += 1
    assert flipped == 2
    report = check_model(model, n=12, seeds=(0,), checks=LEAK_CHECKS)
    for name in LEAK_CHECKS:
        assert not report[name].passed, name
    assert report["perturbation"].first_leak == (0, 1)


LEAKY = sorted(v for v in variants.REGISTRY if "causal" in variants.config_fields(v))


@pytest.mark.parametrize("variant", LEAKY)
def test_leak_ablations_fail(variant: str) -> None:
    """causal=false builds each family's deliberately leaky control: the checks must see it."""
    report = check_model(tiny(variant, causal=False), n=16, seeds=(0,), checks=LEAK_CHECKS)
    for name in LEAK_CHECKS:
        assert not report[name].passed, f"{variant}: {name}"
