"""The glibc tunables the measuring worker starts with (hubbench.measure.env.MALLOC_TUNABLES): a
big block freed at the end of one step is reused by the next without faulting in again."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from hubbench.measure.env import MALLOC_TUNABLES, malloc_env
from hubbench.run import worker as worker_module
from hubbench.run.worker import Worker

# malloc, touch and free a 64 MiB block (over glibc's largest mmap threshold, 32 MiB, so every
# round maps fresh pages) twice; print the minor page faults of each round
PROBE = """
import ctypes, json, resource
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
print(json.dumps(faults))
"""


TUNED = ":".join(MALLOC_TUNABLES)


def test_malloc_env_adds_the_tunables_and_keeps_the_users() -> None:
    assert malloc_env({})["GLIBC_TUNABLES"] == TUNED
    mine = {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "X": "1"}
    assert malloc_env(mine) == {"GLIBC_TUNABLES": f"glibc.malloc.arena_max=2:{TUNED}", "X": "1"}
    assert mine == {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "X": "1"}  # not modified
    own = {"GLIBC_TUNABLES": "glibc.malloc.mmap_max=65536"}  # a user's own value wins
    assert malloc_env(own)["GLIBC_TUNABLES"].split(":") == [
        "glibc.malloc.mmap_max=65536",
        *MALLOC_TUNABLES[1:],
    ]
    assert malloc_env(malloc_env({})) == malloc_env({})


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc tunables")
def test_the_tunables_keep_a_freed_big_block_without_page_faults() -> None:
    plain = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    faults = {}
    for name, env in (("default", plain), ("tuned", malloc_env(plain))):
        cmd = [sys.executable, "-c", PROBE]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        faults[name] = json.loads(out.stdout)[1]
    pages = (64 << 20) // 4096
    assert faults["default"] > pages // 2  # can fail: glibc's defaults fault in every page
    assert faults["tuned"] < pages // 20


class _Started(Exception):
    pass


def test_the_worker_process_is_started_with_the_tunables(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the runner hands the worker's Popen (glibc rewrites GLIBC_TUNABLES in the child's
    own environment, so /proc/PID/environ cannot tell)."""
    seen: dict[str, str] = {}

    def popen(args: list[str], **kw: object) -> None:
        seen.update(kw["env"])  # type: ignore[arg-type]
        raise _Started

    monkeypatch.setattr(worker_module.subprocess, "Popen", popen)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    worker = Worker()
    try:
        with pytest.raises(_Started):
            worker.start()
    finally:
        worker.close()
    assert seen["GLIBC_TUNABLES"].split(":") == list(MALLOC_TUNABLES)
