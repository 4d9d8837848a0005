"""A cell's state and its row, both ways (hubbench.run.rows): each value checked once, where it
is made; a row rebuilt into its state for --resume gives the same row back."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from cells import ENV, cell, failed, measured, plan

from hubbench import schema, store
from hubbench.errors import SchemaError
from hubbench.measure.metrics import RoundResult
from hubbench.run.rows import CellState, make_row, state_from_row
from hubbench.run.runner import prepare_run


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
    import hubbench.run.rows as rows

    real_quality = rows.quality_columns
    monkeypatch.setattr(rows, "quality_columns", lambda *a: {**real_quality(*a), "stray": 1})
    with pytest.raises(SchemaError, match="unknown: stray"):  # a group that skips its check
        make_row(state, "s", "rid", ENV)
    monkeypatch.undo()
    state.rounds[0].params = "many"
    with pytest.raises(SchemaError, match="column params is int64"):
        make_row(state, "s", "rid", ENV)


def test_each_column_of_a_row_is_checked_once(build, monkeypatch, tmp_path: Path) -> None:
    """Where the row is made, and not again by the writer that stores it round after round."""
    state = measured(cell(0, rounds=2), build)
    checked: Counter[str] = Counter()
    real = schema.check

    def counting(values, expected, where):
        expected = tuple(expected)
        checked.update(expected)
        return real(values, expected, where)

    monkeypatch.setattr(schema, "check", counting)
    row = make_row(state, "s", "rid", ENV)
    assert checked == Counter(schema.NAMES)
    checked.clear()
    writer = store.RunWriter(store.run_path(tmp_path, "s", "rid"))
    for _ in range(3):
        writer.put(row)
    assert not checked
    assert store.read_rows(writer.path) == [row]


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


def test_a_failed_row_rebuilds_its_failure_and_its_rounds(build) -> None:
    c = cell(0, rounds=3)
    state = measured(c, build)
    state.failure = {"status": "oom", "message": "round 2/3: out of memory",
                     "device_name": "cpu0", "wall_s": 1.5}  # fmt: skip
    row = make_row(state, "t", "feed0001", ENV)
    again = state_from_row(c, row)
    assert not again.pending
    assert (again.failure["status"], again.failure["message"]) == ("oom", state.failure["message"])
    assert [r.samples_s for r in again.rounds] == [r.samples_s for r in state.rounds]
    assert state_from_row(c, None) == CellState(c)


def test_a_row_lost_with_its_job_is_measured_again_on_resume() -> None:
    c = cell(0, rounds=2)
    state = CellState(c)
    state.failure = {"status": "error", "message": "job 7 failed", "device_name": None,
                     "wall_s": 0.0}  # fmt: skip
    state.job_lost = True
    row = make_row(state, "t", "feed0001", ENV, {"executor": "slurm", "job_id": "7"})
    assert (row["status"], row["job_lost"], row["executor"]) == ("error", True, "slurm")
    assert state_from_row(c, row).pending
    state.job_lost = False  # the cell's own failure stays a failure
    assert not state_from_row(c, make_row(state, "t", "feed0001", ENV)).pending
