"""Issue 33, item 10: an MQAR cell that cannot be laid out names the keys at fault, not every
key of the rule (`--set kv_pairs=100` at seq 64 blamed `defaults.vocab` too)."""

from __future__ import annotations

import pytest

from hubbench.cli.run import plan_suite
from hubbench.errors import SuiteError


@pytest.mark.parametrize(
    ("sets", "seq", "named", "not_named"),
    [
        (["kv_pairs=100"], None, ["--set kv_pairs", "sweep.seq"], "defaults.vocab"),
        (["kv_pairs=5000"], ["100000"], ["--set kv_pairs", "defaults.vocab"], "--seq"),
        ([], ["8192"], ["--seq", "defaults.vocab"], "kv_pairs"),
    ],
)
def test_the_message_names_the_keys_at_fault(sets, seq, named, not_named) -> None:
    with pytest.raises(SuiteError) as caught:
        plan_suite("quality", axes={"seq": seq}, sets=sets)
    where = str(caught.value).split(": cell ")[0]
    assert all(key in where for key in named) and not_named not in where, where
