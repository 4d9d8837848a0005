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
    GDNFields,
    HubFields,
    HybridFields,
    JambaConfig,
    Mamba2Fields,
    MoBAFields,
    NSAFields,
    OryxFields,
    OryxMamba2Config,
    PluginFields,
    SWAFields,
    TransformerConfig,
    get_spec,
    hybrid_attention_layers,
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
        council=config.council,
    )


def _field_mixer(config: BaseConfig, rope: bool) -> tuple[str, nn.Module]:
    """The block kind and mixer of a field family (hubbench/mixers/<kind>/, imported on use)."""
    if isinstance(config, Mamba2Fields):
        from hubbench.mixers.mamba2 import Mamba2

        return "mamba2", Mamba2(
            config.d_model,
            d_state=config.d_state,
            headdim=config.headdim,
            expand=config.expand,
            d_conv=config.d_conv,
            chunk=config.chunk,
            impl=config.mamba_impl,
            causal=config.causal,
        )
    if isinstance(config, GDNFields):
        from hubbench.mixers.gdn import GatedDeltaNet

        return "gdn", GatedDeltaNet(
            config.d_model,
            config.n_heads,
            chunk=config.chunk,
            d_conv=config.d_conv,
            expand_v=config.expand_v,
            impl=config.gdn_impl,
            causal=config.causal,
        )
    if isinstance(config, SWAFields):
        from hubbench.mixers.swa import SlidingWindow

        return "swa", SlidingWindow(
            config.d_model, config.n_heads, window=config.window, rope=rope, causal=config.causal
        )
    if isinstance(config, MoBAFields):
        from hubbench.mixers.moba import MoBA

        return "moba", MoBA(
            config.d_model,
            config.n_heads,
            block=config.block,
            top_blocks=config.top_blocks,
            rope=rope,
            causal=config.causal,
        )
    if isinstance(config, NSAFields):
        from hubbench.mixers.nsa import NSA

        return "nsa", NSA(
            config.d_model,
            config.n_heads,
            cmp_block=config.cmp_block,
            cmp_stride=config.cmp_stride,
            block=config.block,
            top_blocks=config.top_blocks,
            window=config.window,
            rope=rope,
            causal=config.causal,
        )
    if isinstance(config, OryxFields):
        from hubbench.mixers.oryx import Oryx

        base = "mamba2" if isinstance(config, OryxMamba2Config) else "gdn"
        options = (
            {"d_state": config.d_state, "expand": config.expand, "impl": config.mamba_impl}
            if isinstance(config, OryxMamba2Config)
            else {"expand_v": config.expand_v, "impl": config.gdn_impl}
        )
        return "oryx", Oryx(
            config.d_model,
            config.n_heads,
            base=base,
            attn_fraction=config.attn_fraction,
            policy=config.policy,
            chunk=config.chunk,
            causal=config.causal,
            d_conv=config.d_conv,
            **options,
        )
    raise TypeError(f"{type(config).__name__} is not a field family's config")


def _build_field_gpt(variant: str, config: BaseConfig) -> LanguageModel:
    """A field family's mixer in every layer; a recurrence hybrid (`attn_every`) puts attention
    without positions (the recurrence carries order, as in Jamba) at its hybrid layers. The
    sparse attentions rotate their queries and keys (rotary positions, as the transformer)."""
    every = config.attn_every if isinstance(config, HybridFields) else 0
    attention = hybrid_attention_layers(config.n_layers, every)
    blocks = []
    for i in range(config.n_layers):
        if i in attention:
            kind, mixer = "attention", _attention(config, rope=False)
        else:
            kind, mixer = _field_mixer(config, rope=True)
        blocks.append(Block(kind, mixer, _mlp_for(config, i), config.d_model))
    return LanguageModel(variant, config, blocks)


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
        elif isinstance(config, SWAFields | MoBAFields | NSAFields):
            kind, mixer = _field_mixer(config, rope=False)
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
    "mamba2-gpt": _build_field_gpt,
    "mamba2-jamba": _build_field_gpt,
    "gdn-gpt": _build_field_gpt,
    "gdn-jamba": _build_field_gpt,
    "swa-gpt": _build_field_gpt,
    "swa-jamba": _build_jamba,
    "moba-gpt": _build_field_gpt,
    "moba-jamba": _build_jamba,
    "nsa-gpt": _build_field_gpt,
    "nsa-jamba": _build_jamba,
    "oryx-gdn": _build_field_gpt,
    "oryx-mamba2": _build_field_gpt,
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
