"""The variant registry, torch-free: typed model configs, their validation, what each variant is.

This module is the one owner of a model's configuration. Suites, the CLI, the results schema and
the reports read it; `hubbench.models` builds the modules from it. Nothing here imports torch, so
planning a run, listing variants and drawing figures never pay for it.

Every config field carries metadata: `doc` (why it exists) and `role`, which tells the reports
how a field groups rows: a `shape` field (d_model, dtype ...) is held fixed within one figure, a
`mixer` field (attention backend, hub or Mamba parameters, seed ...) tells the lines of a figure
apart. Shape fields are the ones every variant has (BaseConfig), so every row has a value.
A field that a variant has but that cannot change what it builds is *inert* (`inert_fields`): it
is null in the row and does not multiply a sweep's cells.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hubbench.errors import ConfigError
from hubbench.plan.fields import DTYPES, coerce, parse_text, scalar_type
from hubbench.plan.plugins import decode_options, parse_spec
from hubbench.plan.plugins import display_name as class_name

ATTENTION_BACKENDS = ("naive", "sdpa", "flash")
SDPA_KERNELS = ("auto", "flash", "efficient", "math", "cudnn")
MAMBA_IMPLS = ("ref", "fused")
GDN_IMPLS = ("ref", "fla")
ROLES = ("shape", "mixer")
# config fields that take one of a few names (validate() checks them; suites check rule values)
CHOICES: dict[str, tuple[str, ...]] = {
    "attention": ATTENTION_BACKENDS,
    "sdpa_kernel": SDPA_KERNELS,
    "mamba_impl": MAMBA_IMPLS,
    "gdn_impl": GDN_IMPLS,
    "dtype": DTYPES,
}


def _f(default: Any, doc: str, role: str = "shape") -> Any:
    return field(default=default, metadata={"doc": doc, "role": role})


# Docs of fields that several families share: one field, one column, one meaning (all_fields()
# refuses a name declared twice with different docs).
CAUSAL_DOC = "False only for the leak ablation"
CHUNK_DOC = "chunk length C of the causal chunked form (HubRouter, Mamba-2, Gated DeltaNet)"
D_STATE_DOC = "SSM state size, as mamba-ssm and Jamba"
D_CONV_DOC = "causal depthwise conv width"
EXPAND_DOC = "Mamba inner width = expand * d_model"
WINDOW_DOC = "sliding window w: the keys a query sees, itself included (SWA; NSA's window branch)"
BLOCK_DOC = "key block size (MoBA's blocks; NSA's selection blocks)"
TOP_BLOCKS_DOC = "key blocks each query selects besides its own (MoBA; NSA)"


# ----------------------------------------------------------------------------- configs


@dataclass
class BaseConfig:
    vocab: int = _f(256, "bytes: keeps the LM head from dominating mixer measurements")
    d_model: int = _f(256, "model width")
    n_layers: int = _f(4, "blocks")
    n_heads: int = _f(4, "attention / HubRouter heads")
    mlp_ratio: float = _f(
        4.0, "MLP hidden width = mlp_ratio * d_model; 0: no MLP (Zoology's recall baselines)"
    )
    attention: str = _f("sdpa", "naive | sdpa | flash", "mixer")
    sdpa_kernel: str = _f("auto", "auto | flash | efficient | math | cudnn (sdpa only)", "mixer")
    dtype: str = _f("fp32", "autocast compute dtype; parameters stay fp32")
    seed: int = _f(0, "parameter initialisation", "mixer")

    def validate(self) -> None:
        _positive(self, "vocab", "d_model", "n_layers", "n_heads")
        if self.d_model % self.n_heads:
            raise ConfigError(
                f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}",
                ("d_model", "n_heads"),
            )
        if self.mlp_ratio < 0:
            raise ConfigError(f"mlp_ratio must be >= 0 (got {self.mlp_ratio})", ("mlp_ratio",))
        _choice(self, "attention", ATTENTION_BACKENDS)
        _choice(self, "sdpa_kernel", SDPA_KERNELS)
        _choice(self, "dtype", DTYPES)


@dataclass
class TransformerConfig(BaseConfig):
    def validate(self) -> None:
        super().validate()
        if (self.d_model // self.n_heads) % 2:  # rotary positions rotate pairs of channels
            raise ConfigError(
                f"rotary positions need an even head width d_model/n_heads "
                f"(got {self.d_model}/{self.n_heads} = {self.d_model // self.n_heads})",
                ("d_model", "n_heads"),
            )


@dataclass
class JambaConfig(BaseConfig):
    mamba_impl: str = _f("ref", "ref (PyTorch chunked scan) | fused (mamba-ssm kernels)", "mixer")
    d_state: int = _f(16, D_STATE_DOC, "mixer")
    d_conv: int = _f(4, D_CONV_DOC, "mixer")
    expand: int = _f(2, EXPAND_DOC, "mixer")
    moe: bool = _f(False, "MoE MLP on every other layer (Jamba: e = 2)", "mixer")
    n_experts: int = _f(8, "MoE experts", "mixer")
    moe_topk: int = _f(2, "experts per token", "mixer")

    def validate(self) -> None:
        super().validate()
        _choice(self, "mamba_impl", MAMBA_IMPLS)
        _positive(self, "d_state", "d_conv", "expand", "n_experts", "moe_topk")
        if self.moe and self.moe_topk > self.n_experts:
            raise ConfigError(
                f"moe_topk={self.moe_topk} exceeds n_experts={self.n_experts}",
                ("moe_topk", "n_experts"),
            )


@dataclass
class HubFields:
    hubs: int = _f(8, "M learned hub tokens", "mixer")
    topk: int = _f(64, "council budget k", "mixer")
    neighbours: int = _f(1, "right neighbours r added to each selected token", "mixer")
    chunk: int = _f(64, CHUNK_DOC, "mixer")
    ortho: float = _f(0.0, "weight of the orthogonal hub regulariser", "mixer")
    causal: bool = _f(True, CAUSAL_DOC, "mixer")
    council: str = _f(
        "auto",
        "HubRouter council: auto (flex on CUDA; on CPU packed in fp32/fp64, split in half "
        "precision) | packed | split | masked | flex (docs/hubrouter.md); the one that ran is "
        "in backend_hub",
        "mixer",
    )

    def validate_hub(self) -> None:
        _positive(self, "hubs", "topk", "chunk")
        _choice(self, "council", COUNCILS)
        if self.neighbours < 0:
            raise ConfigError(f"neighbours must be >= 0 (got {self.neighbours})", ("neighbours",))
        if self.ortho < 0:
            raise ConfigError(f"ortho must be >= 0 (got {self.ortho})", ("ortho",))


# hubbench.mixers.hubrouter.COUNCIL_IMPLS, spelled here so planning imports no torch (a test
# holds them equal)
COUNCILS = ("auto", "packed", "split", "masked", "flex")
# config fields added after cells were recorded: left out of a cell's identity (and of what a
# worker is sent) at these values, so older cells keep their ids and an older commit's worker
# (`run --against`) reads the cells
ELIDED_CONFIG_DEFAULTS: dict[str, Any] = {"council": "auto"}


@dataclass
class HubGPTConfig(HubFields, TransformerConfig):
    replace: float = _f(1.0, "fraction of attention layers replaced, evenly spaced", "mixer")

    def validate(self) -> None:
        super().validate()
        self.validate_hub()
        if not 0.0 <= self.replace <= 1.0:
            raise ConfigError(f"replace must lie in [0, 1] (got {self.replace})", ("replace",))


@dataclass
class HubJambaConfig(HubFields, JambaConfig):
    def validate(self) -> None:
        super().validate()
        self.validate_hub()


@dataclass
class PluginFields:
    mixer: str = _f("", "plug-in mixer: FILE.py:Class or package.module:Class", "mixer")
    mixer_options: str = _f("{}", "the plug-in's own options as JSON (from --set)", "mixer")
    mixer_digest: str = _f(
        "", "sha256 of the plug-in's source file (12 hex), set when planned", "mixer"
    )

    def validate_plugin(self) -> None:
        if not self.mixer:
            raise ConfigError("a plug-in variant needs mixer=FILE.py:Class (--mixer)", ("mixer",))
        parse_spec(self.mixer, "mixer")
        decode_options(self.mixer_options)


@dataclass
class PluginGPTConfig(PluginFields, TransformerConfig):
    def validate(self) -> None:
        BaseConfig.validate(self)  # no rotary positions of its own: the plug-in owns positions
        self.validate_plugin()


@dataclass
class PluginJambaConfig(PluginFields, JambaConfig):
    def validate(self) -> None:
        super().validate()
        self.validate_plugin()


# ----------------------------------------------------------------------------- the field's mixers
# Each family: a fields mixin, a GPT-style config (the mixer in every layer, an MLP after each)
# and a Jamba-style one. The recurrences (Mamba-2, Gated DeltaNet) take an attention layer every
# `attn_every` layers (HybridFields: the linear:full ratio axis of 2507.06457); the sparse
# attentions (SWA, MoBA, NSA) take jamba's attention slots, Mamba-1 elsewhere, as hub-jamba does.


@dataclass
class HybridFields:
    attn_every: int = _f(
        8,
        "one attention layer per attn_every layers, at index attn_every // 2 of each period "
        "(8: Jamba's 1:7); 0: none; a stack with no such index gets one at n_layers // 2",
        "mixer",
    )

    def validate_hybrid(self) -> None:
        if self.attn_every < 0:
            raise ConfigError(f"attn_every must be >= 0 (got {self.attn_every})", ("attn_every",))


@dataclass
class Mamba2Fields:
    mamba_impl: str = _f("ref", "ref (PyTorch chunked scan) | fused (mamba-ssm kernels)", "mixer")
    d_state: int = _f(64, D_STATE_DOC, "mixer")
    headdim: int = _f(64, "Mamba-2 head width P: heads = expand * d_model / headdim", "mixer")
    expand: int = _f(2, EXPAND_DOC, "mixer")
    d_conv: int = _f(4, D_CONV_DOC, "mixer")
    chunk: int = _f(64, CHUNK_DOC, "mixer")
    causal: bool = _f(True, CAUSAL_DOC, "mixer")

    def validate_mamba2(self, d_model: int) -> None:
        _choice(self, "mamba_impl", MAMBA_IMPLS)
        _positive(self, "d_state", "headdim", "expand", "d_conv", "chunk")
        if (self.expand * d_model) % self.headdim:
            raise ConfigError(
                f"expand * d_model = {self.expand * d_model} is not divisible by "
                f"headdim={self.headdim}",
                ("expand", "d_model", "headdim"),
            )


@dataclass
class GDNFields:
    gdn_impl: str = _f("ref", "ref (PyTorch chunked WY form) | fla (fla's kernels)", "mixer")
    expand_v: int = _f(1, "Gated DeltaNet value head width = expand_v * d_model / n_heads", "mixer")
    d_conv: int = _f(4, D_CONV_DOC, "mixer")
    chunk: int = _f(64, CHUNK_DOC, "mixer")
    causal: bool = _f(True, CAUSAL_DOC, "mixer")

    def validate_gdn(self) -> None:
        _choice(self, "gdn_impl", GDN_IMPLS)
        _positive(self, "expand_v", "d_conv", "chunk")


@dataclass
class SWAFields:
    window: int = _f(256, WINDOW_DOC, "mixer")
    causal: bool = _f(True, CAUSAL_DOC, "mixer")

    def validate_swa(self) -> None:
        _positive(self, "window")


@dataclass
class MoBAFields:
    block: int = _f(64, BLOCK_DOC, "mixer")
    top_blocks: int = _f(3, TOP_BLOCKS_DOC, "mixer")
    causal: bool = _f(True, CAUSAL_DOC, "mixer")

    def validate_moba(self) -> None:
        _positive(self, "block")
        _non_negative(self, "top_blocks")


@dataclass
class NSAFields:
    cmp_block: int = _f(32, "NSA: length l of the blocks compressed into one token each", "mixer")
    cmp_stride: int = _f(16, "NSA: stride d between compressed blocks (d <= l)", "mixer")
    block: int = _f(64, BLOCK_DOC, "mixer")
    top_blocks: int = _f(16, TOP_BLOCKS_DOC, "mixer")
    window: int = _f(512, WINDOW_DOC, "mixer")
    causal: bool = _f(True, CAUSAL_DOC, "mixer")

    def validate_nsa(self) -> None:
        _positive(self, "cmp_block", "cmp_stride", "block", "window", "top_blocks")
        if self.cmp_stride > self.cmp_block:
            raise ConfigError(
                f"cmp_stride={self.cmp_stride} exceeds cmp_block={self.cmp_block}: "
                "compressed blocks would skip tokens",
                ("cmp_stride", "cmp_block"),
            )
        if self.cmp_block % self.cmp_stride:
            raise ConfigError(
                f"cmp_block={self.cmp_block} is not a multiple of cmp_stride={self.cmp_stride}",
                ("cmp_block", "cmp_stride"),
            )
        if self.block % self.cmp_stride:
            raise ConfigError(
                f"block={self.block} is not a multiple of cmp_stride={self.cmp_stride}: a "
                "selection block must be made of whole compression strides",
                ("block", "cmp_stride"),
            )


@dataclass
class OryxFields:
    attn_fraction: float = _f(
        0.0625, "Oryx: fraction of chunks in attention mode (policy spread)", "mixer"
    )
    policy: str = _f(
        "spread",
        "Oryx: which tokens run in attention: spread (attn_fraction of chunks, evenly spaced) | "
        "first:K (the first K chunks) | prefill:N (positions < N; decode after N in recurrence)",
        "mixer",
    )
    chunk: int = _f(64, CHUNK_DOC, "mixer")
    causal: bool = _f(True, CAUSAL_DOC, "mixer")

    def validate_oryx(self) -> None:
        _positive(self, "chunk")
        if not 0.0 <= self.attn_fraction <= 1.0:
            raise ConfigError(
                f"attn_fraction must lie in [0, 1] (got {self.attn_fraction})", ("attn_fraction",)
            )
        kind, sep, arg = self.policy.partition(":")
        whole = arg.isascii() and arg.isdigit()  # '²' is a digit to str.isdigit, not to int()
        if not (self.policy == "spread" or (kind in ("first", "prefill") and sep and whole)):
            raise ConfigError(
                f"policy={self.policy!r} is not valid; valid: spread, first:K, prefill:N "
                "(K, N whole numbers)",
                ("policy",),
            )


@dataclass
class OryxGDNConfig(OryxFields, BaseConfig):
    gdn_impl: str = _f("ref", "ref (PyTorch chunked WY form) | fla (fla's kernels)", "mixer")
    expand_v: int = _f(1, "Gated DeltaNet value head width = expand_v * d_model / n_heads", "mixer")
    d_conv: int = _f(4, D_CONV_DOC, "mixer")

    def validate(self) -> None:
        super().validate()
        self.validate_oryx()
        _choice(self, "gdn_impl", GDN_IMPLS)
        _positive(self, "expand_v", "d_conv")


@dataclass
class OryxMamba2Config(OryxFields, BaseConfig):
    """Oryx on Mamba-2: its heads are n_heads (headdim = expand * d_model / n_heads), so an
    attention-mode head and an SSD head are the same head."""

    mamba_impl: str = _f("ref", "ref (PyTorch chunked scan) | fused (mamba-ssm kernels)", "mixer")
    d_state: int = _f(64, D_STATE_DOC, "mixer")
    expand: int = _f(2, EXPAND_DOC, "mixer")
    d_conv: int = _f(4, D_CONV_DOC, "mixer")

    def validate(self) -> None:
        super().validate()
        self.validate_oryx()
        _choice(self, "mamba_impl", MAMBA_IMPLS)
        _positive(self, "d_state", "expand", "d_conv")
        if (self.expand * self.d_model) % self.n_heads:
            raise ConfigError(
                f"expand * d_model = {self.expand * self.d_model} is not divisible by "
                f"n_heads={self.n_heads}",
                ("expand", "d_model", "n_heads"),
            )


@dataclass
class Mamba2GPTConfig(Mamba2Fields, BaseConfig):
    def validate(self) -> None:
        super().validate()
        self.validate_mamba2(self.d_model)


@dataclass
class Mamba2JambaConfig(Mamba2Fields, HybridFields, BaseConfig):
    def validate(self) -> None:
        super().validate()
        self.validate_mamba2(self.d_model)
        self.validate_hybrid()


@dataclass
class GDNGPTConfig(GDNFields, BaseConfig):
    def validate(self) -> None:
        super().validate()
        self.validate_gdn()


@dataclass
class GDNJambaConfig(GDNFields, HybridFields, BaseConfig):
    def validate(self) -> None:
        super().validate()
        self.validate_gdn()
        self.validate_hybrid()


@dataclass
class SWAGPTConfig(SWAFields, TransformerConfig):
    def validate(self) -> None:
        super().validate()
        self.validate_swa()


@dataclass
class SWAJambaConfig(SWAFields, JambaConfig):
    def validate(self) -> None:
        super().validate()
        self.validate_swa()


@dataclass
class MoBAGPTConfig(MoBAFields, TransformerConfig):
    def validate(self) -> None:
        super().validate()
        self.validate_moba()


@dataclass
class MoBAJambaConfig(MoBAFields, JambaConfig):
    def validate(self) -> None:
        super().validate()
        self.validate_moba()


@dataclass
class NSAGPTConfig(NSAFields, TransformerConfig):
    def validate(self) -> None:
        super().validate()
        self.validate_nsa()


@dataclass
class NSAJambaConfig(NSAFields, JambaConfig):
    def validate(self) -> None:
        super().validate()
        self.validate_nsa()


def _positive(config: object, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if value < 1:
            raise ConfigError(f"{name} must be >= 1 (got {value})", (name,))


def _non_negative(config: object, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if value < 0:
            raise ConfigError(f"{name} must be >= 0 (got {value})", (name,))


def _choice(config: object, name: str, valid: tuple[str, ...]) -> None:
    value = getattr(config, name)
    if value not in valid:
        raise ConfigError(f"{name}={value!r} is not valid; valid: {', '.join(valid)}", (name,))


# ----------------------------------------------------------------------------- layer layouts


JAMBA_PERIOD, JAMBA_OFFSET = 8, 4  # Jamba: one attention layer per 8, at index 4 (a 1:7 ratio)


def jamba_attention_layers(n_layers: int) -> set[int]:
    """Jamba's rule: attention at every index i with i % 8 == 4 (13 layers: 4 and 12).

    The short-stack rule: a stack of at most 4 layers has no such index, and a hybrid without
    attention would be a plain Mamba model, so it gets one attention layer at n_layers // 2
    (4 layers: index 2).
    """
    rule = {i for i in range(n_layers) if i % JAMBA_PERIOD == JAMBA_OFFSET}
    return rule or {n_layers // 2}


def hybrid_attention_layers(n_layers: int, every: int) -> set[int]:
    """Attention layers of a recurrence hybrid: index i with i % every == every // 2 (every 8:
    4 and 12, Jamba's rule), none for every 0; a stack too short for any such index gets one at
    n_layers // 2, as jamba_attention_layers does, so a hybrid never silently loses attention."""
    if every <= 0:
        return set()
    rule = {i for i in range(n_layers) if i % every == every // 2}
    return rule or {n_layers // 2}


def replaced_count(n_layers: int, replace: float) -> int:
    """How many of n_layers a fraction `replace` replaces: replace * n_layers rounded half up,
    and at least one whenever replace > 0 (0.25 of 2 layers is 1 layer, never silently 0)."""
    if replace <= 0:
        return 0
    return max(1, min(n_layers, math.floor(replace * n_layers + 0.5)))


def replaced_layers(n_layers: int, replace: float) -> set[int]:
    """`replaced_count` layer indices, evenly spaced (centred in equal segments)."""
    count = replaced_count(n_layers, replace)
    return {int((i + 0.5) * n_layers / count) for i in range(count)} if count else set()


# ----------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class VariantSpec:
    """What a variant is. Reports ask this instead of matching names."""

    name: str
    description: str
    config_cls: type[BaseConfig]
    router: bool  # has HubRouter layers (heatmaps, routing columns, speedup numerators)
    baseline: str | None  # the variant a router or plug-in is judged against (speedup plots)
    order: int  # display order in tables and legends
    plugin: bool = False  # built around a plug-in mixer (the `mixer` field names it)


# The field's families: (name, what its mixer is, GPT-style config, Jamba-style config, what the
# Jamba-style one is). Orders follow the built-ins: recurrences, then sparse attentions.
_FIELD: tuple[tuple[str, str, type[BaseConfig], type[BaseConfig], str], ...] = (
    ("mamba2", "Mamba-2 (SSD: scalar decay per head, chunked scan)", Mamba2GPTConfig,
     Mamba2JambaConfig, "Mamba-2 with an attention layer every `attn_every` layers"),
    ("gdn", "Gated DeltaNet (gated delta rule, chunked WY form)", GDNGPTConfig, GDNJambaConfig,
     "Gated DeltaNet with an attention layer every `attn_every` layers"),
    ("swa", "causal sliding-window attention over the last `window` keys", SWAGPTConfig,
     SWAJambaConfig, "jamba with its attention layers replaced by sliding-window attention"),
    ("moba", "MoBA: top `top_blocks` key blocks by mean-pooled key, plus the query's own",
     MoBAGPTConfig, MoBAJambaConfig, "jamba with its attention layers replaced by MoBA"),
    ("nsa", "NSA: compressed, selected and sliding branches, gated", NSAGPTConfig,
     NSAJambaConfig, "jamba with its attention layers replaced by NSA"),
)  # fmt: skip


_ORYX = (
    ("oryx-gdn", "Oryx on Gated DeltaNet: one block, attention or recurrence by position, "
     "parameters tied", OryxGDNConfig),
    ("oryx-mamba2", "Oryx on Mamba-2: one block, attention or recurrence by position, "
     "parameters tied", OryxMamba2Config),
)  # fmt: skip


def _field_specs() -> list[VariantSpec]:
    out = []
    for i, (name, mixer, gpt, jamba, hybrid) in enumerate(_FIELD):
        out.append(
            VariantSpec(
                f"{name}-gpt",
                f"{mixer} in every layer, an MLP after each",
                gpt,
                router=False,
                baseline="transformer",
                order=10 + 2 * i,
            )
        )
        out.append(VariantSpec(f"{name}-jamba", hybrid, jamba, router=False, baseline="jamba",
                               order=11 + 2 * i))  # fmt: skip
    for i, (name, description, config) in enumerate(_ORYX):
        out.append(VariantSpec(name, f"{description}, an MLP after each; in every layer", config,
                               router=False, baseline="transformer", order=30 + i))  # fmt: skip
    return out


REGISTRY: dict[str, VariantSpec] = {
    spec.name: spec
    for spec in (
        VariantSpec(
            "transformer",
            "pre-norm GPT: causal attention + MLP in every layer, rotary positions",
            TransformerConfig,
            router=False,
            baseline=None,
            order=0,
        ),
        VariantSpec(
            "jamba",
            "Jamba-style hybrid: attention at index 4 of every 8 layers, Mamba elsewhere, "
            "MLP after every mixer, optional MoE every other layer",
            JambaConfig,
            router=False,
            baseline=None,
            order=1,
        ),
        VariantSpec(
            "hub-gpt",
            "transformer with a fraction `replace` of its attention layers replaced by "
            "causal HubRouter, evenly spaced",
            HubGPTConfig,
            router=True,
            baseline="transformer",
            order=2,
        ),
        VariantSpec(
            "hub-jamba",
            "jamba with every attention layer replaced by HubRouter (causal by default)",
            HubJambaConfig,
            router=True,
            baseline="jamba",
            order=3,
        ),
        *_field_specs(),
        VariantSpec(
            "mixer-gpt",
            "transformer with a plug-in mixer (--mixer FILE.py:Class) in every layer",
            PluginGPTConfig,
            router=False,
            baseline="transformer",
            order=40,
            plugin=True,
        ),
        VariantSpec(
            "mixer-jamba",
            "jamba with a plug-in mixer (--mixer FILE.py:Class) in its attention layers",
            PluginJambaConfig,
            router=False,
            baseline="jamba",
            order=41,
            plugin=True,
        ),
    )
}
PLUGIN_HOSTS = {"transformer": "mixer-gpt", "jamba": "mixer-jamba"}  # --mixer adds these
UNKNOWN_ORDER = 1000  # variants outside the registry (custom builders) sort last


def get_spec(variant: str) -> VariantSpec:
    if variant not in REGISTRY:
        raise ConfigError(
            f"unknown variant {variant!r}; valid: {', '.join(REGISTRY)}", ("variant",)
        )
    return REGISTRY[variant]


def is_router(variant: str) -> bool:
    spec = REGISTRY.get(variant)
    return spec is not None and spec.router


def is_plugin(variant: str) -> bool:
    spec = REGISTRY.get(variant)
    return spec is not None and spec.plugin


def display_name(variant: str, mixer: str | None = None) -> str:
    """What tables and figures call a variant: a plug-in variant by its mixer's class name
    (mixer-gpt with examples/swa.py:SlidingWindow -> 'SlidingWindow-gpt')."""
    if is_plugin(variant) and mixer:
        name = class_name(mixer)
        if name:
            return f"{name}-{variant.removeprefix('mixer-')}"
    return variant


def is_baseline(variant: str) -> bool:
    """A variant that other variants are judged against (transformer, jamba)."""
    return any(spec.baseline == variant for spec in REGISTRY.values())


def baseline_of(variant: str) -> str | None:
    spec = REGISTRY.get(variant)
    return None if spec is None else spec.baseline


def display_order(variant: str) -> int:
    spec = REGISTRY.get(variant)
    return UNKNOWN_ORDER if spec is None else spec.order


def config_fields(variant: str) -> list[str]:
    return [f.name for f in dataclasses.fields(get_spec(variant).config_cls)]


@dataclass(frozen=True)
class FieldInfo:
    name: str
    type: type
    role: str
    doc: str


def all_fields() -> dict[str, FieldInfo]:
    """Every config field of any variant, in registry order (the results schema's columns)."""
    out: dict[str, FieldInfo] = {}
    for spec in REGISTRY.values():
        for f in dataclasses.fields(spec.config_cls):
            info = FieldInfo(f.name, scalar_type(f.type), f.metadata["role"], f.metadata["doc"])
            if out.setdefault(f.name, info) != info:
                raise TypeError(f"config field {f.name} is declared twice, differently")
    return out


def inert_fields(config: BaseConfig) -> set[str]:
    """Fields that cannot change what this config builds (a sweep must not multiply on them)."""
    inert: set[str] = set()
    sparse = (SWAFields, MoBAFields, NSAFields, OryxFields)  # Oryx's attention is its own
    recurrent = (Mamba2Fields, GDNFields)
    if isinstance(config, sparse) or (
        isinstance(config, recurrent)
        and not hybrid_attention_layers(config.n_layers, getattr(config, "attn_every", 0))
    ):
        inert |= {"attention", "sdpa_kernel"}  # no softmax attention layer left to pick a backend
    if isinstance(config, HubJambaConfig | PluginGPTConfig | PluginJambaConfig) or (
        isinstance(config, HubGPTConfig)
        and len(replaced_layers(config.n_layers, config.replace)) == config.n_layers
    ):
        inert |= {"attention", "sdpa_kernel"}
    if isinstance(config, HubGPTConfig) and not replaced_layers(config.n_layers, config.replace):
        inert |= {"hubs", "topk", "neighbours", "chunk", "ortho", "causal", "council"}
    if isinstance(config, HubFields) and not config.causal:
        inert.add("council")  # the non-causal council has one path (masked)
    if config.attention != "sdpa":
        inert.add("sdpa_kernel")
    if isinstance(config, recurrent):
        layers = hybrid_attention_layers(config.n_layers, getattr(config, "attn_every", 0))
        if len(layers) == config.n_layers:  # attn_every 1: attention everywhere, no recurrence
            own = {f.name for cls in (Mamba2Fields, GDNFields) for f in dataclasses.fields(cls)}
            inert |= own & {f.name for f in dataclasses.fields(config)}
        elif not layers and isinstance(config, Mamba2Fields):
            inert.add("n_heads")  # Mamba-2's heads are expand * d_model / headdim
    if isinstance(config, OryxFields) and config.policy != "spread":
        inert.add("attn_fraction")  # first:K and prefill:N name their tokens themselves
    if isinstance(config, JambaConfig) and not config.moe:
        inert |= {"n_experts", "moe_topk"}
    return inert


def check_length(config: BaseConfig, seq: int) -> None:
    """What a config needs of the sequence length: a council of k members needs k <= n."""
    topk = getattr(config, "topk", None)
    if topk is not None and "topk" not in inert_fields(config) and topk > seq:
        raise ConfigError(
            f"topk={topk} exceeds seq={seq}; the council needs k <= n", ("topk", "seq")
        )


def make_config(variant: str, **fields: Any) -> BaseConfig:
    """A validated config from typed values (TOML, Python) or CLI strings.

    An unknown field or impossible value is a one-line ConfigError naming the fields.
    """
    spec = get_spec(variant)
    types = {f.name: scalar_type(f.type) for f in dataclasses.fields(spec.config_cls)}
    unknown = sorted(set(fields) - set(types))
    if unknown:
        raise ConfigError(
            f"unknown config field(s) {', '.join(unknown)} for variant {variant!r}; "
            f"valid: {', '.join(types)}",
            unknown,
        )
    values = {}
    for name, value in fields.items():
        where = f"{variant}: field {name}"
        kind = types[name]
        values[name] = (
            parse_text(value, kind, where)
            if isinstance(value, str) and kind is not str
            else coerce(value, kind, where)
        )
    config = spec.config_cls(**values)
    config.validate()
    return config


def config_from_dict(variant: str, values: Mapping[str, Any]) -> BaseConfig:
    """Rebuild a config that was validated when its cell was planned (the worker's side)."""
    return get_spec(variant).config_cls(**values)


def config_dict(config: BaseConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)
