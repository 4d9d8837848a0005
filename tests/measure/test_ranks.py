"""nproc > 1: a cell's step under torchrun (gloo on CPU), data-parallel, and weak scaling."""

from __future__ import annotations

import dataclasses
import json
import re
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from builders import FAULT_ENV, faults
from torchrun_cells import BUILDER, cell

from hubbench import store
from hubbench.errors import SuiteError
from hubbench.measure.cell import execute_cell
from hubbench.measure.launch import first_error, first_failure
from hubbench.measure.metrics import weak_scaling
from hubbench.measure.process import load_builder
from hubbench.measure.ranks import error_file
from hubbench.plan import Plan, expand, load_suite, parse_overrides
from hubbench.run.runner import run_plan


def test_first_error_finds_the_line_that_says_why() -> None:
    log = "W1203 warning\nTraceback (most recent call last):\n  File x\nValueError: bad\nend"
    assert first_error(log) == "ValueError: bad"
    assert first_error("") == "no output"


def torchrun_log(ranks: str, root_rank: int, code: int, signal: str = "") -> str:
    """The shape of a failed torchrun's output (torch 2.13): what the ranks printed, the agent's
    own traceback ending in ChildFailedError, then its failure summary with the root cause."""
    trace = f"Signal {signal} received by PID 99" if signal else "To enable traceback see: ..."
    return f"""{ranks}
E1203 17:53:19.903000 5787 api.py:1002] failed (exitcode: {code}) local_rank: {root_rank}
Traceback (most recent call last):
  File "torch/distributed/launcher/api.py", line 383, in launch_agent
    raise ChildFailedError(
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
hubbench.measure.ranks FAILED
------------------------------------------------------------
Failures:
[1]:
  rank      : {1 - root_rank} (local_rank: {1 - root_rank})
  exitcode  : -15 (pid: 98)  (SIGTERM)
  traceback : Signal 15 (SIGTERM) received by PID 98
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-12-03_17:53:19
  rank      : {root_rank} (local_rank: {root_rank})
  exitcode  : {code} (pid: 99)
  error_file: <N/A>
  traceback : {trace}
============================================================
"""


def test_first_error_names_the_rank_torchrun_blames_not_its_own_traceback() -> None:
    # CI's failure read "torchrun exited with code 1: raise ChildFailedError(": the agent's
    # traceback, which says nothing about the rank.
    lost = (
        "[rank0]: Traceback (most recent call last):\n[rank0]:     work.wait()\n"
        "[rank0]: RuntimeError: [gloo/pair.cc:553] Connection closed by peer [127.0.0.1]:4275"
    )
    raised = "[rank1]: Traceback (most recent call last):\n[rank1]: ValueError: rank one fell over"
    # rank 0 only lost its peer; rank 1 raised first, and torchrun says so
    assert (
        first_error(torchrun_log(lost + "\n" + raised, 1, 1))
        == "rank 1: ValueError: rank one fell over"
    )
    crashed = (
        "terminate called without an active exception\nFatal Python error: Aborted\n\n"
        "Thread 0x00007fdb91a6bb80 (most recent call first):\n  <no Python frame>"
    )
    assert first_error(torchrun_log(crashed, 0, -6, "6 (SIGABRT)")) == (
        "rank 0 ended with Signal 6 (SIGABRT) received by PID 99; Fatal Python error: Aborted"
    )
    segv = 'Fatal Python error: Segmentation fault\nCurrent thread 0x1:\n  File "m.py", line 6 in f'
    assert first_error(torchrun_log(segv, 1, -11, "11 (SIGSEGV)")) == (
        "rank 1 ended with Signal 11 (SIGSEGV) received by PID 99; Fatal Python error: "
        'Segmentation fault at File "m.py", line 6 in f'
    )
    assert first_error(torchrun_log("[rank1]: bye", 1, 3)) == "rank 1 ended with exit code 3"


def test_weak_scaling_pairs_each_cell_with_its_single_process_twin() -> None:
    base = {"variant": "transformer", "seq": 32, "mode": "fwd_bwd"}
    rows = [
        {**base, "cell_id": "a", "nproc": 1, "tokens_per_s": 100.0, "tokens_per_s_per_rank": 100.0},
        {**base, "cell_id": "b", "nproc": 2, "tokens_per_s": 160.0, "tokens_per_s_per_rank": 80.0},
        {**base, "cell_id": "c", "nproc": 4, "tokens_per_s": None, "tokens_per_s_per_rank": None},
        {**base, "seq": 64, "cell_id": "d", "nproc": 2, "tokens_per_s": 9.0,
         "tokens_per_s_per_rank": 4.5},  # no nproc 1 twin at seq 64
    ]  # fmt: skip
    assert weak_scaling(rows) == {"b": pytest.approx(0.8)}


