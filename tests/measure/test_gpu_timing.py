"""GPU timing a kernel author trusts (issue 34 item 2): CUDA graphs for prefill / decode and the
L2 flush, as run fields that are planned, recorded per row and refused where they cannot work.

The device-independent logic (planning, the fall-back rules, what a row records, the untimed
flush hook, FLOPs of a replayed step) is tested on CPU with a stand-in capture; the CUDA tests
at the end compare a replayed graph's outputs with the eager call's and skip without a GPU.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from hubbench.errors import ConfigError, SuiteError, UnavailableError
from hubbench.measure import timing
from hubbench.measure.cell import measure_round
from hubbench.measure.metrics import measurement_columns
from hubbench.measure.outcome import classify
from hubbench.measure.step import Step, build_step, with_graphs
from hubbench.measure.timing import l2_flush_bytes, l2_flusher, measure_step, time_calls
from hubbench.models import build, build_model
from hubbench.plan import expand, load_suite, parse_overrides
from hubbench.plan.cell import Cell

NEEDS_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

SUITE = """
description = "gpu timing test suite"
[measure]
warmup = 1
warmup_min_s = 0.0
warmup_max_s = 0.0
repeats = 2
rounds = 1
[defaults]
variant = "transformer"
d_model = 32
n_layers = 1
n_heads = 2
decode_tokens = 4
"""


def _plan(tmp_path: Path, body: str, cuda: bool = False, **overrides: object):
    path = tmp_path / "gpu.toml"
    path.write_text(SUITE + body)
    sets = [f"{k}={v}" for k, v in overrides.items()]
    return expand(load_suite(path), parse_overrides(sets), cuda_available=cuda)


# -- planning ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ('device = "cpu"\nmode = "decode"\ncuda_graphs = "on"\nseq = 16\n', "needs a CUDA device"),
        ('device = "cpu"\nmode = "prefill"\ncuda_graphs = "on"\nseq = 16\n', "use auto or off"),
        ('device = "cpu"\nmode = "fwd"\nl2_flush = true\nseq = 16\n', "has none to flush"),
        ('device = "cpu"\nmode = "decode"\nl2_flush = true\nseq = 16\n', "l2_flush=true"),
        ('device = "cuda"\nmode = "decode"\ncuda_graphs = "always"\nseq = 16\n', "not one of"),
    ],
)
def test_what_cannot_work_is_refused_when_planned(tmp_path: Path, body: str, match: str) -> None:
    with pytest.raises(SuiteError, match=match) as info:
        _plan(tmp_path, _as_sweep(body), cuda=True)
    assert "\n" not in str(info.value)  # one line


def _as_sweep(body: str) -> str:
    """Fields as one-value sweep axes (the [defaults] table is SUITE's)."""
    lines = [line.split(" = ", 1) for line in body.strip().splitlines()]
    return "[sweep]\n" + "".join(f"{k} = [{v}]\n" for k, v in lines)


def test_auto_on_a_cpu_is_off_and_on_for_a_mode_without_graphs_is_inert(tmp_path: Path) -> None:
    body = '[sweep]\ndevice = ["cpu"]\nmode = ["fwd", "decode"]\nseq = [16]\n'
    plan = _plan(tmp_path, body, cuda_graphs="auto,off")
    by_mode = {}
    for cell in plan.cells:
        by_mode.setdefault(cell.mode, []).append(cell)
    assert len(by_mode["fwd"]) == 1  # inert outside prefill / decode: the two values merge
    assert by_mode["fwd"][0].run_fields["cuda_graphs"] is None
    assert sorted(c.cuda_graphs for c in by_mode["decode"]) == ["auto", "off"]
    on = _plan(
        tmp_path, '[sweep]\ndevice = ["cpu"]\nmode = ["fwd"]\nseq = [16]\n', cuda_graphs="on"
    )
    assert on.cells[0].run_fields["cuda_graphs"] is None


def test_the_default_is_eager_as_before_the_field(tmp_path: Path) -> None:
    """off is what every recorded cell timed: a default of auto would have kept their ids while
    timing replays (a baseline or an older --against worker eager, the candidate graphed)."""
    body = '[sweep]\ndevice = ["cuda"]\nmode = ["decode"]\nseq = [16]\n'
    default = _plan(tmp_path, body, cuda=True).cells[0]
    assert default.cuda_graphs == "off" and "cuda_graphs" not in default.identity
    auto = _plan(tmp_path, body, cuda=True, cuda_graphs="auto").cells[0]
    assert auto.identity["cuda_graphs"] == "auto" and auto.cell_id != default.cell_id


def test_defaults_leave_identity_and_worker_json_as_before(tmp_path: Path) -> None:
    """Cells that do not set the new fields keep their ids; the JSON a worker of an older commit
    reads (run --against) does not name them; a cell that sets them carries them both ways."""
    body = '[sweep]\ndevice = ["cuda"]\nmode = ["decode", "fwd"]\nseq = [16]\n'
    plan = _plan(tmp_path, body, cuda=True)
    for cell in plan.cells:
        assert "cuda_graphs" not in cell.identity and "l2_flush" not in cell.identity
        data = cell.to_json()
        assert "cuda_graphs" not in data and "l2_flush" not in data
        assert Cell.from_json(data) == cell
    swept = _plan(tmp_path, body.replace('"fwd"', '"prefill"'), cuda=True,
                  cuda_graphs="on,off", l2_flush="true")  # fmt: skip
    assert len(swept.cells) == 4 and len({c.cell_id for c in swept.cells}) == 4
    for cell in swept.cells:
        assert cell.identity["l2_flush"] is True
        assert Cell.from_json(cell.to_json()) == cell
    assert "cuda_graphs" in swept.varying


# -- the fall-back rules ----------------------------------------------------------------------


def _fake_step(device: str = "cuda") -> Step:
    """A step on `device` that is never run by the rules under test (a torch.device of type
    cuda can be named without a GPU)."""

    def fn() -> None:
        raise AssertionError("the rules must not run the eager call")

    return Step(fn=fn, tokens=1, mode="decode", model=torch.nn.Linear(1, 1),
                device=torch.device(device), sync=lambda: None, batch=1, seq=1)  # fmt: skip


def test_off_runs_eagerly_and_says_so() -> None:
    step = _fake_step()
    eager = step.fn
    assert with_graphs(step, "off", capture=_never).fn is eager
    assert step.ran == {"cuda_graphs": "off"} and step.eager is None


def _never(fn, device):
    raise AssertionError("no capture was asked for")


def test_auto_on_a_cpu_is_off_with_the_reason_and_on_is_skipped() -> None:
    step = with_graphs(_fake_step("cpu"), "auto", capture=_never)
    assert step.ran["cuda_graphs"].startswith("off: cpu")
    with pytest.raises(UnavailableError, match="needs a CUDA device"):
        with_graphs(_fake_step("cpu"), "on", capture=_never)


def test_a_capture_replaces_the_call_and_keeps_the_eager_one_for_counting() -> None:
    step = _fake_step()
    eager = step.fn
    seen = []

    def capture(fn, device):
        seen.append((fn, device))
        return lambda: None

    for setting in ("auto", "on"):
        step = _fake_step()
        eager = step.fn
        out = with_graphs(step, setting, capture=capture)
        assert out.ran == {"cuda_graphs": "captured"}
        assert out.eager is eager and out.fn is not eager
    assert [d.type for _, d in seen] == ["cuda", "cuda"]


def test_a_failed_capture_falls_back_under_auto_and_skips_under_on() -> None:
    def capture(fn, device):
        raise RuntimeError("operation not permitted when stream is capturing\n(a+b)")

    step = _fake_step()
    eager = step.fn
    out = with_graphs(step, "auto", capture=capture)
    reason = out.ran["cuda_graphs"]
    assert out.fn is eager and out.eager is None
    assert reason.startswith("off: capture failed: RuntimeError: operation not permitted")
    assert "+" not in reason and "\n" not in reason  # rounds' values are '+'-joined in a row
    with pytest.raises(UnavailableError) as info:
        with_graphs(_fake_step(), "on", capture=capture)
    status, message = classify(info.value)
    assert status == "skipped" and message.startswith("cuda_graphs=on: capture failed")


def test_build_step_decode_on_cpu_records_auto_as_off() -> None:
    model = build_model("transformer", d_model=32, n_heads=2, n_layers=1)
    step = build_step(model, "decode", batch=1, seq=8, decode_tokens=2, cuda_graphs="auto")
    assert step.ran["cuda_graphs"].startswith("off: cpu")
    step.fn()  # still the eager call
    with pytest.raises(UnavailableError):
        build_step(model, "decode", batch=1, seq=8, decode_tokens=2, cuda_graphs="on")
    with pytest.raises(ConfigError, match="cuda_graphs='yes'"):
        build_step(model, "decode", batch=1, seq=8, cuda_graphs="yes")
    assert build_step(model, "fwd", batch=1, seq=8, cuda_graphs="on").ran == {}


# -- timing: FLOPs of a replayed step, the untimed flush hook ---------------------------------


def test_flops_of_a_replayed_step_come_from_its_eager_call() -> None:
    """FlopCounterMode sees nothing of a graph replay: counted on `fn` the FLOPs would be 0."""
    a = torch.randn(64, 64)
    step = _fake_step("cpu")
    step.fn = lambda: None  # the "replay"
    step.eager = lambda: torch.mm(a, a)
    step.ran = {"cuda_graphs": "captured"}
    m = measure_step(step, warmup=1, repeats=2)
    assert m.flops_per_step == 2 * 64**3
    assert m.backends["cuda_graphs"] == "captured"


def test_before_runs_ahead_of_every_call_outside_the_timed_region() -> None:
    calls: list[str] = []

    def before() -> None:
        calls.append("flush")
        time.sleep(0.02)

    samples = time_calls(lambda: calls.append("call"), repeats=3, before=before)
    assert calls == ["flush", "call"] * 3
    assert max(samples) < 0.01  # the 20 ms of `before` are not in any sample


def test_l2_flush_is_cuda_only_and_sized_from_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="has none"):
        l2_flusher(torch.device("cpu"))
    with pytest.raises(ConfigError, match="has none"):
        measure_step(_fake_step("cpu"), warmup=0, repeats=1, count=False, l2_flush=True)

    def props(size: int):
        return lambda device: SimpleNamespace(L2_cache_size=size)

    monkeypatch.setattr(torch.cuda, "get_device_properties", props(50 * 2**20))
    assert l2_flush_bytes("cuda") == 100 * 2**20  # twice the L2: nothing of it survives
    monkeypatch.setattr(torch.cuda, "get_device_properties", props(0))
    assert l2_flush_bytes("cuda") == timing.L2_FALLBACK_BYTES == 256 * 2**20


