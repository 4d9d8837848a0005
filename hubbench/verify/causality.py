"""Causality checks for sequence maps `f(x: float64 (B, n, d)) -> (B, n, *)`.

Output position t must not depend on input position s > t. A gradient test alone cannot prove
it (top-k indices carry no gradient, so a leak through *which* tokens are selected is invisible
to autograd), so there are three checks (shared/design/hubrouter.md) plus batch independence:

- jacobian: every entry of d y_t / d x_s with s > t is exactly zero (no tolerance). One
  vector-Jacobian product per output row t and output basis vector. On the first seed, with at
  most `exact_features` output features, the basis is the identity, so every entry is checked;
  otherwise (wide outputs such as logits, and the later seeds) it is `n_proj` random Gaussian
  directions: a non-zero entry then goes unseen only if the random projection cancels it
  exactly, an event of probability zero. Batch elements get independent random weights.
- perturbation: inputs after t replaced by random values at several scales; outputs up to t
  must not move (max abs difference <= atol).
- prefix: f(x[:, :t+1]) equals the full run at positions 0..t.
- batch: outputs of sequence 0 do not change when the other sequences of the batch change, nor
  when sequence 0 runs alone.

All runs are in float64 on CPU, over several seeds and several t (the boundaries C-1, C, C+1 and
2C-1, 2C, 2C+1 of every chunk / block size given included, and `extra_times` positions drawn per
seed). `check_mixer` and `check_model` deep-copy the module first, so the caller's module keeps
its dtype and mode; they check eval mode, or train mode with `train=True` (dropout off, batch
statistics on: a mixer whose train path differs must be causal there too).

Inputs (`inputs`): `random` Gaussian, `repeated` (each sequence drawn from a palette of 3
vectors, so tokens repeat exactly: the tie cases of routers and top-k selections) or `constant`
(one vector repeated). Tolerances: the Jacobian demands exact zeros and the perturbation check
`atol` (the inputs up to t are bit-identical, so a causal map gives identical outputs). The
prefix and batch checks change the shapes a map computes on, so a map that rounds to a lower
precision inside (a plug-in computing in fp32) differs by rounding: they allow
max(atol, TOL_ULPS * eps * scale), eps of the lowest precision the input's data passes through
(observed, `data_eps`) and scale the largest |output|. For float64 maps that is atol.

Outputs that are not finite on the unperturbed input make the report `unusable` (NaN is not a
leak); a NaN that appears in outputs up to t only when inputs after t change is a leak.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from hubbench.errors import HubbenchError

SeqMap = Callable[[Tensor], Tensor]
CHECKS = ("jacobian", "perturbation", "prefix", "batch")
INPUTS = ("random", "repeated", "constant")
PALETTE = 3  # distinct vectors per sequence in `repeated` inputs: most tokens recur
TOL_ULPS = 256  # rounding allowed in the prefix and batch checks, in ulps of the output scale


class CausalityError(HubbenchError):
    """A model that claims to be causal leaks the future (a finding, so exit code 1)."""

    exit_code = 1


@dataclass
class CheckResult:
    """Outcome of one check over all seeds and positions.

    `first_leak` is the (t, s) pair with the smallest t whose output moved: output position t
    and the first input position s whose change moved it (s is None for the batch check, where
    the change is in another sequence).
    """

    name: str
    passed: bool
    max_leak: float
    first_leak: tuple[int, int | None] | None = None
    cases: int = 0

    def describe_leak(self) -> str:
        if self.first_leak is None:
            return "-"
        t, s = self.first_leak
        return f"t={t}, other sequence" if s is None else f"t={t}, s={s}"


@dataclass
class CausalityReport:
    """Per-check results for one sequence map."""

    results: list[CheckResult]
    n: int
    d: int
    seeds: tuple[int, ...]
    times: tuple[int, ...]
    notes: list[str] = field(default_factory=list)
    unusable: str | None = None  # why the outputs cannot be judged (NaN / inf), else None
    data_eps: float = torch.finfo(torch.float64).eps  # lowest precision the data went through
    inputs: str = "random"

    @property
    def passed(self) -> bool:
        return self.unusable is None and all(r.passed for r in self.results)

    def __getitem__(self, name: str) -> CheckResult:
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(f"no check named {name!r}; ran: {[r.name for r in self.results]}")

    def summary(self) -> str:
        if self.unusable is not None:
            return f"unusable: {self.unusable}"
        parts = [f"{r.name}={'pass' if r.passed else 'FAIL'}" for r in self.results]
        return ", ".join(parts)


def default_times(n: int, chunk: int | Sequence[int] | None = None) -> list[int]:
    """Positions t to test: the ends, the middle and, for each chunk / block size C, C-1, C, C+1
    and the same around 2C. Only t <= n - 2 (something must follow t)."""
    ts = {0, 1, n // 3, n // 2, n - 2}
    sizes = [chunk] if isinstance(chunk, int) else list(chunk or ())
    for size in (c for c in sizes if c):
        for m in (1, 2):
            ts |= {m * size - 1, m * size, m * size + 1}
    return sorted(t for t in ts if 0 <= t <= n - 2)


class _Tracker:
    """Keeps the largest leak and the first (t, s) pair over many cases."""

    def __init__(self, name: str, atol: float) -> None:
        self.name, self.atol = name, atol
        self.max_leak, self.first, self.cases = 0.0, None, 0

    def add(self, diff: Tensor, s: int | None, tol: float | None = None) -> None:
        """diff: (n_out,) largest abs change per output position (nan counts as a leak); `tol`
        overrides the tracker's tolerance for this case."""
        self.cases += 1
        diff = torch.nan_to_num(diff.double(), nan=float("inf"))
        if diff.numel() == 0:
            return
        self.max_leak = max(self.max_leak, float(diff.max()))
        bad = (diff > (self.atol if tol is None else tol)).nonzero().flatten()
        if bad.numel():
            pair = (int(bad[0]), s)
            if self.first is None or pair[0] < self.first[0]:
                self.first = pair

    def add_pair(self, t: int, s: int, leak: float) -> None:
        self.max_leak = max(self.max_leak, leak)
        if leak > self.atol and (self.first is None or t < self.first[0]):
            self.first = (t, s)

    def result(self) -> CheckResult:
        return CheckResult(self.name, self.first is None, self.max_leak, self.first, self.cases)


