"""What a quality cell may ask for, checked when it is planned (hubbench.plan.quality): a `bytes`
cell's data file is refused before anything runs, `--dry-run` included (issue 33, item 4)."""

from __future__ import annotations

from pathlib import Path

import pytest
from suite_files import plan_of

from hubbench.errors import ConfigError, SuiteError
from hubbench.plan import parse_overrides
from hubbench.plan import quality as plan_quality
from hubbench.plan.quality import check_quality
from hubbench.plan.variants import make_config

BYTES = {"task": "bytes", "lr": 1e-3, "seq": 128, "kv_pairs": 4}


def check(data: Path, seq: int = 128) -> None:
    check_quality({**BYTES, "seq": seq, "data": str(data)}, make_config("transformer", vocab=256))


def needed() -> int:
    return getattr(plan_quality, "MIN_CORPUS_BYTES", 4096)


@pytest.mark.parametrize("size", [0, 10, 4095])
def test_a_data_file_shorter_than_the_task_needs_is_refused(tmp_path: Path, size: int) -> None:
    path = tmp_path / "tiny.txt"
    path.write_bytes(b"x" * size)
    with pytest.raises(ConfigError) as info:
        check(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    assert f"holds {size} bytes" in message and f"at least {needed()}" in message
    assert list(info.value.fields) == ["data"]


def test_the_minimum_is_the_one_the_task_uses(tmp_path: Path) -> None:
    path = tmp_path / "enough.txt"
    path.write_bytes(b"x" * needed())
    check(path)  # exactly the minimum plans
    pytest.importorskip("torch")
    from hubbench.quality import tasks

    assert tasks.MIN_CORPUS_BYTES == plan_quality.MIN_CORPUS_BYTES  # one constant, not two
    tasks.byte_corpus(str(path))  # and the task accepts what planning accepted


def test_a_held_out_tail_too_short_for_one_window_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "text.txt"
    path.write_bytes(b"x" * 5000)  # held-out tail: 500 bytes
    check(path, seq=499)  # one window of seq + 1 = 500 bytes fits
    with pytest.raises(ConfigError, match=r"holds 5000 bytes.*at least 5010.*seq \+ 1 = 501"):
        check(path, seq=500)


def test_an_unreadable_data_file_is_refused(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "secret.txt"
    path.write_bytes(b"x" * 10_000)

    def denied(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "open", denied)  # chmod 0 does not stop root, who runs CI here
    with pytest.raises(ConfigError, match=r"secret\.txt.* cannot be read: Permission denied$"):
        check(path)


def test_dry_run_planning_refuses_a_short_data_file(tmp_path: Path) -> None:
    """The planning `hubbench run --dry-run` does: the error names the option and the file."""
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    body = '[sweep]\nvariant = ["transformer"]\nseq = [128]\nvocab = [256]\n'
    given = parse_overrides(mode="quality", task="bytes", data=str(empty))
    with pytest.raises(SuiteError, match=r"--data.*empty\.txt.*holds 0 bytes"):
        plan_of(tmp_path, body, overrides=given)


def test_mqar_planning_needs_vocab_above_seq_and_legacy_is_asked_for_by_name() -> None:
    """Zoology's layout needs vocab > seq (it asserts it); the first layout only by its name."""
    config = make_config("transformer", vocab=128)
    mqar = {"task": "mqar", "lr": 1e-3, "seq": 128, "kv_pairs": 8, "data": "pydoc"}
    with pytest.raises(ConfigError, match=r"vocab > seq.*mqar-legacy"):
        check_quality(mqar, config)
    check_quality({**mqar, "task": "mqar-legacy"}, config)  # the old layout: vocab 128 is fine
    check_quality(mqar, make_config("transformer", vocab=8192))
    with pytest.raises(ConfigError, match="kv_pairs must be >= 1"):
        check_quality({**mqar, "task": "mqar-legacy", "kv_pairs": 0}, config)
    with pytest.raises(ConfigError, match="unknown task 'mqar-zoology'"):
        check_quality({**mqar, "task": "mqar-zoology"}, config)
