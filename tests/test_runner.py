"""The runner: cells measured in an isolated worker, failures become rows, the sweep goes on.

The worker builds builders.TinyLM (loaded by file path) and plants the faults a test asks for.
Only `test_faults_become_rows_and_the_sweep_continues` starts worker processes (three: the first,
one after the crash, one after the timeout).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from builders import FAULT_ENV, faults

from hubbench import schema, store
from hubbench.cell import Cell, Measure
from hubbench.errors import HubbenchError, SchemaError, UnavailableError
from hubbench.execute import classify, execute_cell
from hubbench.runner import make_row, prepare_run, run_plan
from hubbench.suite import Plan
from hubbench.variants import make_config
from hubbench.worker import load_builder

BUILDER = f"{Path(__file__).with_name('builders.py')}:build_tiny"


def cell(
    index: int, variant: str = "transformer", seq: int = 32, timeout_s: float = 60.0, **fields
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
        config=make_config(variant, **{**base, **fields}),
        measure=Measure(warmup=1, repeats=2, timeout_s=timeout_s),
    )


def plan(cells: list[Cell]) -> Plan:
    return Plan(SimpleNamespace(name="t"), cells, [], 0, ("variant", "seq"))


@pytest.fixture(scope="module")
def build():
    return load_builder(BUILDER)


ENV = {"hubbench_version": "0", "git_commit": None, "git_dirty": None, "host": "h",
       "cpu_model": "c", "torch_version": "t", "cuda_version": None, "cudnn_version": None,
       "threads": 1}  # fmt: skip
FAILED = {"outcome": {"status": "error", "message": "m", "device_name": None, "wall_s": None},
          "measurement": None}  # fmt: skip


# ----------------------------------------------------------------------------- in process


def test_execute_cell_ok(build) -> None:
    answer = execute_cell(cell(0), build)
    json.dumps(answer)  # crosses the worker pipe as JSON
    out, m = answer["outcome"], answer["measurement"]
    assert out["status"] == "ok" and out["message"] is None
    assert out["device_name"] and out["wall_s"] > 0
    assert set(m) == set(schema.names("measurement"))
    assert m["time_count"] == 2 and len(m["samples_s"]) == 2
    assert m["backend_attention"] == "sdpa:test" and m["backend_mamba"] is None
    assert m["tokens_per_s"] == pytest.approx(32 / m["time_median_s"])
    assert m["flops_per_step"] > 0 and m["flops_per_step_analytic"] == 3e6 * 32
    assert m["params"] > 0 and m["mfu_basis"] == "analytic"


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
        assert answer["measurement"] is None
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
    r = make_row(c, FAILED, "s", "rid", ENV)
    assert list(r) == list(schema.NAMES)
    assert r["hubs"] == 8 and r["n_heads"] == 2
    assert r["attention"] is None  # replace = 1 leaves no attention layer: inert, null
    assert r["d_state"] is None  # a field hub-gpt does not have
    config = json.loads(r["config_json"])
    assert config["hubs"] == 8 and config["attention"] is None and "d_state" not in config
    assert (r["cell_id"], r["cell_index"], r["run_id"]) == (c.cell_id, 3, "rid")
    assert r["tokens_per_s"] is None and r["host"] == "h"


def test_make_row_refuses_unknown_and_missing_keys(build) -> None:
    c = cell(0)
    with pytest.raises(SchemaError, match="unknown: nope"):
        make_row(c, FAILED, "s", "rid", {**ENV, "nope": 2})
    with pytest.raises(SchemaError, match="missing: threads"):
        make_row(c, FAILED, "s", "rid", {k: v for k, v in ENV.items() if k != "threads"})
    answer = execute_cell(c, build)
    answer["measurement"]["extra_metric"] = 1.0
    with pytest.raises(SchemaError, match="unknown: extra_metric"):
        make_row(c, answer, "s", "rid", ENV)
    del answer["measurement"]["extra_metric"], answer["measurement"]["mfu"]
    with pytest.raises(SchemaError, match="missing: mfu"):
        make_row(c, answer, "s", "rid", ENV)
    answer["measurement"]["mfu"] = "high"
    with pytest.raises(SchemaError, match="column mfu is float64"):
        make_row(c, answer, "s", "rid", ENV)


def test_prepare_run_resumes_the_latest_run(tmp_path: Path) -> None:
    cells = [cell(0), cell(1, seq=64), cell(2, seq=128)]
    done = make_row(cells[1], FAILED, "t", "feed0001", ENV)
    old = tmp_path / "t" / "20250101T000000Z-feed0001.parquet"
    store.write_rows(old, [done])
    writer, run_id, todo, previous = prepare_run(plan(cells), tmp_path, resume=True)
    assert (writer.path, run_id, previous) == (old, "feed0001", old)
    assert [c.index for c in todo] == [0, 2] and len(writer.rows) == 1
    writer, run_id, todo, previous = prepare_run(plan(cells), tmp_path, resume=False)
    assert writer.path != old and previous is None and len(todo) == 3


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
        cell(0),
        cell(1, seed=1),
        cell(2, seed=2),
        cell(3, seed=3),
        cell(4, seed=4, timeout_s=1.0),
        cell(5, seq=64, attention="naive"),
    ]
    started, finished = [], []
    result = run_plan(
        plan(cells),
        tmp_path,
        builder=BUILDER,
        on_start=lambda i, n, c: started.append((i, n)),
        on_done=finished.append,
    )
    assert not result.interrupted
    assert started == [(i, 6) for i in range(6)]
    df = pd.read_parquet(result.path)
    assert df["status"].tolist() == ["ok", "oom", "error", "error", "timeout", "ok"]
    assert "can't allocate memory" in df.loc[1, "message"]
    assert "ValueError" in df.loc[2, "message"]
    assert "killed by SIGSEGV" in df.loc[3, "message"]
    assert "1 s per-cell timeout" in df.loc[4, "message"]
    assert df.loc[5, "backend_attention"] == "naive"  # a fresh worker took over
    assert df["cell_index"].tolist() == list(range(6))
    assert df["torch_version"].notna().all() and df["threads"].notna().all()
    assert df["hubbench_version"].notna().all() and df["host"].notna().all()
    assert len(finished) == 6 and result.new_rows == result.rows


def test_a_worker_that_cannot_start_stops_the_run(tmp_path: Path) -> None:
    cells = [cell(0), cell(1, seq=64), cell(2, seq=128)]
    with pytest.raises(HubbenchError, match=r"cannot start: worker exited with code 1.*no_such"):
        run_plan(plan(cells), tmp_path, builder="no_such_module_xyz:build")
    [path] = store.list_runs(tmp_path)
    df = pd.read_parquet(path)
    assert df["status"].tolist() == ["error", "error"]  # both attempts are on record
    assert df["torch_version"].isna().all()  # no worker ever said which torch it had