def _flat_out(y: Tensor) -> Tensor:
    return y.reshape(y.shape[0], y.shape[1], -1)  # (B, n, F)


def jacobian_check(
    f: SeqMap,
    x: Tensor,
    tracker: _Tracker,
    gen: torch.Generator,
    exact_features: int = 16,
    n_proj: int = 3,
) -> None:
    """Record every d y_t / d x_s, s > t, that is not exactly zero (see module docstring)."""
    x = x.detach().clone().requires_grad_(True)
    y = _flat_out(f(x))  # (B, n, F)
    B, n, width = y.shape
    if width <= exact_features:
        basis = torch.eye(width, dtype=y.dtype)
    else:
        basis = torch.randn(n_proj, width, generator=gen, dtype=y.dtype)
    for t in range(n - 1):
        for u in basis:
            w = torch.randn(B, 1, generator=gen, dtype=y.dtype) + 2.0  # per-sequence weights
            go = torch.zeros_like(y)
            go[:, t] = w * u
            (g,) = torch.autograd.grad(y, x, go, retain_graph=True, allow_unused=True)
            tracker.cases += 1
            if g is None:  # the output does not depend on x at all
                continue
            future = torch.nan_to_num(g[:, t + 1 :].abs().amax(dim=(0, 2)), nan=float("inf"))
            nz = (future > 0).nonzero().flatten()  # (n - t - 1,) per input position s > t
            tracker.add_pair(t, t + 1 + (int(nz[0]) if nz.numel() else 0), float(future.max()))


def perturbation_check(
    f: SeqMap,
    x: Tensor,
    y: Tensor,
    times: Iterable[int],
    tracker: _Tracker,
    gen: torch.Generator,
    scales: Sequence[float] = (1.0, 100.0),
) -> None:
    """Replace inputs after t with random values; outputs 0..t must not move."""
    for t in times:
        for scale in scales:
            xp = x.clone()
            tail = xp[:, t + 1 :]
            tail.copy_(scale * torch.randn(tail.shape, generator=gen, dtype=x.dtype))
            yp = _flat_out(f(xp))
            diff = (yp[:, : t + 1] - y[:, : t + 1]).abs().amax(dim=(0, 2))  # (t + 1,)
            tracker.add(diff, t + 1)


def prefix_check(
    f: SeqMap,
    x: Tensor,
    y: Tensor,
    times: Iterable[int],
    tracker: _Tracker,
    tol: float | None = None,
) -> None:
    """Running on x[:, :t+1] must give the full run's outputs at 0..t (within `tol`)."""
    for t in times:
        yp = _flat_out(f(x[:, : t + 1]))
        diff = (yp - y[:, : t + 1]).abs().amax(dim=(0, 2))  # (t + 1,)
        tracker.add(diff, t + 1, tol)


