"""The causality report card over a fake registry: a causal mixer passes, its leaky control is
caught with its first leaking pair, a control the checks miss fails the command (exit 1), NaN
outputs and build errors are unusable (exit 2), a leak only in train mode is caught, and the card
is written as Markdown and JSON that `hubbench report` shows."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest
import torch
from rows import full_row
from torch import nn
from typer.testing import CliRunner

from hubbench import models
from hubbench.cli import app
from hubbench.errors import ConfigError
from hubbench.plan import variants
from hubbench.plan.variants import BaseConfig, VariantSpec
from hubbench.report.html import build_html, card_section
from hubbench.verify.card import Card, CardSettings
from hubbench.verify.checking import check_target
from hubbench.verify.probes import lengths
from hubbench.verify.targets import (
    SMALL,
    CardTarget,
    card_targets,
    small_config,
    small_fields,
)

runner = CliRunner()


def _f(default: object) -> object:
    return field(default=default, metadata={"doc": "test", "role": "mixer"})


@dataclass
class FakeConfig(BaseConfig):
    block: int = _f(64)
    causal: bool = _f(True)
    kind: str = _f("causal")  # what the fake mixer does: causal | blind | nan | train | broken


class BlockMean(nn.Module):
    """A causal running mean; with causal=False the first token of each complete block also
    sees the block's last token (a block-granularity leak: first pair t_out 0 <- t_in block-1).
    `kind` plants the other faults the card must tell apart."""

    def __init__(self, d: int, block: int, causal: bool, kind: str) -> None:
        super().__init__()
        self.proj = nn.Linear(d, d, bias=False)
        self.norm = nn.BatchNorm1d(d)
        self.block, self.causal, self.kind = block, causal, kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[1]
        steps = torch.arange(1, n + 1, dtype=x.dtype).view(1, -1, 1)
        y = self.proj(x).cumsum(1) / steps
        if not self.causal and self.kind != "blind" and n >= self.block:
            firsts = torch.arange(0, n - self.block + 1, self.block)
            y = y.index_add(1, firsts, x[:, firsts + self.block - 1])
        if self.kind == "nan":
            y = y * float("nan")
        if self.kind == "train":  # running statistics in eval, the batch's in train mode
            y = y + self.norm(x.transpose(1, 2)).transpose(1, 2)
        return y


class FakeLM(nn.Module):
    def __init__(self, config: FakeConfig) -> None:
        super().__init__()
        if config.kind == "broken":
            raise RuntimeError("cannot build this one")
        self.config = config
        self.mixer = BlockMean(config.d_model, config.block, config.causal, config.kind)
        self.causal = config.causal  # as the built-in mixers flag themselves
        self.head = nn.Linear(config.d_model, 8)

    def forward_embeddings(self, h: torch.Tensor) -> torch.Tensor:
        return self.head(self.mixer(h))


def fake_registry(monkeypatch: pytest.MonkeyPatch, *kinds: str) -> None:
    """A registry of fake-<kind> variants only (the real builder for nothing else)."""
    registry = {
        f"fake-{k}": VariantSpec(f"fake-{k}", "a test fake", FakeConfig, False, None, i)
        for i, k in enumerate(kinds)
    }
    monkeypatch.setattr(variants, "REGISTRY", registry)
    real = models.build

    def build(variant: str, config: object) -> nn.Module:
        if variant.startswith("fake-"):
            assert isinstance(config, FakeConfig) and config.kind == variant.removeprefix("fake-")
            return FakeLM(config)
        return real(variant, config)

    monkeypatch.setattr(models, "build", build)


@pytest.fixture(autouse=True)
def _kind_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each fake variant builds its own kind (the config's default would be 'causal')."""
    real = variants.make_config

    def make_config(variant: str, **fields: object) -> BaseConfig:
        if variants.get_spec(variant).config_cls is FakeConfig:
            fields.setdefault("kind", variant.removeprefix("fake-"))
        return real(variant, **fields)

    monkeypatch.setattr(variants, "make_config", make_config)


def card(tmp_path: Path, *args: str):
    out = tmp_path / "card.md"
    result = runner.invoke(
        app,
        ["verify", "causal", "--all", "--seeds", "1", "--draws", "0", "--markdown", str(out),
         *args],
    )  # fmt: skip
    return result, out


