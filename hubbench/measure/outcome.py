"""A failed round's outcome: every exception raised while measuring a cell becomes a status.

`oom` (CPU allocator / CUDA OOM / MemoryError), `skipped` (UnavailableError: no CUDA, no
flash-attn, no mamba-ssm) or `error` (any other exception), with a one-line message. A rank of a
torchrun launch classifies its own failure and the worker passes it on as a RankFailure.
"""

from __future__ import annotations

from hubbench.errors import UnavailableError

MESSAGE_CHARS = 500  # the longest message a row keeps


class RankFailure(Exception):
    """A cell that failed on a rank of its torchrun launch, already classified there."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def classify(exc: BaseException) -> tuple[str, str]:
    """(status, one-line message) for an exception raised while measuring a cell."""
    if isinstance(exc, RankFailure):
        return exc.status, exc.message[:MESSAGE_CHARS]
    text = " ".join(str(exc).split())
    if isinstance(exc, UnavailableError):
        return "skipped", text[:MESSAGE_CHARS]
    lowered = text.lower()
    oom = isinstance(exc, MemoryError) or (
        isinstance(exc, RuntimeError)
        and ("out of memory" in lowered or "can't allocate memory" in lowered)
    )
    message = f"{type(exc).__name__}: {text}"[:MESSAGE_CHARS]
    return ("oom" if oom else "error"), message
