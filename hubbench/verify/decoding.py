"""Decode equivalence: incremental inference must give the parallel forward's logits.

Two paths compute the same function: the parallel forward (what training and the throughput
modes run) and the recurrent one (`LanguageModel.prefill` then `decode`, token by token, with a
KV cache, Mamba's conv and SSM state, HubRouter's hub, member and chunk state). A difference is
a bug in one of them. `check_decode` compares them in float64, eval mode, at every position:

- token by token: from the empty state, each token's logits against the forward's at its
  position;
- prefill then decode: for several prompt lengths p (chunk boundaries C-1, C, C+1 among them,
  and lengths that are not multiples of C), prefill's logits for the prompt and then each
  decoded token's against the forward.

Inputs: random tokens per seed, and a text with repeated words (`TEXT`): a token that recurs
within a chunk scores exactly the same as its twin in a layer that reads embeddings, so the
members' tie-breaking (score, then position) is exercised too.

A case passes when the largest absolute difference is at most `atol` (float64 rounding gives
about 1e-15 here; a wrong cache gives differences of order 1e-2 and more). Scores that differ
only by rounding rank alike in both paths (hubrouter.rank_key), unless they straddle a rounding
step of the key, which is rare.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from hubbench.errors import HubbenchError
from hubbench.plan.variants import inert_fields

ATOL = 1e-9
TEXT = b"the cat sat on the mat, and the cat sat on the hat; so the cat sat. the end. "


class DecodeMismatch(HubbenchError):
    """The recurrent path disagrees with the parallel forward (a finding, so exit code 1)."""

    exit_code = 1


@dataclass
class DecodeCase:
    name: str  # "token by token" | "prefill p"
    max_diff: float
    first_bad: int | None  # first position whose logits differ by more than atol
    positions: int

    def passed(self, atol: float) -> bool:
        return self.max_diff <= atol


@dataclass
class DecodeReport:
    n: int
    batch: int
    seeds: tuple[int, ...]
    atol: float
    cases: list[DecodeCase] = field(default_factory=list)
    state_bytes: dict[str, int] = field(default_factory=dict)  # per kind, per sequence, at n

    @property
    def passed(self) -> bool:
        return all(c.passed(self.atol) for c in self.cases)

    @property
    def max_diff(self) -> float:
        return max((c.max_diff for c in self.cases), default=0.0)


def default_prefixes(n: int, chunk: int | None) -> tuple[int, ...]:
    """Prompt lengths to test: chunk boundaries and a length past two chunks, or a few."""
    if chunk:
        wanted: Iterable[int] = (1, chunk - 1, chunk, chunk + 1, 2 * chunk + 3, n - 1)
    else:
        wanted = (1, n // 3, n // 2 + 1, n - 1)
    return tuple(sorted({p for p in wanted if 1 <= p < n}))


def _compare(
    got: torch.Tensor, want: torch.Tensor, start: int, atol: float
) -> tuple[float, int | None]:
    """Largest |got - want| over (B, T, V) and the first position (start + t) beyond atol."""
    diff = (got - want).abs().amax(dim=(0, 2))  # (T,)
    diff = torch.nan_to_num(diff, nan=float("inf"))  # a NaN logit is a mismatch
    bad = (diff > atol).nonzero()
    return float(diff.max()), (start + int(bad[0, 0]) if len(bad) else None)


def check_decode(
    model: nn.Module,
    n: int = 43,
    batch: int = 2,
    seeds: tuple[int, ...] = (0, 1),
    prefixes: tuple[int, ...] | None = None,
    atol: float = ATOL,
) -> DecodeReport:
    """Compare a LanguageModel's recurrent path with its forward (float64 eval-mode copy)."""
    if n < 2:
        raise ValueError(f"n must be >= 2 (got {n})")
    m = copy.deepcopy(model).to(dtype=torch.float64).eval()
    prefixes = default_prefixes(n, boundary(m)) if prefixes is None else prefixes
    vocab = m.config.vocab
    report = DecodeReport(n, batch, tuple(seeds), atol)
    cases: dict[str, DecodeCase] = {}

    def record(name: str, diff: float, first: int | None, count: int) -> None:
        case = cases.setdefault(name, DecodeCase(name, 0.0, None, 0))
        case.max_diff = max(case.max_diff, diff)
        if first is not None and (case.first_bad is None or first < case.first_bad):
            case.first_bad = first
        case.positions += count

    text = torch.tensor(list(TEXT * (n // len(TEXT) + 1))[:n]) % vocab
    probes = [torch.randint(0, vocab, (batch, n), generator=torch.Generator().manual_seed(seed))
              for seed in seeds] + [text.expand(batch, n)]  # fmt: skip
    with torch.no_grad():
        for idx in probes:
            full = m(idx)  # (B, n, V)
            state = m.empty_state(batch, n)
            steps = torch.cat([m.decode(idx[:, t : t + 1], state) for t in range(n)], 1)
            record("token by token", *_compare(steps, full, 0, atol), n)
            for p in prefixes:
                logits, state = m.prefill(idx[:, :p], n, all_logits=True)
                rest = [m.decode(idx[:, t : t + 1], state) for t in range(p, n)]
                got = torch.cat([logits, *rest], 1)
                record(f"prefill {p}", *_compare(got, full, 0, atol), n)
            if idx is probes[0]:
                _, state = m.prefill(idx, n)
                report.state_bytes = {k: v // batch for k, v in state.bytes_by_kind().items()}
    report.cases = list(cases.values())
    return report


# config fields that cut a sequence into pieces a decode step must cross exactly as the forward
# does: HubRouter's and the recurrences' chunks, MoBA's and NSA's blocks, a sliding window
BOUNDARY_FIELDS = ("chunk", "block", "window", "cmp_block")


def boundary(model: nn.Module) -> int | None:
    """The smallest piece the model's mixers cut a sequence into (prompts are cut around it and
    its multiples), None when no mixer has one (attention, Mamba-1)."""
    config = getattr(model, "config", None)
    kinds = {getattr(b, "kind", None) for b in getattr(model, "blocks", [])}
    if config is None or not kinds - {"attention", "mamba", "mlp", None}:
        return None
    inert = inert_fields(config)
    sizes = [getattr(config, f) for f in BOUNDARY_FIELDS
             if isinstance(getattr(config, f, None), int) and f not in inert]  # fmt: skip
    return min(sizes, default=None)


def check_variant(
    variant: str, fields: dict, n: int, batch: int, seeds: tuple[int, ...]
) -> DecodeReport:
    """Build `variant` from its config fields and check it: one picklable call, so that a
    plug-in's check runs in a child process (hubbench.verify.isolated) as a whole."""
    from hubbench.models import build
    from hubbench.plan.variants import make_config

    return check_decode(build(variant, make_config(variant, **fields)), n=n, batch=batch,
                        seeds=seeds)  # fmt: skip
