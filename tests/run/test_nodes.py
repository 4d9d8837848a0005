"""nnodes > 1: a cell's torchrun across a job's tasks, one per node (hubbench.run.nodes).

On this machine the "nodes" are submitit-local tasks on one host: the leader posts each round,
the followers join its rendezvous as node 1, 2, ...; on Slurm the same code runs one task per
node.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from builders import FAULT_ENV, faults
from torchrun_cells import BUILDER, cell

from hubbench import store
from hubbench.errors import ConfigError
from hubbench.measure import launch
from hubbench.measure.outcome import RankFailure
from hubbench.plan.executor import ExecutorSpec
from hubbench.plan.suite import Plan
from hubbench.run import nodes
from hubbench.run.jobs import shard
from hubbench.run.parts import jobs_folder
from hubbench.run.rows import CellState
from hubbench.run.runner import run_plan


def nodes_cell(index: int, nnodes: int, seq: int = 32, **measure):
    return dataclasses.replace(cell(index, nproc=1, **measure), nnodes=nnodes, seq=seq)


def plan(cells) -> Plan:
    return Plan(SimpleNamespace(name="t"), cells, [], 0, ("nnodes",))


def test_nnodes_is_in_the_identity_only_above_one() -> None:
    one, two = nodes_cell(0, 1), nodes_cell(0, 2)
    assert one.cell_id == dataclasses.replace(one, nnodes=1).cell_id != two.cell_id
    assert "nnodes" not in one.identity and two.identity["nnodes"] == 2
    assert (one.world, two.world, dataclasses.replace(two, nproc=4).world) == (1, 2, 8)
    assert two.label(["nnodes"]).endswith("nnodes=2")


def test_nnodes_needs_a_cluster_executor(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nnodes=2 needs a job with a task per node"):
        run_plan(plan([nodes_cell(0, 1), nodes_cell(1, 2)]), tmp_path, builder=BUILDER)
    assert not list(tmp_path.rglob("*.parquet"))  # refused before a run file exists
    with pytest.raises(RankFailure, match="nnodes=2 runs in a cluster job"):
        launch.launch(nodes_cell(0, 2), BUILDER, False)  # a worker outside a job


def test_a_job_never_mixes_node_counts() -> None:
    states = [CellState(nodes_cell(i, n)) for i, n in enumerate((1, 2, 1, 2))]
    jobs = shard(states, cells_per_job=8)
    assert [[s.cell.nnodes for s in job] for job in jobs] == [[1, 1], [2, 2]]


def _box(tmp_path: Path) -> Path:
    box = tmp_path / "part-1-0.nodes"
    box.mkdir()
    return box


def test_a_follower_stops_at_the_end_or_when_its_leader_is_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    box = _box(tmp_path)
    (box / "alive").touch()
    (box / "end").touch()
    assert nodes.follow(box, 1, poll_s=0.01) == 0
    (box / "end").unlink()
    old = time.time() - nodes.STALE_S - 1
    os.utime(box / "alive", (old, old))  # the leader stopped beating
    assert nodes.follow(box, 1, poll_s=0.01) == 0
    (box / "alive").unlink()
    monkeypatch.setattr(nodes, "JOIN_S", 0.05)  # a leader that never started
    assert nodes.follow(box, 1, poll_s=0.01) == 0


@pytest.mark.slow
def test_a_follower_gives_up_a_round_its_leader_moved_past(tmp_path: Path) -> None:
    # rounds whose rendezvous the leader never hosts: a follower's torchrun would wait for node 0
    # for minutes; the next round's post (then the end) makes the follower drop it
    box = _box(tmp_path)
    (box / "alive").touch()
    one = nodes_cell(0, 2)
    post = {"cell": one.to_json(), "builder": BUILDER, "count": False, "addr": "127.0.0.1",
            "port": launch.free_port()}  # fmt: skip
    (box / "round-00000.json").write_text(json.dumps(post))
    done: list[int] = []
    thread = threading.Thread(target=lambda: done.append(nodes.follow(box, 1, 0.05)))
    started = time.monotonic()
    thread.start()
    time.sleep(3)
    (box / "round-00001.json").write_text(json.dumps(post))
    time.sleep(3)
    (box / "end").touch()
    thread.join(timeout=60)
    assert done == [2] and time.monotonic() - started < 60
    log = (box / "node-1.log").read_text()
    assert "== round 0" in log and "== round 1" in log


@pytest.mark.slow
def test_two_node_cells_through_submitit_local(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # seq 48's cell fails on purpose on every rank: its error is the row, the job goes on (the
    # cell after it still runs: the ranks' failure files beside the mailbox's round posts must
    # not count as posts)
    monkeypatch.setenv(FAULT_ENV, faults({"fault": "error", "seq": 48}))
    cells = [nodes_cell(0, 1, min_time_s=0.05), nodes_cell(2, 2, seq=48),
             nodes_cell(1, 2, min_time_s=0.05)]  # fmt: skip
    spec = ExecutorSpec(kind="submitit-local", poll_s=0.2, cells_per_job=4)
    result = run_plan(plan(cells), tmp_path, builder=BUILDER, executor=spec)
    rows = {(r["nnodes"], r["seq"]): r for r in store.read_rows(result.path)}
    one, two, failed = rows[(1, 32)], rows[(2, 32)], rows[(2, 48)]
    assert (one["status"], two["status"]) == ("ok", "ok"), two["message"]
    assert (one["world_size"], two["world_size"], two["nproc"]) == (1, 2, 1)
    assert two["tokens_per_step"] == 2 * one["tokens_per_step"]
    assert two["tokens_per_s_per_rank"] == pytest.approx(two["tokens_per_s"] / 2)
    assert two["weak_scaling_efficiency"] == pytest.approx(
        two["tokens_per_s_per_rank"] / one["tokens_per_s"]
    )
    assert failed["status"] == "error" and not failed["job_lost"]
    # every rank fails alike; whichever wrote its failure first is named (rank 1 is on the
    # other node: its failure is read from the job's mailbox)
    assert re.match(r"rank [01]/2: ValueError: failing on purpose", failed["message"])
    assert one["job_id"] != two["job_id"] == failed["job_id"]  # one job per node count
    folder = jobs_folder(result.path)
    assert not list(folder.glob("part-*"))  # parts and mailboxes removed once merged
    assert len(list(folder.glob(f"{two['job_id']}_*_log.out"))) == 2  # a task per node


def test_a_slurm_job_of_two_node_cells_asks_for_two_nodes_of_one_task(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sbatch script of a 2-node job. It only writes text, so it needs no Slurm: submitit's
    executor refuses to exist where `srun` is not on PATH, and that check alone is faked."""
    from submitit.slurm import slurm

    from hubbench.run.jobs import submitit_executor as _executor

    monkeypatch.setattr(slurm.SlurmExecutor, "affinity", classmethod(lambda cls: 2))

    cuda = dataclasses.replace(nodes_cell(0, 2), device="cuda", nproc=4, threads=2)
    spec = ExecutorSpec(kind="slurm", partition="gpu")
    executor = _executor(spec, tmp_path, [[CellState(cuda)]], nnodes=2)
    script = executor._executor._make_submission_file_text("python -m x", "uid")
    lines = set(script.splitlines())
    assert {"#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=4",
            "#SBATCH --cpus-per-task=8", "#SBATCH --partition=gpu"} <= lines  # fmt: skip
    assert any(line.startswith("srun ") for line in lines)  # one task per node, each run_job
