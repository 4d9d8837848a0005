"""Finding runs, schema checks, cell identity and labels."""

from __future__ import annotations

import pytest
from synthetic_runs import cell, grid, make_run, write_run

from hubbench.errors import HubbenchError, ReportError
from hubbench.report.load import (
    cell_keys,
    check_schema,
    describe,
    join_fields,
    label_fields,
    labeller,
    load_run,
    load_runs,
    require_ok,
)


def test_no_runs_found(results_dir):
    with pytest.raises(HubbenchError, match="no runs found"):
        load_run(None, results_dir)


def test_latest_by_stamp_and_by_id_prefix(results_dir):
    write_run(make_run([cell("hub-gpt", 1024)], run_id="aaaa1111"), results_dir, "20250101T000000Z")
    write_run(make_run([cell("hub-gpt", 1024)], run_id="bbbb2222"), results_dir, "20250102T000000Z")
    assert load_run(None, results_dir)["run_id"].iloc[0] == "bbbb2222"
    assert load_run("latest~1", results_dir)["run_id"].iloc[0] == "aaaa1111"
    with pytest.raises(HubbenchError, match="latest~2: only 2 run"):
        load_run("latest~2", results_dir)
    assert load_run("aaaa", results_dir)["run_id"].iloc[0] == "aaaa1111"
    with pytest.raises(HubbenchError, match="no run 'cccc'"):
        load_run("cccc", results_dir)


def test_baselines_directory_is_not_a_run(results_dir):
    write_run(make_run([cell("hub-gpt", 1024)], run_id="aaaa1111"), results_dir)
    base = results_dir / "baselines"
    base.mkdir()
    make_run([cell("hub-gpt", 1024)], run_id="zzzz").to_parquet(base / "throughput.parquet")
    assert load_run(None, results_dir)["run_id"].iloc[0] == "aaaa1111"


def test_a_newer_schema_version_is_reported(results_dir):
    df = make_run([cell("hub-gpt", 1024)], schema_version=99)
    path = results_dir / "throughput" / "20250101T000000Z-aaaa0001.parquet"
    path.parent.mkdir()
    df.to_parquet(path)
    with pytest.raises(ReportError, match="schema_version 99; this hubbench reads schema_version"):
        load_run("aaaa", results_dir)


def test_an_older_file_reads_with_new_columns_null_and_config_from_json(results_dir):
    import json

    df = make_run([cell("jamba", 1024, "sdpa"), cell("jamba", 1024, "sdpa")], schema_version=1)
    df["config_json"] = [json.dumps({"d_state": d, "seed": 0, "d_model": 512}) for d in (16, 32)]
    df = df.drop(columns=["d_state", "seed", "mlp_ratio"])  # schema 1 had no such columns
    path = results_dir / "throughput" / "20250101T000000Z-aaaa0001.parquet"
    path.parent.mkdir()
    df.to_parquet(path)
    run = load_run("aaaa", results_dir)
    assert list(run["d_state"]) == [16, 32] and run["mlp_ratio"].isna().all()
    assert len(set(cell_keys(run))) == 2
    assert [labeller(run, join_fields(run))(r) for _, r in run.iterrows()] == [
        "jamba d_state=16",
        "jamba d_state=32",
    ]


def test_missing_columns_are_a_schema_mismatch():
    df = make_run([cell("hub-gpt", 1024)]).drop(columns=["tokens_per_s", "status"])
    with pytest.raises(ReportError, match="missing column"):
        check_schema(df, "x.parquet")


def test_only_failed_cells():
    df = make_run(
        [cell("transformer", 1024, "naive")], status={("transformer", "naive", 1024): "oom"}
    )
    with pytest.raises(ReportError, match=r"no ok cells \(1 oom\)"):
        require_ok(df, "r1")


def test_cell_keys_ignore_run_identity_and_measurement_settings():
    a = make_run(grid(seqs=(1024, 2048)), run_id="a")
    b = make_run(list(reversed(grid(seqs=(1024, 2048), repeats=50))), run_id="b")
    assert set(cell_keys(check_schema(a, "a"))) == set(cell_keys(check_schema(b, "b")))
    c = make_run(grid(seqs=(1024,), dtype="fp32"))
    assert not set(cell_keys(check_schema(c, "c"))) & set(cell_keys(check_schema(a, "a")))


def test_labels_name_only_what_tells_cells_apart():
    df = check_schema(make_run(grid(seqs=(1024, 2048))), "x")
    fields = label_fields(df, ["variant", "seq", "attention", "sdpa_kernel", "hubs", "topk"])
    assert fields == ["variant", "seq", "attention"]
    row = df[(df["variant"] == "hub-jamba") & (df["seq"] == 2048)].iloc[0]
    assert describe(row, fields) == "hub-jamba n=2k"


def test_pooled_runs_keep_every_row(results_dir):
    early = make_run([cell("hub-gpt", 1024)], run_id="early", utc_time="2025-01-01T00:00:00Z")
    late = make_run([cell("hub-gpt", 1024)], run_id="late", utc_time="2025-02-01T00:00:00Z")
    p1 = write_run(early, results_dir, "20250101T000000Z")
    p2 = write_run(late, results_dir, "20250201T000000Z")
    pooled = load_runs([str(p2), str(p1)], results_dir)
    assert list(pooled["run_id"]) == ["late", "early"]
