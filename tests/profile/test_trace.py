"""Tracing the step (hubbench.profile.trace): the files it writes, where every viewer reads
them, and `hubbench profile`."""

import gzip
import json
import tempfile
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from hubbench.cli import app
from hubbench.cli.common import single_values
from hubbench.errors import ConfigError
from hubbench.profile import TRACE_SUFFIX, analyse_trace, profile_cell, run_name

TINY_HUB = ["d_model=32", "n_heads=2", "n_layers=2", "hubs=4", "topk=4", "chunk=8"]


def test_trace_is_json_with_stage_labels_and_shapes(traced: tuple[Path, Path]) -> None:
    out, trace = traced
    assert trace.parent == out / "tiny_train" and trace.name.endswith(TRACE_SUFFIX + ".gz")
    with gzip.open(trace, "rt") as f:  # gzipped Chrome trace JSON: Perfetto opens it as it is
        events = json.load(f)["traceEvents"]
    names = {e.get("name") for e in events}
    for label in ("embed", "hubrouter", "hub.encode", "hub.council", "mlp", "lm_head", "loss"):
        assert label in names
    assert sum(n.startswith("ProfilerStep#") for n in names if n) == 2
    assert "Optimizer.step#AdamW.step" in names
    assert any(e.get("args", {}).get("Input Dims") for e in events)  # record_shapes


def test_the_trace_is_stored_once(traced: tuple[Path, Path]) -> None:
    out, trace = traced
    assert [p for p in out.rglob("*") if p.is_file()] == [trace]


def test_directory_is_what_the_tensorboard_plugin_reads(traced: tuple[Path, Path]) -> None:
    pytest.importorskip("torch_tb_profiler", reason="torch-tb-profiler (extra 'profile') absent")
    from torch_tb_profiler import consts, io
    from torch_tb_profiler.profiler.loader import RunLoader

    _, trace = traced
    assert consts.WORKER_PATTERN.match(trace.name)
    with tempfile.TemporaryDirectory() as cache:
        run = RunLoader("tiny_train", str(trace.parent), io.Cache(cache)).load()
    assert run.profiles, "the plugin's loader parsed no profile from the run directory"
    (profile,) = run.profiles.values()
    views = {v.display_name for v in profile.views}
    assert {"Overview", "Operator", "Trace"} <= views


def test_single_values_and_run_names() -> None:
    assert single_values(["hubs=8", "replace = 0.25"]) == {"hubs": "8", "replace": "0.25"}
    with pytest.raises(ConfigError, match="expected key=v1,v2"):
        single_values(["hubs"])
    with pytest.raises(ConfigError, match="--set hubs: takes one value here"):
        single_values(["hubs=4,8"])
    with pytest.raises(ConfigError, match="--set hubs: given twice"):
        single_values(["hubs=4", "hubs=8"])
    name = run_name("hub-gpt", {"hubs": 8, "attention": "sdpa"}, "train", 1, 64, "cuda:0")
    assert name == "hub-gpt_train_b1_n64_cuda0_attention=sdpa_hubs=8"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["profile", "no-such-model"], "unknown variant 'no-such-model'"),
        (["profile", "hub-gpt", "--set", "nope=1"], "unknown config field(s) nope"),
        (["profile", "hub-gpt", "--set", "hubs"], "expected key=v1,v2"),
        (["profile", "hub-gpt", "--device", "tpu"], "unknown device 'tpu'"),
        (["profile", "hub-gpt", "--seq", "0"], "--seq, --batch, --top and --decode-tokens must be"),
        (["profile", "hub-gpt", "--mode", "generate"], "unknown mode 'generate'"),
    ],
)
def test_bad_input_is_a_one_line_error(args: list[str], message: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path)])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not list(tmp_path.iterdir())  # nothing traced


@pytest.mark.slow  # a hub-gpt train step traced with memory: about 4 s
def test_cli_profiles_hub_gpt_with_memory(tmp_path: Path) -> None:
    pytest.importorskip("hubbench.mixers.hubrouter")
    sets = [x for s in TINY_HUB for x in ("--set", s)]
    args = ["profile", "hub-gpt", "--seq", "32", *sets, "--steps", "1", "--memory"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    for text in (
        "hub.encode",
        "hub.decode",
        "hub.select",
        "hub.council",
        "optimizer",
        "other",
        "tensorboard --logdir",
        "ui.perfetto.dev",
    ):
        assert text in result.stdout
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    (trace,) = run_dir.glob(f"*{TRACE_SUFFIX}.gz")
    assert str(trace) in result.stdout.replace("\n", "")
    assert analyse_trace(trace).labels[:1] == ["embed"]
    memory = tmp_path / f"{run_dir.name}.memory.html"
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == sorted(
        [trace.name, memory.name]
    )  # the trace once (no second copy for Perfetto) and the memory timeline
    assert memory.is_file() and memory.read_text().lstrip().startswith("<html")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_profile_uses_kernel_time(tmp_path: Path) -> None:
    from hubbench.plan.variants import make_config

    config = make_config("hub-gpt", **dict(s.split("=") for s in TINY_HUB))
    result = profile_cell("hub-gpt", config, seq=64, device="cuda", out_dir=tmp_path, steps=1)
    summary = result.summary
    rows = {r.name: r for r in summary.stages}
    assert summary.basis == "cuda" and "idle" in rows and summary.device_ops
    assert rows["hub.council"].device_s > 0 and rows["hub.council"].device_backward_s > 0
    assert summary.total() == pytest.approx(summary.step_s, rel=0.01)
