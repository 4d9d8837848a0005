"""The runner: cells measured in an isolated worker, failures become rows, the sweep goes on.

The worker builds the stand-in model of test_measure.py (loaded by file path). Only
`test_faults_become_rows_and_the_sweep_continues` starts worker processes (three: the first,
one after the crash, one after the timeout).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from hubbench import store
from hubbench.errors import HubbenchError, UnavailableError
from hubbench.runner import (
    FAULT_ENV,
    classify,
    execute_cell,
    load_builder,
    make_row,
    prepare_run,
    run_plan,
)
from hubbench.suite import Cell, Plan

BUILDER = f"{Path(__file__).with_name('test_measure.py')}:build_tiny"


def cell(index: int, variant: str = "tiny", seq: int = 32, **kw: object) -> Cell:
    fields = {
        "index": index,
        "variant": variant,
        "mode": "fwd_bwd",
        "device": "cpu",
        "batch": 1,
        "seq": seq,
        "compile": False,
        "config": (("d_model", 16), ("vocab", 32)),
        "warmup": 1,
        "repeats": 2,
        "min_time_s": 0.0,
        "timeout_s": 60.0,
    }
    return Cell(**(fields | kw))


def plan(cells: list[Cell]) -> Plan:
    return Plan(SimpleNamespace(name="t"), cells, [], 0, ("variant", "seq"))


@pytest.fixture(scope="module")
def build():
    return load_builder(BUILDER)


# ----------------------------------------------------------------------------- in process


def test_execute_cell_ok(build) -> None:
    out = execute_cell(cell(0), build)
    assert out["status"] == "ok" and out["message"] is None
    assert out["time_count"] == 2 and len(out["samples_s"]) == 2
    assert out["backend_attention"] == "sdpa:test" and out["backend_mamba"] is None
    assert out["tokens_per_s"] == pytest.approx(32 / out["time_median_s"])
    assert out["flops_per_step"] > 0 and out["flops_per_step_analytic"] == 3e6 * 32
    assert out["params"] > 0 and out["device_name"] and out["wall_s"] > 0
    assert out["mfu_basis"] == "analytic"
    json.dumps(out)  # crosses the worker pipe as JSON


def test_fault_hook_in_process(build, monkeypatch) -> None:
    for fault, status, text in [
        ("oom", "oom", "can't allocate memory"),
        ("error", "error", "ValueError: failing on purpose"),
        ("unavailable", "skipped", "unavailable on purpose"),
    ]:
        monkeypatch.setenv(FAULT_ENV, f"other=crash,tiny@32={fault}")
        out = execute_cell(cell(0), build)
        assert out["status"] == status and text in out["message"]
        assert out["device_name"]  # a failed row still says which device it failed on
    assert execute_cell(cell(0, seq=16), build)["status"] == "ok"  # variant@seq is exact


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_cuda_cell_without_gpu_is_skipped(build) -> None:
    out = execute_cell(cell(0, device="cuda"), build)
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
    c = cell(3, config=(("attention", None), ("d_model", 16), ("hubs", 8), ("replace", 1.0)))
    r = make_row(c, {"status": "ok", "extra_key": 1}, "s", "rid", {"host": "h", "nope": 2})
    assert r["hubs"] == 8 and r["attention"] is None and r["n_heads"] is None
    assert r["host"] == "h" and "nope" not in r and "extra_key" not in r
    assert json.loads(r["config_json"]) == {"attention": None, "d_model": 16, "hubs": 8,
                                            "replace": 1.0}  # fmt: skip
    assert set(r) == set(store.COLUMN_NAMES)
    assert (r["cell_id"], r["cell_index"], r["run_id"]) == (c.cell_id, 3, "rid")


def test_prepare_run_resumes_the_latest_run(tmp_path: Path) -> None:
    cells = [cell(0), cell(1, seq=64), cell(2, seq=128)]
    done = make_row(cells[1], {"status": "ok"}, "t", "feed0001", {})
    old = tmp_path / "t" / "20250101T000000Z-feed0001.parquet"
    store.write_rows(old, [done])
    writer, run_id, todo, previous = prepare_run(plan(cells), tmp_path, resume=True)
    assert (writer.path, run_id, previous) == (old, "feed0001", old)
    assert [c.index for c in todo] == [0, 2] and len(writer.rows) == 1
    writer, run_id, todo, previous = prepare_run(plan(cells), tmp_path, resume=False)
    assert writer.path != old and previous is None and len(todo) == 3


# ----------------------------------------------------------------------------- worker process


def test_faults_become_rows_and_the_sweep_continues(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(FAULT_ENV, "tiny-oom=oom,tiny-err=error,tiny-segv=segv,tiny-hang=hang")
    cells = [
        cell(0),
        cell(1, "tiny-oom"),
        cell(2, "tiny-err"),
        cell(3, "tiny-segv"),
        cell(4, "tiny-hang", timeout_s=1.0),
        cell(5, "tiny-naive", seq=64),
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
