"""Which tokens an Oryx block runs in attention mode: a pure function of absolute position.

Because the mode of token t depends on t alone (never on the sequence length or on where a
prompt was cut), the forward, a prefill of any prompt and the steps after it all pick the same
mode for the same token: causality and decode == forward hold for every split.

Policies (docs/mixers/oryx.md, "The schedule"):

- ``spread``: a fraction f (``attn_fraction``) of the chunks, evenly spaced. Chunk c (tokens
  c C .. c C + C - 1) runs in attention iff ceil((c + 1) f) > ceil(c f), i.e. the attention
  chunks are floor(m / f) for m = 0, 1, 2, ...: chunk 0, then one chunk at the start of every
  period of 1 / f chunks. Among the first M chunks exactly ceil(M f) run in attention, so any
  sequence of at least one token has an attention chunk when f > 0, and a whole number of
  periods has exactly the fraction f. f is read as the nearest fraction with a denominator up
  to 10^6 (0.1 is 1/10, not the binary double), so the rule is exact integer arithmetic.
- ``first:K``: the first K chunks (a prefix of K C tokens) in attention, the rest recurrence.
- ``prefill:N``: positions t < N in attention, every later one in recurrence (token-granular):
  the generation use, a prompt of N tokens prefilled in attention and decoded in recurrence.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from hubbench.errors import ConfigError

POLICIES = ("spread", "first:K", "prefill:N")
MAX_DENOMINATOR = 10**6


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class Schedule:
    """The mode of every absolute position for one block.

    kind: "spread" | "first" | "prefill"; chunk: tokens per chunk (the mode's granularity for
    spread and first); fraction: spread's share of attention chunks; count: first's chunks or
    prefill's positions.
    """

    kind: str
    chunk: int
    fraction: Fraction = Fraction(0)
    count: int = 0

    @classmethod
    def parse(cls, policy: str, attn_fraction: float, chunk: int) -> Schedule:
        """Build from the constructor's knobs; `attn_fraction` matters to "spread" only."""
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
            raise ConfigError(f"oryx: chunk must be a positive integer, got {chunk!r}", ("chunk",))
        if isinstance(attn_fraction, bool) or not isinstance(attn_fraction, int | float):
            raise ConfigError(
                f"oryx: attn_fraction must be a number in [0, 1], got {attn_fraction!r}",
                ("attn_fraction",),
            )
        if not 0.0 <= attn_fraction <= 1.0:
            raise ConfigError(
                f"oryx: attn_fraction must lie in [0, 1], got {attn_fraction}", ("attn_fraction",)
            )
        if not isinstance(policy, str):
            raise ConfigError(f"oryx: policy must be a string, got {policy!r}", ("policy",))
        if policy == "spread":
            frac = Fraction(attn_fraction).limit_denominator(MAX_DENOMINATOR)
            return cls("spread", chunk, fraction=frac)
        kind, sep, arg = policy.partition(":")
        if kind in ("first", "prefill") and sep and arg.isascii() and arg.isdigit():
            return cls(kind, chunk, count=int(arg))
        raise ConfigError(
            f"oryx: unknown policy {policy!r}; valid: spread (uses attn_fraction), first:K "
            "(the first K chunks), prefill:N (positions < N), with K, N whole numbers",
            ("policy",),
        )

    def chunk_in_attention(self, c: int) -> bool:
        """Whether chunk c runs in attention (spread and first; prefill is token-granular)."""
        if self.kind == "spread":
            p, q = self.fraction.numerator, self.fraction.denominator
            return _ceil_div((c + 1) * p, q) > _ceil_div(c * p, q)
        if self.kind == "first":
            return c < self.count
        return (c * self.chunk) < self.count  # prefill: the chunk holds some attention token

    def is_attention(self, t: int) -> bool:
        """Whether the token at absolute position t runs in attention mode."""
        if self.kind == "prefill":
            return t < self.count
        return self.chunk_in_attention(t // self.chunk)

    def pieces(self, start: int, stop: int) -> list[tuple[int, int]]:
        """The attention positions in [start, stop) as runs [a, b), each inside one chunk.

        Every run is contiguous (spread and first take whole chunks; prefill a prefix), so a
        run is one block of queries for the attention: at most `chunk` of them.
        """
        out = []
        C = self.chunk
        for c in range(start // C, _ceil_div(stop, C)):
            a, b = max(start, c * C), min(stop, (c + 1) * C)
            if self.kind == "prefill":
                b = min(b, self.count)
            if a < b and (self.kind == "prefill" or self.chunk_in_attention(c)):
                out.append((a, b))
        return out

    def attention_tokens(self, n: int) -> int:
        """How many of positions 0..n-1 run in attention."""
        return sum(b - a for a, b in self.pieces(0, n))
