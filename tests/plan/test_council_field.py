"""HubRouter's council as a config field (issue 34): `--set council=masked,flex` reaches the
layer, is checked at planning, and at its default leaves every recorded cell its id."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from suite_files import write

from hubbench.errors import SuiteError
from hubbench.mixers.hubrouter import COUNCIL_IMPLS, HubRouter
from hubbench.models.builders import build
from hubbench.plan import expand, load_suite, parse_overrides
from hubbench.plan.cell import Cell
from hubbench.plan.variants import COUNCILS

BODY = '[sweep]\nseq = [64]\nvariant = ["hub-gpt", "hub-jamba"]\n'


def test_the_field_lists_the_layers_councils() -> None:
    assert COUNCILS == COUNCIL_IMPLS


def test_council_reaches_the_layer_and_is_swept(tmp_path: Path) -> None:
    suite = load_suite(write(tmp_path, BODY))
    plan = expand(suite, parse_overrides(["council=masked,flex"]), cuda_available=False)
    assert sorted((c.variant, c.config.council) for c in plan.cells) == [
        ("hub-gpt", "flex"), ("hub-gpt", "masked"), ("hub-jamba", "flex"),
        ("hub-jamba", "masked"),
    ]  # fmt: skip
    assert len({c.cell_id for c in plan.cells}) == 4
    for cell in plan.cells:
        model = build(cell.variant, cell.config)
        layers = [m for m in model.modules() if isinstance(m, HubRouter)]
        assert layers and {m.council for m in layers} == {cell.config.council}
        model(torch.randint(0, cell.config.vocab, (1, 64)))
        ran = {m.last_backend for m in layers}
        assert ran == {f"hubrouter:causal:{cell.config.council}-council"}, ran


def test_an_unknown_council_is_refused_at_planning(tmp_path: Path) -> None:
    suite = load_suite(write(tmp_path, BODY))
    with pytest.raises(
        SuiteError,
        match=r"--set council: cell hub-gpt n=64: council=.dense. is not valid; "
        r"valid: auto, packed, split",
    ):
        expand(suite, parse_overrides(["council=dense"]), cuda_available=False)


def test_the_default_council_keeps_the_ids_recorded_before_it_existed(tmp_path: Path) -> None:
    """As test_expand's pinned ci ids: a field added later is elided at its default, from the
    identity and from what a worker of an older commit (`run --against`) is sent."""
    suite = load_suite(write(tmp_path, BODY))
    auto = expand(suite, cuda_available=False).cells[0]
    explicit = expand(suite, parse_overrides(["council=auto"]), cuda_available=False).cells[0]
    assert auto.cell_id == explicit.cell_id and "council" not in auto.identity
    assert "council" not in auto.to_json()["config"]
    assert Cell.from_json(auto.to_json()) == auto
    assert auto.model_config["council"] == "auto"  # the row still records it
    flex = expand(suite, parse_overrides(["council=flex"]), cuda_available=False).cells[0]
    assert flex.to_json()["config"]["council"] == "flex" and Cell.from_json(flex.to_json()) == flex
    # the ci suite's hub-gpt cells keep the ids pinned before the field existed
    ci = {c.cell_id for c in expand(load_suite("ci"), cuda_available=False).cells}
    assert {"db953a10d6da", "bf1eba24e12e", "162b5348506b"} <= ci


def test_a_swept_default_still_tells_the_cells_apart(tmp_path: Path) -> None:
    suite = load_suite(write(tmp_path, BODY))
    plan = expand(suite, parse_overrides(["council=auto,flex"]), cuda_available=False)
    assert "council" in plan.varying
    assert len({c.label(plan.varying) for c in plan.cells}) == len(plan.cells) == 4


def test_council_is_inert_where_no_causal_council_runs(tmp_path: Path) -> None:
    body = '[sweep]\nseq = [64]\nvariant = ["hub-gpt"]\n'
    suite = load_suite(write(tmp_path, body))
    for fixed in ("replace=0", "causal=false"):
        plan = expand(suite, parse_overrides([fixed, "council=masked,flex"]), cuda_available=False)
        assert len(plan.cells) == 1 and plan.cells[0].model_config["council"] is None, fixed


def test_older_rows_read_with_the_default_council(tmp_path: Path) -> None:
    """A schema-10 row has no council column: read back, a hub row says auto (what it ran), so
    it pools with a newer row of the same cell; a transformer row stays null."""
    import json

    from hubbench.store import _upgrade

    hub = {"variant": "hub-gpt", "mode": "decode", "config_json": json.dumps({"hubs": 8})}
    dense = {"variant": "transformer", "mode": "train", "config_json": json.dumps({})}
    assert _upgrade(hub)["council"] == "auto" and _upgrade(dense)["council"] is None
    assert _upgrade(hub)["cuda_graphs"] == "off" and _upgrade(dense)["cuda_graphs"] is None
    assert _upgrade(dense)["l2_flush"] is False
    assert _upgrade({**hub, "council": "flex"})["council"] == "flex"
