"""A cell at nproc > 1: its timed step run by `nproc` processes under torchrun, data-parallel.

The worker (hubbench.measure.cell) calls `launch`, which runs

    python -m torch.distributed.run --standalone --nproc-per-node N -m hubbench.measure.ranks ...

and waits. Every rank builds the model with the cell's builder (same seed, so the same weights),
joins the process group (gloo on CPU, NCCL on CUDA, one GPU per rank: cuda:LOCAL_RANK) and
builds the cell's step on its own batch (seeded by its rank). fwd_bwd and train wrap the loss in
DistributedDataParallel, so every backward all-reduces the gradients, as data-parallel training
does; fwd, prefill and decode run as independent replicas. All ranks take the same number of
steps (collectives need it): the warm-up is `warmup` steps, plus more while rank 0 has warmed up
for less than warmup_min_s; the timing is `repeats` steps, plus more while rank 0 has timed less
than min_time_s (warmup_max_s's settling rule does not apply). Each timed step's time is the
slowest rank's, since the step is done only when every rank is; tokens and FLOPs count every
rank (hubbench.measure.cell.round_result), memory is the largest rank's. Rank 0 writes the round as
JSON; a rank's failure is classified there (oom, skipped, error) and reported with its rank.

Each rank runs with the cell's `threads`; on CPU, nproc x threads should not exceed the cores
(the run warns when it does).

At nnodes > 1 the cell runs in a cluster job with one task per node (hubbench.run.executors).
Task 0,
the leader, measures the job's cells as a one-node job does; for each round, `launch` posts the
round (the cell, the rendezvous address and a free port) as `round-K.json` in the job's mailbox
folder and runs torchrun as node 0 of nnodes (static rendezvous, no --standalone). The other
tasks (`follow`) run each posted round, in order, as node 1, 2, ...; a follower gives up on a
round when the leader posts the next one or the end (the leader's round failed or timed out) and
stops when the leader's heartbeat goes stale. Only global rank 0, on the leader, writes the round.
"""

from __future__ import annotations

import faulthandler
import itertools
import json
import math
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from hubbench.measure.cell import RankFailure
from hubbench.measure.metrics import RoundResult
from hubbench.plan.cell import Cell

LOG_TAIL = 2000
NODES_ENV = "HUBBENCH_NODES"  # a multi-node job's mailbox folder (set by its leader task)
ADDR_ENV = "HUBBENCH_NODES_ADDR"  # the leader's address, for the rendezvous
HEARTBEAT_S = 5.0
STALE_S = 60.0  # a leader silent this long is gone
JOIN_S = 600.0  # a follower waits this long for its leader to start


def torchrun_command(
    cell: Cell,
    cell_file: Path,
    out_file: Path,
    builder: str,
    count: bool,
    nodes: list[str] | None = None,
) -> list[str]:
    """torchrun for one node of the round: `nodes` is its rendezvous options (default: one node,
    --standalone)."""
    return [
        sys.executable, "-m", "torch.distributed.run", *(nodes or ["--standalone"]),
        f"--nproc-per-node={cell.nproc}", "-m", "hubbench.measure.ranks",
        str(cell_file), str(out_file), builder, str(int(count)),
    ]  # fmt: skip


