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

CORPORA = ("pydoc", "shakespeare")  # `data` names that are not files (quality.tasks.load_corpus)
BYTE_VOCAB = 256


def mqar_problem(seq: int, kv_pairs: int, vocab: int) -> str | None:
    """Why MQAR cannot be laid out at this size (None if it can).

    The context (2 kv_pairs tokens) and the queries (each a key and the slot after it, which the
    value should fill: 2 kv_pairs tokens more) must fit with room for gaps: seq >= 4 kv_pairs.
    Keys and values come from disjoint halves of the tokens 1..vocab-1, and the keys of one
    sequence are distinct: (vocab - 1) // 2 >= kv_pairs.
    """
    if seq < 4 * kv_pairs:
        return f"mqar needs seq >= 4 * kv_pairs (seq={seq}, kv_pairs={kv_pairs})"
    if (vocab - 1) // 2 < kv_pairs:
        return (
            f"mqar needs vocab >= 2 * kv_pairs + 1 for distinct keys and disjoint values "
            f"(vocab={vocab}, kv_pairs={kv_pairs})"
        )
    return None


def check_quality(run: Mapping[str, Any], config: Any) -> None:
    """A ConfigError (naming its fields) if the quality cell `run` cannot run on `config`."""
    task = run["task"]
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; valid: {', '.join(TASKS)}", fields=["task"])
    lr = run["lr"]
    if not (math.isfinite(lr) and lr > 0):
        raise ConfigError(f"lr must be a positive number (got {lr})", fields=["lr"])
    vocab = int(getattr(config, "vocab", BYTE_VOCAB))
    if task == "mqar":
        problem = mqar_problem(run["seq"], run["kv_pairs"], vocab)
        if problem:
            raise ConfigError(problem, fields=["seq", "kv_pairs", "vocab"])
        return
    if vocab < BYTE_VOCAB:
        raise ConfigError(
            f"task bytes needs vocab >= {BYTE_VOCAB} (one token per byte; got {vocab})",
            fields=["vocab"],
        )
    data = run["data"]
    if data not in CORPORA and not Path(data).is_file():
        raise ConfigError(
            f"data {data!r} is neither a corpus ({', '.join(CORPORA)}) nor a file",
            fields=["data"],
        )
