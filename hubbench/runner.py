"""Cells -> rows: one isolated worker process, reused until it fails; every cell becomes a row.

The worker (`python -m hubbench.runner --worker BUILDER`) imports torch once and then measures
cells sent to it as JSON lines on stdin, answering one JSON line each on a private copy of
stdout (stray prints go to its stderr, kept in a temp file for error messages). Outcomes:
- a Python exception inside the cell: `oom` (CPU allocator / CUDA OOM / MemoryError), `skipped`
  (hubbench.errors.UnavailableError: no CUDA, no flash-attn, no mamba-ssm) or `error`; the worker
  cleans up and takes the next cell;
- the worker dies (segfault, os._exit, killed for memory): `error` with its exit signal and the
  tail of its stderr; a fresh worker takes the next cell;
- no answer within the cell's timeout: the worker is killed, the row is `timeout`.
The worker runs in its own session, so Ctrl-C reaches only the runner, which kills the worker and
leaves the finished rows on disk (the run file is rewritten after every row).

Test-only fault hook: HUBBENCH_TEST_FAULT="hub-gpt=crash,transformer@1024=oom" makes the worker
fail that variant (or variant@seq) on purpose: crash (os._exit), segv, oom, error, hang,
unavailable, interrupt (SIGINT to the runner, then hang). Never set it for real measurements.
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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hubbench import store
from hubbench.env import host_env, utc_now
from hubbench.errors import HubbenchError, UnavailableError
from hubbench.suite import Cell, Plan

DEFAULT_BUILDER = "hubbench.models:build_model"
FAULT_ENV = "HUBBENCH_TEST_FAULT"
STARTUP_TIMEOUT_S = 120.0
MESSAGE_CHARS = 500
# Model config fields with their own column; every config field is also in config_json.
CONFIG_COLUMNS = (
    "dtype", "d_model", "n_layers", "n_heads", "vocab", "attention", "sdpa_kernel", "mamba_impl",
    "hubs", "topk", "neighbours", "chunk", "replace", "causal",
)  # fmt: skip


class WorkerDied(Exception):
    pass


class WorkerTimeout(Exception):
    pass


# ----------------------------------------------------------------------------- parent side


class Worker:
    """One measuring subprocess speaking JSON lines."""

    def __init__(self, builder: str = DEFAULT_BUILDER) -> None:
        self.builder = builder
        self.proc: subprocess.Popen | None = None
        self.env: dict[str, Any] = {}
        self._buf = b""
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 -- lives as long as the worker

    def start(self, timeout: float = STARTUP_TIMEOUT_S) -> Worker:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hubbench.runner", "--worker", self.builder],
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

    def run(self, cell: Cell, timeout: float) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None
        try:
            self.proc.stdin.write((json.dumps({"cell": cell.to_json()}) + "\n").encode())
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


@dataclass
class RunResult:
    path: Path
    run_id: str
    rows: list[dict[str, Any]]  # every row of the run file (resumed ones included)
    new_rows: list[dict[str, Any]] = field(default_factory=list)
    resumed_from: Path | None = None
    skipped_done: int = 0  # cells not run because --resume found them
    interrupted: bool = False


def prepare_run(
    plan: Plan, results_dir: Path, resume: bool = False
) -> tuple[store.RunWriter, str, list[Cell], Path | None]:
    """The run file (new, or the suite's latest with --resume) and the cells still to run."""
    store.check_writable(results_dir)
    previous = store.latest_run(results_dir, plan.suite.name) if resume else None
    if previous is not None:
        rows = store.read_rows(previous)
        done = {r["cell_id"] for r in rows}
        run_id = previous.stem.rpartition("-")[2]
        todo = [c for c in plan.cells if c.cell_id not in done]
        return store.RunWriter(previous, rows), run_id, todo, previous
    run_id = store.new_run_id()
    path = store.run_path(results_dir, plan.suite.name, run_id)
    return store.RunWriter(path), run_id, list(plan.cells), None


def run_plan(
    plan: Plan,
    results_dir: Path,
    *,
    resume: bool = False,
    builder: str = DEFAULT_BUILDER,
    on_start: Callable[[int, int, Cell], None] | None = None,
    on_done: Callable[[dict[str, Any]], None] | None = None,
) -> RunResult:
    """Run the plan's cells in order; each finished cell is on disk before the next starts."""
    writer, run_id, todo, previous = prepare_run(plan, results_dir, resume)
    result = RunResult(
        writer.path,
        run_id,
        writer.rows,
        resumed_from=previous,
        skipped_done=len(plan.cells) - len(todo),
    )
    env = host_env()
    worker: Worker | None = None
    failed_starts = 0
    try:
        for position, cell in enumerate(todo):
            if on_start:
                on_start(position, len(todo), cell)
            if worker is not None and not worker.alive:
                worker = _discard(worker)
            worker = worker or Worker(builder)
            try:
                if not worker.env:
                    worker.start()
                    failed_starts = 0
                outcome = worker.run(cell, cell.timeout_s)
                worker_env = worker.env
            except (WorkerTimeout, WorkerDied) as exc:
                outcome, worker_env = _failure(exc, cell, started=bool(worker.env)), worker.env
                worker = _discard(worker)
                failed_starts += not worker_env
            row = make_row(cell, outcome, plan.suite.name, run_id, {**env, **worker_env})
            writer.append(row)
            result.new_rows.append(row)
            if on_done:
                on_done(row)
            if failed_starts >= 2:
                raise HubbenchError(f"the measuring worker cannot start: {row['message']}")
    except KeyboardInterrupt:
        result.interrupted = True
        worker = _discard(worker)
    finally:
        if worker is not None:
            worker.close()
    return result


def _failure(exc: Exception, cell: Cell, started: bool) -> dict[str, Any]:
    """The row outcome for a worker that died or did not answer in time."""
    if isinstance(exc, WorkerDied):
        return {"status": "error", "message": str(exc)[:MESSAGE_CHARS]}
    if not started:
        return {
            "status": "error",
            "message": f"the worker did not start within {STARTUP_TIMEOUT_S:g} s",
        }
    return {
        "status": "timeout",
        "message": f"no result within the {cell.timeout_s:g} s per-cell timeout "
        "(raise it with --timeout); the worker was killed",
    }


def _discard(worker: Worker | None) -> None:
    if worker is not None:
        worker.kill()
        worker.close()
    return None


def make_row(
    cell: Cell, outcome: Mapping[str, Any], suite: str, run_id: str, env: Mapping[str, Any]
) -> dict[str, Any]:
    config = dict(cell.config)
    row: dict[str, Any] = dict.fromkeys(store.COLUMN_NAMES)
    row |= {
        "schema_version": store.SCHEMA_VERSION,
        "run_id": run_id,
        "suite": suite,
        "cell_index": cell.index,
        "cell_id": cell.cell_id,
        "variant": cell.variant,
        "mode": cell.mode,
        "device": cell.device,
        "batch": cell.batch,
        "seq": cell.seq,
        "compile": cell.compile,
        "warmup": cell.warmup,
        "repeats": cell.repeats,
        "min_time_s": cell.min_time_s,
        "timeout_s": cell.timeout_s,
        "config_json": json.dumps(config, sort_keys=True),
        **{k: config.get(k) for k in CONFIG_COLUMNS},
    }
    row.update({k: v for k, v in env.items() if k in store.COLUMN_NAMES})
    row.update({k: v for k, v in outcome.items() if k in store.COLUMN_NAMES})
    row["utc_time"] = utc_now()
    return row


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


def _test_fault(cell: Cell) -> None:
    """Test-only: see HUBBENCH_TEST_FAULT in the module docstring."""
    spec = os.environ.get(FAULT_ENV, "")
    for item in filter(None, (s.strip() for s in spec.split(","))):
        target, _, fault = item.partition("=")
        variant, _, seq = target.partition("@")
        if variant != cell.variant or (seq and int(seq) != cell.seq):
            continue
        if fault == "crash":
            os._exit(70)
        if fault == "segv":
            os.kill(os.getpid(), signal.SIGSEGV)
        if fault == "interrupt":  # Ctrl-C as the runner sees it, mid-cell
            os.kill(os.getppid(), signal.SIGINT)
            fault = "hang"
        if fault == "hang":
            while True:
                time.sleep(3600)
        if fault == "oom":
            raise RuntimeError(
                "DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes "
                f"({FAULT_ENV})"
            )
        if fault == "unavailable":
            raise UnavailableError(f"unavailable on purpose ({FAULT_ENV})")
        raise ValueError(f"failing on purpose ({FAULT_ENV}={item})")


def classify(exc: BaseException) -> tuple[str, str]:
    """(status, one-line message) for an exception raised while measuring a cell."""
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


def execute_cell(cell: Cell, build: Callable[..., Any]) -> dict[str, Any]:
    """Build, warm up, measure one cell in this process; never raises for a cell's failure."""
    from hubbench.env import device_name, load_calibration
    from hubbench.flops import peak_flops
    from hubbench.measure import derived, measure_step, rss_bytes, trim_heap
    from hubbench.step import build_step, resolve_device

    start = time.perf_counter()  # bookkeeping (wall_s); step timing is measure.py's alone
    out: dict[str, Any] = {"status": "ok", "message": None}
    model = step = None
    try:
        device = resolve_device(cell.device)
        out["device_name"] = device_name(device)  # failed rows too: plots group by device
        _test_fault(cell)
        gc.collect()
        trim_heap()
        baseline = rss_bytes() if device.type == "cpu" else None
        model = build(cell.variant, **cell.model_fields)
        flops = None
        if cell.compile:  # FlopCounterMode cannot see inside compiled graphs: count eagerly
            from hubbench.flops import count_flops

            eager = build_step(model, cell.mode, cell.batch, cell.seq, device)
            flops = count_flops(lambda: (eager.fn(), eager.sync()))
            del eager
        step = build_step(model, cell.mode, cell.batch, cell.seq, device, compile=cell.compile)
        m = measure_step(
            step,
            warmup=cell.warmup,
            repeats=cell.repeats,
            min_time_s=cell.min_time_s,
            count=not cell.compile,
            mem_baseline=baseline,
        )
        if cell.compile:
            m.flops_per_step = flops
        analytic = (
            float(model.flops_analytic(cell.batch, cell.seq, cell.mode))
            if hasattr(model, "flops_analytic")
            else None
        )
        name = out["device_name"]
        dtype = getattr(model.config, "dtype", "fp32")
        peak, source = peak_flops(device.type, name, dtype, load_calibration(device))
        s = m.stats
        out.update(
            backend_attention=m.backends.get("attention"),
            backend_mamba=m.backends.get("mamba"),
            backend_hub=m.backends.get("hubrouter"),
            time_median_s=s.median,
            time_min_s=s.min,
            time_p10_s=s.p10,
            time_p90_s=s.p90,
            time_mean_s=s.mean,
            time_std_s=s.std,
            time_count=s.count,
            samples_s=m.samples,
            tokens_per_step=m.tokens,
            warmup_s=m.warmup_s,
            peak_mem_bytes=m.peak_mem_bytes,
            peak_mem_reserved_bytes=m.peak_mem_reserved_bytes,
            mem_kind=m.mem_kind,
            mem_baseline_bytes=m.mem_baseline_bytes,
            flops_per_step=m.flops_per_step,
            flops_per_step_analytic=analytic,
            peak_flops_per_s=peak,
            peak_flops_source=source,
            params=int(model.num_params()),
            device_name=name,
            **derived(m, analytic, peak),
        )
    except Exception as exc:  # every failure of a cell is its row's status
        out["status"], out["message"] = classify(exc)
    finally:
        del model, step
        gc.collect()
        _empty_cuda_cache()
    out["wall_s"] = time.perf_counter() - start
    return out


def _empty_cuda_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def worker_main(builder: str) -> None:
    # Protocol on a private copy of stdout; anything else printed lands in the stderr log.
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    from hubbench.env import torch_env
    from hubbench.flops import prime

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
        proto.write(json.dumps(execute_cell(cell, build)) + "\n")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        worker_main(sys.argv[2])
    else:
        sys.exit("usage: python -m hubbench.runner --worker MODULE:FUNCTION")
