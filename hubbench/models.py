"""Blocks, language models and the variant registry: transformer, jamba, hub-jamba, hub-gpt.

Choices (written down because results depend on them):
- Pre-norm residual blocks with RMSNorm: cheaper than LayerNorm (no mean, no bias) and what
  Llama-style and Jamba-style models use; the final norm precedes a tied LM head.
- Positions: rotary embeddings inside attention for `transformer` (no learned table, so any n
  runs); `hub-gpt` rotates HubRouter's council queries and keys by their true positions. `jamba`
  and `hub-jamba` use no explicit positions, as in Jamba: the Mamba layers carry order.
- MLP: GELU with hidden width `mlp_ratio * d_model` (GPT-2); the MoE MLP routes each token to its
  top-2 of `n_experts` such MLPs, with the Switch-Transformer load-balancing auxiliary loss.
- vocab defaults to 256 (bytes): with a 50k vocabulary the LM head would dominate the step at
  d_model 256 and hide the mixers we measure. Set `vocab` to measure a realistic head.
Every stage runs under a `record_function` label (embed, attention, mamba, hubrouter, mlp, moe,
lm_head, loss) so profiler traces and the stage breakdown can attribute time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import record_function

from hubbench.errors import ConfigError
from hubbench.mixers.attention import BACKENDS, SDPA_KERNELS, Attention

DTYPES = ("fp32", "bf16", "fp16")
MOE_AUX_WEIGHT = 0.01  # Switch Transformer's alpha


# ----------------------------------------------------------------------------- configs


@dataclass
class BaseConfig:
    vocab: int = 256  # bytes: keeps the LM head from dominating mixer measurements
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    mlp_ratio: float = 4.0  # MLP hidden width = mlp_ratio * d_model
    attention: str = "sdpa"  # naive | sdpa | flash
    sdpa_kernel: str = "auto"  # auto | flash | efficient | math | cudnn (sdpa only)
    dtype: str = "fp32"  # autocast compute dtype; parameters stay fp32
    seed: int = 0  # parameter initialisation

    def validate(self) -> None:
        _positive(self, "vocab", "d_model", "n_layers", "n_heads")
        if self.d_model % self.n_heads:
            raise ConfigError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.mlp_ratio <= 0:
            raise ConfigError(f"mlp_ratio must be > 0 (got {self.mlp_ratio})")
        _choice(self, "attention", BACKENDS)
        _choice(self, "sdpa_kernel", SDPA_KERNELS)
        _choice(self, "dtype", DTYPES)


@dataclass
class TransformerConfig(BaseConfig):
    pass


@dataclass
class JambaConfig(BaseConfig):
    mamba_impl: str = "ref"  # ref (vectorised PyTorch) | fused (mamba-ssm kernels)
    d_state: int = 16  # SSM state size, as mamba-ssm and Jamba
    d_conv: int = 4  # causal depthwise conv width
    expand: int = 2  # Mamba inner width = expand * d_model
    moe: bool = False  # MoE MLP on every other layer (Jamba: e = 2)
    n_experts: int = 8
    moe_topk: int = 2

    def validate(self) -> None:
        super().validate()
        _choice(self, "mamba_impl", ("ref", "fused"))
        _positive(self, "d_state", "d_conv", "expand", "n_experts", "moe_topk")
        if self.moe and self.moe_topk > self.n_experts:
            raise ConfigError(f"moe_topk={self.moe_topk} exceeds n_experts={self.n_experts}")


@dataclass
class HubFields:
    hubs: int = 8  # M learned hub tokens
    topk: int = 64  # council budget k
    neighbours: int = 1  # right neighbours r added to each selected token
    chunk: int = 64  # causal chunk size C
    ortho: float = 0.0  # weight of the orthogonal hub regulariser
    causal: bool = True  # False only for the leak ablation

    def validate_hub(self) -> None:
        for name in ("hubs", "topk", "chunk"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1 (got {getattr(self, name)})")
        if self.neighbours < 0:
            raise ConfigError(f"neighbours must be >= 0 (got {self.neighbours})")
        if self.ortho < 0:
            raise ConfigError(f"ortho must be >= 0 (got {self.ortho})")


@dataclass
class HubGPTConfig(HubFields, TransformerConfig):
    replace: float = 1.0  # fraction of attention layers replaced, evenly spaced

    def validate(self) -> None:
        super().validate()
        self.validate_hub()
        if not 0.0 <= self.replace <= 1.0:
            raise ConfigError(f"replace must lie in [0, 1] (got {self.replace})")


@dataclass
class HubJambaConfig(HubFields, JambaConfig):
    def validate(self) -> None:
        super().validate()
        self.validate_hub()


def _positive(config: object, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if value < 1:
            raise ConfigError(f"{name} must be >= 1 (got {value})")


def _choice(config: object, name: str, valid: tuple[str, ...]) -> None:
    value = getattr(config, name)
    if value not in valid:
        raise ConfigError(f"{name}={value!r} is not valid; valid: {', '.join(valid)}")


# ----------------------------------------------------------------------------- blocks


class MLP(nn.Module):
    def __init__(self, d_model: int, ratio: float) -> None:
        super().__init__()
        hidden = int(ratio * d_model)
        self.up = nn.Linear(d_model, hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with record_function("mlp"):
            return self.down(F.gelu(self.up(x)))


class MoE(nn.Module):
    """Top-k routed mixture of MLP experts with the Switch load-balancing loss as `aux_loss`."""

    def __init__(self, d_model: int, ratio: float, n_experts: int, topk: int) -> None:
        super().__init__()
        self.n_experts, self.topk = n_experts, topk
        self.router = nn.Linear(d_model, n_experts, bias=False)
        self.experts = nn.ModuleList(MLP(d_model, ratio) for _ in range(n_experts))
        self.aux_loss: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with record_function("moe"):
            B, n, d = x.shape
            flat = x.reshape(B * n, d)  # (T, d)
            probs = torch.softmax(self.router(flat).float(), dim=-1)  # (T, E)
            weight, expert = probs.topk(self.topk, dim=-1)  # (T, k)
            weight = (weight / weight.sum(-1, keepdim=True)).to(x.dtype)
            out = torch.zeros_like(flat)
            # A loop over experts (not tokens): each expert runs once on the tokens routed to it.
            for e, mlp in enumerate(self.experts):
                token, slot = (expert == e).nonzero(as_tuple=True)
                if token.numel():
                    out.index_add_(0, token, mlp(flat[token]) * weight[token, slot, None])
            # Switch loss: E * sum_e (fraction of routed slots to e) * (mean router prob of e).
            routed = F.one_hot(expert, self.n_experts).float().sum(1).mean(0) / self.topk  # (E,)
            self.aux_loss = MOE_AUX_WEIGHT * self.n_experts * (routed * probs.mean(0)).sum()
            return out.view(B, n, d)


class Block(nn.Module):
    """Pre-norm residual block: x + mixer(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, kind: str, mixer: nn.Module, mlp: nn.Module, d_model: int) -> None:
        super().__init__()
        self.kind = kind
        self.norm1, self.norm2 = nn.RMSNorm(d_model), nn.RMSNorm(d_model)
        self.mixer, self.mlp = mixer, mlp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with record_function(self.kind):
            x = x + self.mixer(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class LanguageModel(nn.Module):
    """Token embedding, a stack of blocks, final RMSNorm, LM head tied to the embedding."""

    def __init__(self, variant: str, config: BaseConfig, blocks: list[Block]) -> None:
        super().__init__()
        self.variant, self.config = variant, config
        self.embed = nn.Embedding(config.vocab, config.d_model)
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.RMSNorm(config.d_model)
        self.head = nn.Linear(config.d_model, config.vocab, bias=False)
        self.head.weight = self.embed.weight
        self.apply(_init_weights)

    @property
    def layer_kinds(self) -> list[str]:
        return [block.kind for block in self.blocks]

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        with record_function("embed"):
            h = self.embed(idx)  # (B, n, d)
        return self.forward_embeddings(h)

    def forward_embeddings(self, h: torch.Tensor) -> torch.Tensor:
        """Logits (B, n, V) from input embeddings (B, n, d): the map causality checks probe."""
        for block in self.blocks:
            h = block(h)
        with record_function("lm_head"):
            return self.head(self.norm(h))

    def loss(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Next-token cross entropy plus every module's auxiliary loss (MoE, hub regulariser)."""
        logits = self(idx)
        with record_function("loss"):
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
            for module in self.modules():
                aux = getattr(module, "aux_loss", None)
                if module is not self and aux is not None:
                    loss = loss + aux
            return loss

    def backends(self) -> dict[str, str]:
        """What each mixer kind actually ran in the last forward ('+'-joined if mixed)."""
        seen: dict[str, set[str]] = {}
        for block in self.blocks:
            ran = getattr(block.mixer, "last_backend", None)
            if ran is not None:
                seen.setdefault(block.kind, set()).add(ran)
        return {kind: "+".join(sorted(names)) for kind, names in seen.items()}

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_analytic(self, batch: int, seq: int, mode: str) -> float:
        """Causal-aware FLOPs per step: forward x1 (fwd) or x3 (fwd_bwd, train; optimizer ignored).

        Mixers with `analytic_flops(seq)` count themselves (attention counts only the keys a
        causal query can see); every other Linear counts 2 * in * out per token, MoE experts
        scaled by topk / n_experts, and the Mamba scan its elementwise recurrence.
        """
        per_seq = 0.0
        counted: set[int] = set()
        for module in self.modules():
            if id(module) in counted:
                continue
            if hasattr(module, "analytic_flops"):
                per_seq += module.analytic_flops(seq)
                counted.update(id(m) for m in module.modules())
            elif isinstance(module, MoE):
                share = module.topk / module.n_experts
                expert_linear = sum(
                    2 * m.in_features * m.out_features
                    for m in module.experts.modules()
                    if isinstance(m, nn.Linear)
                )
                per_seq += seq * (
                    share * expert_linear + 2 * module.router.in_features * module.n_experts
                )
                counted.update(id(m) for m in module.modules())
            elif isinstance(module, nn.Linear):
                per_seq += 2 * seq * module.in_features * module.out_features
        factor = 1 if mode == "fwd" else 3
        return float(factor * batch * per_seq)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear | nn.Embedding) and not getattr(module, "_no_reinit", False):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)


