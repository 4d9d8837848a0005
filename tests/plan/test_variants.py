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
    assert variants.display_order("my-mixer") == len(variants.REGISTRY)  # unknown ones last
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
