"""The results schema is the one owner of the columns: derived lists, strict rows, roles."""

from __future__ import annotations

import dataclasses

import pytest

from hubbench import schema
from hubbench.errors import ReportError, SchemaError
from hubbench.plan import variants


def test_every_config_field_of_every_variant_is_a_typed_cell_column() -> None:
    for spec in variants.REGISTRY.values():
        for f in dataclasses.fields(spec.config_cls):
            column = schema.BY_NAME[f.name]
            assert column.group == "cell" and column.role in ("figure", "series"), f.name
            python = {"int64": int, "float64": float, "bool": bool, "string": str}[column.type]
            assert isinstance(getattr(spec.config_cls(), f.name), python), f.name


def test_groups_partition_the_columns_in_file_order() -> None:
    grouped = [n for g in schema.GROUPS for n in schema.names(g)]
    assert sorted(grouped) == sorted(schema.NAMES) and len(grouped) == len(schema.NAMES)
    assert schema.NAMES[0] == "schema_version"
    with pytest.raises(SchemaError, match="unknown column group"):
        schema.names("speed")


def test_cell_fields_are_what_joins_cells_across_runs() -> None:
    fields = schema.cell_fields()
    assert fields[:6] == ("variant", "mode", "device", "batch", "seq", "compile")
    assert "config_json" not in fields and "warmup" not in fields and "repeats" not in fields
    assert schema.fields_with_role("x") == ("seq",)
    assert {"d_model", "dtype", "mode", "batch"} <= set(schema.fields_with_role("figure"))
    assert {"variant", "attention", "hubs", "seed"} <= set(schema.fields_with_role("series"))


def test_metrics_carry_direction_and_time_power() -> None:
    assert schema.metric("tokens_per_s").higher_is_better is True
    assert schema.metric("tokens_per_s").time_power == -1
    assert schema.metric("time_median_s").time_power == 1
    assert schema.metric("peak_mem_bytes").time_power == 0
    with pytest.raises(ReportError, match="unknown metric 'time_p10_s'"):
        schema.metric("time_p10_s")  # a column, but not one to compare on


def test_rows_must_be_complete_known_and_typed() -> None:
    row = dict.fromkeys(schema.NAMES)
    assert list(schema.row(row)) == list(schema.NAMES)
    with pytest.raises(SchemaError, match=r"unknown: speed; missing: status"):
        schema.row({**{k: v for k, v in row.items() if k != "status"}, "speed": 1})
    with pytest.raises(SchemaError, match="column causal is bool, got 1"):
        schema.row({**row, "causal": 1})
    with pytest.raises(SchemaError, match="column samples_s is list<float64>"):
        schema.row({**row, "samples_s": ["fast"]})
    assert schema.part("outcome", {"status": "ok", "message": None, "device_name": "x",
                                   "wall_s": 1}, "w")["wall_s"] == 1  # fmt: skip


def test_varying() -> None:
    rows = [{"a": 1, "b": None, "c": 2}, {"a": 1, "b": 3, "c": 4}]
    assert schema.varying(rows) == ["b", "c"]
    assert schema.varying(rows, nulls=False) == ["c"]
    assert schema.varying(rows, ["a", "c"]) == ["c"]


def test_the_documented_schema_is_the_schema() -> None:
    """docs/measurement.md holds `python -m hubbench.schema`'s tables exactly."""
    from pathlib import Path

    text = (Path(__file__).parents[1] / "docs" / "measurement.md").read_text()
    assert f"schema_version {schema.SCHEMA_VERSION})" in text
    assert schema.markdown() in text, "regenerate: python -m hubbench.schema"


def test_a_schema_4_file_reads_with_the_env_columns_of_5_null(tmp_path) -> None:
    import pandas as pd

    from hubbench import store

    new = ("python_version", "os", "nvidia_driver_version", "numpy_version", "mamba_ssm_version")
    old = {n: None for n in schema.NAMES if n not in new}
    old.update(schema_version=4, run_id="aaaa0001", suite="ci", variant="transformer", seq=64,
               status="ok", torch_version="2.4.0")  # fmt: skip
    path = tmp_path / "ci" / "20250101T000000Z-aaaa0001.parquet"
    path.parent.mkdir()
    pd.DataFrame([old]).astype({"seq": "int64", "schema_version": "int64"}).to_parquet(path)
    (row,) = store.read_rows(path)
    assert list(row) == list(schema.NAMES)
    assert all(row[n] is None for n in new) and row["torch_version"] == "2.4.0"
    df = store.read_run(path)
    assert list(df.columns) == list(schema.NAMES) and df["python_version"].isna().all()
