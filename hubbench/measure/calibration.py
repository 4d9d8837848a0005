"""The calibrated peaks (`hubbench env --calibrate`), and the checks that keep a busy machine from
storing one.

MFU and the speed of light divide by a peak: NVIDIA's data sheet on a known GPU
(peaks.PEAK_TABLE, peaks.BANDWIDTH_TABLE), else what this module measured here. It times a
large square matmul per dtype (fp32, the suites' dtype, unless asked for others) and a large copy
(bytes read + written per second, the "memory" entry) with timing.time_calls, the one timing
loop, and stores the best call's rate in a JSON file keyed by host, device name, thread count and
torch version. File: $HUBBENCH_CACHE/calibration.json, else
$XDG_CACHE_HOME/hubbench/calibration.json, else ~/.cache/hubbench/calibration.json. A dtype whose
warm-up call takes over CALL_LIMIT_S (bf16 emulated on an AVX2 CPU: 0.26 GFLOP/s) is timed at a
smaller side, so no dtype takes minutes.

Busy machine. A peak timed while other processes held the CPUs is too low, and every MFU and
speed-of-light fraction divided by it later comes out too high (143-312% in issue 27). Two
readings guard it:
- the noise sentinel (timing.sentinel_s, the fixed workload the runner times before every
  round), read before, between and after the timed calls: a spread (max / min - 1) over
  SPREAD_LIMIT means a load came or went;
- the CPU share: this process's CPU time over wall time x threads while it measured the
  sentinel and (on a CPU) the timed calls: under SHARE_LIMIT its threads waited for CPUs that
  other processes held, a load that stays (and that a sentinel spread cannot see).
A busy machine is refused (BusyError) before anything is timed, and again after, with nothing
stored. With `force` the entries are stored with the readings and the reason, and the peak's
source (the rows' peak_flops_source) says "busy machine".
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hubbench.errors import ConfigError, HubbenchError
from hubbench.measure.env import device_name, utc_now
from hubbench.plan.fields import DTYPES

CACHE_ENV = "HUBBENCH_CACHE"
MEMORY_KEY = "memory"  # the entry of the copy bandwidth (beside the dtypes' matmul rates)
DEFAULT_DTYPES = ("fp32",)  # what the suites run; bf16 / fp16 on request (--dtype)
MATMUL_SIZES = {"cpu": 2048, "cuda": 8192}  # square matmul sides: large enough for the peak
MIN_SIZE = 256  # the smallest side a slow dtype is shrunk to
CALL_LIMIT_S = 1.0  # a warm-up call slower than this halves the side
REPEATS = {"cpu": 5, "cuda": 20}
MIN_TIME_S = 1.0  # per matmul dtype and for the copy: more calls while their sum is under this
COPY_BYTES = {"cpu": 256 << 20, "cuda": 2 << 30}  # the bandwidth copy's buffer
SENTINEL_READINGS = 3  # before anything is timed
SPREAD_LIMIT = 0.25  # as report.noise.SLOW: a sentinel this much slower is a loaded reading
SHARE_LIMIT = 0.8  # below this share of the CPU time its threads asked for, others held CPUs

Progress = Callable[[str], None]


class BusyError(HubbenchError):
    """The machine was busy while calibrating: the peak would be too low, so it is not stored."""


# ----------------------------------------------------------------------------- the file


def cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hubbench"


def calibration_path() -> Path:
    return cache_dir() / "calibration.json"


def calibration_key(device: Any) -> str:
    import torch

    return (
        f"{socket.gethostname()}|{device_name(device)}|threads={torch.get_num_threads()}"
        f"|torch={torch.__version__}"
    )


def load_calibration(device: Any) -> dict[str, Any]:
    """dtype -> {flops_per_s, what, utc_time, load} and "memory" -> {bytes_per_s, what,
    utc_time, load} for this host and device, or {}."""
    try:
        data = json.loads(calibration_path().read_text())
    except (OSError, ValueError):
        return {}
    return data.get(calibration_key(device), {})


def source(entry: dict[str, Any]) -> str:
    """A calibrated peak's source as rows record it (peak_flops_source, peak_bytes_source)."""
    busy = ", busy machine" if (entry.get("load") or {}).get("busy") else ""
    return f"calibrated: {entry['what']} ({entry['utc_time']}{busy})"


