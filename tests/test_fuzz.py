"""Fuzzing the entry points with hypothesis: the only exceptions allowed out are hubbench's own.

Suite documents, `--set` strings, command-line option values and mutated run files go through
the project's own entry points (parse_suite + expand, parse_overrides, the CLI, the readers and
reports). In CI the tests run about 950 examples in all (seconds); HUBBENCH_FUZZ_SCALE multiplies
every test's count for a long run (60: about 57,000 examples, some 40 minutes on 2 cores):

    HUBBENCH_FUZZ_SCALE=60 .venv/bin/pytest -q tests/test_fuzz.py -p no:cacheprovider
"""

from __future__ import annotations

import contextlib
import io
import math
import os
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rows import full_row
from typer.testing import CliRunner

from hubbench import schema, store
from hubbench.cli import app
from hubbench.errors import HubbenchError
from hubbench.plan import expand, field_types, parse_overrides, parse_suite
from hubbench.plan.suite import TOP_KEYS

pytestmark = pytest.mark.slow  # hypothesis drives hundreds of examples per test

SCALE = int(os.environ.get("HUBBENCH_FUZZ_SCALE", "1"))


def budget(ci: int) -> settings:
    return settings(
        max_examples=ci * SCALE,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        database=None,
    )


FIELDS = [*sorted(field_types()), "nope", "seq ", ""]
SCALARS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(max_size=12),
    st.sampled_from(
        [
            "sdpa",
            "naive",
            "flash",
            "hub-gpt",
            "transformer",
            "jamba",
            "cpu",
            "cuda",
            "auto",
            "fwd",
            "train",
            "bf16",
            "fp32",
            "ref",
            "fused",
        ]
    ),
    st.integers(min_value=1, max_value=4096),
)
SMALL_LISTS = st.lists(SCALARS, min_size=0, max_size=3)
COMPARISONS = st.dictionaries(st.sampled_from(["gt", "lt", "x"]), SCALARS, max_size=2)
VALUES = st.one_of(SCALARS, SMALL_LISTS, COMPARISONS)
SIDES = st.dictionaries(st.sampled_from(FIELDS), SCALARS, max_size=2)


@st.composite
def suite_documents(draw):
    doc: dict = {}
    for key in draw(st.lists(st.sampled_from([*TOP_KEYS, "bogus"]), max_size=6, unique=True)):
        if key in ("defaults", "sweep", "measure"):
            names = st.sampled_from([*FIELDS, "cuda", "cpu", "rounds", "repeats", "warmup",
                                     "timeout_s", "min_time_s", "warmup_max_s"])  # fmt: skip
            doc[key] = draw(st.dictionaries(names, VALUES, max_size=5))
        elif key == "exclude":
            rule = st.dictionaries(st.sampled_from([*FIELDS, "reason"]), VALUES, max_size=3)
            doc[key] = draw(st.lists(rule, max_size=2))
        elif key == "gate":
            rule = st.fixed_dictionaries(
                {"name": st.text(max_size=5)},
                optional={"numerator": SIDES, "denominator": SIDES, "min": SCALARS,
                          "max": SCALARS, "metric": SCALARS},
            )  # fmt: skip
            doc[key] = draw(st.one_of(st.fixed_dictionaries({"ratio": st.lists(rule, max_size=2)}),
                                      VALUES))  # fmt: skip
        else:
            doc[key] = draw(VALUES)
    return doc


@budget(ci=300)
@given(doc=suite_documents())
def test_suite_documents(doc) -> None:
    try:
        plan = expand(parse_suite(doc, Path("fuzz.toml")), cuda_available=False)
    except HubbenchError:
        return
    assert plan.cells
    for cell in plan.cells[:20]:
        schema.check(cell.columns(), schema.names("cell", "measure"), "cell")


@budget(ci=300)
@given(
    sets=st.lists(st.text(max_size=20), max_size=4), seq=st.one_of(st.none(), st.text(max_size=10))
)
def test_set_strings(sets, seq) -> None:
    with contextlib.suppress(HubbenchError):
        parse_overrides(sets, seq=seq)


@budget(ci=200)
@given(raw=st.binary(max_size=300))
def test_suite_files_of_any_bytes(tmp_path_factory, raw) -> None:
    path = tmp_path_factory.mktemp("suite") / "x.toml"
    path.write_bytes(raw)
    result = CliRunner().invoke(app, ["run", str(path), "--dry-run"])
    assert result.exit_code in (0, 2) and isinstance(result.exception, SystemExit | None), (
        result.output
    )


OPTIONS = ["--seq", "--batch", "--rounds", "--repeats", "--warmup", "--timeout", "--threads",
           "--min-time", "--variant", "--mode", "--dtype", "--device", "--set"]  # fmt: skip


