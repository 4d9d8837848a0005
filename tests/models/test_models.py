import pytest
import torch

from hubbench import models
from hubbench.errors import ConfigError
from hubbench.plan import variants

TINY = {"d_model": 32, "n_heads": 2, "n_layers": 2, "vocab": 61}
HUB = {"hubs": 4, "topk": 4, "chunk": 8}
VARIANTS = {
    "transformer": {},
    "jamba": {"moe": True, "n_experts": 4},
    "hub-jamba": HUB,
    "hub-gpt": HUB,
}


def _model(variant: str, **extra: object) -> models.LanguageModel:
    return models.build_model(variant, **{**TINY, **VARIANTS[variant], **extra})


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_shapes_and_loss(variant: str) -> None:
    model = _model(variant)
    idx = torch.randint(0, 61, (2, 19))
    logits = model(idx)
    assert logits.shape == (2, 19, 61) and logits.dtype == torch.float32
    loss = model.loss(idx, idx)
    assert loss.ndim == 0 and torch.isfinite(loss)
    # an untrained model is near-uniform: well below twice the uniform cross entropy ln(V)
    assert 0 < loss.item() < 2 * torch.log(torch.tensor(61.0)).item()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_gradients_reach_every_parameter(variant: str) -> None:
    extra = {"ortho": 0.1} if variant.startswith("hub") else {}
    model = _model(variant, **extra)
    idx = torch.randint(0, 61, (2, 40))
    model.loss(idx, idx).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing, f"no gradient reached: {missing}"


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_autocast_dtypes_run(variant: str, dtype: str) -> None:
    model = _model(variant, dtype=dtype)
    idx = torch.randint(0, 61, (1, 24))
    with torch.autocast("cpu", dtype=models_dtype(dtype)):
        loss = model.loss(idx, idx)
    assert torch.isfinite(loss)
    loss.backward()


def models_dtype(name: str) -> torch.dtype:
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[name]


def test_layer_layouts() -> None:
    assert variants.jamba_attention_layers(8) == {4}
    assert variants.jamba_attention_layers(16) == {4, 12}
    # Jamba's i % 8 == 4 at every depth, partial groups included
    assert variants.jamba_attention_layers(13) == {4, 12}
    assert variants.jamba_attention_layers(5) == {4}
    assert variants.jamba_attention_layers(7) == {4}
    assert variants.jamba_attention_layers(20) == {4, 12}
    # the short-stack rule: no index satisfies it, one attention layer in the middle
    assert variants.jamba_attention_layers(4) == {2}
    assert variants.jamba_attention_layers(1) == {0}
    jamba = models.build_model("jamba", d_model=32, n_heads=2, n_layers=8)
    assert jamba.layer_kinds == ["mamba"] * 4 + ["attention"] + ["mamba"] * 3
    hub_jamba = models.build_model("hub-jamba", d_model=32, n_heads=2, n_layers=8)
    assert hub_jamba.layer_kinds == ["mamba"] * 4 + ["hubrouter"] + ["mamba"] * 3
    gpt = models.build_model("hub-gpt", d_model=32, n_heads=2, n_layers=4, replace=0.25)
    assert gpt.layer_kinds == ["attention", "attention", "hubrouter", "attention"]
    gpt = models.build_model("hub-gpt", d_model=32, n_heads=2, n_layers=4, replace=0.5)
    assert gpt.layer_kinds == ["attention", "hubrouter", "attention", "hubrouter"]
    gpt = models.build_model("hub-gpt", d_model=32, n_heads=2, n_layers=4, replace=0.0)
    assert gpt.layer_kinds == ["attention"] * 4


@pytest.mark.parametrize(
    ("n_layers", "replace", "count"),
    [(2, 0.25, 1), (4, 0.125, 1), (4, 0.375, 2), (4, 0.625, 3), (8, 0.0625, 1), (3, 0.5, 2),
     (4, 0.0, 0), (4, 1.0, 4), (1, 0.01, 1)],
)  # fmt: skip
def test_replace_rounds_half_up_and_never_to_zero(n_layers: int, replace: float, count: int):
    """Half-to-even made 0.25 of 2 layers and 0.125 of 4 zero HubRouter layers, silently."""
    from hubbench.plan import variants

    assert variants.replaced_count(n_layers, replace) == count
    assert len(variants.replaced_layers(n_layers, replace)) == count