def node_options(nnodes: int, node: int, addr: str, port: int) -> list[str]:
    return [f"--nnodes={nnodes}", f"--node-rank={node}", f"--master-addr={addr}",
            f"--master-port={port}"]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def _post_round(cell: Cell, builder: str, count: bool) -> list[str]:
    """Post this round to the job's other nodes; node 0's rendezvous options."""
    box = os.environ.get(NODES_ENV)
    if not box:
        raise RankFailure(
            "error",
            f"nnodes={cell.nnodes} runs in a cluster job with a task per node: --executor slurm "
            "(or submitit-local, which runs the nodes as tasks on this host)",
        )
    addr = os.environ.get(ADDR_ENV) or socket.gethostname()
    port = _free_port()
    folder = Path(box)
    k = sum(1 for _ in folder.glob("round-*.json"))
    post = {"cell": cell.to_json(), "builder": builder, "count": count, "addr": addr, "port": port}
    _write_atomic(folder / f"round-{k:05d}.json", json.dumps(post))
    return node_options(cell.nnodes, 0, addr, port)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def launch(cell: Cell, builder: str, count_flops: bool) -> RoundResult:
    """One round of `cell` under torchrun; raises RankFailure for a failed rank or launch."""
    nodes = _post_round(cell, builder, count_flops) if cell.nnodes > 1 else None
    with tempfile.TemporaryDirectory(prefix="hubbench-ddp-") as tmp:
        cell_file, out_file, log_file = (
            Path(tmp, "cell.json"),
            Path(tmp, "round.json"),
            Path(tmp, "torchrun.log"),
        )
        cell_file.write_text(json.dumps(cell.to_json()))
        env = {**os.environ, "OMP_NUM_THREADS": str(cell.threads), "PYTHONUNBUFFERED": "1"}
        with log_file.open("wb") as log:
            code = subprocess.call(
                torchrun_command(cell, cell_file, out_file, builder, count_flops, nodes),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                preexec_fn=_die_with_parent,  # the worker killed for a timeout takes it along
            )
        # Rank 0 writes the answer once every rank has reported, so an answer is the whole
        # round even where a rank then failed to exit cleanly.
        answer = json.loads(out_file.read_text()) if out_file.exists() else None
        if answer is not None and answer.get("error"):
            raise RankFailure(answer["error"]["status"], answer["error"]["message"])
        if answer is None:
            tail = _first_error(log_file.read_text(errors="replace"))
            raise RankFailure("error", f"torchrun exited with code {code}: {tail}")
        return RoundResult.from_json(answer["round"])


# ----------------------------------------------------------------------------- nodes of a job


@contextmanager
def leading(box: Path, addr: str) -> Iterator[None]:
    """The leader task's side: the mailbox set up for `launch`, a heartbeat, the end posted."""
    box.mkdir(parents=True, exist_ok=True)
    alive = box / "alive"
    alive.touch()
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            alive.touch()

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    before = {k: os.environ.get(k) for k in (NODES_ENV, ADDR_ENV)}
    os.environ[NODES_ENV], os.environ[ADDR_ENV] = str(box), addr
    try:
        yield
    finally:
        stop.set()
        (box / "end").touch()
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _leader_gone(box: Path, waited: float) -> bool:
    alive = box / "alive"
    if not alive.exists():
        return waited > JOIN_S
    return time.time() - alive.stat().st_mtime > STALE_S


def follow(box: Path, node: int, poll_s: float = 0.2) -> int:
    """A follower task's side: run every round the leader posts, as node `node`, until it posts
    the end or goes silent; the number of rounds run."""
    started = time.monotonic()
    k = 0
    while True:
        post = box / f"round-{k:05d}.json"
        if post.exists():
            _run_as_node(json.loads(post.read_text()), node, box, k, poll_s)
            k += 1
            continue
        if (box / "end").exists() or _leader_gone(box, time.monotonic() - started):
            return k
        time.sleep(poll_s)


def _run_as_node(post: dict[str, Any], node: int, box: Path, k: int, poll_s: float) -> None:
    cell = Cell.from_json(post["cell"])
    nodes = node_options(cell.nnodes, node, post["addr"], post["port"])
    with tempfile.TemporaryDirectory(prefix="hubbench-node-") as tmp:
        cell_file = Path(tmp, "cell.json")
        cell_file.write_text(json.dumps(post["cell"]))
        command = torchrun_command(cell, cell_file, Path(tmp, "round.json"), post["builder"],
                                   post["count"], nodes)  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": str(cell.threads), "PYTHONUNBUFFERED": "1"}
        with (box / f"node-{node}.log").open("ab") as log:
            log.write(f"== round {k}\n".encode())
            log.flush()
            proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)  # fmt: skip
            try:
                while proc.poll() is None:
                    given_up = (box / f"round-{k + 1:05d}.json").exists() or (box / "end").exists()
                    if given_up or _leader_gone(box, 0.0):  # the leader moved on without us
                        _kill_group(proc)
                        break
                    time.sleep(poll_s)
            finally:
                if proc.poll() is None:
                    _kill_group(proc)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    import signal

    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _die_with_parent() -> None:
    from hubbench.run.worker import die_with_parent

    die_with_parent()


