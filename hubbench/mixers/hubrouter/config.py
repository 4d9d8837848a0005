"""HubRouter's options in one dataclass, checked once when a layer is made."""

from __future__ import annotations

from dataclasses import dataclass

from hubbench.errors import ConfigError

# "packed": one softmax per slice of chunks as batched GEMMs, the probabilities kept for the
# backward (CPU); "split": two attentions merged by their log-sum-exp (needs the CPU flash
# kernel); "masked": one attention under a dense mask, on any device; "flex": one block-sparse
# FlexAttention, no dense mask (compiled on CUDA, the dense eager reference on CPU); "auto":
# flex on CUDA, packed on CPU in fp32/fp64, split where it can run, else masked
COUNCIL_IMPLS = ("auto", "packed", "split", "masked", "flex")


@dataclass(frozen=True)
class HubRouterConfig:
    """The layer's shape and routing (symbols as in shared/design/hubrouter.md)."""

    d_model: int  # d
    n_heads: int  # h: encode, decode and council share it; d_head = d / h
    hubs: int = 8  # M: hub states, each a summary every token reads (its fingerprint)
    topk: int = 64  # k: council members, the best-scoring tokens before the reading chunk
    neighbours: int = 1  # r: right neighbours p+1 .. p+r join every member p
    chunk: int = 64  # C: causal tokens per chunk; hubs and members change between chunks
    causal: bool = True  # False: one bidirectional pass (encode over all, global top-k)
    ortho_weight: float = 0.0  # weight of the orthogonal hub regulariser in aux_loss
    rope: bool = False  # rotary on council queries and keys at their true positions
    council: str = "auto"  # one of COUNCIL_IMPLS

    def __post_init__(self) -> None:
        self._check_ranges()
        if self.d_model % self.n_heads:
            raise ConfigError(
                f"hubrouter: d_model={self.d_model} must be divisible by n_heads={self.n_heads}"
            )
        if self.rope and (self.d_model // self.n_heads) % 2:
            raise ConfigError(
                "hubrouter: rope needs an even head width d_model/n_heads, "
                f"got {self.d_model // self.n_heads}"
            )
        if self.council not in COUNCIL_IMPLS:
            raise ConfigError(
                f"hubrouter: council must be one of {', '.join(COUNCIL_IMPLS)} "
                f"(got {self.council!r})"
            )

    def _check_ranges(self) -> None:
        """Raise ConfigError naming the first field out of its range."""
        lowest = {"d_model": 1, "n_heads": 1, "hubs": 1, "topk": 1, "neighbours": 0, "chunk": 1}
        for name, low in lowest.items():
            value = getattr(self, name)
            if value < low:
                raise ConfigError(f"hubrouter: {name} must be >= {low} (got {value})")
        if self.ortho_weight < 0:
            raise ConfigError(f"hubrouter: ortho (weight) must be >= 0 (got {self.ortho_weight})")
