"""The one interface of a mixer, written down as typing Protocols.

Attention, HubRouter and Mamba satisfy them structurally (tests/mixers/test_base.py checks it);
the language models (hubbench/models/) and the checks (hubbench/verify/) call nothing else on a
mixer. A plug-in mixer (docs/reference.md, "Plug-in mixers") needs only `forward`: everything
else here is optional for it, and the model falls back where it is missing (counted FLOPs, no
decode modes).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from torch import Tensor


@runtime_checkable
class Mixer(Protocol):
    """One sequence-mixing layer: x (B, n, d) -> y (B, n, d).

    A mixer with an auxiliary loss (HubRouter's hub regulariser) also sets `aux_loss` (a scalar
    tensor, or None) during forward; the model adds it to its loss.
    """

    causal: bool  # output t depends on inputs <= t only (`hubbench verify causal` checks it)
    last_backend: str | None  # after a forward, what actually ran: a row records the kernel

    def forward(self, x: Tensor) -> Tensor: ...

    def analytic_flops(self, seq: int) -> float:
        """Forward FLOPs of one sequence of `seq` tokens, projections included."""
        ...


@runtime_checkable
class DecodeState(Protocol):
    """What one layer carries from token to token (a KV cache, hub statistics, an SSM state).

    Its bytes are reported per sequence; a snapshot and a restore let the decode mode time the
    same step again without the state growing (hubbench/measure/step.py, docs/decode.md).
    """

    def nbytes(self) -> int: ...

    def snapshot(self) -> Any: ...

    def restore(self, snap: Any) -> None: ...


@runtime_checkable
class DecodingMixer(Mixer, Protocol):
    """A causal mixer that also decodes incrementally, one token per sequence at a time.

    Decoding token by token, or a prefill followed by steps, gives the forward's outputs
    (`hubbench verify decode` checks it).
    """

    def empty_state(self, batch: int, capacity: int, like: Tensor) -> DecodeState:
        """The state before the first token, in `like`'s device and compute dtype; `capacity`
        tokens preallocated where the state grows (a KV cache)."""
        ...

    def prefill(self, x: Tensor, capacity: int = 0) -> tuple[Tensor, DecodeState]:
        """The forward of a prompt x (B, n, d), and the state after its last token."""
        ...

    def step(self, x: Tensor, state: DecodeState) -> Tensor:
        """One token per sequence, x (B, 1, d) -> (B, 1, d); advances `state` in place."""
        ...

    def decode_flops(self, context: int) -> float:
        """Forward FLOPs of one decoded token after `context` tokens."""
        ...
