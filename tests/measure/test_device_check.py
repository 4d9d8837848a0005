"""benchmarks/device_check.py, the device check of issue 34, without a GPU: its GPU commands
plan as valid cells, its summaries compute what they say from rows, and (slow) the whole
script's plumbing runs end to end on CPU in its smoke mode."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from hubbench.cli import app

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "device_check.sh"


def _load():
    spec = importlib.util.spec_from_file_location("device_check", ROOT / "benchmarks" /
                                                  "device_check.py")  # fmt: skip
    module = importlib.util.module_from_spec(spec)
    sys.modules["device_check"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


dc = _load()


def test_dry_run_names_every_part_and_its_command(capsys: pytest.CaptureFixture) -> None:
    assert dc.main(["--dry-run", "--out", "/nonexistent/dc"]) == 0
    text = capsys.readouterr().out
    for part in dc.PARTS:
        assert text.count(f"\n{part.name} ") + text.startswith(f"{part.name} ") == 1
    assert "-m hubbench run decode --device cuda" in text and "cuda_graphs=on,off" in text
    assert not Path("/nonexistent/dc").exists()  # a dry run writes nothing
    total = sum(p.budget_s for p in dc.PARTS)
    assert total + dc.RESERVE_S <= dc.DEFAULT_BUDGET_S  # the parts fit, the reserve included


@pytest.mark.parametrize(
    ("part", "cells"), [("throughput", 6), ("long", 3), ("decode", 8), ("jamba", 2), ("aa", 4)]
)
def test_the_gpu_commands_plan_the_cells_they_mean(part: str, cells: int) -> None:
    """Each run part's exact GPU arguments, planned here (a dry run plans CUDA cells without a
    GPU): valid fields, the cuDNN kernel, cuda_graphs on and off, the counts the budget assumes."""
    args = dc.run_args(part, smoke=False)
    result = CliRunner().invoke(app, ["run", *args, "--dry-run"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert f": {cells} cells" in result.output
    assert "device=cuda" in result.output


def _write(folder: Path, rows: list[dict], name: str = "run.parquet") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(folder / name)


def test_throughput_figures_ratio_and_measured_over_ideal(tmp_path: Path) -> None:
    base = {"seq": 16384, "batch": 8, "status": "ok", "message": None}
    _write(tmp_path, [
        {**base, "variant": "transformer", "sdpa_kernel": "cudnn", "tokens_per_s": 100.0,
         "flops_per_step_analytic": 8e12},
        {**base, "variant": "hub-gpt", "sdpa_kernel": None, "tokens_per_s": 150.0,
         "flops_per_step_analytic": 2e12},
        {**base, "variant": "transformer", "sdpa_kernel": "flash", "status": "oom",
         "tokens_per_s": None, "flops_per_step_analytic": None, "message": "CUDA out of memory"},
    ])  # fmt: skip
    figures = dc.throughput_figures(tmp_path)
    (point,) = figures["points"]
    assert point["hub-gpt / transformer sdpa:cudnn"] == 1.5
    assert point["measured/ideal vs transformer sdpa:cudnn"] == 0.375  # 1.5 over the ideal 4.0
    assert figures["not_ok"] == ["transformer sdpa:flash n=16384: oom: CUDA out of memory"]


def test_decode_figures_put_graphs_beside_eager(tmp_path: Path) -> None:
    base = {"variant": "hub-gpt", "seq": 4096, "status": "ok", "message": None}
    _write(tmp_path, [
        {**base, "cuda_graphs": "on", "cuda_graphs_ran": "captured", "time_median_s": 0.0005},
        {**base, "cuda_graphs": "off", "cuda_graphs_ran": "off", "time_median_s": 0.002},
    ])  # fmt: skip
    (point,) = dc.decode_figures(tmp_path)["points"]
    assert point["eager / graphs"] == 4.0
    assert point["cuda_graphs=on"] == {"ms_per_token": 0.5, "ran": "captured"}


def test_aa_figures_pair_cells_by_id(tmp_path: Path) -> None:
    cell = {"variant": "hub-gpt", "sdpa_kernel": None, "seq": 1024, "status": "ok",
            "repeats": 3, "message": None}  # fmt: skip
    _write(tmp_path / "a", [
        {**cell, "cell_id": "x", "time_median_s": 1.0, "round_samples_s": [[1.0, 1.0, 2.0],
                                                                           [1.2, 1.2, 0.1]]},
        {**cell, "cell_id": "only-in-a", "time_median_s": 1.0, "round_samples_s": [[1.0]]},
    ])  # fmt: skip
    _write(tmp_path / "b", [{**cell, "cell_id": "x", "time_median_s": 1.05,
                             "round_samples_s": [[1.0], [1.0]]}])  # fmt: skip
    figures = dc.aa_figures(tmp_path / "a", tmp_path / "b")
    assert figures["cells"] == 1
    (one,) = figures["per_cell"]
    # round medians 1.0 and 1.2: stdev 0.1414, mean 1.1; the second run's rounds are equal
    assert one["round_cv"] == [0.1286, 0.0] and one["run_ratio"] == 1.05
    assert figures["run_ratio_max_dev"] == 0.05 and figures["round_cv_max"] == 0.1286


def test_the_script_refuses_without_a_cuda_python(tmp_path: Path) -> None:
    """Outside --smoke / --dry-run it needs a python whose torch sees a GPU: none here."""
    if _cuda():
        pytest.skip("this machine has a CUDA device")
    env = {**os.environ, "HUBBENCH_PYTHON": sys.executable}
    done = subprocess.run(["bash", str(SCRIPT), "--out", str(tmp_path / "o")], cwd=ROOT, env=env,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 2 and "--smoke" in done.stderr
    assert not (tmp_path / "o").exists()


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.slow
def test_the_smoke_run_goes_through_its_parts(tmp_path: Path) -> None:
    """The script on CPU at tiny sizes, three of its parts (a python part, a run part and the
    summaries; the other run parts differ only in arguments, planned above): about 1 minute
    on a quiet 2-core box. Its files land in one folder and the summary holds the figures."""
    out = tmp_path / "dc"
    env = {**os.environ, "HUBBENCH_PYTHON": sys.executable}
    env.pop("OUT", None)
    cmd = ["bash", str(SCRIPT), "--smoke", "--only", "env,council,decode", "--out", str(out),
           "--budget", "900"]  # fmt: skip
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((out / "summary.json").read_text())
    parts = {p["name"]: p for p in summary["parts"]}
    assert list(parts) == ["env", "council", "decode"]
    assert all(p["status"] == "ok" for p in parts.values()), parts
    assert parts["env"]["figures"]["versions"]["torch"]
    council = parts["council"]["figures"]
    assert council["passed"] and {r["inputs"] for r in council["rows"]} == {"random", "tied"}
    decode = parts["decode"]["figures"]["points"]
    assert len(decode) == 4  # transformer and hub-gpt after two prompts
    for point in decode:
        assert point["cuda_graphs=auto"]["ran"].startswith("off: cpu")
        assert point["cuda_graphs=off"]["ran"] == "off"
    assert (out / "summary.md").exists() and (out / "work" / "decode.log").exists()
