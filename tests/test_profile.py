import gzip
import json
import tempfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import record_function
from typer.testing import CliRunner

from hubbench.cli import app
from hubbench.cli.common import single_values
from hubbench.errors import ConfigError, ReportError
from hubbench.measure.step import build_step
from hubbench.profile.trace import (
    OPTIMIZER,
    OTHER,
    TRACE_SUFFIX,
    analyse_trace,
    run_name,
    trace_step,
)

TINY_HUB = ["d_model=32", "n_heads=2", "n_layers=2", "hubs=4", "topk=4", "chunk=8"]


class TinyLM(nn.Module):
    """Stand-in with the model's labels, nested like HubRouter's stages inside its block."""

    variant = "tiny"

    def __init__(self, vocab: int = 32, d: int = 16) -> None:
        super().__init__()
        self.config = type("Config", (), {"vocab": vocab, "dtype": "fp32"})()
        self.embed = nn.Embedding(vocab, d)
        self.encode, self.council = nn.Linear(d, d), nn.Linear(d, d)
        self.mlp = nn.Linear(d, d)
        self.head = nn.Linear(d, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        with record_function("embed"):
            h = self.embed(idx)  # (B, n, d)
        with record_function("hubrouter"):
            g = torch.sigmoid(h)  # glue outside the hub.* stages
            with record_function("hub.encode"), record_function("unlabelled.inner"):
                e = self.encode(h)
            with record_function("hub.council"):
                h = h + g * self.council(e)
        with record_function("mlp"):
            h = h + F.gelu(self.mlp(h))
        with record_function("lm_head"):
            return self.head(h)

    def loss(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = self(idx)
        with record_function("loss"):
            return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


@pytest.fixture(scope="module")
def traced() -> tuple[Path, Path]:
    out = Path(tempfile.mkdtemp(prefix="hubbench-profile-"))
    step = build_step(TinyLM(), "train", batch=2, seq=16)
    files = trace_step(step, out, "tiny_train", active=2)
    assert files.memory is None and not files.notes
    return out, files.trace


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


def test_stage_table_adds_up_to_the_step(traced: tuple[Path, Path]) -> None:
    summary = analyse_trace(traced[1])
    rows = {r.name: r for r in summary.stages}
    assert summary.steps == 2 and summary.basis == "cpu"
    assert summary.labels == [
        "embed",
        "hubrouter",
        "hub.encode",
        "hub.council",
        "mlp",
        "lm_head",
        "loss",
    ]
    assert all(r.cpu_s >= 0 and 0 <= r.cpu_backward_s <= r.cpu_s + 1e-12 for r in rows.values())
    assert summary.total() == pytest.approx(summary.step_s, rel=0.01)
    assert rows[OPTIMIZER].cpu_s > 0 and rows[OPTIMIZER].cpu_backward_s == 0
    for stage in ("hub.encode", "hub.council", "mlp", "lm_head", "loss"):
        assert rows[stage].cpu_backward_s > 0, f"{stage}: its backward was not matched"
    assert "unlabelled.inner" not in rows  # unknown labels are transparent
    assert summary.ops and summary.ops[0].self_s >= summary.ops[-1].self_s
    assert any(op.shape for op in summary.ops)


def _x(name: str, ts: float, dur: float, cat: str = "cpu_op", **args: object) -> dict:
    return {
        "ph": "X",
        "cat": cat,
        "name": name,
        "pid": 1,
        "tid": 1,
        "ts": ts,
        "dur": dur,
        "args": args,
    }


def _kernel(name: str, ts: float, dur: float, correlation: int) -> dict:
    return {**_x(name, ts, dur, cat="kernel", correlation=correlation), "pid": 0, "tid": 7}


def _ann(name: str, ts: float, dur: float) -> dict:
    return _x(name, ts, dur, cat="user_annotation")


def _synthetic_step(t0: float) -> list[dict]:
    """One 100 µs step whose per-stage answer is known exactly (see the test below)."""
    return [
        _ann("ProfilerStep#1", t0, 100),
        _ann("hubrouter", t0 + 10, 40),
        _ann("hub.encode", t0 + 12, 10),
        _ann("some.helper", t0 + 13, 8),
        _x("aten::mm", t0 + 14, 6, **{"Sequence number": 7}),
        # a view op sees the *next* sequence number; the creator of node 9 starts later
        _x("aten::view", t0 + 21, 0.5, **{"Sequence number": 9}),
        _ann("hub.council", t0 + 25, 20),
        _x("aten::bmm", t0 + 26, 14, **{"Sequence number": 9}),
        _ann("moe", t0 + 50, 8),
        _ann("mlp", t0 + 51, 4),  # an expert: MoE time, not MLP time
        _x(
            "autograd::engine::evaluate_function: BmmBackward0",
            t0 + 60,
            10,
            **{"Sequence number": 9},
        ),
        _x("BmmBackward0", t0 + 60.5, 9, **{"Sequence number": 9}),
        _x(
            "autograd::engine::evaluate_function: MmBackward0", t0 + 70, 5, **{"Sequence number": 7}
        ),
        _ann("Optimizer.step#AdamW.step", t0 + 80, 15),
    ]


def _write(tmp_path: Path, events: list[dict], gz: bool = False) -> Path:
    path = tmp_path / ("w.1.pt.trace.json" + (".gz" if gz else ""))
    data = json.dumps({"traceEvents": events}).encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def test_nesting_and_backward_matching_are_exact(tmp_path: Path) -> None:
    path = _write(tmp_path, _synthetic_step(1000.0) + _synthetic_step(2000.0), gz=True)
    summary = analyse_trace(path)
    got = {
        r.name: (round(r.cpu_s * 1e6, 6), round(r.cpu_backward_s * 1e6, 6)) for r in summary.stages
    }
    assert got == {
        "hubrouter": (10.0, 0.0),  # 40 minus the 10 + 20 of its nested stages
        "hub.encode": (15.0, 5.0),
        "hub.council": (30.0, 10.0),  # node 9 belongs to the bmm, not the earlier view
        "moe": (8.0, 0.0),
        OPTIMIZER: (15.0, 0.0),
        OTHER: (22.0, 0.0),
    }
    assert summary.steps == 2 and summary.step_s == pytest.approx(100e-6)
    assert summary.total() == pytest.approx(summary.step_s)
    ops = {op.name: op for op in summary.ops}
    assert ops["aten::bmm"].self_s == pytest.approx(14e-6) and ops["aten::bmm"].calls == 1
    assert ops["autograd::engine::evaluate_function: BmmBackward0"].self_s == pytest.approx(1e-6)


def test_cuda_kernels_are_charged_to_the_launching_stage(tmp_path: Path) -> None:
    events = [
        _ann("ProfilerStep#3", 0, 100),
        _ann("hub.encode", 10, 30),
        _x("aten::mm", 12, 20),
        _x("cudaLaunchKernel", 14, 2, cat="cuda_runtime", correlation=5),
        _ann("mlp", 50, 10),
        _x("cudaLaunchKernel", 52, 2, cat="cuda_runtime", correlation=6),
        _x("cudaLaunchKernel", 70, 2, cat="cuda_runtime", correlation=7),
        _kernel("gemm", 20, 40, correlation=5),
        _kernel("gelu", 60, 10, correlation=6),
        _kernel("copy", 75, 5, correlation=7),
    ]
    summary = analyse_trace(_write(tmp_path, events))
    device = {r.name: round(r.device_s * 1e6, 6) for r in summary.stages}
    assert summary.basis == "cuda"
    assert device == {"hub.encode": 40.0, "mlp": 10.0, OTHER: 5.0, "idle": 45.0}
    assert summary.total() == pytest.approx(summary.step_s)
    assert summary.device_ops[0].name == "aten::mm"
    assert summary.device_ops[0].self_device_s == pytest.approx(40e-6)


def test_unusable_traces_are_report_errors(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ReportError, match="not valid JSON"):
        analyse_trace(tmp_path / "bad.json")
    with pytest.raises(ReportError, match="no ProfilerStep#N"):
        analyse_trace(_write(tmp_path, [_ann("mlp", 0, 1)]))


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
    from hubbench.profile.trace import profile_cell

    config = make_config("hub-gpt", **dict(s.split("=") for s in TINY_HUB))
    result = profile_cell("hub-gpt", config, seq=64, device="cuda", out_dir=tmp_path, steps=1)
    summary = result.summary
    rows = {r.name: r for r in summary.stages}
    assert summary.basis == "cuda" and "idle" in rows and summary.device_ops
    assert rows["hub.council"].device_s > 0 and rows["hub.council"].device_backward_s > 0
    assert summary.total() == pytest.approx(summary.step_s, rel=0.01)
