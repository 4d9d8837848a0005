"""The results store: schema, atomic rewrites, reading by path or id, listing, bad directories."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest
from rows import full_row

from hubbench import schema, store
from hubbench.errors import SchemaError, StoreError


def row(i: int, run_id: str = "aaaa0001", status: str = "ok", **extra: object) -> dict:
    base = {
        "run_id": run_id,
        "suite": "s",
        "cell_index": i,
        "cell_id": f"c{i}",
        "variant": "hub-gpt",
        "seq": 64 * (i + 1),
        "hubs": 8,
        "attention": None,
        "replace": 1.0,
        "causal": True,
        "status": status,
        "time_median_s": 0.5 if status == "ok" else None,
        "samples_s": [0.4, 0.5, 0.6] if status == "ok" else [],
        "tokens_per_s": 128.0 if status == "ok" else None,
        "git_dirty": False,
    }
    return full_row(**(base | extra))


def test_round_trip_keeps_types_nulls_and_samples(tmp_path: Path) -> None:
    path = store.run_path(tmp_path, "s", "aaaa0001")
    store.write_rows(path, [row(0), row(1, status="oom", message="out of memory")])
    df = pd.read_parquet(path)  # the one-liner the README promises
    assert list(df.columns) == list(schema.NAMES)
    assert df["schema_version"].tolist() == [schema.SCHEMA_VERSION] * 2
    assert df.loc[0, "samples_s"].tolist() == [0.4, 0.5, 0.6]
    assert df.loc[1, "status"] == "oom" and df.loc[1, "message"] == "out of memory"
    assert pd.isna(df.loc[1, "time_median_s"]) and pd.isna(df.loc[0, "attention"])
    assert str(df["seq"].dtype) == "int64" and str(df["causal"].dtype) == "bool"
    rows = store.read_rows(path)
    assert rows[0]["attention"] is None and rows[0]["seq"] == 64 and rows[0]["hubs"] == 8
    assert store.read_run(path).equals(df)


def test_unknown_missing_or_mistyped_columns_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "s" / "x-aaaa0001.parquet"
    with pytest.raises(SchemaError, match="unknown: speed"):
        store.write_rows(path, [{**row(0), "speed": 3}])
    partial = row(0)
    del partial["threads"]
    with pytest.raises(SchemaError, match="missing: threads"):
        store.write_rows(path, [partial])
    with pytest.raises(SchemaError, match="column seq is int64, got 'long'"):
        store.write_rows(path, [row(0, seq="long")])
    with pytest.raises(SchemaError, match="column seq is int64"):
        store.write_rows(path, [row(0, seq=2**64)])
    assert not path.exists()


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_get_the_permissions_the_umask_allows(tmp_path: Path, umask: int, mode: int):
    old = os.umask(umask)
    try:
        path = store.run_path(tmp_path, "s", "aaaa0001")
        store.write_rows(path, [row(0)])
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == mode


def test_rewrites_are_atomic_and_leave_no_temp_files(tmp_path: Path) -> None:
    path = store.run_path(tmp_path, "s", "aaaa0001")
    writer = store.RunWriter(path)
    for i in range(3):
        writer.put(row(i))
        assert len(pd.read_parquet(path)) == i + 1  # every finished row is on disk
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_concurrent_writers_each_keep_an_intact_file(tmp_path: Path) -> None:
    writers = [store.RunWriter(store.run_path(tmp_path, "s", rid)) for rid in ("r1", "r2")]

    def fill(writer: store.RunWriter, rid: str) -> None:
        for i in range(15):
            writer.put(row(i, run_id=rid))

    threads = [
        threading.Thread(target=fill, args=(w, r))
        for w, r in zip(writers, ("r1", "r2"), strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for writer, rid in zip(writers, ("r1", "r2"), strict=True):
        df = pd.read_parquet(writer.path)
        assert len(df) == 15 and set(df["run_id"]) == {rid}
    assert not list(tmp_path.glob("s/.*.tmp"))


@pytest.mark.slow  # 300 reads against a busy writer: 2-3 s
def test_a_reader_sees_a_whole_file_while_a_writer_rewrites_it(tmp_path: Path) -> None:
    # a submitter merges a job's part file while the job rewrites it round by round: every read
    # is of the old file or the new one (a path read that takes the size, then opens again,
    # failed about one read in three here with "Deserializing page header failed")
    path = store.run_path(tmp_path, "s", "aaaa0001")
    writer = store.RunWriter(path)
    writer.put(row(0))
    done = threading.Event()

    def rewrite() -> None:
        i = 0
        while not done.is_set():
            i += 1
            writer.put(row(i % 7, samples_s=[0.5] * (1 + i % 40)))  # sizes differ every time

    thread = threading.Thread(target=rewrite)
    thread.start()
    try:
        counts = set()
        for _ in range(300):
            counts.add(len(store.read_rows(path)))
            assert store.readable(path)
            store.run_info(path)
    finally:
        done.set()
        thread.join()
    assert counts <= set(range(1, 8))


def test_reading_runs_starts_no_arrow_threads(tmp_path: Path) -> None:
    # A process that had started Arrow's thread pools sometimes aborted at exit with
    # "terminate called without an active exception" (apache/arrow#34314): 2 in 20 here, each
    # a finished command exiting 134. Reading runs must leave the threads pyarrow's import makes.
    path = store.run_path(tmp_path, "s", "aaaa0001")
    store.write_rows(path, [row(i) for i in range(5)])
    script = (
        "import os, sys, pyarrow.parquet\nfrom pathlib import Path\n"
        "from hubbench import store\n"
        "count = lambda: len(os.listdir('/proc/self/task'))\n"
        "before = count()\n"
        "for _ in range(3):\n"
        "    p = Path(sys.argv[1]); store.read_rows(p); store.readable(p); store.run_info(p)\n"
        "print(before, count())\n"
    )
    if not Path("/proc/self/task").is_dir():
        pytest.skip("counts threads through /proc/self/task (Linux)")
    out = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True,
                         text=True, check=True)  # fmt: skip
    before, after = map(int, out.stdout.split())
    assert after == before, out.stdout


def test_a_new_run_never_takes_an_existing_id(tmp_path: Path, monkeypatch) -> None:
    taken = store.run_path(tmp_path, "other", "dup00001")
    store.write_rows(taken, [row(0, run_id="dup00001")])
    ids = iter(["dup00001", "new00002"])
    monkeypatch.setattr(store, "new_run_id", lambda: next(ids))
    path, run_id = store.reserve_run(tmp_path, "s")
    assert run_id == "new00002" and path.name.endswith("-new00002.parquet")


def test_find_list_and_latest(tmp_path: Path) -> None:
    a = tmp_path / "s" / "20250101T000000Z-abc11111.parquet"
    b = tmp_path / "s" / "20250102T000000Z-abd22222.parquet"
    c = tmp_path / "t" / "20250103T000000Z-fff33333.parquet"
    for p in (a, b, c):
        store.write_rows(p, [row(0, run_id=p.stem.split("-")[1])])
    assert store.list_runs(tmp_path) == [a, b, c]
    assert store.list_runs(tmp_path, "s") == [a, b]
    assert store.latest_run(tmp_path) == c and store.latest_run(tmp_path, "s") == b
    assert store.latest_run(tmp_path, "nope") is None
    assert store.find_run("abc1", tmp_path) == a
    assert store.find_run(str(b)) == b
    assert len(store.read_run("fff", tmp_path)) == 1
    with pytest.raises(StoreError, match="ambiguous"):
        store.find_run("ab", tmp_path)
    with pytest.raises(StoreError, match="no run '999'"):
        store.find_run("999", tmp_path)
    with pytest.raises(StoreError, match="does not exist"):
        store.find_run(str(tmp_path / "missing.parquet"))
    info = store.run_info(a)
    assert (info.suite, info.run_id, info.rows, info.status) == ("s", "abc11111", 1, {"ok": 1})


def test_newer_schema_versions_are_refused_older_ones_read(tmp_path: Path) -> None:
    path = tmp_path / "s" / "20250101T000000Z-abc11111.parquet"
    path.parent.mkdir(parents=True)
    pd.DataFrame([row(0, schema_version=99)]).to_parquet(path)
    with pytest.raises(StoreError, match="schema_version 99; this hubbench reads schema_version"):
        store.read_run(path)
    with pytest.raises(StoreError, match="schema_version 99"):
        store.read_rows(path)
    old = {k: v for k, v in row(0, schema_version=1).items() if k not in ("seed", "d_state")}
    pd.DataFrame([{**old, "config_json": '{"seed": 3}'}]).to_parquet(path)
    df = store.read_run(path)
    assert list(df.columns) == list(schema.NAMES) and df.loc[0, "seed"] == 3
    assert store.read_rows(path)[0]["d_state"] is None
    with pytest.raises(StoreError, match="--resume extends only schema_version"):
        store.read_rows(path, for_resume=True)
    pd.DataFrame({"x": [1]}).to_parquet(path)
    with pytest.raises(StoreError, match="not a hubbench run file"):
        store.read_run(path)


def test_unwritable_results_dir_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match=r"results directory .*file/results is not writable"):
        store.check_writable(blocker / "results")
    store.check_writable(tmp_path / "new" / "results")  # created on demand
    assert (tmp_path / "new" / "results").is_dir()


def test_results_dir_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(store.RESULTS_ENV, raising=False)
    assert store.results_dir(None) == Path("results")
    monkeypatch.setenv(store.RESULTS_ENV, str(tmp_path))
    assert store.results_dir(None) == tmp_path
    assert store.results_dir(tmp_path / "x") == tmp_path / "x"


def test_two_writers_of_one_run_keep_each_others_rows(tmp_path: Path) -> None:
    path = store.run_path(tmp_path, "s", "aaaa0001")
    first, second = store.RunWriter(path), store.RunWriter(path)
    first.put(row(0))
    second.put(row(1))
    first.put(row(2))  # its own file no longer: it reads the other's row first
    assert sorted(r["cell_id"] for r in store.read_rows(path)) == ["c0", "c1", "c2"]
    first.put(row(0, message="again"))
    assert {r["cell_id"]: r["message"] for r in store.read_rows(path)}["c0"] == "again"


def test_one_merge_policy_the_row_that_measured_more_wins() -> None:
    def cell_row(rounds: int, status: str = "partial", lost: bool = False) -> dict:
        return row(0, status=status, job_lost=lost, round_samples_s=[[0.5]] * rounds)

    partial, lost = cell_row(2), cell_row(2, "error", lost=True)
    assert store.supersedes(partial, None)
    assert store.supersedes(cell_row(3), partial) and not store.supersedes(partial, cell_row(3))
    assert store.supersedes(cell_row(2, "oom"), partial)  # the cell ended in round 3
    assert not store.supersedes(partial, cell_row(2, "ok"))
    assert store.supersedes(lost, partial) and store.supersedes(partial, lost)  # the newer
    assert not store.supersedes(cell_row(1), lost)  # a lost row keeps its rounds


def test_rows_read_to_be_written_back_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "s" / "20250101T000000Z-abc11111.parquet"
    path.parent.mkdir(parents=True)
    pd.DataFrame([row(0, seq="long")]).to_parquet(path)  # another program's file
    assert store.read_rows(path)[0]["seq"] == "long"  # read as it is
    with pytest.raises(SchemaError, match="row 0: column seq is int64, got 'long'"):
        store.read_rows(path, for_resume=True)


@pytest.mark.parametrize("suite", ["", ".", "..", "../x", "a/b", "/abs", ".hidden", "a\\b", "a\nb"])
def test_a_suite_that_is_not_one_safe_folder_never_names_a_path(tmp_path: Path, suite: str):
    """No caller can put a run outside <results>/<suite>/ or list runs from outside it."""
    with pytest.raises(StoreError, match="suite name"):
        store.run_path(tmp_path / "results", suite, "aaaa0001")
    with pytest.raises(StoreError, match="suite name"):
        store.reserve_run(tmp_path / "results", suite)
    if suite:  # an empty --suite lists every suite's runs
        with pytest.raises(StoreError, match="suite name"):
            store.list_runs(tmp_path / "results", suite)
    with pytest.raises(StoreError, match=r"suite name .*pinned baselines"):
        store.run_path(tmp_path, store.BASELINES_DIR, "aaaa0001")
    assert store.list_runs(tmp_path, store.BASELINES_DIR) == []  # listing them is fine


def test_a_suite_name_is_a_folder_never_a_pattern(tmp_path: Path) -> None:
    ci = store.run_path(tmp_path, "ci", "aaaa0001")
    store.write_rows(ci, [row(0)])
    assert store.list_runs(tmp_path, "ci") == [ci]
    assert store.list_runs(tmp_path, "c*") == [] and store.latest_run(tmp_path, "c?") is None


# ----------------------------------------------------------------------------- --resume (issue 33)


def own_row(run_id: str = "feed00aa", **values: object) -> dict:
    fields = {"suite": "ci", "variant": "transformer", "seq": 64, "status": "ok",
              "cell_id": "0123456789ab", **values}  # fmt: skip
    return full_row(run_id=run_id, **fields)


def test_resume_reads_a_run_it_wrote(tmp_path: Path) -> None:
    path = tmp_path / "ci" / "20260101T000000Z-feed00aa.parquet"
    store.write_rows(path, [own_row(), own_row(cell_id="0123456789ab/baseline")])
    assert len(store.read_resumable(path, "ci")) == 2


@pytest.mark.parametrize(
    ("name", "rows", "why"),
    [
        # issue 33's file: the three columns, nothing else hubbench writes
        ("20260101T000000Z-feed00aa", [full_row(status="ok", cell_id="0123456789ab")],
         "row 0 has run_id None, its name says feed00aa"),
        ("results", [own_row()], "its name is not"),
        ("20260101T000000Z-feed00aa", [own_row("feed00bb")], "row 0 has run_id 'feed00bb'"),
        ("20260101T000000Z-feed00aa", [own_row(suite="hubs")], "row 0 has suite 'hubs'"),
        ("20260101T000000Z-feed00aa", [own_row(cell_id="x")], "row 0 has cell_id 'x'"),
        ("20260101T000000Z-feed00aa", [own_row(), own_row()], "two rows have one cell_id"),
        ("20260101T000000Z-feed00aa", [], "it has no rows"),
    ],
)  # fmt: skip
def test_resume_refuses_a_parquet_it_did_not_write(
    tmp_path: Path, name: str, rows: list, why: str
) -> None:
    path = tmp_path / "ci" / f"{name}.parquet"
    store.write_rows(path, rows)
    with pytest.raises(StoreError, match="is not a ci run hubbench wrote") as caught:
        store.read_resumable(path, "ci")
    assert why in str(caught.value)


def test_cli_resume_of_a_foreign_parquet_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from hubbench.cli import app

    foreign = tmp_path / "ci" / "zz-data.parquet"  # sorts after every run: the latest
    foreign.parent.mkdir()
    pd.DataFrame({"schema_version": [schema.SCHEMA_VERSION], "status": ["ok"],
                  "cell_id": ["0123456789ab"], "price": [3.5]}).to_parquet(foreign)  # fmt: skip
    before = foreign.read_bytes()
    result = CliRunner().invoke(app, ["run", "ci", "--resume", "--results-dir", str(tmp_path)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: --resume: {foreign} is not a ci run hubbench wrote")
    assert foreign.read_bytes() == before
    assert sorted(p.name for p in foreign.parent.iterdir()) == [foreign.name]
