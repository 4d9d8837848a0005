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


def _ab(side, readings, index=0, variant="hub-gpt"):
    return {**_row(variant, 2048, readings, index=index), "side": side}


def test_an_ab_run_names_the_side_of_a_slow_round():
    rows = [
        _ab("candidate", [0.010, 0.010, 0.010, 0.010], index=4),
        _ab("baseline", [0.010, 0.010, 0.014, 0.010], index=4),
    ]
    level = noise(rows)
    assert level.slow == ["cell 4 (hub-gpt n=2048) round 3, baseline (+40%)"]
    assert "round 3, baseline (+40%)" in level.line()


def test_each_side_is_judged_against_its_own_median():
    """The baseline's worker is REF's code: a sentinel that takes 1.6x as long there is its
    sentinel, not a slow machine. Pooled, every baseline round would be flagged."""
    rows = [_ab("candidate", [0.010, 0.0102, 0.0098, 0.010]),
            _ab("baseline", [0.016, 0.0161, 0.0159, 0.016])]  # fmt: skip
    level = noise(rows)
    assert level.slow == []
    assert level.sides.keys() == {"baseline", "candidate"} and level.spread < 0.05
    assert "varied 1% (baseline) and 3% (candidate) (p10-p90) over 8 rounds" in level.line()


def test_the_load_average_is_one_figure_for_the_run():
    rows = [
        {**_row("a", 1, [0.01] * 3), "round_load_1m_start": [1.0, 2.0, 9.5],
         "round_load_1m_end": [1.5, 2.5, 3.0]},
        {**_row("b", 1, [0.01] * 2), "round_load_1m_start": [0.5, None],
         "round_load_1m_end": None},
    ]  # fmt: skip
    level = noise(rows)
    assert (level.load.readings, level.load.median, level.load.max) == (7, 2.0, 9.5)
    assert level.line().endswith("; load average (1 min) median 2.0, max 9.5")
    assert noise([_row("a", 1, [0.01] * 3)]).load is None  # rows before schema 11
    only_load = noise([{"variant": "a", "seq": 1, "round_load_1m_start": [3.0]}])
    assert only_load.readings == 0 and only_load.line() == (
        "noise: no sentinel readings; load average (1 min) median 3.0, max 3.0"
    )
