"""The report headline's MQAR lines: a failed recipe replaces the comparison at its point; a
point that holds lists each config against the recall-free ceiling, the reference first."""

from __future__ import annotations

from hubbench.report.headline import quality_headline

REF = {"variant": "transformer", "mlp_ratio": 0.0, "n_layers": 2, "n_heads": 1}


def row(variant: str, seed: int, lr: float, val: float, acc: float, seq: int = 64,
        kv: int = 4) -> dict:  # fmt: skip
    return {"mode": "quality", "task": "mqar", "status": "ok", "seq": seq, "kv_pairs": kv,
            "vocab": 8192, "d_model": 64, "batch": 64, "train_updates": 3000, **REF,
            "variant": variant, "seed": seed, "lr": lr, "val_accuracy": val,
            "eval_accuracy": acc, "recall_free_ceiling": 0.285}  # fmt: skip


def test_a_point_that_holds_lists_the_configs_against_the_ceiling() -> None:
    rows = [row("hub-gpt", s, 1e-3, 0.5, 0.4 + 0.1 * s) for s in range(3)]
    rows += [row("transformer", s, lr, v, v) for s in range(3) for lr, v in
             ((1e-3, 0.5), (3e-3, 1.0 if s < 2 else 0.9))]  # fmt: skip
    [line] = quality_headline(rows)
    assert line.startswith("mqar n=64 kv_pairs=4")
    assert line.index("transformer") < line.index("hub-gpt")  # the reference first
    # lr 3e-3 chosen on validation; Wilson 95% for 2 of 3: [0.208, 0.939]
    assert "transformer 0.967 (2/3 seeds solved, 95% 0.21-0.94)" in line
    assert "hub-gpt 0.500 (0/3 seeds solved, 95% 0.00-0.56)" in line
    assert line.endswith("ceiling 0.285")


def test_a_failed_recipe_publishes_no_comparison() -> None:
    rows = [row("transformer", s, 3e-3, 0.9, 0.9, seq=128, kv=8) for s in range(3)]
    rows += [row("hub-gpt", s, 3e-3, 0.99, 0.995, seq=128, kv=8) for s in range(3)]
    [line] = quality_headline(rows)
    assert line.startswith("recipe failed at mqar n=128 kv_pairs=8") and "0 of 3" in line
    assert "hub-gpt" not in line


def test_rows_without_mqar_give_no_lines() -> None:
    assert quality_headline([{"mode": "fwd", "variant": "transformer"}]) == []


def test_the_solved_interval_by_hand() -> None:
    """Wilson score, z = 1.96: 2 of 3 -> centre 0.5734, half 0.3656; 0 of 3 -> [0, 0.5615]."""
    import pytest

    from hubbench.stats import wilson_interval

    assert wilson_interval(2, 3) == (
        pytest.approx(0.2077, abs=1e-4),
        pytest.approx(0.9385, abs=1e-4),
    )
    assert wilson_interval(0, 3) == (0.0, pytest.approx(0.5615, abs=1e-4))
    assert wilson_interval(3, 3)[1] == 1.0 and wilson_interval(0, 0) == (0.0, 1.0)
    # 99%: z = 2.5758; 1 of 10 -> [0.0119, 0.5072] (the score formula worked by hand)
    assert wilson_interval(1, 10, 0.99) == (
        pytest.approx(0.01185, abs=1e-4),
        pytest.approx(0.50723, abs=1e-4),
    )


def test_the_solved_interval_covers_as_it_says() -> None:
    """Against the exact binomial: at every true share on a grid, the 95% interval of 30 seeds
    covers it with probability near 0.95 (Wilson is close to nominal; Wald is not at the edges)."""
    from math import comb

    from hubbench.stats import wilson_interval

    n = 30
    for p in (0.1, 0.3, 0.5, 0.8):
        covered = sum(
            comb(n, k) * p**k * (1 - p) ** (n - k)
            for k in range(n + 1)
            if wilson_interval(k, n)[0] <= p <= wilson_interval(k, n)[1]
        )
        assert 0.9 <= covered <= 0.99, (p, covered)


def test_the_solved_interval_has_one_home() -> None:
    from hubbench.report import seeds

    assert not hasattr(seeds, "solved_interval")
