"""The learning rate is chosen per (config, seed) on the validation split, never on the
evaluation set; the recipe holds where the reference solves MQAR in two thirds of its seeds."""

from __future__ import annotations

import pytest

from hubbench.report.seeds import (
    Recipe,
    is_reference,
    pool_seeds,
    recipe_failures,
    recipe_verdicts,
    select_lr,
)

REF = {"variant": "transformer", "mlp_ratio": 0.0, "n_layers": 2, "n_heads": 1}


def row(seed: int, lr: float, val: float | None, acc: float, solve: int | None = None,
        status: str = "ok", **fields) -> dict:  # fmt: skip
    return {"mode": "quality", "task": "mqar", "status": status, "seq": 64, "kv_pairs": 4,
            "vocab": 8192, "d_model": 64, "batch": 64, "train_updates": 3000, **REF,
            "seed": seed, "lr": lr, "val_accuracy": val, "eval_accuracy": acc,
            "updates_to_solve": solve, **fields}  # fmt: skip


def test_the_best_validation_score_wins_even_when_the_evaluation_disagrees() -> None:
    """Adversarial: the rate with the better evaluation has the worse validation score."""
    rows = [row(0, 1e-3, val=0.80, acc=0.99), row(0, 3e-3, val=0.85, acc=0.10)]
    [chosen] = select_lr(rows)
    assert chosen["lr"] == 3e-3 and chosen["eval_accuracy"] == 0.10
    assert chosen["lr_grid"] == [1e-3, 3e-3]


def test_selection_never_reads_the_evaluation_set() -> None:
    """Scrambling or removing every evaluation value leaves every choice unchanged."""
    cases = [
        (0, 1e-3, 0.99, 0.5, 800),
        (0, 3e-3, 0.99, 0.9, 400),
        (1, 1e-3, 0.3, 0.1, None),
        (1, 3e-3, 0.2, 1.0, None),
        (2, 1e-3, 0.995, 0.2, 900),
        (2, 3e-3, 0.5, 0.99, None),
    ]
    rows = [row(s, lr, val=v, acc=a, solve=u) for s, lr, v, a, u in cases]
    chosen = {(r["seed"], r["lr"]) for r in select_lr(rows)}
    assert chosen == {(0, 3e-3), (1, 1e-3), (2, 1e-3)}  # ties: fewer updates to solve
    for poison in (lambda r: {**r, "eval_accuracy": -r["eval_accuracy"]},
                   lambda r: {k: v for k, v in r.items() if k != "eval_accuracy"},
                   lambda r: {**r, "eval_accuracy": object()}):  # fmt: skip
        again = {(r["seed"], r["lr"]) for r in select_lr([poison(r) for r in rows])}
        assert again == chosen


def test_equal_validation_and_speed_choose_the_lower_rate_and_failures_lose() -> None:
    rows = [row(0, 3e-3, 0.5, 0.5), row(0, 1e-3, 0.5, 0.4), row(1, 1e-3, None, 0.0, status="oom"),
            row(1, 3e-3, 0.1, 0.1)]  # fmt: skip
    got = {r["seed"]: r["lr"] for r in select_lr(rows)}
    assert got == {0: 1e-3, 1: 3e-3}
    only_failed = select_lr(
        [row(2, 1e-3, None, 0, status="oom"), row(2, 3e-3, None, 0, status="error")]
    )
    assert len(only_failed) == 2  # nothing to choose: the failures stay seen


def test_other_configs_and_tasks_are_not_merged() -> None:
    rows = [row(0, 1e-3, 0.5, 0.5), row(0, 3e-3, 0.6, 0.6, kv_pairs=8, seq=128),
            {**row(0, 1e-3, None, 0.0), "task": "bytes", "variant": "hub-gpt"},
            {**row(0, 3e-3, None, 0.0), "task": "bytes", "variant": "hub-gpt"}]  # fmt: skip
    assert len(select_lr(rows)) == 4