def batch_check(
    f: SeqMap,
    x: Tensor,
    y: Tensor,
    tracker: _Tracker,
    gen: torch.Generator,
    tol: float | None = None,
) -> None:
    """Sequence 0's outputs must not depend on the rest of the batch (within `tol`)."""
    if x.shape[0] > 1:
        xo = x.clone()
        xo[1:] = 10.0 * torch.randn(xo[1:].shape, generator=gen, dtype=x.dtype)
        diff = (_flat_out(f(xo))[0] - y[0]).abs().amax(dim=-1)  # (n,)
        tracker.add(diff, None, tol)
    alone = _flat_out(f(x[:1]))[0]
    tracker.add((alone - y[0]).abs().amax(dim=-1), None, tol)


def make_inputs(
    kind: str, batch: int, n: int, d: int, gen: torch.Generator, scale: float = 1.0
) -> Tensor:
    """float64 probe inputs (batch, n, d) of one kind (INPUTS): random, repeated or constant."""
    if kind == "random":
        return scale * torch.randn(batch, n, d, generator=gen, dtype=torch.float64)
    if kind == "repeated":
        palette = scale * torch.randn(batch, PALETTE, d, generator=gen, dtype=torch.float64)
        idx = torch.randint(0, PALETTE, (batch, n, 1), generator=gen).expand(batch, n, d)
        return palette.gather(1, idx)  # (B, n, d), rows of the palette
    if kind == "constant":
        return (scale * torch.randn(batch, 1, d, generator=gen, dtype=torch.float64)).repeat(
            1, n, 1
        )
    raise HubbenchError(f"causality: unknown inputs {kind!r}; valid: {', '.join(INPUTS)}")


class _DataPrecision(TorchFunctionMode):
    """Watches one forward: the lowest float precision that the input's data passes through.

    An op's output is data when one of its inputs is (tensors are followed by identity, and
    every followed tensor is kept alive so an id is never reused). Constants computed without
    the data (a rotary table in fp32) do not count: they are the same in every run.
    """

    def __init__(self, x: Tensor) -> None:
        super().__init__()
        self.data: dict[int, Tensor] = {id(x): x}
        self.eps = torch.finfo(x.dtype).eps

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if any(id(t) in self.data for t in _tensors_in((args, kwargs))):
            for t in _tensors_in(out):
                self.data[id(t)] = t
                if t.is_floating_point():
                    self.eps = max(self.eps, torch.finfo(t.dtype).eps)
        return out