def test_a_decode_row_records_what_ran(tmp_path: Path) -> None:
    """Through the worker's round and the row's measurement columns, on CPU: auto is off."""
    body = '[sweep]\ndevice = ["cpu"]\nmode = ["decode", "fwd"]\nseq = [8]\n'
    plan = _plan(tmp_path, body, cuda_graphs="auto")
    ran = {}
    for cell in plan.cells:
        result = measure_round(cell, build, torch.device("cpu"), "cpu", count_flops=False)
        ran[cell.mode] = measurement_columns([result], "test")["cuda_graphs_ran"]
    assert ran["decode"].startswith("off: cpu") and ran["fwd"] is None


# -- CUDA: a replayed graph computes what the eager call computes -----------------------------


def _recording(model: torch.nn.Module) -> list[torch.Tensor]:
    """Every decode call's logits from now on (for a captured call: the tensors that each
    replay writes into)."""
    seen: list[torch.Tensor] = []
    decode = model.decode

    def recorded(idx, state):
        out = decode(idx, state)
        seen.append(out)
        return out

    model.decode = recorded
    return seen


@pytest.mark.gpu
@NEEDS_CUDA
@pytest.mark.parametrize("variant", ["transformer", "hub-gpt"])
def test_replayed_decode_matches_the_eager_call(variant: str) -> None:
    torch.manual_seed(0)
    extra = {"hubs": 4, "topk": 8, "chunk": 8} if variant == "hub-gpt" else {}
    model = build_model(variant, d_model=64, n_heads=2, n_layers=2, **extra)
    tokens = 16
    seen = _recording(model)
    eager = build_step(model, "decode", batch=2, seq=64, device="cuda", decode_tokens=tokens,
                       cuda_graphs="off")  # fmt: skip
    eager.fn()
    eager.sync()
    want = [t.clone() for t in seen[-tokens:]]
    step = build_step(model, "decode", batch=2, seq=64, device="cuda", decode_tokens=tokens,
                      cuda_graphs="auto")  # fmt: skip
    if step.ran["cuda_graphs"] != "captured":
        pytest.skip(f"{variant}: {step.ran['cuda_graphs']}")
    captured = seen[-tokens:]  # the capture's outputs: the replay writes into them
    for t in captured:
        t.zero_()
    step.fn()
    step.sync()
    for w, g in zip(want, captured, strict=True):
        torch.testing.assert_close(g, w)