def test_pooling_seeds_reports_the_chosen_rate_per_seed_as_one_config() -> None:
    rows = [row(0, 1e-3, 0.9, 0.9), row(0, 3e-3, 0.5, 0.5), row(1, 1e-3, 0.4, 0.4),
            row(1, 3e-3, 0.95, 0.95)]  # fmt: skip
    [config] = pool_seeds(rows)
    assert sorted(r["eval_accuracy"] for r in config.rows) == [0.9, 0.95]


def test_the_reference_is_zoologys_attention_baseline() -> None:
    assert is_reference(row(0, 1e-3, 1, 1))
    assert not is_reference({**row(0, 1e-3, 1, 1), "mlp_ratio": 4.0})
    assert not is_reference({**row(0, 1e-3, 1, 1), "variant": "hub-gpt"})
    assert not is_reference({**row(0, 1e-3, 1, 1), "n_heads": 2})


@pytest.mark.parametrize(("solved", "seeds", "holds"),
                         [(2, 3, True), (1, 3, False), (3, 3, True), (1, 1, True), (0, 1, False),
                          (0, 0, False), (4, 6, True), (3, 6, False)])  # fmt: skip
def test_the_recipe_needs_two_thirds_of_the_seeds(solved: int, seeds: int, holds: bool) -> None:
    assert Recipe("x", seeds, solved).holds is holds


def test_recipe_verdicts_per_point_after_the_rate_choice() -> None:
    rows = [
        # (64, 4): seeds 0 and 1 solve at their chosen rate, seed 2 does not: holds
        row(0, 1e-3, 0.99, 1.0), row(0, 3e-3, 0.5, 0.5), row(1, 1e-3, 0.995, 0.995),
        row(2, 1e-3, 0.3, 0.3),
        # (128, 8): the unchosen rate solved, the chosen did not (validation said otherwise)
        row(0, 1e-3, 0.2, 1.0, seq=128, kv_pairs=8), row(0, 3e-3, 0.4, 0.4, seq=128, kv_pairs=8),
        # a hub model solving does not rescue the recipe
        {**row(0, 1e-3, 1.0, 1.0, seq=128, kv_pairs=8), "variant": "hub-gpt"},
    ]  # fmt: skip
    verdicts = {v.where: v for v in recipe_verdicts(rows)}
    small = verdicts["mqar n=64 kv_pairs=4"]  # the fields the points share go unsaid
    big = verdicts["mqar n=128 kv_pairs=8"]
    assert (small.seeds, small.solved, small.holds) == (3, 2, True)
    assert (big.seeds, big.solved, big.holds) == (1, 0, False)
    [line] = recipe_failures(rows)
    assert line.startswith("recipe failed at mqar n=128 kv_pairs=8") and "0 of 1" in line


def test_a_point_without_its_reference_does_not_hold() -> None:
    rows = [{**row(0, 1e-3, 1.0, 1.0), "variant": "hub-gpt"}]
    [v] = recipe_verdicts(rows)
    assert v.seeds == 0 and not v.holds


def test_a_rerun_is_not_one_more_try() -> None:
    """Adversarial: an earlier run of the same (config, seed, rate) scored better on validation;
    the latest run's row is the candidate, and the other rate still competes with it."""
    old = {**row(0, 1e-3, 0.999, 0.999), "run_id": "a", "utc_time": "2026-12-06T10:00:00Z"}
    new = {**row(0, 1e-3, 0.90, 0.85), "run_id": "b", "utc_time": "2026-12-06T11:00:00Z"}
    other = {**row(0, 3e-3, 0.95, 0.5), "run_id": "c", "utc_time": "2026-12-06T09:00:00Z"}
    [chosen] = select_lr([old, new, other])
    assert (chosen["run_id"], chosen["lr"]) == ("c", 3e-3)  # 0.95 beats the rerun's 0.90
    [chosen] = select_lr([new, old])  # the order rows come in does not matter
    assert chosen["run_id"] == "b" and chosen["lr_grid"] == [1e-3]
    # two seeds of one run are two cells, not reruns
    assert len(select_lr([new, {**new, "seed": 1}])) == 2
