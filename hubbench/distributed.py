"""A cell at nproc > 1: its timed step run by `nproc` processes under torchrun, data-parallel.

The worker (hubbench.execute) calls `launch`, which runs

    python -m torch.distributed.run --standalone --nproc-per-node N -m hubbench.distributed ...

and waits. Every rank builds the model with the cell's builder (same seed, so the same weights),
joins the process group (gloo on CPU, NCCL on CUDA, one GPU per rank: cuda:LOCAL_RANK) and
builds the cell's step on its own batch (seeded by its rank). fwd_bwd and train wrap the loss in
DistributedDataParallel, so every backward all-reduces the gradients, as data-parallel training
does; fwd, prefill and decode run as independent replicas. All ranks take the same number of
steps (collectives need it): the warm-up is `warmup` steps, plus more while rank 0 has warmed up
for less than warmup_min_s; the timing is `repeats` steps, plus more while rank 0 has timed less
than min_time_s (warmup_max_s's settling rule does not apply). Each timed step's time is the
slowest rank's, since the step is done only when every rank is; tokens and FLOPs count every
rank (hubbench.execute.round_result), memory is the largest rank's. Rank 0 writes the round as
JSON; a rank's failure is classified there (oom, skipped, error) and reported with its rank.

Each rank runs with the cell's `threads`; on CPU, nproc x threads should not exceed the cores
(the run warns when it does).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from hubbench.cell import Cell
from hubbench.execute import RankFailure
from hubbench.metrics import RoundResult

LOG_TAIL = 2000


def torchrun_command(
    cell: Cell, cell_file: Path, out_file: Path, builder: str, count: bool
) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc-per-node={cell.nproc}", "-m", "hubbench.distributed",
        str(cell_file), str(out_file), builder, str(int(count)),
    ]  # fmt: skip


def launch(cell: Cell, builder: str, count_flops: bool) -> RoundResult:
    """One round of `cell` under torchrun; raises RankFailure for a failed rank or launch."""
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
                torchrun_command(cell, cell_file, out_file, builder, count_flops),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                preexec_fn=_die_with_parent,  # the worker killed for a timeout takes it along
            )
        answer = json.loads(out_file.read_text()) if out_file.exists() else None
        if answer is not None and answer.get("error"):
            raise RankFailure(answer["error"]["status"], answer["error"]["message"])
        if code != 0 or answer is None:
            tail = _first_error(log_file.read_text(errors="replace"))
            raise RankFailure("error", f"torchrun exited with code {code}: {tail}")
        return RoundResult.from_json(answer["round"])


def _die_with_parent() -> None:
    from hubbench.worker import die_with_parent

    die_with_parent()


def _first_error(log: str) -> str:
    """The line of a torchrun log that says what went wrong, else its last line."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    for line in lines:
        if "Error" in line and not line.startswith(("Traceback", "File ")):
            return line[-400:]
    return (lines[-1] if lines else "no output")[-400:]


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

    from hubbench.env import device_name
    from hubbench.execute import round_result
    from hubbench.measure import (
        MAX_REPEATS,
        Measurement,
        PeakMemory,
        rss_bytes,
        sentinel_s,
        summarize,
        time_calls,
        trim_heap,
    )
    from hubbench.measure import _synced as synced
    from hubbench.step import build_step

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
        from hubbench.flops import count_flops

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
    from hubbench.worker import die_with_parent, load_builder

    die_with_parent()
    import torch
    import torch.distributed as dist

    from hubbench.execute import classify

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


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit("usage: torchrun ... -m hubbench.distributed CELL.json OUT.json BUILDER COUNT")
    rank_main(*sys.argv[1:])
