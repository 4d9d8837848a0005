"""The language model around the blocks, its incremental-inference state and its FLOP count.

Choices (written down because results depend on them):
- Token embedding, a stack of blocks (hubbench.models.blocks), a final RMSNorm and an LM head
  tied to the embedding.
- vocab defaults to 256 (bytes): with a 50k vocabulary the LM head would dominate the step at
  d_model 256 and hide the mixers we measure. Set `vocab` to measure a realistic head.
Incremental inference (`prefill`, `decode`): each block's mixer keeps its own state (attention:
a KV cache; Mamba: conv and SSM state; HubRouter: its recurrent hub, member and chunk state), and
a `ModelState` holds one per block, so a hybrid's state is its layers' states together.
The embedding, head and loss run under `record_function` labels (embed, lm_head, loss).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import record_function

from hubbench.errors import ConfigError
from hubbench.mixers.plugin import PluginMixer
from hubbench.models.blocks import Block, MoE
from hubbench.plan.variants import BaseConfig


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
        """Logits (B, n, V) from input embeddings (B, n, d): the map causality checks probe.

        An empty sequence (n = 0) has nothing to mix: its logits are (B, 0, V), as attention
        gives them, for every variant (Mamba's convolution and HubRouter's chunking refuse
        n = 0, and a mixer of no tokens cannot change the empty output)."""
        if h.shape[1] == 0:
            with record_function("lm_head"):
                return self.head(self.norm(h))
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
