"""The fast tier cannot quietly grow slow: a test not marked `slow` that starts a measuring
process (a worker, torchrun, a submitit job, a `hubbench run`) fails (tests/conftest.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from tiers import starts_a_measuring_process

PY = sys.executable


@pytest.mark.parametrize(
    ("argv", "measures"),
    [
        ([PY, "-m", "hubbench.measure.entry", "hubbench.models:build"], True),
        ([PY, "-m", "torch.distributed.run", "--standalone", "-m", "hubbench.measure.ranks"], True),
        ([PY, "-m", "submitit.local._local", "/tmp/jobs"], True),
        ([PY, "-m", "hubbench", "run", "ci"], True),
        ([PY, "-m", "hubbench", "run", "ci", "--dry-run"], False),
        ([PY, "-m", "hubbench", "list"], False),
        ([".venv/bin/hubbench", "run", "ci"], True),
        (["/usr/bin/torchrun", "--standalone", "x.py"], True),
        ([".venv/bin/hubbench", "results"], False),
        ([PY, "-c", "import hubbench.measure.entry"], False),
        ("git status", False),
    ],
)
def test_what_counts_as_a_measuring_process(argv: object, measures: bool) -> None:
    assert starts_a_measuring_process(argv) is measures


def test_a_fast_test_that_starts_a_worker_fails() -> None:
    with pytest.raises(RuntimeError, match=r"mark it @pytest\.mark\.slow"):
        subprocess.Popen([PY, "-m", "hubbench.measure.entry", "hubbench.models:build"])


@pytest.mark.slow
def test_a_slow_test_may_start_one() -> None:
    proc = subprocess.Popen([PY, "-m", "hubbench.measure.entry", "nowhere:build"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    assert proc.wait(timeout=60) != 0  # it started, and refused the builder
