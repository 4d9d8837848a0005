"""The runner: a plan's cells measured in an isolated worker, failures become rows, the sweep
goes on; --resume takes up the latest run.

The tests marked slow start real worker processes. The first ones measure a round in this process
(hubbench.measure.cell, what the worker runs): they belong with the worker side's tests.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from builders import FAULT_ENV, faults
from cells import BUILDER, ENV, cell, failed, measured, plan

from hubbench import store
from hubbench.errors import HubbenchError, UnavailableError
from hubbench.measure.cell import execute_cell
from hubbench.measure.metrics import RoundResult
from hubbench.measure.outcome import classify
from hubbench.measure.process import load_builder
from hubbench.run.rows import make_row
from hubbench.run.runner import prepare_run, run_plan

# ----------------------------------------------------------------------------- in process


def test_execute_cell_measures_one_round(build) -> None:
    answer = execute_cell(cell(0), build)
    json.dumps(answer)  # crosses the worker pipe as JSON
    out, r = answer["outcome"], RoundResult.from_json(answer["round"])
    assert out["status"] == "ok" and out["message"] is None
    assert out["device_name"] and out["wall_s"] > 0
    assert len(r.samples_s) == 2 and r.tokens == 32 and r.sentinel_s > 0
    assert r.backends == {"attention": "sdpa:test"} and r.flops_per_step > 0
    assert r.flops_per_step_analytic == 3e6 * 32 and r.params > 0
    again = RoundResult.from_json(execute_cell(cell(0), build, count_flops=False)["round"])
    assert again.flops_per_step is None  # counted once per cell, in its first round


def test_planted_faults_in_process(build, monkeypatch) -> None:
    for fault, status, text in [
        ("oom", "oom", "can't allocate memory"),
        ("error", "error", "ValueError: failing on purpose"),
        ("unavailable", "skipped", "unavailable on purpose"),
    ]:
        monkeypatch.setenv(FAULT_ENV, faults({"variant": "jamba", "fault": "crash"},
                                             {"seq": 32, "fault": fault}))  # fmt: skip
        answer = execute_cell(cell(0), build)
        out = answer["outcome"]
        assert out["status"] == status and text in out["message"]
        assert out["device_name"]  # a failed row still says which device it failed on
        assert answer["round"] is None
    assert execute_cell(cell(0, seq=16), build)["outcome"]["status"] == "ok"  # seq is exact


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_cuda_cell_without_gpu_is_skipped(build) -> None:
    out = execute_cell(cell(0, device="cuda"), build)["outcome"]
    assert out["status"] == "skipped" and "CUDA is not available" in out["message"]


def test_classify() -> None:
    assert classify(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried"))[0] == "oom"
    assert classify(RuntimeError("DefaultCPUAllocator: can't allocate memory: 9 GB"))[0] == "oom"
    assert classify(MemoryError())[0] == "oom"
    assert classify(UnavailableError("no flash-attn")) == ("skipped", "no flash-attn")
    status, message = classify(ValueError("bad\nthing"))
    assert (status, message) == ("error", "ValueError: bad thing")
    assert len(classify(RuntimeError("x" * 5000))[1]) <= 500


def test_a_decode_cell_times_per_generated_token(monkeypatch) -> None:
    from hubbench.measure import timing as measure
    from hubbench.measure.metrics import measurement_columns

    monkeypatch.setattr(measure, "time_calls", lambda *a, **k: [1.6, 3.2])  # per call of 16
    real = load_builder("hubbench.models:build")
    c = dataclasses.replace(cell(0, "hub-gpt", seq=40, hubs=2, topk=4, chunk=8), mode="decode",
                            batch=2, decode_tokens=16)  # fmt: skip
    answer = execute_cell(c, real)
    assert answer["outcome"]["status"] == "ok", answer["outcome"]
    r = RoundResult.from_json(answer["round"])
    assert r.samples_s == pytest.approx([0.1, 0.2])  # per generated token
    assert r.tokens == 2  # a row's step: one token for each of the 2 sequences
    assert r.state_bytes > 0 and r.flops_per_step > 0 and r.flops_per_step_analytic > 0
    # counted FLOPs are per token too: one decoded token costs about the analytic estimate
    assert 0.5 < r.flops_per_step / r.flops_per_step_analytic < 2
    columns = measurement_columns([r], "test")
    assert columns["state_bytes"] == r.state_bytes
    # decode's byte floor: the weights and the prompt's state of both sequences, per token
    weights = sum(p.numel() * p.element_size() for p in real(c.variant, c.config).parameters())
    assert r.bytes_per_step_min == weights + 2 * r.state_bytes
    assert columns["time_median_s"] == pytest.approx(0.15)


def test_a_model_without_a_decode_path_is_an_error_row(build) -> None:
    c = dataclasses.replace(cell(0), mode="prefill")
    out = execute_cell(c, build)["outcome"]
    assert out["status"] == "error" and "no prefill/decode path" in out["message"]


# ----------------------------------------------------------------------------- resume


def test_prepare_run_resumes_the_latest_run(tmp_path: Path, build) -> None:
    cells = [cell(0), cell(1, seq=64), cell(2, seq=128, rounds=3)]
    failed_row = make_row(failed(cells[1]), "t", "feed0001", ENV)
    partial = make_row(measured(cells[2], build, rounds=2), "t", "feed0001", ENV)
    old = tmp_path / "t" / "20250101T000000Z-feed0001.parquet"
    store.write_rows(old, [failed_row, partial])
    writer, run_id, states, previous = prepare_run(plan(cells), tmp_path, resume=True)
    assert (writer.path, run_id, previous) == (old, "feed0001", old)
    assert [s.pending for s in states] == [True, False, True] and len(writer.rows) == 2
    assert len(states[2].rounds) == 2  # its third round is still to come
    resumed = make_row(states[2], "t", "feed0001", ENV)
    assert resumed["round_samples_s"] == partial["round_samples_s"]
    assert resumed["round_sentinel_s"] == partial["round_sentinel_s"]
    writer, run_id, states, previous = prepare_run(plan(cells), tmp_path, resume=False)
    assert writer.path != old and previous is None and all(s.pending for s in states)


# ----------------------------------------------------------------------------- worker process


@pytest.mark.slow
def test_faults_become_rows_and_the_sweep_continues(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(
        FAULT_ENV,
        faults(
            *(
                {"seed": s, "fault": f}
                for s, f in ((1, "oom"), (2, "error"), (3, "segv"), (4, "hang"))
            )
        ),
    )
    cells = [
        cell(0, rounds=2),
        cell(1, seed=1),
        cell(2, seed=2),
        cell(3, seed=3),
        cell(4, seed=4, timeout_s=1.0),
        cell(5, seq=64, attention="naive", rounds=2),
    ]
    started, finished = [], []
    result = run_plan(
        plan(cells),
        tmp_path,
        builder=BUILDER,
        on_start=lambda state, progress: started.append((state, progress)),
        on_done=lambda row, state, progress: finished.append((row, progress)),
    )
    assert not result.interrupted
    assert [s.cell.index for s, _ in started] == [0, 1, 2, 3, 4, 5, 5, 0]  # pass 2 shuffled
    assert [p.done for _, p in finished] == list(range(1, 9))
    df = pd.read_parquet(result.path)
    assert df["status"].tolist() == ["ok", "oom", "error", "error", "timeout", "ok"]
    assert "can't allocate memory" in df.loc[1, "message"]
    assert "ValueError" in df.loc[2, "message"]
    assert "killed by SIGSEGV" in df.loc[3, "message"]
    assert "1 s per-cell timeout" in df.loc[4, "message"]
    assert df.loc[5, "backend_attention"] == "naive"  # a fresh worker took over
    assert df["cell_index"].tolist() == list(range(6))
    assert df["time_rounds"].fillna(0).tolist() == [2, 0, 0, 0, 0, 2]
    assert df["torch_version"].notna().all() and df["threads"].tolist() == [1] * 6
    assert df["hubbench_version"].notna().all() and df["host"].notna().all()
    assert result.new_rows == result.rows


@pytest.mark.slow
def test_a_worker_that_cannot_start_stops_the_run(tmp_path: Path) -> None:
    cells = [cell(0), cell(1, seq=64), cell(2, seq=128)]
    with pytest.raises(HubbenchError, match=r"cannot start: worker exited with code 1.*no_such"):
        run_plan(plan(cells), tmp_path, builder="no_such_module_xyz:build")
    [path] = store.list_runs(tmp_path)
    df = pd.read_parquet(path)
    assert df["status"].tolist() == ["error", "error"]  # both attempts are on record
    assert df["torch_version"].isna().all()  # no worker ever said which torch it had


@pytest.mark.slow
def test_the_thread_setting_reaches_the_worker(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the cell's setting must win over the env
    monkeypatch.setenv(FAULT_ENV, faults({"fault": "threads"}))
    cells = [cell(0, threads=2), cell(1, seq=64, threads=1)]
    result = run_plan(plan(cells), tmp_path, builder=BUILDER)
    df = pd.read_parquet(result.path)
    assert df["message"].tolist() == ["ValueError: threads=2", "ValueError: threads=1"]
    assert df["threads"].tolist() == [2, 1]


@pytest.mark.slow
def test_a_cell_that_fails_in_a_later_round_keeps_its_earlier_rounds(tmp_path, monkeypatch):
    monkeypatch.setenv(FAULT_ENV, faults({"build": 2, "fault": "error"}))
    result = run_plan(plan([cell(0, rounds=3)]), tmp_path, builder=BUILDER)
    [row] = pd.read_parquet(result.path).to_dict("records")
    assert row["status"] == "error" and row["message"].startswith("round 2/3: ValueError")
    assert row["time_rounds"] == 1 and len(row["round_samples_s"]) == 1
