"""The measuring worker process and the protocol the runner speaks with it.

`python -m hubbench.run.worker BUILDER` imports torch once and then measures cell rounds sent
to it as
JSON lines on stdin, answering one JSON line each ({"outcome": ..., "round": ...}) on a
private copy of stdout; stray prints go to its stderr, kept in a temp file for error messages.
The worker runs in its own session, so Ctrl-C reaches only the runner, which kills it.

BUILDER is 'package.module:function' or 'path/to/file.py:function', called as
`build(variant, config)` with the cell's validated config; tests plant faults and slowdowns
through it, so nothing test-only sits in the measured code.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import importlib.util
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hubbench.measure.cell import MESSAGE_CHARS
from hubbench.plan.cell import Cell

DEFAULT_BUILDER = "hubbench.models:build"
STARTUP_TIMEOUT_S = 120.0


class WorkerDied(Exception):
    pass


class WorkerTimeout(Exception):
    pass


class Worker:
    """The parent's handle on one measuring subprocess."""

    def __init__(self, builder: str = DEFAULT_BUILDER) -> None:
        self.builder = builder
        self.proc: subprocess.Popen | None = None
        self.env: dict[str, Any] = {}
        self._buf = b""
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 -- lives as long as the worker

    def start(self, timeout: float = STARTUP_TIMEOUT_S) -> Worker:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hubbench.run.worker", self.builder],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            start_new_session=True,  # Ctrl-C goes to the runner only
        )
        hello = self._read(timeout)
        self.env = hello.get("env", {})
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def run(self, cell: Cell, timeout: float, count_flops: bool = True) -> dict[str, Any]:
        """One round of `cell` (hubbench.measure.cell.execute_cell's answer)."""
        assert self.proc is not None and self.proc.stdin is not None
        message = {"cell": cell.to_json(), "count_flops": count_flops}
        try:
            self.proc.stdin.write((json.dumps(message) + "\n").encode())
            self.proc.stdin.flush()
        except BrokenPipeError as exc:
            raise WorkerDied(self._death()) from exc
        return self._read(timeout)

    def _read(self, timeout: float) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WorkerTimeout
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise WorkerDied(self._death())
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return json.loads(line)

    def _death(self) -> str:
        assert self.proc is not None
        try:
            code = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()
            code = self.proc.returncode
        if code is not None and code < 0:
            how = f"killed by {signal.Signals(-code).name}"
        else:
            how = f"exited with code {code}"
        tail = self.stderr_tail()
        return f"worker {how} during the cell" + (f"; stderr: {tail}" if tail else "")

    def stderr_tail(self, lines: int = 3) -> str:
        self._stderr.seek(0, os.SEEK_END)
        size = self._stderr.tell()
        self._stderr.seek(max(size - 4096, 0))
        text = self._stderr.read().decode(errors="replace")
        kept = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
        return " | ".join(kept)[-MESSAGE_CHARS:]

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def close(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(b'{"op": "exit"}\n')
                self.proc.stdin.flush()
                self.proc.wait(timeout=5)
            except (BrokenPipeError, OSError, subprocess.TimeoutExpired):
                self.kill()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()
        self._stderr.close()
        self.proc = None


# ----------------------------------------------------------------------------- worker side


def load_builder(spec: str) -> Callable[..., Any]:
    """'package.module:function' or 'path/to/file.py:function'."""
    module_name, _, attr = spec.rpartition(":")
    if module_name.endswith(".py"):
        loader = importlib.util.spec_from_file_location(Path(module_name).stem, module_name)
        if loader is None or loader.loader is None:
            raise ImportError(f"cannot load builder file {module_name}")
        module = importlib.util.module_from_spec(loader)
        loader.loader.exec_module(module)
    else:
        module = importlib.import_module(module_name)
    return getattr(module, attr)


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies, however the parent dies
    (SIGKILL included), so a killed `hubbench run` never leaves a worker spinning on a cell."""
    import ctypes
    import ctypes.util

    pr_set_pdeathsig = 1
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the runner still kills its worker on exit
        return
    if os.getppid() == 1:  # the parent died before the request took effect
        os._exit(1)


def worker_main(builder: str) -> None:
    die_with_parent()
    # Protocol on a private copy of stdout; anything else printed lands in the stderr log.
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    from hubbench.measure.cell import execute_cell
    from hubbench.measure.env import torch_env
    from hubbench.measure.flops import prime

    build = load_builder(builder)
    prime()
    # Everything alive now lives as long as the worker; freezing it keeps the per-cell
    # gc.collect() (which frees the previous cell's autograd cycles) at milliseconds.
    gc.collect()
    gc.freeze()
    proto.write(json.dumps({"ready": True, "env": torch_env()}) + "\n")
    for line in sys.stdin:
        message = json.loads(line)
        if message.get("op") == "exit":
            break
        cell = Cell.from_json(message["cell"])
        answer = execute_cell(cell, build, count_flops=message["count_flops"], builder=builder)
        proto.write(json.dumps(answer) + "\n")


if __name__ == "__main__":
    if len(sys.argv) == 2:
        worker_main(sys.argv[1])
    else:
        sys.exit("usage: python -m hubbench.run.worker MODULE:FUNCTION")