@pytest.mark.gpu
@NEEDS_CUDA
def test_replayed_prefill_rebuilds_the_state() -> None:
    model = build_model("transformer", d_model=64, n_heads=2, n_layers=2)
    step = build_step(model, "prefill", batch=2, seq=128, device="cuda", cuda_graphs="on")
    assert step.ran == {"cuda_graphs": "captured"}
    step.fn()
    step.sync()
    assert step.state_bytes() == 2 * 2 * 128 * 64 * 4  # two layers' k and v, fp32


@pytest.mark.gpu
@NEEDS_CUDA
def test_l2_flush_times_on_cuda_and_leaves_peak_memory_alone() -> None:
    a = torch.randn(1024, 1024, device="cuda")
    step = Step(fn=lambda: torch.mm(a, a), tokens=1, mode="fwd", model=torch.nn.Linear(1, 1),
                device=torch.device("cuda"), sync=torch.cuda.synchronize, batch=1,
                seq=1)  # fmt: skip
    warm = measure_step(step, warmup=2, repeats=5, count=False)
    cold = measure_step(step, warmup=2, repeats=5, count=False, l2_flush=True)
    assert cold.stats.count == 5
    assert abs(cold.peak_mem_bytes - warm.peak_mem_bytes) < 2**20


def test_the_cuda_graphs_option_as_the_issue_names_it(tmp_path: Path) -> None:
    """`hubbench run SUITE --cuda-graphs ...` (issue 34) is the run field, refused where it
    cannot run as `--set cuda_graphs=` is."""
    from typer.testing import CliRunner

    from hubbench.cli import app

    runner = CliRunner()
    base = ["run", "decode", "--dry-run", "--device", "cpu", "--seq", "256",
            "--variant", "transformer", "--results-dir", str(tmp_path)]  # fmt: skip
    swept = runner.invoke(app, [*base, "--cuda-graphs", "auto,off"])
    assert swept.exit_code == 0, swept.output
    assert "cuda_graphs" in " ".join(swept.output.split())
    refused = runner.invoke(app, [*base, "--cuda-graphs", "on"])
    assert refused.exit_code == 2 and "needs a CUDA device" in " ".join(refused.output.split())
    twice = runner.invoke(app, [*base, "--cuda-graphs", "off", "--set", "cuda_graphs=auto"])
    assert twice.exit_code == 2, twice.output