def test_the_card_passes_the_causal_one_and_catches_its_control(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake_registry(monkeypatch, "causal")
    result, md = card(tmp_path)
    assert result.exit_code == 0, result.output
    assert "fake-causal: causal: PASS" in result.output
    assert "fake-causal causal=false: control caught" in result.output
    data = json.loads(md.with_suffix(".json").read_text())
    rows = {r["label"]: r for r in data["rows"]}
    assert data["exit_code"] == 0 and set(rows) == {"fake-causal", "fake-causal causal=false"}
    control = Card.from_json(data).rows[1]
    assert control.expected == "leaky" and control.verdict == "control caught"
    # block 8 (the small size of a `block` field): output 0 sees input 7, nothing earlier
    assert control.worst().first_leak == (0, 7) and control.worst().pair() == "0 <- 7"
    assert rows["fake-causal"]["fields"]["block"] == 8
    assert rows["fake-causal"]["lengths"] == [40, 17, 27, 64]  # 2C+1, 3C+3, a power of two
    text = md.read_text()
    assert "| fake-causal causal=false |" in text and "0 <- 7" in text and "control caught" in text


def test_a_control_the_checks_miss_fails_the_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake_registry(monkeypatch, "blind")  # causal=false changes nothing: a check blind to it
    result, md = card(tmp_path)
    assert result.exit_code == 1, result.output
    assert "fake-blind causal=false: CONTROL NOT CAUGHT" in result.output
    assert "leaky control(s) not caught" in result.stderr
    assert result.stderr.strip().count("\n") == 0
    assert json.loads(md.with_suffix(".json").read_text())["exit_code"] == 1


def test_nan_outputs_are_unusable_not_a_leak(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake_registry(monkeypatch, "nan", "causal")
    result, _ = card(tmp_path)
    assert result.exit_code == 2, result.output
    assert "fake-nan: UNUSABLE" in result.output and "LEAKS" not in result.output
    [line] = result.stderr.strip().splitlines()
    assert "unusable output: fake-nan: non-finite output (NaN or inf) at t=0" in line


def test_a_build_error_is_a_row_and_exit_2(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake_registry(monkeypatch, "broken", "causal")
    result, _ = card(tmp_path)
    assert result.exit_code == 2, result.output
    assert "fake-causal: causal: PASS" in result.output  # the others are still checked
    assert "check(s) could not run: fake-broken: raised RuntimeError: cannot build" in result.stderr


def test_a_leak_only_in_train_mode_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_registry(monkeypatch, "train")
    row = check_target(CardTarget("fake-train", "fake-train", {}), CardSettings(draws=0))
    assert row.verdict == "LEAKS THE FUTURE"
    assert all(c.probe.startswith("train ") for c in row.checks if not c.passed)
    assert row.worst().first_leak[0] == 0


def test_small_fields_come_from_the_config_field_names() -> None:
    @dataclass
    class Many(BaseConfig):
        chunk: int = _f(64)
        cmp_block: int = _f(32)
        cmp_stride: int = _f(16)
        window: int = _f(512)
        top_blocks: int = _f(16)
        topk: int = _f(64)
        d_state: int = _f(16)  # not a position size: unchanged
        rope: bool = _f(True)

    variants.REGISTRY["fake-many"] = VariantSpec("fake-many", "-", Many, False, None, 99)
    try:
        small = small_fields("fake-many")
    finally:
        del variants.REGISTRY["fake-many"]
    sizes = {"chunk": 8, "cmp_block": 8, "cmp_stride": 4, "window": 8}
    assert small == {**SMALL, **sizes, "top_blocks": 2, "topk": 4}


def test_a_small_value_the_config_rejects_falls_back_to_its_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    @dataclass
    class Picky(BaseConfig):
        block: int = _f(64)

        def validate(self) -> None:
            super().validate()
            if self.block % 16:
                raise ConfigError("block must be a multiple of 16", ("block",))

    monkeypatch.setitem(variants.REGISTRY, "fake-picky", VariantSpec("fake-picky", "-", Picky,
                                                                     False, None, 99))  # fmt: skip
    config, notes = small_config("fake-picky", {})
    assert config.block == 64 and config.d_model == 32
    assert notes and "block left at its default" in notes[0]


def test_lengths_cross_every_block_and_record_their_draw() -> None:
    assert lengths(40, [8, 4], draws=0, length_seed=0) == [9, 17, 27, 64]
    drawn = lengths(40, [64], draws=2, length_seed=5)
    assert {129, 195, 64} <= set(drawn) and drawn == lengths(40, [64], 2, 5)
    assert all(65 <= n <= 195 for n in set(drawn) - {129, 195, 64})


def test_controls_only_for_variants_with_a_causal_field() -> None:
    labels = [t.label for t in card_targets(None, {}, [], controls=True)]
    assert "transformer causal=false" not in labels and "hub-gpt causal=false" in labels
    assert labels.index("hub-gpt causal=false") == labels.index("hub-gpt") + 1


def test_the_report_page_shows_the_newest_card(tmp_path: Path) -> None:
    assert card_section(tmp_path) == []  # no card: no section
    old = {"kind": "hubbench causality card", "rows": [], "exit_code": 0, "utc": "old"}
    (tmp_path / "causal-20260101T000000Z.json").write_text(json.dumps(old))
    new = {
        "kind": "hubbench causality card", "utc": "2026-12-06T10:00:00Z", "exit_code": 1,
        "problems": "leaky control(s) not caught: x", "command": "hubbench verify causal --all",
        "rows": [{"label": "x <b>", "expected": "leaky", "verdict": "CONTROL NOT CAUGHT",
                  "checks": [{"name": "prefix", "passed": False, "first_leak": [3, 5],
                              "probe": "train n=64 random"}]}],
    }  # fmt: skip
    (tmp_path / "causal-20261206T100000Z.json").write_text(json.dumps(new))
    row = full_row(status="error", variant="transformer", seq=64, mode="fwd", message="-")
    page = build_html(pd.DataFrame([row]), card_dir=tmp_path)
    section = page[page.index("<h2>Causality report card</h2>") : page.index("<h2>Results</h2>")]
    assert "causal-20261206T100000Z.json" in section and "x &lt;b&gt;" in section
    assert "3 &lt;- 5" in section and "prefix, train n=64 random" in section
    assert "<td class='fail'>CONTROL NOT CAUGHT</td>" in section and "exit 1" in section
    (tmp_path / "causal-20261207T000000Z.json").write_text("{not json")
    assert "unreadable" in "".join(card_section(tmp_path))


def test_an_infinite_leak_is_written_as_strict_json_and_read_back() -> None:
    from hubbench.verify.probes import CheckOutcome, TargetResult

    row = TargetResult("x", "x", {}, "causal")
    row.checks = [CheckOutcome("prefix", False, float("inf"), (3, 4), "random", 1, True)]
    text = json.dumps(row.to_json(), allow_nan=False)  # strict JSON: no Infinity token
    back = TargetResult.from_json(json.loads(text))
    assert back.checks[0].max_leak == float("inf") and back.checks[0].first_leak == (3, 4)
