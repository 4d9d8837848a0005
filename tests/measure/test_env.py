"""The environment rows record: collect_env's cheap pieces, package versions without imports."""

from __future__ import annotations

import re
import subprocess
import sys
import time

from typer.testing import CliRunner

from hubbench import schema
from hubbench.cli import app
from hubbench.measure import env


def test_host_and_worker_env_fill_every_env_column() -> None:
    """The runner builds the env group from these two (and utc_time): none may be missing."""
    filled = {*env.host_env(), *env.TORCH_ENV_KEYS, "utc_time"}
    assert filled == set(schema.names("env"))
    host = env.host_env()
    assert host["python_version"].startswith(f"{sys.version_info.major}.{sys.version_info.minor}.")
    assert host["os"] and host["python_platform"]
    for name in env.OPTIONAL_PACKAGES:
        assert host[f"{name}_version"], name


def test_package_versions_come_from_metadata_without_importing() -> None:
    assert env.package_version(("no-such-distribution-xyz",)) == env.NOT_INSTALLED
    code = (
        "import sys; from hubbench.measure import env; v = env.package_versions(); "
        "print(v['torch_tb_profiler_version'], 'torch_tb_profiler' in sys.modules, "
        "'numpy' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    version, imported_plugin, imported_numpy = out.stdout.split()
    assert imported_plugin == imported_numpy == "False"
    assert version == env.package_version(("torch-tb-profiler",))


def test_driver_version_from_proc() -> None:
    closed = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 22:23:56 UTC"
    opened = "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  570.86.15  Release Build"
    assert env.driver_from_proc(closed) == "550.54.15"
    assert env.driver_from_proc(opened) == "570.86.15"
    assert env.driver_from_proc("something else") is None


def test_env_command_shows_the_new_pieces() -> None:
    result = CliRunner().invoke(app, ["env", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    for key in ("python_version", "os", "nvidia_driver_version", "flash_attn_version",
                "mamba_ssm_version", "torch_tb_profiler_version"):  # fmt: skip
        assert key in result.output


def test_env_calibrates_fp32_with_progress_and_prints_small_peaks_in_si(
    small_calibration,
) -> None:
    result = CliRunner().invoke(app, ["env", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    flat = " ".join(result.output.split())  # a long value wraps at any terminal width
    assert "MFU stays empty" in flat and "the speed of light is compute-only" in flat
    result = CliRunner().invoke(app, ["env", "--device", "cpu", "--calibrate"])
    assert result.exit_code == 0, result.output
    flat = " ".join(result.output.split())
    assert "calibrating: fp32: timing 64x64 matmuls on cpu" in flat  # said while measuring
    assert "calibrating: memory: timing 1 MiB copies" in flat
    assert "calibrated: best of" in flat and " 64x64 fp32 matmuls (" in flat
    assert "TFLOP/s" not in flat  # a 64x64 matmul runs at MFLOP/s to GFLOP/s: no '0.00 T'
    assert re.search(r"peak fp32 \d[\d.]* [MG]FLOP/s \(calibrated", flat)
    assert re.search(r"peak bf16 unknown", flat)  # fp32 only unless --dtype asks
    assert re.search(r"peak bandwidth \d[\d.]* [MG]B/s \(calibrated: best of \d+ 1 MiB", flat)
    assert "calibration load noise sentinel spread" in flat
    result = CliRunner().invoke(app, ["env", "--device", "cpu", "--calibrate", "--dtype", "bf16"])
    assert result.exit_code == 0, result.output
    assert re.search(
        r"peak bf16 \d[\d.]* [MGT]FLOP/s \(calibrated", " ".join(result.output.split())
    )


def test_env_refuses_a_busy_machine_in_one_line_unless_forced(
    small_calibration, monkeypatch
) -> None:
    from hubbench.measure import calibration as cal
    from hubbench.measure import timing as measure

    monkeypatch.setattr(cal, "SHARE_LIMIT", 0.8)
    monkeypatch.setattr(measure, "sentinel_s", lambda: time.sleep(0.02) or 0.02)  # no CPU
    result = CliRunner().invoke(app, ["env", "--device", "cpu", "--calibrate"])
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "the machine is busy before calibrating" in errors[0]
    assert not small_calibration.exists()
    result = CliRunner().invoke(app, ["env", "--device", "cpu", "--calibrate", "--force"])
    assert result.exit_code == 0, result.output
    flat = " ".join(result.output.split())
    assert "warning: stored on a busy machine (--force)" in flat
    assert "busy machine)" in flat and "BUSY:" in flat


def test_env_checks_its_calibration_options() -> None:
    result = CliRunner().invoke(app, ["env", "--calibrate", "--dtype", "fp8"])
    assert result.exit_code == 2 and "unknown (valid: fp32, bf16, fp16)" in result.output
    result = CliRunner().invoke(app, ["env", "--force"])
    assert result.exit_code == 2 and "go with --calibrate" in result.output
