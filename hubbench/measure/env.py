"""The environment a row was measured in (`hubbench env`).

The pieces are those torch.utils.collect_env reports that cost no subprocess per call: Python,
OS, platform, the NVIDIA driver (from /proc, nvidia-smi only where /proc has none), and the
versions of the optional packages, read from their metadata without importing them. The
calibrated peaks that `hubbench env --calibrate` measures are hubbench.measure.calibration's.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import platform
import re
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import hubbench
from hubbench.git import git
from hubbench.schema import OPTIONAL_PACKAGES


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_info() -> tuple[str | None, bool | None]:
    """(commit, dirty) of the source tree hubbench runs from; (None, None) outside git."""
    root = Path(hubbench.__file__).resolve().parent.parent

    commit = git(root, "rev-parse", "HEAD", timeout=10)
    if commit is None:
        return None, None
    status = git(root, "status", "--porcelain", "--untracked-files=no", timeout=10)
    return commit, (bool(status) if status is not None else None)


NOT_INSTALLED = "not installed"


def package_version(distributions: tuple[str, ...]) -> str:
    """The installed version of the first of `distributions`, from its metadata (no import)."""
    for name in distributions:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return NOT_INSTALLED


def package_versions() -> dict[str, str]:
    return {f"{k}_version": package_version(d) for k, d in OPTIONAL_PACKAGES.items()}


def os_name() -> str:
    """'Debian GNU/Linux 12 (bookworm) (x86_64)', as collect_env spells it, without lsb_release."""
    machine = platform.machine()
    if platform.system() == "Linux":
        try:
            pretty = platform.freedesktop_os_release().get("PRETTY_NAME")
        except OSError:
            pretty = None
        return f"{pretty or 'Linux'} ({machine})"
    if platform.system() == "Darwin":
        return f"macOS {platform.mac_ver()[0]} ({machine})"
    return f"{platform.system()} {platform.release()} ({machine})"


def driver_from_proc(text: str) -> str | None:
    """'570.86.15' from /proc/driver/nvidia/version (... Kernel Module [for x86_64]  570.86.15)."""
    match = re.search(r"Kernel Module(?: for \w+)?\s+(\d[\d.]*)", text)
    return match.group(1) if match else None


def nvidia_driver_version() -> str | None:
    """The NVIDIA kernel driver's version, or None on a machine without one."""
    try:
        with open("/proc/driver/nvidia/version") as f:
            found = driver_from_proc(f.read())
        if found:
            return found
    except OSError:
        pass
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run(
            [smi, "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    first = out.stdout.strip().splitlines()[:1] if out.returncode == 0 else []
    return first[0].strip() if first else None


def host_env() -> dict[str, Any]:
    """The parts of the environment that do not need torch (runner process; the worker runs the
    same interpreter, so Python and the packages are the worker's too)."""
    commit, dirty = git_info()
    return {
        "hubbench_version": hubbench.__version__,
        "git_commit": commit,
        "git_dirty": dirty,
        "host": socket.gethostname(),
        "cpu_model": cpu_model(),
        "python_version": f"{platform.python_version()} ({platform.python_implementation()})",
        "os": os_name(),
        "python_platform": platform.platform(),
        "nvidia_driver_version": nvidia_driver_version(),
        "glibc_tunables": worker_tunables(),
        **package_versions(),
    }


def worker_tunables() -> str | None:
    """GLIBC_TUNABLES as the runner starts a worker with it (malloc_env: the allocator settings
    that move CPU time and peak memory; docs/measurement.md)."""
    return malloc_env(dict(os.environ)).get("GLIBC_TUNABLES") or None


# glibc tunables the worker starts with: big blocks come from the heap, not from mappings that
# free() unmaps, and freed memory at the heap's top stays with the process. Without them a step
# at n = 16k maps its (n, 4d) activations anew and faults every 4 KiB page in again: hub-gpt's
# train step 5-8% slower, a HubRouter layer's 10-15% (docs/hubrouter.md). The price: the heap's
# holes count in the resident set, so CPU peak memory reads higher (a HubRouter layer's step at
# 16k: +50%). Read at process start, so the parent sets them, for both sides of an A/B alike.
MALLOC_TUNABLES = ("glibc.malloc.mmap_max=0", "glibc.malloc.trim_threshold=1073741824")


def malloc_env(env: dict[str, str]) -> dict[str, str]:
    """`env` with MALLOC_TUNABLES added to GLIBC_TUNABLES, except those it names already."""
    mine = [t for t in env.get("GLIBC_TUNABLES", "").split(":") if t]
    named = {t.partition("=")[0] for t in mine}
    extra = [t for t in MALLOC_TUNABLES if t.partition("=")[0] not in named]
    return {**env, "GLIBC_TUNABLES": ":".join(mine + extra)} if extra else dict(env)


TORCH_ENV_KEYS = ("torch_version", "cuda_version", "cudnn_version")


def torch_env() -> dict[str, Any]:
    """Library versions, as the worker that measures sees them."""
    import torch

    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
        "cudnn_version": None if cudnn is None else str(cudnn),
    }


def device_name(device: Any) -> str:
    """A device's name as rows record it: the GPU's, else the CPU model."""
    import torch

    from hubbench.measure.device import torch_device

    device = torch_device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()


def load_1m() -> float | None:
    """The 1-minute load average: runnable (and uninterruptible) tasks, averaged with a
    one-minute decay, so it says how busy the machine was around a round, not at an instant.
    None where the OS has none (os.getloadavg is Unix-only)."""
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None
