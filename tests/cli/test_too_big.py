"""Issue 33, item 10: sizes too big for the machine (`verify decode --seeds 1e11`, a batch or
d_model whose tensors cannot be allocated) are the user's request, not a bug in hubbench: one
line saying to ask for less, exit 2; any other exception is still called a bug."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from hubbench.cli import app

runner = CliRunner()


def one_line(args: list[str]) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    [line] = result.stderr.strip().splitlines()
    return line


def test_a_python_memory_error_is_a_user_error() -> None:
    line = one_line(["verify", "decode", "transformer", "--seq", "8", "--seeds", "100000000000"])
    assert line.startswith("error: out of memory (MemoryError): what was asked for does not fit")
    assert "bug" not in line


@pytest.mark.parametrize(
    "raised",
    [
        RuntimeError(
            "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
            "memory: you tried to allocate 64000000000 bytes. Error code 12"
        ),
        type("OutOfMemoryError", (RuntimeError,), {})("CUDA out of memory. Tried to allocate"),
    ],
)
def test_torchs_allocation_failures_are_user_errors(
    monkeypatch: pytest.MonkeyPatch, raised: Exception
) -> None:
    import hubbench.verify.decoding as decoding

    def too_big(*args: object, **kwargs: object) -> None:
        raise raised

    monkeypatch.setattr(decoding, "check_variant", too_big)
    line = one_line(["verify", "decode", "transformer", "--seq", "8", "--batch", "1000000000"])
    assert line.startswith("error: out of memory (") and "ask for less" in line
    assert "bug" not in line


def test_other_exceptions_are_still_bugs(monkeypatch: pytest.MonkeyPatch) -> None:
    import hubbench.verify.decoding as decoding

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(decoding, "check_variant", broken)
    line = one_line(["verify", "decode", "transformer", "--seq", "8"])
    assert line.startswith("internal error: RuntimeError: shape mismatch (a bug in hubbench")
