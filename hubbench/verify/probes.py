"""The probes of the causality card and one target's result over all of them.

`verify causal` once ran one probe: eval mode, random inputs, n = 40. A plug-in could leak only
past position 40, only at n % 64 == 0, only on repeated tokens or only in train mode and pass
(issue 33). The card's plan (`plan_probes`) crosses those lines at a cost that keeps the whole
registry well under a minute on 2 cores:

1. eval, random, the main n, every seed; the Jacobian on the first seed (one random output
   direction per position: it misses a non-zero entry with probability zero, and the
   Jacobian is most of a target's time);
2. train (dropout off, batch statistics on), random, main n, one seed, the Jacobian too;
3. eval with repeated tokens and with one constant token, train with repeated ones (main n);
4. eval, random, at every other length: 64 (a power of two; multiples of every block size
   up to 64), 2C+1 for each block size C, 3C+3 for the largest, and lengths drawn per run
   between 65 and 3C+3 or 160 (the draw's seed is recorded, so a card can be repeated);
   train, random at the longest one.

Every value probe adds two positions drawn per seed to the fixed ones (the ends, the middle,
C-1, C, C+1, 2C-1, 2C, 2C+1 of each size). A check that has failed is not run again by later
probes (its first leaking pair is the one of the probe that found it); a target with
non-finite outputs stops at that probe: it is unusable, not leaky.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from hubbench.verify.causality import CHECKS

VALUE_CHECKS = tuple(c for c in CHECKS if c != "jacobian")
POWER_OF_TWO = 64
DRAW_LO, DRAW_HI = 65, 160


@dataclass(frozen=True)
class Probe:
    """One call of the checks: a length, a mode, an input kind, seeds and which checks."""

    n: int
    mode: str  # eval | train
    inputs: str  # random | repeated | constant
    seeds: tuple[int, ...]
    checks: tuple[str, ...]

    def label(self) -> str:
        return f"{self.mode} n={self.n} {self.inputs}"


def lengths(n_main: int, sizes: Sequence[int], draws: int, length_seed: int) -> list[int]:
    """The lengths probed besides n_main (module docstring), sorted; n_main not among them."""
    rng = random.Random(length_seed)
    out = {POWER_OF_TWO, *(2 * s + 1 for s in sizes)}
    top = max(sizes, default=0)
    if top:
        out.add(3 * top + 3)
    hi = max(DRAW_HI, 3 * top + 3)
    out |= {rng.randint(DRAW_LO, hi) for _ in range(draws)}
    return sorted(n for n in out if n >= 3 and n != n_main)


def plan_probes(n_main: int, others: Sequence[int], seeds: Sequence[int]) -> list[Probe]:
    """The probes of one target, in the order they run (module docstring)."""
    first = (seeds[0],)
    plan = [
        Probe(n_main, "eval", "random", tuple(seeds), CHECKS),
        Probe(n_main, "train", "random", (seeds[-1] + 1,), CHECKS),
        Probe(n_main, "eval", "repeated", first, VALUE_CHECKS),
        Probe(n_main, "eval", "constant", first, VALUE_CHECKS),
        Probe(n_main, "train", "repeated", first, VALUE_CHECKS),
    ]
    plan += [Probe(n, "eval", "random", first, VALUE_CHECKS) for n in others]
    if others:
        plan.append(Probe(max(others), "train", "random", first, VALUE_CHECKS))
    return plan


@dataclass
class CheckOutcome:
    """One check of one target over every probe that ran it."""

    name: str
    passed: bool = True
    max_leak: float = 0.0
    first_leak: tuple[int, int | None] | None = None  # (t_out, t_in); t_in None: other sequence
    probe: str | None = None  # the probe that found the leak
    cases: int = 0
    ran: bool = False

    def pair(self) -> str:
        """'5 <- 6' (output 5 moved with input 6), '5 <- other seq', or '-'."""
        if self.first_leak is None:
            return "-"
        t, s = self.first_leak
        return f"{t} <- {'other seq' if s is None else s}"


@dataclass
class TargetResult:
    """A card row: what was checked, how each check went, and the verdict."""

    label: str
    variant: str
    fields: dict[str, Any]
    expected: str  # "causal" | "leaky" (a control, or a model built non-causal)
    checks: list[CheckOutcome] = field(default_factory=list)
    probes: list[str] = field(default_factory=list)
    status: str = "ok"  # ok | unusable | error
    message: str = ""
    seconds: float = 0.0
    plugin: bool = False
    notes: list[str] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)  # every n probed, the main one first

    @property
    def leaked(self) -> bool:
        return any(not c.passed for c in self.checks)

    @property
    def verdict(self) -> str:
        if self.status != "ok":
            return self.status.upper()
        if self.expected == "causal":
            return "LEAKS THE FUTURE" if self.leaked else "pass"
        return "control caught" if self.leaked else "CONTROL NOT CAUGHT"

    @property
    def as_expected(self) -> bool:
        return self.verdict in ("pass", "control caught")

    def worst(self) -> CheckOutcome | None:
        """The failed check with the earliest leaking output (for the row's pair)."""
        bad = [c for c in self.checks if not c.passed and c.first_leak is not None]
        return min(bad, key=lambda c: c.first_leak[0]) if bad else None  # type: ignore[index]

    def largest_leak(self) -> float:
        """The largest change of an output up to t (value checks); the largest future
        gradient when only the Jacobian saw a leak."""
        values = max((c.max_leak for c in self.checks if c.name != "jacobian"), default=0.0)
        jacobian = next((c for c in self.checks if c.name == "jacobian"), None)
        if values == 0.0 and jacobian is not None:
            return jacobian.max_leak
        return values

    def to_json(self) -> dict[str, Any]:
        """Plain JSON: a leak too large to be finite is written as the string "inf" (strict
        JSON has no Infinity), and read back as a float."""
        out = asdict(self)
        for c in out["checks"]:
            if not math.isfinite(c["max_leak"]):
                c["max_leak"] = str(c["max_leak"])
        out["verdict"] = self.verdict
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TargetResult:
        data = dict(data)
        data.pop("verdict", None)
        checks = []
        for c in data.pop("checks", []):
            pair = c.get("first_leak")
            checks.append(CheckOutcome(**{**c, "first_leak": tuple(pair) if pair else None,
                                          "max_leak": float(c.get("max_leak", 0.0))}))  # fmt: skip
        return cls(**data, checks=checks)


def run_probes(
    model: Any, result: TargetResult, plan: Sequence[Probe], sizes: Sequence[int], batch: int
) -> TargetResult:
    """Run `plan` on a LanguageModel (through forward_embeddings), filling `result`."""
    from hubbench.verify.causality import check_causality, prepared

    start = time.perf_counter()
    outcomes = {c: CheckOutcome(c) for c in CHECKS}
    copies = {}
    for probe in plan:
        todo = [c for c in probe.checks if outcomes[c].passed]
        if not todo:
            continue
        if probe.mode not in copies:
            copies[probe.mode] = prepared(model, train=probe.mode == "train")
        m = copies[probe.mode]
        report = check_causality(
            m.forward_embeddings,
            m.config.d_model,
            probe.n,
            batch=batch,
            seeds=probe.seeds,
            chunk=list(sizes),
            checks=todo,
            inputs=probe.inputs,
            jacobian_seeds=1,
            n_proj=1,  # one random direction misses a non-zero entry with probability 0
            extra_times=2,
        )
        result.probes.append(probe.label())
        if report.unusable is not None:
            result.status, result.message = "unusable", f"{report.unusable} ({probe.mode} mode)"
            break
        for r in report.results:
            _merge(outcomes[r.name], r, probe.label())
    result.checks = [outcomes[c] for c in CHECKS if outcomes[c].ran]
    result.seconds = time.perf_counter() - start
    return result


def _merge(outcome: CheckOutcome, r: Any, probe: str) -> None:
    outcome.ran = True
    outcome.cases += r.cases
    outcome.max_leak = max(outcome.max_leak, r.max_leak)
    if not r.passed and outcome.passed:
        outcome.passed, outcome.first_leak, outcome.probe = False, r.first_leak, probe
