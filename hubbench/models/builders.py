"""Variant + config -> model: the factories of each mixer and each variant's layer layout.

What each variant is (its config, family, baseline) lives in hubbench.plan.variants; here is
only how to build it. Positions: rotary embeddings inside attention for `transformer` (no learned
table, so any n runs); `hub-gpt` rotates HubRouter's council queries and keys by their true
positions. `jamba` and `hub-jamba` use no explicit positions, as in Jamba: the Mamba layers
carry order. Mamba and HubRouter are imported when a model needs them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from hubbench.mixers.attention import Attention
from hubbench.mixers.plugin import PluginMixer
from hubbench.models.blocks import MLP, Block, MoE
from hubbench.models.lm import LanguageModel
from hubbench.plan.variants import (
    BaseConfig,
    HubFields,
    JambaConfig,
    PluginFields,
    TransformerConfig,
    get_spec,
    jamba_attention_layers,
    make_config,
    replaced_layers,
)


def _attention(config: BaseConfig, rope: bool) -> Attention:
    return Attention(
        config.d_model,
        config.n_heads,
        causal=True,
        backend=config.attention,
        sdpa_kernel=config.sdpa_kernel,
        rope=rope,
    )


def _mamba(config: JambaConfig) -> nn.Module:
    from hubbench.mixers.mamba import Mamba

    return Mamba(
        config.d_model,
        d_state=config.d_state,
        d_conv=config.d_conv,
        expand=config.expand,
        impl=config.mamba_impl,
    )


def _hubrouter(config: BaseConfig, rope: bool) -> nn.Module:
    from hubbench.mixers.hubrouter import HubRouter

    assert isinstance(config, HubFields)
    return HubRouter(
        config.d_model,
        config.n_heads,
        hubs=config.hubs,
        topk=config.topk,
        neighbours=config.neighbours,
        chunk=config.chunk,
        causal=config.causal,
        ortho_weight=config.ortho,
        rope=rope,
    )


def _plugin(config: BaseConfig) -> PluginMixer:
    assert isinstance(config, PluginFields)
    return PluginMixer(
        config.mixer, config.mixer_options, config.d_model, config.n_heads, config.mixer_digest
    )


def _mlp_for(config: BaseConfig, layer: int) -> nn.Module | None:
    if config.mlp_ratio == 0:
        return None
    if isinstance(config, JambaConfig) and config.moe and layer % 2 == 1:
        return MoE(config.d_model, config.mlp_ratio, config.n_experts, config.moe_topk)
    return MLP(config.d_model, config.mlp_ratio)


def _build_gpt(variant: str, config: TransformerConfig) -> LanguageModel:
    hub = (
        replaced_layers(config.n_layers, config.replace) if isinstance(config, HubFields) else set()
    )
    blocks = []
    for i in range(config.n_layers):
        if isinstance(config, PluginFields):
            blocks.append(Block("mixer", _plugin(config), _mlp_for(config, i), config.d_model))
        elif i in hub:
            blocks.append(
                Block(
                    "hubrouter", _hubrouter(config, rope=True), _mlp_for(config, i), config.d_model
                )
            )
        else:
            blocks.append(
                Block(
                    "attention", _attention(config, rope=True), _mlp_for(config, i), config.d_model
                )
            )
    return LanguageModel(variant, config, blocks)


def _build_jamba(variant: str, config: JambaConfig) -> LanguageModel:
    attention = jamba_attention_layers(config.n_layers)
    blocks = []
    for i in range(config.n_layers):
        if i not in attention:
            kind, mixer = "mamba", _mamba(config)
        elif isinstance(config, PluginFields):
            kind, mixer = "mixer", _plugin(config)
        elif isinstance(config, HubFields):
            kind, mixer = "hubrouter", _hubrouter(config, rope=False)
        else:
            kind, mixer = "attention", _attention(config, rope=False)
        blocks.append(Block(kind, mixer, _mlp_for(config, i), config.d_model))
    return LanguageModel(variant, config, blocks)


# variant -> the function that builds it; what each variant is lives in hubbench.plan.variants
BUILDERS: dict[str, Callable[[str, BaseConfig], LanguageModel]] = {
    "transformer": _build_gpt,
    "jamba": _build_jamba,
    "hub-jamba": _build_jamba,
    "hub-gpt": _build_gpt,
    "mixer-gpt": _build_gpt,
    "mixer-jamba": _build_jamba,
}


def build(variant: str, config: BaseConfig) -> LanguageModel:
    """The worker's builder: `variant` from its validated config, on CPU, fp32, seeded."""
    get_spec(variant)  # an unknown name lists the valid ones
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return BUILDERS[variant](variant, config)


def build_model(variant: str, **fields: object) -> LanguageModel:
    """Validate config fields (typed values or CLI strings) and build: for scripts and tests."""
    return build(variant, make_config(variant, **fields))
