"""A plug-in's causality check in a child process, with a timeout (issue 33).

A plug-in is user code: it may call `os._exit(0)` in its forward (the check would end with exit
0 and no output: a CI step would pass), hang, crash the interpreter or start processes that
outlive it. Here it runs in `python -m hubbench.verify.isolated REQUEST RESULT` in a session of
its own; the parent reads the row from the RESULT file. No file, a non-zero exit or the timeout
make the row an ERROR that says which; afterwards the whole process group is killed, so nothing
the plug-in started survives the check.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from hubbench.verify.card import CardSettings, result_for
from hubbench.verify.probes import TargetResult
from hubbench.verify.targets import CardTarget


def check_isolated(target: CardTarget, settings: CardSettings) -> TargetResult:
    """`check_target(target)` in a child process; its failures become the row's status."""
    with tempfile.TemporaryDirectory(prefix="hubbench-verify-") as tmp:
        request, out = Path(tmp) / "request.json", Path(tmp) / "result.json"
        request.write_text(json.dumps({"target": asdict(target), "settings": asdict(settings)}))
        stderr_path = Path(tmp) / "stderr.txt"
        with open(stderr_path, "wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "hubbench.verify.isolated", str(request), str(out)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,  # its own process group: killed whole below
                env={**os.environ, "OMP_NUM_THREADS": "1"},
            )
            try:
                code: int | None = proc.wait(timeout=settings.timeout)
            except subprocess.TimeoutExpired:
                code = None
            finally:
                _kill_group(proc)
        return _read(target, out, code, stderr_path, settings.timeout)


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill the child's process group: the child if it still runs, and whatever it started."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _read(
    target: CardTarget, out: Path, code: int | None, stderr: Path, timeout: float
) -> TargetResult:
    result = result_for(target)
    result.status = "error"
    if code is None:
        result.message = f"{target.label}: the check did not finish within {timeout:g} s (killed)"
        return result
    if code == 0 and out.is_file():
        try:
            return TargetResult.from_json(json.loads(out.read_text()))
        except (ValueError, TypeError, KeyError) as exc:
            result.message = f"{target.label}: unreadable result from the check ({exc})"
            return result
    last = _last_line(stderr)
    why = f"exited with code {code}" if code >= 0 else f"was killed by signal {-code}"
    result.message = f"{target.label}: the check's process {why} before reporting a result" + (
        f" ({last})" if last else ""
    )
    return result


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1][:200] if lines else ""


def main(argv: list[str]) -> int:
    """The child: read the request, check the target, write the row (only when done)."""
    from hubbench.verify.checking import check_target

    request, out = Path(argv[0]), Path(argv[1])
    data = json.loads(request.read_text())
    t = data["target"]
    tuples = {k: tuple(t[k]) for k in ("notes", "peers", "unknown")}
    target = CardTarget(**{**t, **tuples})
    settings = CardSettings(**{**data["settings"], "seeds": tuple(data["settings"]["seeds"])})
    result = check_target(target, settings)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result.to_json()))
    os.replace(tmp, out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
