"""A plug-in mixer (hubbench.plan.plugins) wrapped so that a model can hold it like a built-in.

The wrapper checks the contract where the user's code runs: the constructor's failures and a
result of the wrong shape become one-line PluginErrors that name the mixer. Its decode state
is wrapped too, so a model's state can count, snapshot and restore it.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from hubbench.plan.plugins import (
    PluginError,
    decode_options,
    inspect_mixer,
    load_class,
    source_digest,
)


class PluginMixer(nn.Module):
    """A plug-in mixer (hubbench.plan.plugins) held to its contract: it gets (d_model, n_heads,
    causal=True, **options) and must map (B, n, d) to a tensor of the same shape, else a
    PluginError names it. Its decode path and FLOPs are used when it has them."""

    def __init__(
        self, spec: str, options: str, d_model: int, n_heads: int, digest: str = ""
    ) -> None:
        super().__init__()
        info = inspect_mixer(spec)
        if digest and source_digest(spec) != digest:
            raise PluginError(
                f"mixer {info.name}: its source changed since the run was planned "
                f"(sha256 {source_digest(spec)} != {digest}); plan the run again"
            )
        values = info.complete(decode_options(options))
        info.check_options(values, "mixer_options")
        self.spec, self.name, self.info = spec, info.name, info
        try:
            self.inner = load_class(spec)(d_model=d_model, n_heads=n_heads, causal=True, **values)
        except Exception as exc:  # the user's constructor: any failure is its error
            raise PluginError(
                f"mixer {info.name}: constructor failed: {_first_line(exc)}"
            ) from None
        self.decodable = info.decodable

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._checked(self.inner(x), x, "forward")

    def _checked(self, y: Any, x: torch.Tensor, what: str) -> torch.Tensor:
        """The plug-in's result, or a PluginError naming it: the wrong type or shape; a dtype
        the model cannot use (an integer result trains nothing, a float64 one meets float32
        weights in a torch error that names no mixer); a result cut off from autograd (its
        parameters and the layers before it would train on nothing, silently)."""
        if not isinstance(y, torch.Tensor) or y.shape != x.shape:
            got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            raise PluginError(
                f"mixer {self.name}: {what} returned {got} for input {tuple(x.shape)}; "
                "a mixer maps (B, n, d) to (B, n, d)"
            )
        allowed = {x.dtype}
        if torch.is_autocast_enabled(x.device.type):
            allowed.add(torch.get_autocast_dtype(x.device.type))
        if y.dtype not in allowed:
            want = " or ".join(sorted(str(d).removeprefix("torch.") for d in allowed))
            raise PluginError(
                f"mixer {self.name}: {what} returned {str(y.dtype).removeprefix('torch.')} for "
                f"a {str(x.dtype).removeprefix('torch.')} input; a mixer returns {want}"
            )
        if x.requires_grad and torch.is_grad_enabled() and not y.requires_grad:
            raise PluginError(
                f"mixer {self.name}: {what}'s result does not depend on its input through "
                "autograd (detached, or computed outside it): training would not reach the mixer"
            )
        return y

    def empty_state(self, batch: int, capacity: int, like: torch.Tensor) -> PluginState:
        return PluginState(self.inner.empty_state(batch, capacity, like))

    def prefill(self, x: torch.Tensor, capacity: int) -> tuple[torch.Tensor, PluginState]:
        y, state = self.inner.prefill(x, capacity)
        return self._checked(y, x, "prefill"), PluginState(state)

    def step(self, x: torch.Tensor, state: PluginState) -> torch.Tensor:
        return self._checked(self.inner.step(x, state.inner), x, "step")

    def flops(self, seq: float, decode: bool) -> float | None:
        """The plug-in's own count (forward, one sequence), or None without one."""
        if decode:
            fn = getattr(self.inner, "decode_flops", None)
        else:
            fn = getattr(self.inner, "analytic_flops", None)
        return None if fn is None else float(fn(seq))

    @property
    def last_backend(self) -> str | None:
        return getattr(self.inner, "last_backend", None)

    def extra_repr(self) -> str:
        return f"spec={self.spec}"


class PluginState:
    """A plug-in's decode state as the model's state needs it: any object (a tensor, a dict or
    list of them, a dataclass); its bytes are its tensors' bytes, a snapshot a deep copy. A
    state with its own `nbytes`, `snapshot` and `restore` (as the built-in ones) uses those."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def nbytes(self) -> int:
        own = getattr(self.inner, "nbytes", None)
        if callable(own):
            return int(own())
        return sum(t.numel() * t.element_size() for t in _tensors(self.inner))

    def snapshot(self) -> Any:
        own = getattr(self.inner, "snapshot", None)
        return own() if callable(own) else copy.deepcopy(self.inner)

    def restore(self, saved: Any) -> None:
        own = getattr(self.inner, "restore", None)
        if callable(own):
            own(saved)
        else:
            self.inner = copy.deepcopy(saved)


def _tensors(obj: Any, seen: set[int] | None = None) -> list[torch.Tensor]:
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return []
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        items: Any = obj.values()
    elif isinstance(obj, list | tuple):
        items = obj
    elif hasattr(obj, "__dict__"):
        items = vars(obj).values()
    else:
        return []
    return [t for item in items for t in _tensors(item, seen)]


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
