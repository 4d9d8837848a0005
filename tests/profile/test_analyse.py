"""Reading a trace (hubbench.profile.analyse): stage times that add up to the step, exactly,
on a real trace and on synthetic ones whose answer is known."""

import gzip
import json
from pathlib import Path

import pytest

from hubbench.errors import ReportError
from hubbench.profile import OPTIMIZER, OTHER, analyse_trace


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
