"""Check one card target: build it small, run the probes, turn every failure into a row.

Built-in variants run in this process; a plug-in target runs in a child process
(hubbench.verify.isolated) that calls `check_target` there, so that a plug-in that crashes,
exits or hangs is an ERROR row and never a dead or silently passing command.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from hubbench.errors import HubbenchError
from hubbench.verify.card import CardSettings, result_for
from hubbench.verify.probes import TargetResult, lengths, plan_probes, run_probes
from hubbench.verify.targets import CardTarget, sizes_of, small_config, small_fields


def failure_text(label: str, exc: BaseException) -> str:
    """One line naming the target: a HubbenchError's message, else the exception's first line."""
    if isinstance(exc, HubbenchError):
        return f"{label}: {exc}"
    lines = str(exc).strip().splitlines()
    return f"{label}: raised {type(exc).__name__}: {lines[0] if lines else ''}".rstrip()


def plugin_sets(target: CardTarget) -> dict[str, Any]:
    """A plug-in target's fields: its --set config fields, the mixer and its typed options
    (this imports the plug-in: the child process calls it). A --set key that no selected
    variant has must be an option of one of the --mixer plug-ins."""
    from hubbench.plan import mixer_info
    from hubbench.plan.fields import parse_text
    from hubbench.plan.plugins import encode_options

    info = mixer_info(target.mixer)
    theirs = {o for p in target.peers if p != target.mixer for o in mixer_info(p).options}
    for key in target.unknown:
        if key not in info.options and key not in theirs:
            raise HubbenchError(
                f"--set {key}: not a config field of the variants checked nor an option of "
                f"mixer {info.name}; its options: {', '.join(info.options) or 'none'}"
            )
    own = {k: v for k, v in target.options.items() if k in info.options}
    typed = {k: parse_text(v, info.options[k].type, f"--set {k}") for k, v in own.items()}
    info.check_options(typed, "--set")
    return {**target.fields, "mixer": target.mixer, "mixer_options": encode_options(typed)}


def check_target(target: CardTarget, settings: CardSettings) -> TargetResult:
    """Build `target` at its small size and run every probe; any failure is the row's status."""
    from hubbench import models
    from hubbench.verify.causality import claims_causal

    result = result_for(target)
    try:
        sets = plugin_sets(target) if target.mixer else dict(target.fields)
        config, notes = small_config(target.variant, sets)
        result.notes += notes
        result.fields = _row_fields(target.variant, config, sets)
        if target.mixer:  # the plug-in's own options, as it was built with them
            result.fields.update(json.loads(sets["mixer_options"]))
        model = models.build(target.variant, config)
        if not target.control and not target.mixer and not claims_causal(model):
            result.expected = "leaky"  # built non-causal by --set causal=false
        sizes = sizes_of(config)
        others = lengths(settings.n_main, sizes, settings.draws, settings.length_seed)
        result.lengths = [settings.n_main, *others]
        plan = plan_probes(settings.n_main, others, settings.seeds)
        return run_probes(model, result, plan, sizes, settings.batch)
    except (Exception, SystemExit) as exc:  # a build error or a plug-in's failure: the row's
        result.status, result.message = "error", failure_text(target.label, exc)
        return result


def _row_fields(variant: str, config: Any, sets: dict[str, Any]) -> dict[str, Any]:
    """The fields a row shows: the small ones and the --set ones, as the config holds them."""
    keep = set(small_fields(variant)) | set(sets)
    keep -= {"mixer", "mixer_options", "mixer_digest"}
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name in keep}
