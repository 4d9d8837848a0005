"""Values at the boundary, torch-free: field types, coercion, `key=v1,v2` parsing, device names.

Every value that comes from a suite file or the command line passes through `coerce` (typed TOML
values) or `parse_text` (CLI strings) exactly once; `parse_assignments` is the one `--set`
parser. Device names are resolved here without importing torch (`cuda_available` probes the
installed torch build and the NVIDIA driver), so planning and listing stay fast; the worker that
measures confirms the device with torch itself (`hubbench.measure.device.torch_device`).
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hubbench.errors import ConfigError

# fwd: no grad; train: forward + backward + AdamW step; prefill: a prompt of `seq` tokens and
# the state it leaves; decode: per-token generation after a prompt of `seq` (docs/decode.md);
# quality: train from scratch on a task for a budget of updates, then evaluate (docs/quality.md)
MODES = ("fwd", "fwd_bwd", "train", "prefill", "decode", "quality")
INFERENCE_MODES = ("prefill", "decode")
# quality mode: multi-query associative recall (Zoology's layout; `mqar-legacy`, hubbench's
# first layout, by name only), byte-level LM. The one list: planning, errors and docs read it
TASKS = ("mqar", "mqar-legacy", "bytes")
# what each task measures and the run fields it reads, for `hubbench list` (a test keeps the
# keys equal to TASKS)
TASK_INFO: dict[str, tuple[str, str]] = {
    "mqar": (
        "multi-query associative recall, Zoology's layout: held-out accuracy at the queried "
        "keys, read against the recall-free ceiling (docs/quality.md)",
        "kv_pairs, vocab (> seq), train_updates, lr",
    ),
    "mqar-legacy": (
        "hubbench's first MQAR layout, for reproducing old runs only: a guesser that recalls "
        "nothing scores 0.38-0.57 on it",
        "kv_pairs, vocab, train_updates, lr",
    ),
    "bytes": (
        "byte-level language modelling: held-out bits per byte against the unigram baseline",
        "data (pydoc, shakespeare or a file), train_updates, lr",
    ),
}
DTYPES = ("fp32", "bf16", "fp16")  # autocast compute dtypes; parameters stay fp32
DEVICE_PATTERN = re.compile(r"cpu|cuda(:\d+)?")
INT64_MAX = 2**63 - 1  # what the results store can hold

SCALARS: dict[str, type] = {"int": int, "float": float, "bool": bool, "str": str}


def scalar_type(annotation: Any) -> type:
    """A dataclass field annotation ('int', int, ...) as the Python type it holds."""
    name = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    if name not in SCALARS:
        raise TypeError(f"config fields must be int, float, bool or str, not {annotation!r}")
    return SCALARS[name]


def coerce(value: Any, kind: type, where: str) -> Any:
    """A typed value (TOML, Python) checked against `kind`; ints are accepted for floats.

    Floats must be finite and integers must fit the store's int64, so nothing accepted here can
    fail later, mid-run.
    """
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is float:
        ok = number
    elif kind is int:
        ok = number and isinstance(value, int)
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise ConfigError(
            f"{where}: expected {kind.__name__}, got {value!r} ({type(value).__name__})"
        )
    if kind is float:
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
    if kind is int and abs(value) > INT64_MAX:
        raise ConfigError(f"{where}: {value} is out of range (at most {INT64_MAX})")
    return value


def parse_text(text: str, kind: type, where: str) -> Any:
    """A CLI string as a typed value: '1024' -> 1024, 'true' -> True, '0.25' -> 0.25."""
    raw = text.strip()
    try:
        if kind is bool:
            if raw.lower() not in ("true", "false"):
                raise ValueError
            value: Any = raw.lower() == "true"
        elif kind is int:
            value = int(raw)
        elif kind is float:
            value = float(raw)
        else:
            value = raw
    except ValueError:
        raise ConfigError(f"{where}: {raw!r} is not a valid {kind.__name__}") from None
    return coerce(value, kind, where)


def parse_assignments(items: Iterable[str], option: str = "--set") -> dict[str, list[str]]:
    """`key=v1,v2` items -> {key: ['v1', 'v2']}, in order; untyped (the caller knows the types).

    A key given twice is an error: which of the two was meant cannot be guessed.
    """
    out: dict[str, list[str]] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"{option} {item!r}: expected key=v1,v2 (e.g. {option} hubs=4,8)")
        if key in out:
            raise ConfigError(f"{option} {key}: given twice; give every value once: {key}=a,b")
        values = [v.strip() for v in text.split(",")]
        if not any(values):
            raise ConfigError(f"{option} {key}: no value given")
        if not all(values):
            raise ConfigError(f"{option} {key}={text}: an empty value between commas")
        out[key] = values
    return out


def split_list(values: Iterable[str] | None, option: str = "a list option") -> list[str]:
    """Repeated options and comma lists alike: ['a,b', 'c'] -> ['a', 'b', 'c'] (order kept).

    An empty item is an error, not skipped: `--seq ""` ran the whole sweep, and `4,,8` hid a
    value the user meant to type."""
    out: list[str] = []
    for value in values or ():
        items = [v.strip() for v in str(value).split(",")]
        if not all(items):
            raise ConfigError(f"{option} {str(value)!r}: an empty value; give v1,v2 ...")
        out += items
    return list(dict.fromkeys(out))


# ----------------------------------------------------------------------------- devices


@functools.cache
def cuda_available() -> bool:
    """Whether torch here could use a GPU, decided without importing torch.

    True when the installed torch is a CUDA build (it ships libtorch_cuda) and the NVIDIA driver
    exposes a device, unless CUDA_VISIBLE_DEVICES hides every device. The worker rechecks with
    torch; a cell whose device turns out missing is a `skipped` row that says so.
    """
    if os.environ.get("CUDA_VISIBLE_DEVICES", "unset").strip() in ("", "-1"):
        return False
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return False
    lib = Path(next(iter(spec.submodule_search_locations))) / "lib"
    if not any(lib.glob("libtorch_cuda*")):
        return False
    gpus = Path("/proc/driver/nvidia/gpus")
    return (gpus.is_dir() and any(gpus.iterdir())) or any(Path("/dev").glob("nvidia[0-9]*"))


def resolve_device(name: str, where: str = "device") -> str:
    """'auto' -> 'cuda' if a GPU is usable, else 'cpu'; 'cpu', 'cuda', 'cuda:N' as given."""
    if name == "auto":
        return "cuda" if cuda_available() else "cpu"
    if not DEVICE_PATTERN.fullmatch(name):
        raise ConfigError(f"{where}: unknown device {name!r}; valid: auto, cpu, cuda, cuda:N")
    return name


def device_kind(name: str) -> str:
    """'cuda:1' -> 'cuda', 'cpu' -> 'cpu'."""
    return "cuda" if name.startswith("cuda") else "cpu"


# ----------------------------------------------------------------------------- threads


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, which containers narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_threads() -> int:
    """The torch intra-op threads a cell gets unless its suite or `--threads` says otherwise.

    Half the usable CPUs, at least one. Measured on the 2-core development box with one other
    busy process: at 1 thread the steps of the `ci` cells stayed within a few % of each other; at
    2 threads OpenMP's waiting threads competed with the other process and steps varied 0.5-6x
    (medians up to 3.4x slower). Half leaves room for the runner, the OS and other tenants; on a
    dedicated machine ask for more with --threads.
    """
    return max(1, usable_cpus() // 2)


def oversubscribed(threads: int) -> str | None:
    """A warning when the machine is already busy enough that `threads` more will contend."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        return None
    cpus = usable_cpus()
    # the load average counts runnable processes, smoothed: 0.3 is an idle box with a blip, and
    # cells whose threads fill every CPU (two one-thread jobs on two cores) must not hear "busy"
    if round(load) + threads <= cpus:
        return None
    return (
        f"the machine is busy: load average {load:.1f} on {cpus} CPU(s), and cells use {threads} "
        "thread(s); expect noisy rounds (the noise line after the run says how noisy)"
    )