@budget(ci=60)
@given(args=st.lists(st.tuples(st.sampled_from(OPTIONS), st.text(max_size=12)), max_size=3))
def test_run_options(args) -> None:
    argv = ["run", "ci", "--dry-run", *[x for pair in args for x in pair]]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code in (0, 2), (argv, result.output)
    assert isinstance(result.exception, SystemExit | None), (argv, result.exception)


REPORT_OPTIONS = ["--resamples", "--confidence", "--min-effect", "--max-regression", "--metric"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    results = tmp_path_factory.mktemp("results")
    for run_id, seq in (("aaaa0001", 256), ("bbbb0002", 256)):
        rows = []
        for i, variant in enumerate(("transformer", "hub-gpt")):
            rounds = [[0.01 * (1 + 0.02 * k + 0.1 * i) for k in range(4)] for _ in range(3)]
            rows.append(full_row(
                run_id=run_id, suite="ci", cell_index=i, cell_id=f"c{i}", variant=variant, seq=seq,
                mode="fwd", device="cpu", batch=1, threads=1, status="ok",
                time_median_s=rounds[0][1], tokens_per_s=seq / rounds[0][1], time_p10_s=0.01,
                time_p90_s=0.012, samples_s=[t for r in rounds for t in r], round_samples_s=rounds,
                round_sentinel_s=[0.01] * 3, peak_mem_bytes=2**20, mem_kind="cpu_rss",
                device_name="cpu", host="h", torch_version="t",
            ))  # fmt: skip
        store.write_rows(store.run_path(results, "ci", run_id), rows)
    return results


@budget(ci=60)
@given(args=st.lists(st.tuples(st.sampled_from(REPORT_OPTIONS), st.text(max_size=8)), max_size=3))
def test_compare_and_gate_options(run_dir, args) -> None:
    extra = [x for pair in args for x in pair]
    for argv in (["compare", "aaaa", "bbbb", *extra],
                 ["gate", "--baseline", "aaaa", "--candidate", "bbbb", *extra]):  # fmt: skip
        result = CliRunner().invoke(app, [*argv, "--results-dir", str(run_dir)])
        assert result.exit_code in (0, 1, 2), (argv, result.output)
        assert isinstance(result.exception, SystemExit | None), (argv, result.exception)
        if result.exit_code == 1:
            assert argv[0] == "gate" and "regressed" in result.stderr


VALUES_FOR_COLUMNS = st.one_of(
    st.none(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**62), max_value=2**62),
    st.text(max_size=6),
    st.booleans(),
    st.lists(st.floats(allow_nan=True), max_size=3),
)


def _readers(path: Path, tmp: Path) -> None:
    from hubbench.report.compare import compare_runs
    from hubbench.report.html import build_html
    from hubbench.report.load import load_run

    info = store.run_info(path)
    assert info.rows >= 0
    df = load_run(path)
    compare_runs(df, df)
    build_html(df)


@budget(ci=8)
@given(changes=st.dictionaries(st.sampled_from(schema.NAMES), VALUES_FOR_COLUMNS, max_size=4))
def test_run_files_with_mutated_values(run_dir, tmp_path_factory, changes) -> None:
    tmp = tmp_path_factory.mktemp("mut")
    df = pd.read_parquet(store.find_run("aaaa", run_dir))
    for col, value in changes.items():
        df[col] = [value] * len(df)
    path = tmp / "ci" / "20260101T000000Z-cccc0003.parquet"
    path.parent.mkdir()
    try:
        df.to_parquet(path)
    except (ValueError, TypeError, OverflowError, ArithmeticError, ImportError) as exc:
        pytest.skip(f"pandas cannot even write this frame: {exc}")
    with contextlib.suppress(HubbenchError):
        _readers(path, tmp)


@budget(ci=25)
@given(cut=st.integers(min_value=0, max_value=4000), flip=st.integers(min_value=0, max_value=4000))
def test_run_files_with_damaged_bytes(run_dir, tmp_path_factory, cut, flip) -> None:
    raw = bytearray(store.find_run("aaaa", run_dir).read_bytes())
    if flip < len(raw):
        raw[flip] ^= 0xFF
    raw = raw[: max(cut, 0)] if cut < len(raw) else raw
    tmp = tmp_path_factory.mktemp("bytes")
    path = tmp / "ci" / "20260101T000000Z-dddd0004.parquet"
    path.parent.mkdir()
    path.write_bytes(bytes(raw))
    try:
        pq.read_table(io.BytesIO(bytes(raw)))
    except Exception:  # a file pyarrow rejects must be rejected cleanly by us too
        with pytest.raises(HubbenchError):
            _readers(path, tmp)
        return
    with contextlib.suppress(HubbenchError):
        _readers(path, tmp)
    assert math.isfinite(len(raw))
