"""The environment rows record: collect_env's cheap pieces, package versions without imports."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from hubbench import env, schema
from hubbench.cli import app


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
        "import sys; from hubbench import env; v = env.package_versions(); "
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