def test_nproc_is_checked_where_the_suite_is_planned(tmp_path: Path) -> None:
    path = tmp_path / "q.toml"
    path.write_text('[defaults]\nvariant = "transformer"\nmode = "quality"\nd_model = 16\n'
                    'n_heads = 2\nn_layers = 1\nseq = 64\n')  # fmt: skip
    suite = load_suite(path)
    with pytest.raises(SuiteError, match="nproc=2 runs the timed step under torchrun; mode qual"):
        expand(suite, parse_overrides(["nproc=2"]))
    with pytest.raises(SuiteError, match="nproc must be >= 1"):
        expand(suite, parse_overrides(["nproc=0"]))


@pytest.mark.slow
def test_a_failing_rank_is_the_cells_outcome(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FAULT_ENV, faults({"fault": "error"}))
    answer = execute_cell(cell(), load_builder(BUILDER), builder=BUILDER)
    assert answer["outcome"]["status"] == "error"
    # every rank fails alike: whichever wrote first is named
    assert re.match(r"rank [01]/2: ValueError: failing on purpose", answer["outcome"]["message"])
    monkeypatch.setenv(FAULT_ENV, faults({"fault": "unavailable"}))
    answer = execute_cell(cell(), load_builder(BUILDER), builder=BUILDER)
    assert answer["outcome"]["status"] == "skipped"


def test_the_failure_written_first_is_the_root_cause(tmp_path: Path) -> None:
    out = tmp_path / "round.json"
    assert first_failure(out) is None
    later = {"status": "error", "message": "rank 0/2: RuntimeError: Connection closed", "at": 2.0}
    first = {"status": "error", "message": "rank 1/2: ValueError: boom", "at": 1.0}
    error_file(out, 0).write_text(json.dumps(later))
    error_file(out, 1).write_text(json.dumps(first))
    (tmp_path / "round.rank2.error.json").write_text("{trunc")  # a half-written one is skipped
    assert first_failure(out) == first
    box = tmp_path / "box"  # another node's rank, beside the job's post of this round
    box.mkdir()
    post = box / "round-00003.json"
    other = {**first, "message": "rank 3/4: ValueError: far away", "at": 0.5}
    error_file(box / "round-00003.node1.json", 3).write_text(json.dumps(other))
    error_file(box / "round-00002.node1.json", 3).write_text(json.dumps({**other, "at": 0.1}))
    assert first_failure(out, post) == other  # round 2's file is not this round's


@pytest.mark.slow
def test_one_rank_that_raises_ends_the_cell_at_once_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Rank 1 raises in its forward while rank 0 waits in the backward's all-reduce: the cell
    ends in seconds, not at its timeout, with rank 1's exception (it deadlocked until the
    timeout before: the failed rank waited at a gather that rank 0 never reached)."""
    monkeypatch.setenv(FAULT_ENV, faults({"fault": "error", "rank": 1}))
    start = time.monotonic()
    answer = execute_cell(cell(mode="train", timeout_s=120), load_builder(BUILDER), builder=BUILDER)
    assert time.monotonic() - start < 30
    assert answer["outcome"]["status"] == "error"
    assert answer["outcome"]["message"].startswith("rank 1/2: ValueError: failing on purpose")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["train", "fwd"])
def test_nproc_2_rows_count_both_ranks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    monkeypatch.delenv(FAULT_ENV, raising=False)
    cells = [cell(0, nproc=1, mode=mode), cell(1, nproc=2, mode=mode, min_time_s=0.05)]
    result = run_plan(Plan(SimpleNamespace(name="t"), cells, [], 0, ("nproc",)), tmp_path,
                      builder=BUILDER)  # fmt: skip
    rows = {r["nproc"]: r for r in store.read_rows(result.path)}
    assert {r["status"] for r in rows.values()} == {"ok"}, [r["message"] for r in rows.values()]
    one, two = rows[1], rows[2]
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert two["tokens_per_step"] == 2 * one["tokens_per_step"] == 2 * 2 * 32
    assert two["tokens_per_s_per_rank"] == pytest.approx(two["tokens_per_s"] / 2)
    assert two["weak_scaling_efficiency"] == pytest.approx(
        two["tokens_per_s_per_rank"] / one["tokens_per_s"]
    )
    assert one["weak_scaling_efficiency"] is None
    assert two["flops_per_step_analytic"] == pytest.approx(2 * one["flops_per_step_analytic"])
    assert two["time_count"] >= 3 and sum(two["samples_s"]) >= 0.05  # min_time_s honoured
    assert dataclasses.replace(cells[1], nproc=1).cell_id == cells[0].cell_id
    assert cells[0].cell_id != cells[1].cell_id