_EXCEPTION = re.compile(
    r"^(?:\[rank(\d+)\]:\s*)?((?:[A-Za-z_][\w.]*\.)?\w*(?:Error|Exception)\b.*)$"
)
_FAULT_FRAME = re.compile(r'^File ".*", line \d+ in ')  # faulthandler's, not a traceback's
_ROOT_FIELD = re.compile(r"^(rank|exitcode|traceback)\s*:\s*(.*)$")


def _first_error(log: str) -> str:
    """What a failed torchrun's log says went wrong, on one line. torchrun names the rank that
    failed first (its "Root Cause"); the others only report losing it. That rank's exception if
    it raised one, else how it ended (a signal, with the frame faulthandler printed: a crash in
    C code raises nothing); without a root cause, the first exception; else the last line."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    raised: dict[str | None, str] = {}
    for line in lines:
        found = _EXCEPTION.match(line)
        if found and "ChildFailedError" not in line:
            raised.setdefault(found[1], found[2])
    start = next((i for i, line in enumerate(lines) if line.startswith("Root Cause")), None)
    if start is None:
        first = next(iter(raised.items()), None)
        if first is None:
            return (lines[-1] if lines else "no output")[-400:]
        return (f"rank {first[0]}: {first[1]}" if first[0] else first[1])[-400:]
    root: dict[str, str] = {}
    for line in lines[start:]:
        found = _ROOT_FIELD.match(line)
        if found:
            root.setdefault(found[1], found[2].strip())
    rank = root.get("rank", "?").split(" ")[0]
    if rank in raised:
        return f"rank {rank}: {raised[rank]}"[-400:]
    how = root.get("traceback", "")
    text = f"rank {rank} ended with " + (
        how if how.startswith("Signal") else f"exit code {root.get('exitcode', '?').split(' ')[0]}"
    )
    fatal = next((i for i, line in enumerate(lines) if line.startswith("Fatal Python error")), None)
    if fatal is not None:
        block = itertools.takewhile(lambda x: not x.startswith("Extension modules"), lines[fatal:])
        frame = next((x for x in block if _FAULT_FRAME.match(x)), "")
        text += f"; {lines[fatal]}" + (f" at {frame}" if frame else "")
    return text[-400:]


# ----------------------------------------------------------------------------- a rank


def _agree(value: int, device: Any) -> int:
    """Rank 0's `value` on every rank."""
    import torch
    import torch.distributed as dist

    tensor = torch.tensor([value], dtype=torch.long, device=device)
    dist.broadcast(tensor, src=0)
    return int(tensor.item())


def _more_steps(elapsed: float, steps: int, target_s: float) -> int:
    """Steps to add so that `steps` taking `elapsed` seconds reach `target_s` (rank 0's view)."""
    if elapsed >= target_s or steps == 0:
        return 0
    return math.ceil((target_s - elapsed) / (elapsed / steps))


