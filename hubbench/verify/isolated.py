"""Plug-in code in a child process, with a timeout (issue 33).

A plug-in is user code: at import or in its forward it may call `os._exit(0)` (the command
would end with exit 0 and no output: a CI step would pass), hang, crash the interpreter or start
processes that outlive it. `call_isolated(func, *args)` runs `func(*args)` in
`python -m hubbench.verify.isolated REQUEST RESULT`, in a session of its own, and reads the
answer from the RESULT file. No file, a non-zero exit or the timeout raise an IsolatedError that
says which; afterwards the whole process group is killed, so nothing the plug-in started
survives. `verify causal` checks each plug-in so, `verify decode` and `profile` run a plug-in's
check or trace so, and `vet_plugins` imports a spec so before any command imports it itself.

This module stays torch-free: `run --dry-run` vets plug-ins through it.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hubbench.errors import HubbenchError
from hubbench.plan.plugins import PluginError

if TYPE_CHECKING:
    from hubbench.verify.card import CardSettings
    from hubbench.verify.probes import TargetResult
    from hubbench.verify.targets import CardTarget

# seconds a plug-in's import may take where the command has no --timeout of its own
IMPORT_TIMEOUT = 120.0


class IsolatedError(PluginError):
    """The child running plug-in code exited, crashed or hung before it answered."""


class PluginRaised(PluginError):
    """The plug-in code raised in the child: its exception's type and first line."""


def call_isolated(
    label: str, timeout: float, func: Callable[..., Any], *args: Any, **kwargs: Any
) -> Any:
    """`func(*args, **kwargs)` in a child process; its value, or the HubbenchError it raised.

    `func` and its arguments cross by pickle (so `func` is a module-level function). An exception of
    any other kind is a PluginRaised naming `label`; a child that ends without an answer or
    outlives `timeout` seconds is an IsolatedError naming `label`.
    """
    with tempfile.TemporaryDirectory(prefix="hubbench-isolated-") as tmp:
        request, out = Path(tmp) / "request.pkl", Path(tmp) / "result.pkl"
        request.write_bytes(pickle.dumps((func, args, kwargs)))
        stderr_path = Path(tmp) / "stderr.txt"
        with open(stderr_path, "wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "hubbench.verify.isolated", str(request), str(out)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,  # its own process group: killed whole below
                env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")},
            )
            try:
                code: int | None = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                code = None
            finally:
                _kill_group(proc)
        return _answer(label, out, code, stderr_path, timeout)


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill the child's process group: the child if it still runs, and whatever it started."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _answer(label: str, out: Path, code: int | None, stderr: Path, timeout: float) -> Any:
    if code is None:
        raise IsolatedError(f"{label}: did not finish within {timeout:g} s (killed)")
    if code == 0 and out.is_file():
        try:
            kind, payload = pickle.loads(out.read_bytes())
        except Exception as exc:  # whatever the file holds, it is no answer
            raise IsolatedError(f"{label}: unreadable answer from its process ({exc})") from None
        if kind == "value":
            return payload
        if kind == "error":
            raise payload
        raise PluginRaised(f"{label}: raised {payload}".rstrip())
    last = _last_line(stderr)
    why = f"exited with code {code}" if code >= 0 else f"was killed by signal {-code}"
    raise IsolatedError(
        f"{label}: its process {why} before reporting a result" + (f" ({last})" if last else "")
    )


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1][:200] if lines else ""


def _inspect(spec: str) -> None:
    """Import a plug-in spec and read it as planning does (options, source digest)."""
    from hubbench.plan.plugins import inspect_mixer, source_digest

    inspect_mixer(spec)
    source_digest(spec)


def vet_plugins(specs: Iterable[str], timeout: float = IMPORT_TIMEOUT) -> None:
    """Import each spec in a child before this process does: a plug-in that exits, crashes or
    hangs at import is a PluginError naming it, not a silent exit 0 of the command."""
    for spec in dict.fromkeys(specs):
        call_isolated(f"mixer {spec}: importing it", timeout, _inspect, spec)


def check_isolated(target: CardTarget, settings: CardSettings) -> TargetResult:
    """`check_target(target)` in a child process; its failures become the row's status."""
    from hubbench.verify.card import result_for
    from hubbench.verify.checking import check_target

    try:
        return call_isolated(target.label, settings.timeout, check_target, target, settings)
    except HubbenchError as exc:  # check_target answers every failure of its own as a row
        result = result_for(target)
        result.status, result.message = "error", str(exc)
        return result


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


def main(argv: list[str]) -> int:
    """The child: run the request, write the answer (only when done)."""
    request, out = Path(argv[0]), Path(argv[1])
    func, args, kwargs = pickle.loads(request.read_bytes())
    try:
        answer: tuple[str, Any] = ("value", func(*args, **kwargs))
    except HubbenchError as exc:
        answer = ("error", exc)
    except (Exception, SystemExit) as exc:  # the plug-in's: its name and first line cross
        answer = ("raised", _first_line(exc))
    try:
        data = pickle.dumps(answer)
    except Exception as exc:  # what cannot cross says so in one line
        kind, payload = answer
        text = _first_line(payload) if kind == "error" else f"an answer that cannot cross: {exc}"
        data = pickle.dumps(("raised", text))
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
