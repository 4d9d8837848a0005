"""Memory a cell uses at its peak, over its timed steps (hubbench.measure.timing.measure_step).

CUDA: `max_memory_allocated` / `max_memory_reserved` over the timed steps (everything
live: parameters, optimizer state, inputs, activations). CPU: the worker's peak resident set
over the timed steps minus its resident set before the cell's model was built, i.e. what the
cell added at its peak (parameters, optimizer state, activations; glibc arenas returned with
malloc_trim before the baseline). Only anonymous pages count (RssAnon): file-backed pages such
as the libtorch code a first step faults in are not the cell's memory. The peak is the kernel's
VmHWM, reset through /proc/self/clear_refs (Linux >= 4.0) after warm-up, less the file-backed and
shared pages; without the reset, a 2 ms sampling thread reads RssAnon.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


def _status_kb(*keys: str) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in keys:
                    out[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return out


def rss_bytes() -> int | None:
    """This process's anonymous resident memory (heap, tensors, stacks), None off Linux.

    File-backed pages are left out: the first step of a process faults in ~100 MB of libtorch
    code, which is not memory the cell uses and would be charged to the first cell only.
    """
    return _status_kb("RssAnon").get("RssAnon")


def trim_heap() -> None:
    """Hand freed heap pages back to the OS (glibc), so the next baseline is honest."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _hwm_anon_bytes() -> int | None:
    """Peak resident set since the last reset, less the file-backed and shared pages now."""
    kb = _status_kb("VmHWM", "RssFile", "RssShmem")
    if "VmHWM" not in kb:
        return None
    return kb["VmHWM"] - kb.get("RssFile", 0) - kb.get("RssShmem", 0)


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def extra_peak_rss(fn: Callable[[], object]) -> tuple[int, str]:
    """Run fn once; return the peak anonymous RSS it added over the RSS before it, and how.

    For a process of its own (benchmarks run each size in a child): with /proc/self/clear_refs
    the kernel's high-water mark is reset first ("clear_refs/VmHWM"); without it the process's
    lifetime peak (getrusage, "ru_maxrss") stands in, which is only right when nothing before fn
    used more.
    """
    import resource

    reset = _reset_hwm()
    before = rss_bytes() or 0
    fn()
    peak = _hwm_anon_bytes() if reset else None
    if peak is not None:
        return peak - before, "clear_refs/VmHWM"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before, "ru_maxrss"


class PeakMemory:
    """Context manager: peak memory over its body (see the module docstring for meaning)."""

    def __init__(self, device: Any, baseline: int | None) -> None:
        self.device = device
        self.baseline = baseline
        self.peak: int | None = None
        self.reserved: int | None = None
        self.kind: str | None = None
        self._sampler: threading.Thread | None = None
        self._stop = threading.Event()
        self._sampled = 0
        self._hwm = False

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats(self.device)
            self.kind = "cuda_allocated"
            self.baseline = None
            return self
        if self.baseline is None:
            self.baseline = rss_bytes()
        if self.baseline is None:
            return self
        self.kind = "cpu_rss"
        self._hwm = _reset_hwm() and _hwm_anon_bytes() is not None
        if not self._hwm:
            self._sampler = threading.Thread(target=self._sample, daemon=True)
            self._sampler.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._sampled = max(self._sampled, rss_bytes() or 0)
            self._stop.wait(0.002)

    def __exit__(self, *exc: object) -> None:
        if self.kind == "cuda_allocated":
            import torch

            self.peak = int(torch.cuda.max_memory_allocated(self.device))
            self.reserved = int(torch.cuda.max_memory_reserved(self.device))
        elif self.kind == "cpu_rss":
            if self._sampler is not None:
                self._stop.set()
                self._sampler.join()
                top = self._sampled
            else:
                top = _hwm_anon_bytes() or 0
            self.peak = max(top - (self.baseline or 0), 0)