# ----------------------------------------------------------------------------- factories


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


def jamba_attention_layers(n_layers: int) -> set[int]:
    """Attention at index 4 of every full group of 8 (1:7); below 8 layers, one in the middle."""
    if n_layers < 8:
        return {n_layers // 2}
    return {group * 8 + 4 for group in range(n_layers // 8)}


def replaced_layers(n_layers: int, replace: float) -> set[int]:
    """`round(replace * n_layers)` layer indices, evenly spaced (centred in equal segments)."""
    count = round(replace * n_layers)
    return {int((i + 0.5) * n_layers / count) for i in range(count)} if count else set()


def _mlp_for(config: BaseConfig, layer: int) -> nn.Module:
    if isinstance(config, JambaConfig) and config.moe and layer % 2 == 1:
        return MoE(config.d_model, config.mlp_ratio, config.n_experts, config.moe_topk)
    return MLP(config.d_model, config.mlp_ratio)


def _build_gpt(variant: str, config: TransformerConfig) -> LanguageModel:
    hub = (
        replaced_layers(config.n_layers, config.replace) if isinstance(config, HubFields) else set()
    )
    blocks = []
    for i in range(config.n_layers):
        if i in hub:
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
        elif isinstance(config, HubFields):
            kind, mixer = "hubrouter", _hubrouter(config, rope=False)
        else:
            kind, mixer = "attention", _attention(config, rope=False)
        blocks.append(Block(kind, mixer, _mlp_for(config, i), config.d_model))
    return LanguageModel(variant, config, blocks)


@dataclass(frozen=True)
class VariantSpec:
    name: str
    description: str
    config_cls: type[BaseConfig]
    build: Callable[[str, BaseConfig], LanguageModel]


REGISTRY: dict[str, VariantSpec] = {
    spec.name: spec
    for spec in (
        VariantSpec(
            "transformer",
            "pre-norm GPT: causal attention + MLP in every layer, rotary positions",
            TransformerConfig,
            _build_gpt,
        ),
        VariantSpec(
            "jamba",
            "Jamba-style hybrid: attention at index 4 of every 8 layers, Mamba elsewhere, "
            "MLP after every mixer, optional MoE every other layer",
            JambaConfig,
            _build_jamba,
        ),
        VariantSpec(
            "hub-jamba",
            "jamba with every attention layer replaced by HubRouter (causal by default)",
            HubJambaConfig,
            _build_jamba,
        ),
        VariantSpec(
            "hub-gpt",
            "transformer with a fraction `replace` of its attention layers replaced by "
            "causal HubRouter, evenly spaced",
            HubGPTConfig,
            _build_gpt,
        ),
    )
}


def get_spec(variant: str) -> VariantSpec:
    if variant not in REGISTRY:
        raise ConfigError(f"unknown variant {variant!r}; valid: {', '.join(REGISTRY)}")
    return REGISTRY[variant]


def config_fields(variant: str) -> list[str]:
    return [f.name for f in dataclasses.fields(get_spec(variant).config_cls)]


def inert_fields(config: BaseConfig) -> set[str]:
    """Fields that cannot change what this config builds (a sweep must not multiply on them)."""
    inert: set[str] = set()
    if isinstance(config, HubJambaConfig) or (
        isinstance(config, HubGPTConfig)
        and len(replaced_layers(config.n_layers, config.replace)) == config.n_layers
    ):
        inert |= {"attention", "sdpa_kernel"}
    if isinstance(config, HubGPTConfig) and not replaced_layers(config.n_layers, config.replace):
        inert |= {"hubs", "topk", "neighbours", "chunk", "ortho", "causal"}
    if config.attention != "sdpa":
        inert.add("sdpa_kernel")
    if isinstance(config, JambaConfig) and not config.moe:
        inert |= {"n_experts", "moe_topk"}
    return inert


def make_config(variant: str, **fields: object) -> BaseConfig:
    """A validated config; an unknown field or impossible value is a one-line ConfigError."""
    spec = get_spec(variant)
    valid = config_fields(variant)
    unknown = sorted(set(fields) - set(valid))
    if unknown:
        raise ConfigError(
            f"unknown config field(s) {', '.join(unknown)} for variant {variant!r}; "
            f"valid: {', '.join(valid)}"
        )
    types = {f.name: f.type for f in dataclasses.fields(spec.config_cls)}
    coerced = {name: _coerce(variant, name, types[name], value) for name, value in fields.items()}
    config = spec.config_cls(**coerced)
    config.validate()
    return config


def _coerce(variant: str, name: str, annotation: object, value: object) -> object:
    """Accept what TOML and the CLI give (ints for floats, 'true' for bools); reject the rest."""
    kind = {"int": int, "float": float, "bool": bool, "str": str}.get(str(annotation))
    if kind is None or (isinstance(value, kind) and not (kind is int and isinstance(value, bool))):
        return value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is bool and isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if kind in (int, float) and isinstance(value, str):
        try:
            return kind(value)
        except ValueError:
            pass
    raise ConfigError(
        f"{variant}: field {name} expects {kind.__name__}, got {value!r} ({type(value).__name__})"
    )


def build_model(variant: str, **fields: object) -> LanguageModel:
    """Build `variant` from config fields; parameters are initialised from `seed`, on CPU, fp32."""
    config = make_config(variant, **fields)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return get_spec(variant).build(variant, config)


__all__ = [
    "REGISTRY",
    "BaseConfig",
    "HubGPTConfig",
    "HubJambaConfig",
    "JambaConfig",
    "LanguageModel",
    "TransformerConfig",
    "VariantSpec",
    "build_model",
    "config_fields",
    "get_spec",
    "inert_fields",
    "jamba_attention_layers",
    "make_config",
    "replaced_layers",
]
