"""The runner: cells measured in an isolated worker, failures become rows, the sweep goes on.

The worker builds builders.TinyLM (loaded by file path) and plants the faults a test asks for.
The tests that call `run_plan` start real worker processes.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from builders import FAULT_ENV, faults

from hubbench import schema, store
from hubbench.errors import HubbenchError, SchemaError, UnavailableError
from hubbench.measure.cell import execute_cell
from hubbench.measure.metrics import RoundResult
from hubbench.measure.outcome import classify
from hubbench.measure.process import load_builder
from hubbench.plan.cell import Cell
from hubbench.plan.runfields import Measure
from hubbench.plan.suite import Plan
from hubbench.plan.variants import make_config
from hubbench.run.runner import CellState, make_row, prepare_run, run_plan, schedule

BUILDER = f"{Path(__file__).with_name('builders.py')}:build_tiny"


def cell(
    index: int,
    variant: str = "transformer",
    seq: int = 32,
    timeout_s: float = 60.0,
    rounds: int = 1,
    **fields,
) -> Cell:
    base = {"vocab": 32, "d_model": 16, "n_heads": 2, "n_layers": 1}
    return Cell(
        index=index,
        variant=variant,
        mode="fwd_bwd",
        device=fields.pop("device", "cpu"),
        batch=1,
        seq=seq,
        compile=False,
        threads=fields.pop("threads", 1),
        config=make_config(variant, **{**base, **fields}),
        measure=Measure(
            warmup=1,
            warmup_min_s=0.0,
            warmup_max_s=0.0,
            repeats=2,
            rounds=rounds,
            timeout_s=timeout_s,
        ),
    )


def plan(cells: list[Cell]) -> Plan:
    return Plan(SimpleNamespace(name="t"), cells, [], 0, ("variant", "seq"))


@pytest.fixture(scope="module")
def build():
    return load_builder(BUILDER)


ENV = {"hubbench_version": "0", "git_commit": None, "git_dirty": None, "host": "h",
       "cpu_model": "c", "torch_version": "t", "cuda_version": None,
       "cudnn_version": None, "python_version": "3.11.0", "os": "Linux",
       "python_platform": "linux", "nvidia_driver_version": None,
       **{f"{pkg}_version": "not installed" for pkg in ("numpy", "triton", "flash_attn",
          "mamba_ssm", "causal_conv1d", "torch_tb_profiler")}}  # fmt: skip


def failed(c: Cell) -> CellState:
    outcome = {"status": "error", "message": "m", "device_name": None, "wall_s": None}
    return CellState(c, failure=outcome)


def measured(c: Cell, build, rounds: int = 1) -> CellState:
    state = CellState(c)
    for _ in range(rounds):
        answer = execute_cell(c, build, count_flops=not state.rounds)
        state.rounds.append(RoundResult.from_json(answer["round"]))
    return state


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


def test_rounds_are_assembled_into_one_row(build) -> None:
    state = measured(cell(0, rounds=3), build, rounds=3)
    r = make_row(state, "s", "rid", ENV)
    assert set(r) == set(schema.NAMES)
    assert r["time_rounds"] == 3 and r["rounds"] == 3 and r["time_count"] == 6
    assert [len(x) for x in r["round_samples_s"]] == [2, 2, 2]
    assert r["samples_s"] == [t for x in r["round_samples_s"] for t in x]
    assert len(r["round_sentinel_s"]) == 3 and r["flops_per_step"] > 0
    assert r["tokens_per_s"] == pytest.approx(32 / r["time_median_s"])
    assert r["mfu_basis"] == "analytic" and r["backend_attention"] == "sdpa:test"
    assert r["status"] == "ok" and r["threads"] == 1


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


def test_make_row_nulls_fields_a_variant_lacks() -> None:
    c = cell(3, "hub-gpt", attention="naive")
    r = make_row(failed(c), "s", "rid", ENV)
    assert list(r) == list(schema.NAMES)
    assert r["hubs"] == 8 and r["n_heads"] == 2
    assert r["attention"] is None  # replace = 1 leaves no attention layer: inert, null
    assert r["d_state"] is None  # a field hub-gpt does not have
    config = json.loads(r["config_json"])
    assert config["hubs"] == 8 and config["attention"] is None and "d_state" not in config
    assert (r["cell_id"], r["cell_index"], r["run_id"]) == (c.cell_id, 3, "rid")
    assert r["tokens_per_s"] is None and r["host"] == "h"


def test_make_row_refuses_unknown_and_missing_keys(build, monkeypatch) -> None:
    from hubbench.measure import metrics

    c = cell(0)
    with pytest.raises(SchemaError, match="unknown: nope"):
        make_row(failed(c), "s", "rid", {**ENV, "nope": 2})
    with pytest.raises(SchemaError, match="missing: host"):
        make_row(failed(c), "s", "rid", {k: v for k, v in ENV.items() if k != "host"})
    state = measured(c, build)
    real = metrics.schema.part

    def extra(group, values, where):
        return real(group, {**values, "extra_metric": 1.0}, where)

    monkeypatch.setattr(metrics.schema, "part", extra)
    with pytest.raises(SchemaError, match="unknown: extra_metric"):
        make_row(state, "s", "rid", ENV)
    monkeypatch.undo()
    state.rounds[0].params = "many"
    with pytest.raises(SchemaError, match="column params is int64"):
        make_row(state, "s", "rid", ENV)


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


def test_rounds_are_interleaved_in_seeded_orders() -> None:
    cells = [cell(i, seq=16 * (i + 1), rounds=3) for i in range(5)]
    states = [CellState(c) for c in cells]
    passes = []
    for group in schedule(states):
        passes.append([s.cell.index for s in group])
        for s in group:  # what measuring the round does to the state
            s.rounds.append(None)
    assert passes[0] == [0, 1, 2, 3, 4]  # plan order first
    assert sorted(passes[1]) == sorted(passes[2]) == [0, 1, 2, 3, 4]
    assert passes[1] != passes[0] and passes[2] != passes[1]
    again = [CellState(c) for c in cells]
    replay = []
    for group in schedule(again):
        replay.append([s.cell.index for s in group])
        for s in group:
            s.rounds.append(None)
    assert replay == passes  # the orders are seeded: every run uses the same
    states = [CellState(c) for c in cells]
    states[1].failure = {"status": "oom"}
    assert all(1 not in [s.cell.index for s in g] for g in schedule(states))


# ----------------------------------------------------------------------------- worker process


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


def test_a_worker_that_cannot_start_stops_the_run(tmp_path: Path) -> None:
    cells = [cell(0), cell(1, seq=64), cell(2, seq=128)]
    with pytest.raises(HubbenchError, match=r"cannot start: worker exited with code 1.*no_such"):
        run_plan(plan(cells), tmp_path, builder="no_such_module_xyz:build")
    [path] = store.list_runs(tmp_path)
    df = pd.read_parquet(path)
    assert df["status"].tolist() == ["error", "error"]  # both attempts are on record
    assert df["torch_version"].isna().all()  # no worker ever said which torch it had


def test_the_thread_setting_reaches_the_worker(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the cell's setting must win over the env
    monkeypatch.setenv(FAULT_ENV, faults({"fault": "threads"}))
    cells = [cell(0, threads=2), cell(1, seq=64, threads=1)]
    result = run_plan(plan(cells), tmp_path, builder=BUILDER)
    df = pd.read_parquet(result.path)
    assert df["message"].tolist() == ["ValueError: threads=2", "ValueError: threads=1"]
    assert df["threads"].tolist() == [2, 1]


def test_a_cell_that_fails_in_a_later_round_keeps_its_earlier_rounds(tmp_path, monkeypatch):
    monkeypatch.setenv(FAULT_ENV, faults({"build": 2, "fault": "error"}))
    result = run_plan(plan([cell(0, rounds=3)]), tmp_path, builder=BUILDER)
    [row] = pd.read_parquet(result.path).to_dict("records")
    assert row["status"] == "error" and row["message"].startswith("round 2/3: ValueError")
    assert row["time_rounds"] == 1 and len(row["round_samples_s"]) == 1


def test_resume_rebuilds_a_row_exactly(tmp_path: Path) -> None:
    """A row written, read back and rebuilt for --resume is the same row (utc_time aside)."""

    def round_(k: int, capped: int, backend: str) -> RoundResult:
        return RoundResult(
            samples_s=[0.01 * (1 + k)] * 2, tokens=32, warmup_s=0.5, warmup_steps=4,
            warmup_capped=capped, sentinel_s=0.01 + k / 1e3, peak_mem_bytes=2**20 * (k + 1),
            peak_mem_reserved_bytes=None, mem_kind="cpu_rss", mem_baseline_bytes=7,
            flops_per_step=1e6 if k == 0 else None, flops_per_step_analytic=2e6,
            peak_flops_per_s=1e11, peak_flops_source="t", params=99,
            backends={"attention": backend}, session=1000.0 + k // 2,
            state_bytes=123_456 if k == 0 else None, bytes_per_step_min=4e5,
            peak_bytes_per_s=1e10, peak_bytes_source="calibrated: copies",
        )  # fmt: skip

    c = cell(0, rounds=5)
    state = CellState(c, device_name="cpu0", wall_s=3.0)
    state.rounds = [round_(0, 1, "sdpa:a"), round_(1, 0, "sdpa:b"), round_(2, 1, "sdpa:a")]
    row = make_row(state, "t", "feed0001", ENV)
    assert row["status"] == "partial" and row["warmup_capped"] == 2
    assert row["backend_attention"] == "sdpa:a+sdpa:b" and row["state_bytes"] == 123_456
    # 2e6 FLOPs at 1e11 FLOP/s (20 us) against 4e5 bytes at 1e10 B/s (40 us)
    assert (
        row["speed_of_light_s"] == pytest.approx(4e-5) and row["speed_of_light_basis"] == "memory"
    )
    path = tmp_path / "t" / "20250101T000000Z-feed0001.parquet"
    store.write_rows(path, [row])
    _, _, [again], _ = prepare_run(plan([c]), tmp_path, resume=True)
    rebuilt = make_row(again, "t", "feed0001", ENV)
    differ = [k for k in schema.NAMES if k != "utc_time" and rebuilt[k] != row[k]]
    assert not differ, {k: (row[k], rebuilt[k]) for k in differ}
    again.rounds.append(round_(3, 0, "sdpa:a"))  # one more round does not compound the names
    assert make_row(again, "t", "feed0001", ENV)["backend_attention"] == "sdpa:a+sdpa:b"


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
