"""The torch-free variant registry: metadata the reports ask instead of matching names."""

from __future__ import annotations

import dataclasses

import pytest

from hubbench.errors import ConfigError
from hubbench.plan import variants


def test_registry_metadata() -> None:
    assert [s.name for s in sorted(variants.REGISTRY.values(), key=lambda s: s.order)] == [
        "transformer",
        "jamba",
        "hub-gpt",
        "hub-jamba",
        "mamba2-gpt",
        "mamba2-jamba",
        "gdn-gpt",
        "gdn-jamba",
        "swa-gpt",
        "swa-jamba",
        "moba-gpt",
        "moba-jamba",
        "nsa-gpt",
        "nsa-jamba",
        "oryx-gdn",
        "oryx-mamba2",
        "mixer-gpt",
        "mixer-jamba",
    ]
    assert variants.is_plugin("mixer-gpt") and not variants.is_plugin("hub-gpt")
    assert variants.baseline_of("mixer-jamba") == "jamba"
    assert variants.display_name("mixer-jamba", "x/swa.py:Window") == "Window-jamba"
    assert variants.display_name("hub-gpt", "x/swa.py:Window") == "hub-gpt"
    assert variants.is_router("hub-gpt") and not variants.is_router("transformer")
    assert variants.baseline_of("hub-jamba") == "jamba" and variants.baseline_of("jamba") is None
    assert variants.is_baseline("transformer") and not variants.is_baseline("hub-gpt")
    assert variants.display_order("my-mixer") > max(s.order for s in variants.REGISTRY.values())
    assert not variants.is_router("my-mixer") and variants.baseline_of("my-mixer") is None
    for spec in variants.REGISTRY.values():
        assert spec.baseline is None or spec.baseline in variants.REGISTRY


def test_config_errors_name_their_fields() -> None:
    with pytest.raises(ConfigError) as info:
        variants.make_config("transformer", d_model=30, n_heads=4)
    assert info.value.fields == ("d_model", "n_heads")
    with pytest.raises(ConfigError) as info:
        variants.make_config("hub-gpt", hubs=0)
    assert info.value.fields == ("hubs",)
    with pytest.raises(ConfigError) as info:
        variants.make_config("transformer", hubz=1)
    assert info.value.fields == ("hubz",)


def test_config_round_trips_through_a_dict_without_revalidation() -> None:
    config = variants.make_config("hub-jamba", hubs=4, moe=True)
    again = variants.config_from_dict("hub-jamba", variants.config_dict(config))
    assert again == config and type(again) is variants.HubJambaConfig


def test_every_field_has_a_role_and_a_reason() -> None:
    for name, info in variants.all_fields().items():
        assert info.role in variants.ROLES and info.doc, name


def test_shape_fields_are_the_ones_every_variant_has() -> None:
    """A figure holds its shape fields fixed; a field some variant lacks would split figures."""
    shared = {f.name for f in dataclasses.fields(variants.BaseConfig)}
    for name, info in variants.all_fields().items():
        if info.role == "shape":
            assert name in shared, name


def test_hybrid_attention_layers_follow_jambas_rule() -> None:
    assert variants.hybrid_attention_layers(16, 8) == {4, 12}  # Jamba's 1:7
    assert variants.hybrid_attention_layers(4, 2) == {1, 3}
    assert variants.hybrid_attention_layers(4, 1) == {0, 1, 2, 3}
    assert variants.hybrid_attention_layers(4, 0) == set()  # the pure recurrence
    assert variants.hybrid_attention_layers(4, 8) == {2}  # too short for index 4: one, mid-stack
    assert variants.hybrid_attention_layers(2, 16) == {1}


@pytest.mark.parametrize(
    ("variant", "fields", "named"),
    [
        ("mamba2-jamba", {"attn_every": -1}, ("attn_every",)),
        (
            "mamba2-gpt",
            {"d_model": 80, "n_heads": 2, "headdim": 64},
            ("expand", "d_model", "headdim"),
        ),
        ("mamba2-gpt", {"mamba_impl": "cuda"}, ("mamba_impl",)),
        ("gdn-gpt", {"gdn_impl": "triton"}, ("gdn_impl",)),
        ("gdn-jamba", {"chunk": 0}, ("chunk",)),
        ("swa-gpt", {"window": 0}, ("window",)),
        ("moba-jamba", {"top_blocks": -1}, ("top_blocks",)),
        ("nsa-gpt", {"cmp_block": 16, "cmp_stride": 32}, ("cmp_stride", "cmp_block")),
        ("nsa-gpt", {"block": 40, "cmp_stride": 16}, ("block", "cmp_stride")),
        ("oryx-gdn", {"attn_fraction": 1.5}, ("attn_fraction",)),
        ("oryx-gdn", {"policy": "last:3"}, ("policy",)),
        ("oryx-mamba2", {"policy": "first:x"}, ("policy",)),
        ("oryx-gdn", {"policy": "first:\u00b2"}, ("policy",)),  # a digit to isdigit, not int
        ("nsa-gpt", {"top_blocks": 0}, ("top_blocks",)),  # NSA always takes its own block
        ("nsa-gpt", {"cmp_block": 24, "cmp_stride": 16}, ("cmp_block", "cmp_stride")),
        ("oryx-mamba2", {"d_model": 96, "n_heads": 5}, ("d_model", "n_heads")),
    ],
)
def test_field_configs_refuse_impossible_values(variant, fields, named) -> None:
    with pytest.raises(ConfigError) as info:
        variants.make_config(variant, **fields)
    assert info.value.fields == named


def test_field_variants_leave_attention_inert_where_no_attention_layer_is_left() -> None:
    def inert(variant: str, **fields: object) -> set[str]:
        return variants.inert_fields(variants.make_config(variant, **fields))

    for variant in ("mamba2-gpt", "gdn-gpt", "swa-gpt", "moba-jamba", "nsa-jamba"):
        assert {"attention", "sdpa_kernel"} <= inert(variant), variant
    assert "attention" not in inert("mamba2-jamba", attn_every=8)  # one attention layer left
    assert "attention" in inert("gdn-jamba", attn_every=0)  # the pure recurrence
    assert {"n_experts", "moe_topk"} <= inert("swa-jamba")  # jamba's own rules still apply
    assert "n_heads" in inert("mamba2-gpt")  # Mamba-2's heads come from expand and headdim
    assert "n_heads" not in inert("mamba2-jamba", n_layers=4, attn_every=4)  # attention's
    assert {"d_state", "headdim", "chunk"} <= inert("mamba2-jamba", attn_every=1)  # all attention
    assert {"expand_v", "chunk"} <= inert("gdn-jamba", attn_every=1)
    assert "attn_fraction" in inert("oryx-gdn", policy="first:2")
    assert "attn_fraction" not in inert("oryx-mamba2")