def save_calibration(key: str, entries: dict[str, Any]) -> None:
    """Merge `entries` into the file's entry for `key`: a dtype calibrated alone keeps the
    others (each entry carries its own date)."""
    from hubbench.errors import StoreError

    path = calibration_path()
    try:
        data = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError):
        data = {}
    data[key] = {**data.get(key, {}), **entries}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
        os.replace(tmp, path)
    except OSError as exc:
        raise StoreError(
            f"cannot write calibration file {path}: {exc.strerror} (set {CACHE_ENV})"
        ) from exc


# ----------------------------------------------------------------------------- the load


def usable_threads(threads: int) -> int:
    """The threads that can run at once: no more than the CPUs this process may use (taskset,
    a cgroup), so that oversubscription is not read as another process holding the CPUs."""
    import os

    return max(1, min(threads, len(os.sched_getaffinity(0))))


@dataclass
class Load:
    """What the machine did while calibrating: the sentinel's readings, this process's CPU."""

    threads: int
    load_average: float | None = None  # 1-minute, before anything ran (recorded, not judged)
    sentinel_s: list[float] = field(default_factory=list)
    cpu_s: float = 0.0  # this process's CPU time over the watched spans
    asked_s: float = 0.0  # their wall time x threads

    @property
    def spread(self) -> float:
        """max / min - 1 of the sentinel readings (0 with fewer than two)."""
        if len(self.sentinel_s) < 2:
            return 0.0
        return max(self.sentinel_s) / min(self.sentinel_s) - 1

    @property
    def share(self) -> float | None:
        return self.cpu_s / self.asked_s if self.asked_s else None

    def busy(self) -> str | None:
        """Why the machine counts as busy, in a clause; None when it was quiet."""
        reasons = []
        if self.spread > SPREAD_LIMIT:
            reasons.append(
                f"the noise sentinel varied {100 * self.spread:.0f}% over "
                f"{len(self.sentinel_s)} readings (limit {100 * SPREAD_LIMIT:.0f}%)"
            )
        share = self.share
        if share is not None and share < SHARE_LIMIT:
            reasons.append(
                f"its {self.threads} thread(s) got {100 * share:.0f}% of the CPU time they asked "
                f"for (limit {100 * SHARE_LIMIT:.0f}%: other processes hold CPUs)"
            )
        return "; ".join(reasons) or None

    def record(self) -> dict[str, Any]:
        """The readings as the calibration entry stores them."""
        ordered = sorted(self.sentinel_s)
        return {
            "sentinel_s": ordered[len(ordered) // 2] if ordered else None,
            "sentinel_spread": round(self.spread, 4),
            "cpu_share": None if self.share is None else round(self.share, 4),
            "load_average": self.load_average,
            "busy": self.busy(),
        }

    @contextmanager
    def watch(self, count: bool = True) -> Iterator[None]:
        """Count the body's CPU time against the CPU time its threads asked for; `count` False:
        a GPU's timed calls, which the CPU only waits for."""
        wall, cpu = time.perf_counter(), time.process_time()  # bookkeeping, not a step's timing
        yield
        if count:
            self.cpu_s += time.process_time() - cpu
            self.asked_s += (time.perf_counter() - wall) * self.threads

    def read_sentinel(self) -> None:
        from hubbench.measure.timing import sentinel_s

        with self.watch():
            self.sentinel_s.append(sentinel_s())


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def _refuse_if_busy(load: Load, when: str) -> None:
    reason = load.busy()
    if reason:
        raise BusyError(
            f"the machine is busy {when}: {reason}; nothing stored: calibrate when it is quiet, "
            "or pass --force to store the peaks marked busy"
        )


# ----------------------------------------------------------------------------- measuring


def parse_dtypes(names: list[str] | None) -> tuple[str, ...]:
    """--dtype values, checked: DEFAULT_DTYPES when none are given."""
    if not names:
        return DEFAULT_DTYPES
    unknown = [n for n in names if n not in DTYPES]
    if unknown:
        raise ConfigError(f"--dtype {', '.join(unknown)}: unknown (valid: {', '.join(DTYPES)})")
    return tuple(dict.fromkeys(names))


def calibrate(
    device: Any,
    dtypes: tuple[str, ...] = DEFAULT_DTYPES,
    *,
    force: bool = False,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Time a large matmul per dtype and a large copy on `device`, refusing a busy machine
    (module docstring) unless `force`; save and return the entries (dtype -> matmul rate,
    "memory" -> copy bandwidth, each with the load it was measured under). `progress` is told
    what is being measured before it is."""
    import torch

    from hubbench.measure.device import torch_device

    device = torch_device(device)
    say = progress or (lambda _: None)
    load = Load(usable_threads(torch.get_num_threads()), _load_average())
    say(f"reading the noise sentinel {SENTINEL_READINGS}x: is the machine quiet?")
    for _ in range(SENTINEL_READINGS):
        load.read_sentinel()
    if not force:
        _refuse_if_busy(load, "before calibrating")
    out: dict[str, Any] = {}
    for name in dtypes:
        out[name] = _matmul_rate(device, name, load, say)
        load.read_sentinel()
    out[MEMORY_KEY] = _copy_bandwidth(device, load, say)
    load.read_sentinel()
    if not force:
        _refuse_if_busy(load, "while calibrating")
    record = load.record()
    for entry in out.values():
        entry["load"] = record
    save_calibration(calibration_key(device), out)
    return out


def _matmul_rate(device: Any, name: str, load: Load, say: Progress) -> dict[str, Any]:
    import torch

    from hubbench.measure.step import TORCH_DTYPES
    from hubbench.measure.timing import time_calls
    from hubbench.stats import summarize

    n = MATMUL_SIZES[device.type]
    while True:
        say(f"{name}: warming up a {n}x{n} matmul on {device}")
        a = torch.randn(n, n, device=device).to(TORCH_DTYPES[name])
        b = torch.randn(n, n, device=device).to(TORCH_DTYPES[name])
        c = torch.empty(n, n, device=device, dtype=TORCH_DTYPES[name])

        def mm(a: Any = a, b: Any = b, c: Any = c) -> None:
            torch.mm(a, b, out=c)

        first = time_calls(mm, device=device, repeats=1)[0]  # kernel selection, page faults
        if first <= CALL_LIMIT_S or n // 2 < MIN_SIZE:
            break
        n //= 2  # a slow (emulated) dtype: an eighth of the work per call
    say(
        f"{name}: timing {n}x{n} matmuls on {device}, {load.threads} thread(s), "
        f"at least {MIN_TIME_S:g} s"
    )
    with load.watch(count=device.type == "cpu"):
        samples = time_calls(mm, device=device, repeats=REPEATS[device.type], min_time_s=MIN_TIME_S)
    flops = 2 * n**3
    return {
        "flops_per_s": flops / min(samples),
        "flops_per_s_median": flops / summarize(samples).median,
        "what": f"best of {len(samples)} {n}x{n} {name} matmuls",
        "utc_time": utc_now(),
    }


def _copy_bandwidth(device: Any, load: Load, say: Progress) -> dict[str, Any]:
    """A stream-style copy of a buffer far larger than any cache: bytes read + written per s."""
    import torch

    from hubbench.measure.timing import time_calls
    from hubbench.stats import summarize

    size = COPY_BYTES[device.type]
    say(f"memory: timing {size >> 20} MiB copies on {device}, at least {MIN_TIME_S:g} s")
    src = torch.ones(size // 4, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)  # warm-up: page faults
    with load.watch(count=device.type == "cpu"):
        samples = time_calls(
            lambda: dst.copy_(src),
            device=device,
            repeats=REPEATS[device.type],
            min_time_s=MIN_TIME_S,
        )
    return {
        "bytes_per_s": 2 * size / min(samples),
        "bytes_per_s_median": 2 * size / summarize(samples).median,
        "what": f"best of {len(samples)} {size >> 20} MiB copies",
        "utc_time": utc_now(),
    }
