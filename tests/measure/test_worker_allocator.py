"""The measuring worker's glibc settings (hubbench.measure.entry.tune_allocator): a big block
freed at the end of one step is reused by the next without faulting its pages in again."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

# In a fresh interpreter (the settings are per process): malloc, touch, free a 64 MiB block
# twice and count the minor page faults of the second round. 64 MiB is over glibc's largest
# mmap threshold (32 MiB), so by default every round maps fresh pages and faults them all in.
PROBE = """
import ctypes, json, resource, sys
from hubbench.measure.entry import tune_allocator
took = tune_allocator() if sys.argv[1] == "tuned" else {}
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
size = 64 << 20
faults = []
for _ in range(2):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(block)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"took": took, "faults": faults}))
"""


def _probe(mode: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)
def test_a_freed_big_block_is_reused_without_page_faults() -> None:
    pages = (64 << 20) // 4096
    tuned, default = _probe("tuned"), _probe("default")
    assert tuned["took"] == {"M_MMAP_MAX": 0, "M_TRIM_THRESHOLD": 1 << 30}
    # the test can fail: glibc's own settings fault in every page of the block again
    assert default["faults"][1] > pages // 2
    assert tuned["faults"][1] < pages // 20