def _tensors_in(obj: Any) -> list[Tensor]:
    if isinstance(obj, Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _tensors_in(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in _tensors_in(o)]
    return []


def data_eps(f: SeqMap, x: Tensor) -> tuple[Tensor, float]:
    """(f(x), the machine epsilon of the lowest precision x's data passed through in f)."""
    mode = _DataPrecision(x)
    with torch.no_grad(), mode:
        y = f(x)
    eps, mode.data = mode.eps, {}
    return y, eps


def _first_non_finite(y: Tensor) -> int | None:
    bad = (~torch.isfinite(y)).reshape(y.shape[0], y.shape[1], -1).any(-1).any(0)  # (n,)
    hit = bad.nonzero().flatten()
    return int(hit[0]) if hit.numel() else None


def check_causality(
    f: SeqMap,
    d: int,
    n: int = 32,
    *,
    batch: int = 2,
    seeds: Sequence[int] = (0, 1, 2),
    times: Sequence[int] | None = None,
    chunk: int | Sequence[int] | None = None,
    atol: float = 1e-10,
    checks: Sequence[str] = CHECKS,
    exact_features: int = 16,
    n_proj: int = 3,
    input_scale: float = 1.0,
    inputs: str = "random",
    jacobian_seeds: int | None = None,
    extra_times: int = 0,
) -> CausalityReport:
    """Run the checks on `f` with float64 inputs of shape (batch, n, d), one input per seed.

    `f` must already be in float64 and in the mode to check. The Jacobian check demands exact
    zeros, perturbation `atol`, prefix and batch `atol` or the rounding of the precision the
    data passes through (module docstring). `jacobian_seeds` limits the Jacobian to the first
    seeds (None: all); `extra_times` positions are drawn per seed beside the fixed ones.
    Non-finite outputs on the unperturbed input stop the checks: the report is `unusable`.
    """
    unknown = [c for c in checks if c not in CHECKS]
    if unknown:
        raise HubbenchError(f"causality: unknown check(s) {unknown}; valid: {', '.join(CHECKS)}")
    if inputs not in INPUTS:
        raise HubbenchError(f"causality: unknown inputs {inputs!r}; valid: {', '.join(INPUTS)}")
    if n < 2:
        raise HubbenchError(f"causality: sequence length must be >= 2 (got {n})")
    ts = tuple(default_times(n, chunk) if times is None else sorted(set(times)))
    bad = [t for t in ts if not 0 <= t <= n - 2]
    if bad:
        raise HubbenchError(f"causality: positions {bad} outside 0..{n - 2} for n={n}")
    trackers = {c: _Tracker(c, 0.0 if c == "jacobian" else atol) for c in checks}
    report = CausalityReport([], n, d, tuple(seeds), ts, inputs=inputs)
    with _one_thread():
        for i, seed in enumerate(seeds):
            gen = torch.Generator().manual_seed(seed)
            x = make_inputs(inputs, batch, n, d, gen, input_scale)
            y, eps = data_eps(f, x)
            y = _flat_out(y)
            report.data_eps = max(report.data_eps, eps)
            t_bad = _first_non_finite(y)
            if t_bad is not None:
                report.unusable = (
                    f"non-finite output (NaN or inf) at t={t_bad} on {inputs} inputs, seed {seed}"
                )
                break
            if "jacobian" in trackers and (jacobian_seeds is None or i < jacobian_seeds):
                # every entry on the first seed (small outputs), random projections after it
                exact = exact_features if i == 0 else 0
                jacobian_check(f, x, trackers["jacobian"], gen, exact, n_proj)
            tol = max(atol, TOL_ULPS * eps * float(y.abs().max()))
            drawn = _drawn_times(n, extra_times, gen)
            _value_checks(f, x, y, sorted({*ts, *drawn}), trackers, gen, tol)
    report.results = [trackers[c].result() for c in checks]
    return report


def _drawn_times(n: int, count: int, gen: torch.Generator) -> list[int]:
    """`count` positions in 0..n-2 drawn with the probe's generator (recorded by its seed)."""
    if count <= 0 or n < 3:
        return []
    return [int(t) for t in torch.randint(0, n - 1, (count,), generator=gen)]


@contextmanager
def _one_thread():
    """Tiny tensors gain nothing from threads; on a busy 2-core box OpenMP spinning costs 10x."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _value_checks(
    f: SeqMap,
    x: Tensor,
    y: Tensor,
    ts: Sequence[int],
    trackers: dict,
    gen: torch.Generator,
    tol: float,
) -> None:
    with torch.no_grad():
        if "perturbation" in trackers:
            perturbation_check(f, x, y, ts, trackers["perturbation"], gen)
        if "prefix" in trackers:
            prefix_check(f, x, y, ts, trackers["prefix"], tol)
        if "batch" in trackers:
            batch_check(f, x, y, trackers["batch"], gen, tol)


def prepared(module: nn.Module, train: bool = False) -> nn.Module:
    """A float64 copy of `module` in eval mode, or in train mode with every dropout off."""
    m = copy.deepcopy(module).to(torch.float64).train(train)
    for sub in m.modules():
        if isinstance(sub, nn.modules.dropout._DropoutNd):
            sub.eval()
    return m


def check_mixer(mixer: nn.Module, n: int = 32, *, train: bool = False, **kwargs) -> CausalityReport:
    """Check a mixer `(B, n, d) -> (B, n, d)` (a float64 copy of it, eval mode unless `train`).

    kwargs go to `check_causality`; `chunk` defaults to the mixer's own `chunk` if it has one.
    """
    m = prepared(mixer, train)
    d = getattr(m, "d_model", None)
    if d is None:
        raise HubbenchError("causality: mixer has no d_model attribute; use check_causality")
    kwargs.setdefault("chunk", getattr(m, "chunk", None))
    return check_causality(m, d, n, **kwargs)


def check_model(model: nn.Module, n: int = 32, *, train: bool = False, **kwargs) -> CausalityReport:
    """Check a LanguageModel through `forward_embeddings` (float64 copy, eval mode unless
    `train`)."""
    m = prepared(model, train)
    cfg = m.config
    kwargs.setdefault("chunk", getattr(cfg, "chunk", None))
    return check_causality(m.forward_embeddings, cfg.d_model, n, **kwargs)


def claims_causal(model: nn.Module) -> bool:
    """Whether a model or mixer says it is causal: its config and every submodule's flag."""
    cfg = getattr(model, "config", None)
    if cfg is not None and getattr(cfg, "causal", True) is False:
        return False
    return all(getattr(m, "causal", True) is not False for m in model.modules())