def test_moe_every_other_layer_with_aux_loss() -> None:
    model = models.build_model("jamba", d_model=32, n_heads=2, n_layers=4, moe=True, n_experts=4)
    kinds = [type(b.mlp).__name__ for b in model.blocks]
    assert kinds == ["MLP", "MoE", "MLP", "MoE"]
    idx = torch.randint(0, 256, (2, 16))
    model(idx)
    aux = [b.mlp.aux_loss for b in model.blocks if isinstance(b.mlp, models.MoE)]
    # perfectly balanced routing gives exactly the weight; any imbalance more
    assert all(a.item() >= models.MOE_AUX_WEIGHT * 0.99 for a in aux)


def test_backends_report_what_ran() -> None:
    model = models.build_model("transformer", d_model=32, n_heads=2, n_layers=2, attention="naive")
    model(torch.randint(0, 256, (1, 8)))
    assert model.backends() == {"attention": "naive"}
    jamba = models.build_model("jamba", d_model=32, n_heads=2, n_layers=2)
    jamba(torch.randint(0, 256, (1, 8)))
    assert jamba.backends()["mamba"] == "mamba:ref"
    assert jamba.backends()["attention"].startswith("sdpa:")


def test_same_seed_same_parameters_different_seed_different() -> None:
    a, b = _model("transformer", seed=3), _model("transformer", seed=3)
    c = _model("transformer", seed=4)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters(), strict=True))


def test_analytic_flops_are_causal_aware_and_scale() -> None:
    model = _model("transformer")
    f1, f2 = model.flops_analytic(1, 1024, "fwd"), model.flops_analytic(1, 2048, "fwd")
    assert 2.0 < f2 / f1 < 4.0  # linear part doubles, attention part quadruples
    assert model.flops_analytic(2, 1024, "train") == pytest.approx(6 * f1)


def test_inert_fields() -> None:
    assert {"attention", "sdpa_kernel"} <= variants.inert_fields(variants.make_config("hub-jamba"))
    assert "attention" not in variants.inert_fields(variants.make_config("hub-gpt", replace=0.25))
    assert "hubs" in variants.inert_fields(variants.make_config("hub-gpt", replace=0.0))
    assert "sdpa_kernel" in variants.inert_fields(
        variants.make_config("transformer", attention="naive")
    )


@pytest.mark.parametrize(
    ("variant", "fields", "match"),
    [
        ("gpt", {}, "unknown variant 'gpt'; valid: transformer, jamba, hub-gpt, hub-jamba"),
        ("transformer", {"d_model": 30, "n_heads": 4}, "not divisible"),
        ("transformer", {"hubs": 8}, "unknown config field.*hubs.*valid:"),
        ("transformer", {"attention": "fast"}, "attention='fast' is not valid"),
        ("transformer", {"dtype": "fp8"}, "dtype"),
        ("transformer", {"n_layers": 0}, "n_layers must be >= 1"),
        ("transformer", {"d_model": "big"}, "field d_model: 'big' is not a valid int"),
        ("transformer", {"mlp_ratio": float("nan")}, "mlp_ratio: expected a finite number"),
        ("transformer", {"d_model": 12, "n_heads": 4}, "rotary positions need an even head"),
        ("transformer", {"n_layers": 2**64}, "out of range"),
        ("jamba", {"mamba_impl": "cuda"}, "mamba_impl"),
        ("jamba", {"moe": True, "n_experts": 2, "moe_topk": 3}, "moe_topk=3 exceeds"),
        ("hub-gpt", {"hubs": 0}, "hubs must be >= 1"),
        ("hub-gpt", {"topk": 0}, "topk must be >= 1"),
        ("hub-gpt", {"chunk": 0}, "chunk must be >= 1"),
        ("hub-gpt", {"replace": 1.5}, r"replace must lie in \[0, 1\]"),
        ("hub-gpt", {"replace": -0.1}, r"replace must lie in \[0, 1\]"),
        ("hub-jamba", {"neighbours": -1}, "neighbours must be >= 0"),
    ],
)
def test_bad_configs_raise_one_clear_error(variant: str, fields: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        models.build_model(variant, **fields)


def test_config_values_from_text_are_coerced() -> None:
    config = variants.make_config("hub-gpt", d_model="64", replace=1, causal="false")
    assert (config.d_model, config.replace, config.causal) == (64, 1.0, False)
