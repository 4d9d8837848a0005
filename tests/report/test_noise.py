"""The noise sentinel's verdict on a run: spread, and rounds that ran while the machine was slow."""

from __future__ import annotations

from hubbench.report.noise import SLOW, noise


def _row(variant, seq, readings, threads=1, index=0):
    return {"variant": variant, "seq": seq, "threads": threads, "round_sentinel_s": readings,
            "cell_index": index}  # fmt: skip


def test_a_steady_run_has_no_slow_rounds():
    rows = [_row("hub-gpt", 256, [0.010, 0.0101, 0.0099]), _row("transformer", 256, [0.01] * 3)]
    level = noise(rows)
    assert level.readings == 6 and level.spread < 0.05 and not level.slow
    assert "no round ran more than 25% slow" in level.line()


def test_a_slow_round_is_flagged_with_its_cell():
    rows = [
        _row("hub-gpt", 2048, [0.010, 0.010, 0.014], index=4),
        _row("transformer", 256, [0.01] * 3),
    ]
    level = noise(rows)
    assert level.slow == ["cell 4 (hub-gpt n=2048) round 3 (+40%)"]
    assert "1 round(s) ran more than" in level.line()


def test_thread_counts_are_judged_apart():
    """Two threads run the sentinel faster; that alone is no slow round for one thread."""
    rows = [_row("a", 1, [0.010] * 4, threads=1), _row("b", 1, [0.006] * 4, threads=2)]
    assert noise(rows).slow == []


def test_rows_without_readings():
    assert noise([{"variant": "a", "seq": 1, "round_sentinel_s": None}]) is None
    assert 0 < SLOW < 1
