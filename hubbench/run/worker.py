"""The parent's handle on a measuring worker process (hubbench.measure.entry).

The runner starts `python -m hubbench.measure.entry BUILDER`, sends it one cell round at a time
as a JSON line on its stdin and reads one JSON line back per round; the worker's stderr is kept
in a temp file for error messages. The worker runs in its own session, so Ctrl-C reaches only the
runner, which kills it. A same-run A/B's baseline worker gets `pythonpath` (REF's worktree) ahead
of the installed package; its hello (`hello`) says which file and commit it imported.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

from hubbench.measure.env import malloc_env
from hubbench.measure.launch import TMP_ENV
from hubbench.measure.outcome import MESSAGE_CHARS
from hubbench.measure.process import DEFAULT_BUILDER
from hubbench.plan.cell import Cell

STARTUP_TIMEOUT_S = 120.0


class WorkerDied(Exception):
    pass


class WorkerTimeout(Exception):
    pass


class Worker:
    """The parent's handle on one measuring subprocess."""

    def __init__(self, builder: str = DEFAULT_BUILDER, pythonpath: str | None = None) -> None:
        self.builder = builder
        self.pythonpath = pythonpath
        self.proc: subprocess.Popen | None = None
        self.env: dict[str, Any] = {}
        self.hello: dict[str, Any] = {}
        self._buf = b""
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 -- lives as long as the worker
        # its scratch folder (torchrun's round files): removed in close(), whatever killed it
        self.scratch = tempfile.mkdtemp(prefix="hubbench-worker-")

    def start(self, timeout: float = STARTUP_TIMEOUT_S) -> Worker:
        env, isolate = malloc_env(dict(os.environ)), []
        env[TMP_ENV] = self.scratch
        if self.pythonpath is not None:  # -P: the cwd's hubbench must not come first either
            isolate = ["-P"]
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (self.pythonpath, env.get("PYTHONPATH")) if p
            )
        self.proc = subprocess.Popen(
            [sys.executable, *isolate, "-m", "hubbench.measure.entry", self.builder],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            start_new_session=True,  # Ctrl-C goes to the runner only
            env=env,
        )
        self.hello = self._read(timeout)
        self.env = self.hello.get("env", {})
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
            self._kill_group()
            self.proc.wait()

    def _kill_group(self) -> None:
        """SIGKILL to the worker's process group (its own session): the worker if it is still
        there, and whatever it started that outlived it (a plug-in's child processes, which
        were left running under PID 1 after the run ended)."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def close(self) -> None:
        if self.proc is None:
            shutil.rmtree(self.scratch, ignore_errors=True)
            return
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(b'{"op": "exit"}\n')
                self.proc.stdin.flush()
                self.proc.wait(timeout=5)
            except (BrokenPipeError, OSError, subprocess.TimeoutExpired):
                self.kill()
        self._kill_group()  # the group outlives a worker that exited: its children stay in it
        shutil.rmtree(self.scratch, ignore_errors=True)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()
        self._stderr.close()
        self.proc = None