def measure_rank(cell: Cell, build: Any, count: bool, rank: int, world: int, device: Any) -> Any:
    """This rank's part of the round: (RoundResult fields of rank 0's view, samples, peak)."""
    import torch.distributed as dist

    from hubbench.measure.cell import round_result
    from hubbench.measure.env import device_name
    from hubbench.measure.step import build_step
    from hubbench.measure.timing import (
        MAX_REPEATS,
        Measurement,
        PeakMemory,
        rss_bytes,
        sentinel_s,
        summarize,
        time_calls,
        trim_heap,
    )
    from hubbench.measure.timing import _synced as synced

    sentinel = sentinel_s() if rank == 0 else None
    trim_heap()
    baseline = rss_bytes() if device.type == "cpu" else None
    model = build(cell.variant, cell.config)
    step = build_step(model, cell.mode, cell.batch, cell.seq, device, seed=rank,
                      decode_tokens=cell.decode_tokens, data_parallel=True)  # fmt: skip
    settings = cell.measure
    started = time.perf_counter()
    flops = None
    if count:
        from hubbench.measure.flops import count_flops

        flops = count_flops(synced(step))
    run = synced(step)
    steps = int(count)
    for _ in range(max(0, settings.warmup - steps)):
        run()
    steps = max(steps, settings.warmup)
    extra = _agree(_more_steps(time.perf_counter() - started, steps, settings.warmup_min_s), device)
    for _ in range(extra):
        run()
    warmup_s = time.perf_counter() - started
    memory = PeakMemory(step.device, baseline)
    with memory:
        samples = time_calls(step.fn, device=step.device, repeats=settings.repeats)
        while True:  # rank 0's estimate, agreed; again until its timed steps reach min_time_s
            more = _more_steps(sum(samples), len(samples), settings.min_time_s)
            more = _agree(min(more, max(0, MAX_REPEATS - len(samples))), device)
            if not more:
                break
            samples += time_calls(step.fn, device=step.device, repeats=more)
    every = [None] * world
    dist.all_gather_object(every, (samples, memory.peak, memory.reserved))
    slowest = [max(times) for times in zip(*(e[0] for e in every), strict=True)]
    peaks = [e[1] for e in every if e[1] is not None]
    reserved = [e[2] for e in every if e[2] is not None]
    measured = Measurement(
        samples=slowest,
        stats=summarize(slowest),
        tokens=step.tokens,
        peak_mem_bytes=max(peaks) if peaks else None,
        peak_mem_reserved_bytes=max(reserved) if reserved else None,
        mem_kind=memory.kind,
        mem_baseline_bytes=memory.baseline,
        flops_per_step=flops,
        warmup_s=warmup_s,
        warmup_steps=steps + extra,
        warmup_capped=False,
        backends=dict(model.backends()) if hasattr(model, "backends") else {},
    )
    return round_result(cell, model, step, measured, None, device_name(device), sentinel, world)


def rank_main(cell_file: str, out_file: str, builder: str, count: str) -> None:
    """The body of one torchrun rank (module docstring)."""
    from hubbench.run.worker import die_with_parent, load_builder

    die_with_parent()
    faulthandler.enable()  # a rank that crashes in C code still says where, in the log
    import torch
    import torch.distributed as dist

    from hubbench.measure.cell import classify

    cell = Cell.from_json(json.loads(Path(cell_file).read_text()))
    torch.set_num_threads(cell.threads)
    cuda = cell.device.startswith("cuda")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    result: RoundResult | None = None
    error = None
    try:
        result = measure_rank(cell, load_builder(builder), count == "1", rank, world, device)
    except Exception as exc:  # every failure of a cell is its row's status
        status, message = classify(exc)
        error = {"status": status, "message": f"rank {rank}/{world}: {message}"}
    errors = [None] * world
    dist.all_gather_object(errors, error)
    if rank == 0:
        first = next((e for e in errors if e), None)
        answer = {"error": first} if first else {"round": result.to_json() if result else None}
        tmp = Path(out_file).with_suffix(".tmp")
        tmp.write_text(json.dumps(answer))
        tmp.replace(out_file)
    dist.destroy_process_group()
    # Skip the interpreter's teardown: under load, a C++ thread of the rank (torch's or gloo's; it
    # had no Python frame) could abort it ("terminate called without an active exception",
    # SIGABRT) after the answer was written, failing a round that had measured in full (CI;
    # 1 round in 30 on two busy cores here).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit("usage: torchrun ... -m hubbench.measure.ranks CELL.json OUT.json BUILDER COUNT")
    rank_main(*sys.argv[1:])
