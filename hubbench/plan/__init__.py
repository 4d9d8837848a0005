"""Planning, torch-free: from a suite file and the command line to the validated cells to run.

fields (values at the boundary: coercion, `--set` parsing, devices), runfields (a cell's run
fields and measure settings), variants (the registry of model variants and their configs),
plugins (plug-in mixer specs), quality (whether a quality cell can run), cell (one point of a
sweep), find (where suites are), axes (the fields a suite may set and their types), rules
([[exclude]] and gate rules), executor (the [executor] spec), suite (a TOML file into a Suite),
overrides (the command line's), expand (a suite into cells).

The suite API (find, load, override, expand, and what they return) is exported here; the rest
is imported from its own module (hubbench.plan.cell's Cell, hubbench.plan.variants, ...).
Modules inside plan import each other by their own paths, never this package, and take
hubbench.schema as a module (`from hubbench import schema`), never names from it: schema derives
its columns from plan.fields, plan.runfields and plan.variants, so importing schema first runs
this file before schema's names exist.
"""

from hubbench.plan.axes import Axis, field_types, mixer_info, plugin_option_types
from hubbench.plan.expand import expand
from hubbench.plan.find import available_suites, find_suite, suite_dirs
from hubbench.plan.overrides import measure_overrides, parse_overrides, with_mixers
from hubbench.plan.rules import ExcludeRule, GateRule
from hubbench.plan.suite import Plan, Suite, load_suite, parse_suite, suite_axes

__all__ = [
    "Axis",
    "ExcludeRule",
    "GateRule",
    "Plan",
    "Suite",
    "available_suites",
    "expand",
    "field_types",
    "find_suite",
    "load_suite",
    "measure_overrides",
    "mixer_info",
    "parse_overrides",
    "parse_suite",
    "plugin_option_types",
    "suite_axes",
    "suite_dirs",
    "with_mixers",
]
