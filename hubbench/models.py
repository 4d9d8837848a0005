"""Blocks and language models for the variants of hubbench.plan.variants: how each one is built.

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
Incremental inference (`prefill`, `decode`): each block's mixer keeps its own state (attention:
a KV cache; Mamba: conv and SSM state; HubRouter: its recurrent hub, member and chunk state), and
a `ModelState` holds one per block, so a hybrid's state is its layers' states together.
Every stage runs under a `record_function` label (embed, attention, mamba, hubrouter, mlp, moe,
lm_head, loss) so profiler traces and the stage breakdown can attribute time.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import record_function

from hubbench.errors import ConfigError
from hubbench.mixers.attention import Attention
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

MOE_AUX_WEIGHT = 0.01  # Switch Transformer's alpha


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


@dataclass
class ModelState:
    """One mixer state per block (None for none), and how many tokens they have seen."""

    kinds: list[str]
    layers: list[Any]
    pos: int = 0

    def nbytes(self) -> int:
        """Bytes of every layer's state or cache, for the whole batch."""
        return sum(layer.nbytes() for layer in self.layers)

    def bytes_by_kind(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for kind, layer in zip(self.kinds, self.layers, strict=True):
            out[kind] = out.get(kind, 0) + layer.nbytes()
        return out

    def snapshot(self) -> tuple[int, list[Any]]:
        return self.pos, [layer.snapshot() for layer in self.layers]

    def restore(self, snap: tuple[int, list[Any]]) -> None:
        self.pos = snap[0]
        for layer, saved in zip(self.layers, snap[1], strict=True):
            layer.restore(saved)


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

    def prefill(self, x: torch.Tensor, capacity: int) -> tuple[torch.Tensor, Any]:
        with record_function(self.kind):
            y, state = self.mixer.prefill(self.norm1(x), capacity)
            x = x + y
        return x + self.mlp(self.norm2(x)), state

    def step(self, x: torch.Tensor, state: Any) -> torch.Tensor:
        with record_function(self.kind):
            x = x + self.mixer.step(self.norm1(x), state)
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

    # -- incremental inference ----------------------------------------------------------------

    def _check_decodable(self) -> None:
        for i, block in enumerate(self.blocks):
            if not getattr(block.mixer, "decodable", hasattr(block.mixer, "step")):
                raise ConfigError(
                    f"{self.variant}: layer {i} ({block.kind}) has no incremental decode path"
                )

    def empty_state(self, batch: int, capacity: int = 0) -> ModelState:
        """The state before the first token; caches preallocated for `capacity` tokens."""
        self._check_decodable()
        like = self.embed.weight
        layers = [b.mixer.empty_state(batch, capacity, like) for b in self.blocks]
        return ModelState(self.layer_kinds, layers)

    def prefill(
        self, idx: torch.Tensor, capacity: int = 0, all_logits: bool = False
    ) -> tuple[torch.Tensor, ModelState]:
        """Run a prompt (B, n) in parallel; logits of its last token (B, 1, V), or of every
        token with `all_logits`, and the state to decode from (caches for `capacity` tokens)."""
        self._check_decodable()
        with record_function("embed"):
            h = self.embed(idx)
        layers = []
        for block in self.blocks:
            h, state = block.prefill(h, capacity)
            layers.append(state)
        if not all_logits:
            h = h[:, -1:]
        with record_function("lm_head"):
            logits = self.head(self.norm(h))
        return logits, ModelState(self.layer_kinds, layers, idx.shape[1])

    def decode(self, idx: torch.Tensor, state: ModelState) -> torch.Tensor:
        """One token per sequence (B, 1) after `state`: its logits (B, 1, V); advances `state`."""
        with record_function("embed"):
            h = self.embed(idx)
        for block, layer in zip(self.blocks, state.layers, strict=True):
            h = block.step(h, layer)
        state.pos += 1
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

    def flops_analytic(self, batch: int, seq: float, mode: str) -> float | None:
        """Causal-aware FLOPs per step: forward x1 (fwd, prefill) or x3 (fwd_bwd, train;
        optimizer ignored); decode: one token per sequence after a context of `seq` (the runner
        passes a timed call's mean context).

        None when a plug-in mixer offers no `analytic_flops` (its rows keep the counted FLOPs).
        Mixers with `analytic_flops(seq)` count themselves (attention counts only the keys a
        causal query can see; in decode, `decode_flops(context)`); every other Linear counts
        2 * in * out per token, MoE experts scaled by topk / n_experts, and the Mamba scan its
        elementwise recurrence. Prefill runs the LM head on the last token only.
        """
        decode = mode == "decode"
        tokens = 1 if decode else seq
        per_seq = 0.0
        counted: set[int] = set()
        for module in self.modules():
            if id(module) in counted:
                continue
            if isinstance(module, PluginMixer):
                flops = module.flops(seq, decode)
                if flops is None:  # the plug-in cannot count itself: only counted FLOPs hold
                    return None
                per_seq += flops
                counted.update(id(m) for m in module.modules())
            elif hasattr(module, "analytic_flops"):
                per_seq += module.decode_flops(seq) if decode else module.analytic_flops(seq)
                counted.update(id(m) for m in module.modules())
            elif isinstance(module, MoE):
                share = module.topk / module.n_experts
                expert_linear = sum(
                    2 * m.in_features * m.out_features
                    for m in module.experts.modules()
                    if isinstance(m, nn.Linear)
                )
                per_seq += tokens * (
                    share * expert_linear + 2 * module.router.in_features * module.n_experts
                )
                counted.update(id(m) for m in module.modules())
            elif isinstance(module, nn.Linear):
                rows = 1 if (mode == "prefill" and module is self.head) else tokens
                per_seq += 2 * rows * module.in_features * module.out_features
        factor = 1 if mode in ("fwd", "prefill", "decode") else 3
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


class PluginMixer(nn.Module):
    """A plug-in mixer (hubbench.plan.plugins) held to its contract: it gets (d_model, n_heads,
    causal=True, **options) and must map (B, n, d) to a tensor of the same shape, else a
    PluginError names it. Its decode path and FLOPs are used when it has them."""

    def __init__(
        self, spec: str, options: str, d_model: int, n_heads: int, digest: str = ""
    ) -> None:
        from hubbench.plan.plugins import (
            PluginError,
            decode_options,
            inspect_mixer,
            load_class,
            source_digest,
        )

        super().__init__()
        info = inspect_mixer(spec)
        if digest and source_digest(spec) != digest:
            raise PluginError(
                f"mixer {info.name}: its source changed since the run was planned "
                f"(sha256 {source_digest(spec)} != {digest}); plan the run again"
            )
        values = info.complete(decode_options(options))
        info.check_options(values, "mixer_options")
        self.spec, self.name, self.info = spec, info.name, info
        try:
            self.inner = load_class(spec)(d_model=d_model, n_heads=n_heads, causal=True, **values)
        except Exception as exc:  # the user's constructor: any failure is its error
            raise PluginError(
                f"mixer {info.name}: constructor failed: {_first_line(exc)}"
            ) from None
        self.decodable = info.decodable

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._checked(self.inner(x), x, "forward")

    def _checked(self, y: Any, x: torch.Tensor, what: str) -> torch.Tensor:
        from hubbench.plan.plugins import PluginError

        if not isinstance(y, torch.Tensor) or y.shape != x.shape:
            got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            raise PluginError(
                f"mixer {self.name}: {what} returned {got} for input {tuple(x.shape)}; "
                "a mixer maps (B, n, d) to (B, n, d)"
            )
        return y

    def empty_state(self, batch: int, capacity: int, like: torch.Tensor) -> PluginState:
        return PluginState(self.inner.empty_state(batch, capacity, like))

    def prefill(self, x: torch.Tensor, capacity: int) -> tuple[torch.Tensor, PluginState]:
        y, state = self.inner.prefill(x, capacity)
        return self._checked(y, x, "prefill"), PluginState(state)

    def step(self, x: torch.Tensor, state: PluginState) -> torch.Tensor:
        return self._checked(self.inner.step(x, state.inner), x, "step")

    def flops(self, seq: float, decode: bool) -> float | None:
        """The plug-in's own count (forward, one sequence), or None without one."""
        if decode:
            fn = getattr(self.inner, "decode_flops", None)
        else:
            fn = getattr(self.inner, "analytic_flops", None)
        return None if fn is None else float(fn(seq))

    @property
    def last_backend(self) -> str | None:
        return getattr(self.inner, "last_backend", None)

    def extra_repr(self) -> str:
        return f"spec={self.spec}"


class PluginState:
    """A plug-in's decode state as the model's state needs it: any object (a tensor, a dict or
    list of them, a dataclass); its bytes are its tensors' bytes, a snapshot a deep copy. A
    state with its own `nbytes`, `snapshot` and `restore` (as the built-in ones) uses those."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def nbytes(self) -> int:
        own = getattr(self.inner, "nbytes", None)
        if callable(own):
            return int(own())
        return sum(t.numel() * t.element_size() for t in _tensors(self.inner))

    def snapshot(self) -> Any:
        own = getattr(self.inner, "snapshot", None)
        return own() if callable(own) else copy.deepcopy(self.inner)

    def restore(self, saved: Any) -> None:
        own = getattr(self.inner, "restore", None)
        if callable(own):
            own(saved)
        else:
            self.inner = copy.deepcopy(saved)


def _tensors(obj: Any, seen: set[int] | None = None) -> list[torch.Tensor]:
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return []
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        items: Any = obj.values()
    elif isinstance(obj, list | tuple):
        items = obj
    elif hasattr(obj, "__dict__"):
        items = vars(obj).values()
    else:
        return []
    return [t for item in items for t in _tensors(item, seen)]


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def _plugin(config: BaseConfig) -> PluginMixer:
    assert isinstance(config, PluginFields)
    return PluginMixer(
        config.mixer, config.mixer_options, config.d_model, config.n_heads, config.mixer_digest
    )


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
