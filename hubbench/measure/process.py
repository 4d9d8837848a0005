"""What a measuring process (the worker, a torchrun rank) does first: tie its life to its
parent's, and load the builder its cells' models come from."""

from __future__ import annotations

import importlib
import importlib.util
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

DEFAULT_BUILDER = "hubbench.models:build"  # the package's own models


def load_builder(spec: str) -> Callable[..., Any]:
    """'package.module:function' or 'path/to/file.py:function'."""
    module_name, _, attr = spec.rpartition(":")
    if module_name.endswith(".py"):
        loader = importlib.util.spec_from_file_location(Path(module_name).stem, module_name)
        if loader is None or loader.loader is None:
            raise ImportError(f"cannot load builder file {module_name}")
        module = importlib.util.module_from_spec(loader)
        loader.loader.exec_module(module)
    else:
        module = importlib.import_module(module_name)
    return getattr(module, attr)


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies, however the parent dies
    (SIGKILL included), so a killed `hubbench run` never leaves a worker spinning on a cell."""
    import ctypes
    import ctypes.util

    pr_set_pdeathsig = 1
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the runner still kills its worker on exit
        return
    if os.getppid() == 1:  # the parent died before the request took effect
        os._exit(1)
