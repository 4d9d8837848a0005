"""Issue 33, item 7: a bytes cell's data file is digested into the cell's identity, as plug-in
code is, so seeds trained on an edited file are another cell: `--resume` measures it anew, says
so, and never pools it with the seeds of the old content. Named corpora and the MQAR cells keep
their ids."""

from __future__ import annotations

import hashlib
from pathlib import Path

from rows import full_row

from hubbench import store
from hubbench.cli.run import plan_suite
from hubbench.run.runner import edited_data, prepare_run

WORDS = " ".join(["the cat sat on the mat", "a dog ran"] * 700).encode()


def plan(data: str):
    axes = {"task": ["bytes"], "data": [data], "seq": ["64"], "variant": ["transformer"]}
    return plan_suite("quality", axes=axes)


def test_the_data_files_content_is_in_the_cells_identity(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(WORDS)
    before = plan(str(corpus)).cells
    digest = hashlib.sha256(WORDS).hexdigest()[:12]
    assert {c.data_digest for c in before} == {digest}
    assert all(c.identity["data_digest"] == digest for c in before)
    corpus.write_bytes(WORDS + b" edited")
    after = plan(str(corpus)).cells
    assert [c.cell_id for c in before] != [c.cell_id for c in after]
    assert len({c.cell_id for c in before} | {c.cell_id for c in after}) == 2 * len(before)


def test_named_corpora_and_mqar_cells_have_no_digest() -> None:
    for cell in [*plan("pydoc").cells, *plan_suite("quality", axes={}).cells]:
        assert cell.data_digest is None and "data_digest" not in cell.identity


def test_resume_after_editing_the_data_measures_new_cells_and_says_so(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(WORDS)
    old = plan(str(corpus))
    rows = [full_row(run_id="feed0007", suite="quality", cell_id=c.cell_id, status="ok",
                     variant=c.variant, seq=c.seq, mode="quality", task="bytes",
                     data=str(corpus), data_digest=c.data_digest) for c in old.cells]  # fmt: skip
    store.write_rows(tmp_path / "quality" / "20260101T000000Z-feed0007.parquet", rows)
    assert edited_data(old, rows) == []
    measured = {r["cell_id"] for r in rows}
    _, _, states, previous = prepare_run(old, tmp_path, resume=True)
    assert previous is not None and {s.key for s in states} == measured  # the same content
    corpus.write_bytes(WORDS + b" edited")
    new = plan(str(corpus))
    _, _, states, _ = prepare_run(new, tmp_path, resume=True)
    assert not {s.key for s in states} & measured  # new cells: nothing resumed or pooled
    assert all(s.pending and not s.rounds for s in states)
    assert edited_data(new, rows) == [str(corpus)]
