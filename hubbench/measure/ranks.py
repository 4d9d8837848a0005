"""A cell at nproc > 1: its timed step run by `nproc` processes under torchrun, data-parallel.

`python -m hubbench.measure.ranks CELL.json OUT.json BUILDER COUNT` is one rank, started by
torchrun (hubbench.measure.launch). Every rank builds the model with the cell's builder (same
seed, so the same weights), joins the process group (gloo on CPU, NCCL on CUDA, one GPU per
rank: cuda:LOCAL_RANK) and builds the cell's step on its own batch (seeded by its rank). fwd_bwd
and train wrap the loss in DistributedDataParallel, so every backward all-reduces the gradients,
as data-parallel training does; fwd, prefill and decode run as independent replicas.

The ranks measure with the one timing loop (hubbench.measure.timing.measure_step) as a Group:
all take the same steps (collectives need it), since every decision of the warm-up and timing
rules is rank 0's, broadcast. Each timed step's time is the slowest rank's, since the step is
done only when every rank is; tokens and FLOPs count every rank (hubbench.measure.result),
memory is the largest rank's. Rank 0 writes the round as JSON. A rank that fails classifies its
own failure (oom, skipped, error), writes it beside the answer (`error_file`, with the time) and
exits at once: it must not wait at a collective the others may never reach (rank 0 can be inside
an all-reduce of the backward), so torchrun sees it exit and stops the other ranks, and the
launcher reports the failure written first, with its rank.

Each rank runs with the cell's `threads`; on CPU, nproc x threads should not exceed the cores
(the run warns when it does).
"""

from __future__ import annotations

import faulthandler
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from hubbench.measure.cell import measure_round
from hubbench.measure.device import torch_device
from hubbench.measure.env import device_name
from hubbench.measure.outcome import classify
from hubbench.measure.process import die_with_parent, load_builder
from hubbench.measure.timing import Group
from hubbench.plan.cell import Cell


def process_group(device: torch.device) -> Group:
    """This rank in the initialised process group, agreeing on rank 0's values."""

    def agree(value: int) -> int:
        tensor = torch.tensor([value], dtype=torch.long, device=device)
        dist.broadcast(tensor, src=0)
        return int(tensor.item())

    def gather(value: Any) -> list[Any]:
        every: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(every, value)
        return every

    return Group(dist.get_rank(), dist.get_world_size(), agree, gather)


def rank_main(cell_file: str, out_file: str, builder: str, count: str) -> None:
    """The body of one torchrun rank (module docstring)."""
    die_with_parent()
    faulthandler.enable()  # a rank that crashes in C code still says where, in the log
    cell = Cell.from_json(json.loads(Path(cell_file).read_text()))
    torch.set_num_threads(cell.threads)
    cuda = cell.device.startswith("cuda")
    device = torch_device(f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    group = process_group(device)
    answer = _measure(cell, builder, count == "1", device, group)
    if "error" in answer:
        _write_atomic(error_file(out_file, group.rank), json.dumps(answer["error"]))
        _exit(1)
    if group.rank == 0:
        _write_atomic(Path(out_file), json.dumps(answer))
    dist.destroy_process_group()
    # Skip the interpreter's teardown: under load, a C++ thread of the rank (torch's or gloo's; it
    # had no Python frame) could abort it ("terminate called without an active exception",
    # SIGABRT) after the answer was written, failing a round that had measured in full (CI;
    # 1 round in 30 on two busy cores here).
    _exit(0)


def _exit(code: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def error_file(out_file: str | Path, rank: int) -> Path:
    """Where rank `rank` writes its failure, beside the round's answer."""
    out = Path(out_file)
    return out.with_name(f"{out.stem}.rank{rank}.error.json")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _measure(
    cell: Cell, builder: str, count: bool, device: torch.device, group: Group
) -> dict[str, Any]:
    """{"round": RoundResult JSON} (rank 0's is the one written), or {"error": this rank's
    failure, with the time it failed}. A successful rank meets the others once more (a gather)
    before it answers: a peer that failed after the last timed step fails that gather (its
    connection closes) instead of leaving a round that looks whole."""
    try:
        build = load_builder(builder)
        result = measure_round(cell, build, device, device_name(device), count, group)
        group.gather(None)
    except Exception as exc:  # every failure of a cell is its row's status
        status, message = classify(exc)
        message = f"rank {group.rank}/{group.world}: {message}"
        return {"error": {"status": status, "message": message, "at": time.time()}}
    return {"round": result.to_json()}


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit("usage: torchrun ... -m hubbench.measure.ranks CELL.json OUT.json BUILDER COUNT")
    rank_main(*sys.argv[1:])
