"""The results schema: every column of a row, its type, its meaning, its group; one version.

This is the one place the columns are listed. The store writes exactly these columns; the runner
assembles a row from its groups and `row()` refuses an unknown or a missing key at the point it
is made; the CLI tables, compare, gate, plots and the HTML report read their field lists and
metric metadata from here. Model config columns are not listed by hand: every field of every
variant in `hubbench.plan.variants` is a column, typed and grouped by its own metadata.

Groups, in file order, and who fills them:
- identity: which run and which cell (the runner);
- cell: what was measured, the run fields (variant, mode, device, batch, seq, compile) and every
  model config field, null where it does not apply (the cell);
- measure: how carefully (warm-up, repeats, time limits; the cell);
- outcome: status, message, the device it ran on, wall time (the worker, for every cell);
- execution: the executor and job that ran the cell, whether it failed with its job, and the
  machine's load average around each round (the runner or the job, hubbench.run.jobs);
- measurement: backends, step-time statistics, memory, FLOPs, MFU (the worker, ok cells only;
  a quality cell's steps are its training updates);
- quality: what training bought: losses, accuracy, bits per byte, routing precision, whether it
  converged and whether the trained model passed the causality checks (quality cells only);
- env: versions, commit, host, time (the runner and the worker).
A cell column's `role` says how reports group rows: `figure` fields are fixed within one figure,
`series` fields tell its lines apart, `x` is the axis. Metric columns carry their direction and
how they scale with the step time (`time_power`), which the bootstrap uses.

Columns are added, never renamed; adding one bumps SCHEMA_VERSION. Files of an older version
are read with the newer columns null (config columns filled from `config_json`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from hubbench.errors import ReportError, SchemaError
from hubbench.plan.fields import INT64_MAX
from hubbench.plan.runfields import RUN_FIELDS, Measure
from hubbench.plan.variants import all_fields

# 5: Python, OS, NVIDIA driver and optional package versions (env); plug-in mixer columns
# 6: the speed of light (hubbench.measure.roofline): its seconds, tokens/s, basis, bytes, bandwidth
# 7: the quality mode: task run fields and the quality group (hubbench.quality)
# 8: executors and torchrun: the nproc run field, the execution group, world size and per-rank
#    tokens/s with the weak-scaling efficiency (hubbench.run.jobs, hubbench.measure.ranks)
# 9: the nnodes run field (torchrun across a job's nodes)
# 10: the field's mixers (their config fields and backend columns), the same-run A/B of two
#     commits (side, its commit), MQAR's recall-free ceilings and protocol columns
# 11: the machine's load beside a run, GPU timing (CUDA graphs, L2 flush) and the council that ran
SCHEMA_VERSION = 11

GROUPS = ("identity", "cell", "measure", "outcome", "execution", "measurement", "quality", "env")
TYPES = ("int64", "float64", "string", "bool", "list<float64>", "list<list<float64>>")


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # one of TYPES (arrow)
    group: str  # one of GROUPS
    doc: str
    role: str | None = None  # cell columns: figure | series | x
    label: str | None = None  # short table header, for metrics
    unit: str | None = None  # s | bytes | tokens/s | FLOP/s | fraction
    higher_is_better: bool | None = None  # set for metrics (compare / gate / plots)
    time_power: int | None = None  # metric ~ step time ** p: -1 rates, +1 times, 0 memory

    @property
    def is_metric(self) -> bool:
        return self.higher_is_better is not None


def _c(name: str, type_: str, group: str, doc: str, **kw: Any) -> Column:
    return Column(name, type_, group, doc, **kw)


ARROW = {int: "int64", float: "float64", bool: "bool", str: "string"}


def _run_columns() -> tuple[Column, ...]:
    return tuple(
        _c(name, ARROW[f.type], "cell", f.doc, role=f.role) for name, f in RUN_FIELDS.items()
    )


def _config_columns() -> tuple[Column, ...]:
    role = {"shape": "figure", "mixer": "series"}
    return tuple(
        _c(f.name, ARROW[f.type], "cell", f"model config: {f.doc}", role=role[f.role])
        for f in all_fields().values()
    )


def _measure_columns() -> tuple[Column, ...]:
    return tuple(
        _c(f.name, ARROW[type(f.default)], "measure", f.metadata["doc"])
        for f in dataclasses.fields(Measure)
    )


# column <name>_version -> the distributions that provide it (first one installed wins); the
# worker reads their versions (hubbench.measure.env.package_versions)
OPTIONAL_PACKAGES: dict[str, tuple[str, ...]] = {
    "numpy": ("numpy",),
    "triton": ("triton", "pytorch-triton", "pytorch-triton-rocm"),
    "flash_attn": ("flash-attn",),
    "mamba_ssm": ("mamba-ssm",),
    "causal_conv1d": ("causal-conv1d",),
    "torch_tb_profiler": ("torch-tb-profiler",),
}

# backend column -> the key the model reports it under (LanguageModel.backends; cuda_graphs:
# the step's, hubbench.measure.step.Step.ran)
BACKEND_COLUMNS = {"backend_attention": "attention", "backend_mamba": "mamba",
                   "backend_hub": "hubrouter", "backend_mamba2": "mamba2", "backend_gdn": "gdn",
                   "backend_swa": "swa", "backend_moba": "moba", "backend_nsa": "nsa",
                   "backend_oryx": "oryx", "cuda_graphs_ran": "cuda_graphs"}  # fmt: skip


def _package_columns() -> tuple[Column, ...]:
    return tuple(
        _c(f"{name}_version", "string", "env",
           f"{' or '.join(dists)} version, or 'not installed' (read from package metadata)")
        for name, dists in OPTIONAL_PACKAGES.items()
    )  # fmt: skip


def _metric(name: str, type_: str, doc: str, label: str, unit: str, hib: bool, p: int) -> Column:
    return Column(name, type_, "measurement", doc, None, label, unit, hib, p)


def _metric_q(name: str, doc: str, label: str, unit: str, hib: bool) -> Column:
    """A quality metric: compare and gate take it as a value, never scaled by step time."""
    return Column(name, "float64", "quality", doc, None, label, unit, hib, 0)


COLUMNS: tuple[Column, ...] = (
    _c("schema_version", "int64", "identity", "version of this schema the row was written in"),
    _c("run_id", "string", "identity", "8 hex digits, one per run (the file name ends with it)"),
    _c("suite", "string", "identity", "the suite the run came from"),
    _c("cell_index", "int64", "identity", "position of the cell in the plan"),
    _c("cell_id", "string", "identity",
       "hash of the cell fields (not the measure settings): equal cells share it across runs"),
    *_run_columns(),
    *_config_columns(),
    _c("config_json", "string", "cell", "the full model config as JSON, nulls where inert"),
    _c("side", "string", "cell",
       "same-run A/B (run --against REF): candidate (the code run from) | baseline (REF's "
       "worktree); null in ordinary runs", role="series"),
    _c("side_commit", "string", "cell",
       "same-run A/B: the full commit of the code that measured this side's rows"),
    *_measure_columns(),
    _c("status", "string", "outcome",
       "ok | partial (rounds still to come) | skipped | oom | error | timeout"),
    _c("message", "string", "outcome", "why a cell is not ok (null when it is)"),
    _c("device_name", "string", "outcome", "GPU or CPU model the cell ran on"),
    _c("wall_s", "float64", "outcome", "cell wall time in the worker: build, warm-up, timing"),
    _c("executor", "string", "execution", "local | submitit-local | slurm: what ran the cell"),
    _c("job_id", "string", "execution",
       "the submitit / Slurm job that measured it (its last round's; null for local)"),
    _c("job_lost", "bool", "execution",
       "the row failed with its job (failed, cancelled, killed), not on its own: --resume "
       "measures it again"),
    _c("round_load_1m_start", "list<float64>", "execution",
       "the machine's 1-minute load average when each measured round started (the runner reads "
       "it; hubbench's own worker adds about `threads` while it measures; null where the OS has "
       "no load average)"),
    _c("round_load_1m_end", "list<float64>", "execution",
       "the same when each measured round ended"),
    _c("backend_attention", "string", "measurement", "attention kernel that ran (observed)"),
    _c("backend_mamba", "string", "measurement", "mamba:ref | mamba:fused (observed)"),
    _c("backend_hub", "string", "measurement", "HubRouter implementation that ran"),
    _c("backend_mamba2", "string", "measurement", "Mamba-2 scan that ran (observed)"),
    _c("backend_gdn", "string", "measurement", "Gated DeltaNet kernel that ran (observed)"),
    _c("backend_swa", "string", "measurement", "sliding-window attention path that ran"),
    _c("backend_moba", "string", "measurement", "MoBA path that ran"),
    _c("backend_nsa", "string", "measurement", "NSA path that ran"),
    _c("backend_oryx", "string", "measurement",
       "Oryx: its base's scan and, when a chunk ran in attention mode, the attention kernel"),
    _c("cuda_graphs_ran", "string", "measurement",
       "prefill, decode: captured (each timed call replayed one CUDA graph) | off (asked) | "
       "off: why not (auto on a CPU, or the capture failed)"),
    _metric("time_median_s", "float64", "median step time (decode: per generated token)",
            "step time", "s", False, 1),
    _c("time_min_s", "float64", "measurement", "fastest step"),
    _c("time_p10_s", "float64", "measurement", "10th percentile step time"),
    _c("time_p90_s", "float64", "measurement", "90th percentile step time"),
    _c("time_mean_s", "float64", "measurement", "mean step time"),
    _c("time_std_s", "float64", "measurement", "step time standard deviation (ddof 1)"),
    _c("time_count", "int64", "measurement", "timed steps"),
    _c("samples_s", "list<float64>", "measurement", "every timed step, all rounds, in order"),
    _c("round_samples_s", "list<list<float64>>", "measurement", "the timed steps of each round"),
    _c("time_rounds", "int64", "measurement", "rounds measured"),
    _c("round_sessions", "list<float64>", "measurement",
       "start (Unix time) of the hubbench run that measured each round: rounds pair within one"),
    _c("tokens_per_step", "int64", "measurement",
       "batch * seq (decode: batch, one token per sequence and step)"),
    _metric("tokens_per_s", "float64", "tokens_per_step / time_median_s", "tokens/s",
            "tokens/s", True, -1),
    _c("tokens_per_s_p10", "float64", "measurement", "from the p90 step time"),
    _c("tokens_per_s_p90", "float64", "measurement", "from the p10 step time"),
    _c("world_size", "int64", "measurement",
       "processes that ran the step together (nnodes x nproc); tokens_per_s counts all of them"),
    _c("tokens_per_s_per_rank", "float64", "measurement", "tokens_per_s / world_size"),
    _c("weak_scaling_efficiency", "float64", "measurement",
       "tokens_per_s_per_rank over the tokens_per_s of the same cell at world size 1 in the same "
       "run (null without one)"),
    _c("warmup_s", "float64", "measurement", "wall time of the untimed steps, FLOP count included"),
    _c("warmup_steps", "int64", "measurement", "untimed steps, all rounds"),
    _c("warmup_capped", "int64", "measurement", "rounds whose warm-up hit warmup_max_s unsettled"),
    _c("round_sentinel_s", "list<float64>", "measurement",
       "the noise sentinel (a fixed matmul) timed just before each round"),
    _metric("peak_mem_bytes", "int64", "peak memory over the timed steps (see mem_kind)",
            "peak memory", "bytes", False, 0),
    _metric("peak_mem_reserved_bytes", "int64", "CUDA: peak reserved by the caching allocator",
            "reserved memory", "bytes", False, 0),
    _c("mem_kind", "string", "measurement", "cuda_allocated | cpu_rss"),
    _metric("state_bytes", "int64",
            "prefill, decode: bytes of the state or KV cache per sequence after the prompt",
            "state", "bytes", False, 0),
    _c("mem_baseline_bytes", "int64", "measurement", "CPU: resident memory before the build"),
    _c("flops_per_step", "float64", "measurement", "counted by FlopCounterMode (matmul-class)"),
    _c("flops_per_step_analytic", "float64", "measurement", "the models' causal-aware estimate"),
    _c("flops_per_token", "float64", "measurement", "FLOPs per step / tokens per step"),
    _metric("achieved_flops_per_s", "float64", "FLOPs per step / median step time", "FLOP/s",
            "FLOP/s", True, -1),
    _metric("mfu", "float64", "achieved / peak FLOP/s", "MFU", "fraction", True, -1),
    _c("mfu_basis", "string", "measurement", "analytic | counted: which FLOPs MFU used"),
    _c("peak_flops_per_s", "float64", "measurement", "the denominator of MFU"),
    _c("peak_flops_source", "string", "measurement", "GPU table entry or calibration"),
    _c("bytes_per_step_min", "float64", "measurement",
       "lower bound of a step's memory traffic: weights (x3 fwd_bwd, x10 train) + state"),
    _c("peak_bytes_per_s", "float64", "measurement", "memory bandwidth the speed of light uses"),
    _c("peak_bytes_source", "string", "measurement", "GPU table entry or calibrated copy"),
    _c("speed_of_light_s", "float64", "measurement",
       "max(FLOPs / peak FLOP/s, bytes_per_step_min / peak bytes/s): the ideal step time"),
    _c("speed_of_light_tokens_per_s", "float64", "measurement",
       "tokens_per_step / speed_of_light_s"),
    _c("speed_of_light_basis", "string", "measurement",
       "compute | memory: the bound that set it (compute (no bandwidth) without a bandwidth)"),
    _c("speed_of_light_fraction", "float64", "measurement",
       "speed_of_light_s / time_median_s: how close the measured step came"),
    _c("params", "int64", "measurement", "parameter count"),
    _c("tied_share", "float64", "measurement",
       "Oryx: parameters its two modes share / all of its mixer's parameters (null: no Oryx)"),
    _c("train_loss", "float64", "quality", "training loss over the last tenth of the updates"),
    _metric_q("eval_loss", "held-out loss (scored positions only)", "eval loss", "nats", False),
    _metric_q("eval_accuracy", "mqar: held-out accuracy on the queried positions",
              "accuracy", "fraction", True),
    _metric_q("bits_per_byte", "bytes: held-out bits per byte (eval_loss / ln 2)", "bits/byte",
              "bits", False),
    _c("baseline_quality", "float64", "quality",
       "the trivial model's score: mqar recall_free_ceiling; bytes: held-out unigram bits per "
       "byte"),
    _metric_q("routing_precision", "share of the router's selected positions that hold a queried "
              "key or its value (mqar, HubRouter; pooled over its layers)", "precision", "fraction",
              True),
    _metric_q("routing_recall", "share of the needed positions the router selected (mqar)",
              "recall", "fraction", True),
    _c("routing_precision_random", "float64", "quality",
       "the same precision for a uniform random selection of the same size (expectation)"),
    _c("routing_recall_random", "float64", "quality", "the same recall, random selection"),
    _c("routing_precision_layers", "list<float64>", "quality", "routing precision per hub layer"),
    _c("routing_recall_layers", "list<float64>", "quality", "routing recall per hub layer"),
    _c("converged", "bool", "quality", "the task's threshold reached (converge_threshold)"),
    _c("converge_threshold", "string", "quality",
       "what converged means: mqar eval_accuracy >= 0.99; bytes bits_per_byte < baseline"),
    _c("causal_check", "string", "quality",
       "the trained model under hubbench verify causal: pass | fail: ... | not causal"),
    _c("train_wall_s", "float64", "quality", "wall time of training and evaluation"),
    _c("eval_tokens", "int64", "quality", "scored held-out positions"),
    _c("curve_updates", "list<float64>", "quality", "learning curve: after these updates ..."),
    _c("curve_train_loss", "list<float64>", "quality", "... mean training loss since the last"),
    _c("curve_eval", "list<float64>", "quality",
       "... validation accuracy (mqar) or held-out bits per byte on a small set (bytes)"),
    _c("data_description", "string", "quality", "the data: generator settings or corpus digest"),
    _c("chance_accuracy", "float64", "quality",
       "mqar: a uniform guess over the value half of the vocabulary (1 / ((vocab - 1) // 2))"),
    _c("recall_free_uniform", "float64", "quality",
       "mqar: a uniform guess among the sequence's context values (1 / kv_pairs), eval set"),
    _c("recall_free_ceiling", "float64", "quality",
       "mqar: the best recall-free guesser's accuracy on the same eval set (quality.ceilings)"),
    _c("recall_free_rule", "string", "quality",
       "mqar: that guesser: uniform | rank | first-unrevealed | frequent-unrevealed"),
    _c("val_accuracy", "float64", "quality",
       "mqar: accuracy on the validation split at the last check (early stop, lr selection)"),
    _c("updates_to_solve", "int64", "quality",
       "mqar: updates until 2 validation checks in a row had a 95% lower bound >= 0.99"),
    _c("updates_run", "int64", "quality", "updates actually run (early stopping ends sooner)"),
    _c("decode_state_bytes", "int64", "quality",
       "bytes of the trained model's decode state per sequence after a seq-token prompt"),
    _c("hubbench_version", "string", "env", "hubbench version"),
    _c("git_commit", "string", "env", "commit of the source tree that measured"),
    _c("git_dirty", "bool", "env", "uncommitted changes in that tree"),
    _c("torch_version", "string", "env", "torch version in the worker"),
    _c("cuda_version", "string", "env", "CUDA version torch was built with"),
    _c("cudnn_version", "string", "env", "cuDNN version"),
    _c("python_version", "string", "env", "Python version and implementation"),
    _c("os", "string", "env", "operating system and machine, e.g. Debian GNU/Linux 12 (x86_64)"),
    _c("python_platform", "string", "env", "platform.platform(): kernel and libc"),
    _c("nvidia_driver_version", "string", "env", "NVIDIA driver version (null without one)"),
    *_package_columns(),
    _c("cpu_model", "string", "env", "CPU model of the host"),
    _c("glibc_tunables", "string", "env",
       "GLIBC_TUNABLES the measuring worker started with: the allocator settings hubbench sets "
       "(big blocks from the heap; CPU peak memory reads higher, docs/measurement.md)"),
    _c("host", "string", "env", "host name"),
    _c("utc_time", "string", "env", "when the row was written (UTC)"),
)  # fmt: skip

BY_NAME: dict[str, Column] = {c.name: c for c in COLUMNS}
NAMES: tuple[str, ...] = tuple(BY_NAME)
if len(NAMES) != len(COLUMNS):
    raise SchemaError("the results schema lists a column twice")

REQUIRED = ("schema_version", "run_id", "suite", "variant", "seq", "status")  # readers need these


def names(*groups: str) -> tuple[str, ...]:
    """The column names of `groups`, in file order."""
    for g in groups:
        if g not in GROUPS:
            raise SchemaError(f"unknown column group {g!r}; valid: {', '.join(GROUPS)}")
    return tuple(c.name for c in COLUMNS if c.group in groups)


def cell_fields() -> tuple[str, ...]:
    """The columns that say what was measured: what joins the same cell across runs."""
    return tuple(c.name for c in COLUMNS if c.group == "cell" and c.role is not None)


def fields_with_role(role: str) -> tuple[str, ...]:
    return tuple(c.name for c in COLUMNS if c.role == role)


METRICS: tuple[str, ...] = tuple(c.name for c in COLUMNS if c.is_metric)


def metric(name: str) -> Column:
    """A column that compare / gate / plots can take as a metric; ReportError otherwise."""
    column = BY_NAME.get(name)
    if column is None or not column.is_metric:
        raise ReportError(f"unknown metric {name!r}; valid: {', '.join(METRICS)}")
    return column


def varying(
    rows: Iterable[Mapping[str, Any]], fields: Iterable[str] | None = None, *, nulls: bool = True
) -> list[str]:
    """The fields that take two or more values over `rows` (default: every field seen).

    With `nulls=False` a null does not count as a value: it only marks a field that does not
    apply to that row (hubs for a transformer).
    """
    rows = list(rows)
    keys = list(fields) if fields is not None else list(dict.fromkeys(k for r in rows for k in r))
    out = []
    for name in keys:
        seen = {repr(r.get(name)) for r in rows if nulls or r.get(name) is not None}
        if len(seen) > 1:
            out.append(name)
    return out


# ----------------------------------------------------------------------------- rows


def _fits(value: Any, type_: str) -> bool:
    if value is None:
        return True
    if type_ == "int64":
        return isinstance(value, int) and not isinstance(value, bool) and abs(value) <= INT64_MAX
    if type_ == "float64":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if type_ == "string":
        return isinstance(value, str)
    if type_ == "bool":
        return isinstance(value, bool)
    inner = type_.removeprefix("list<").removesuffix(">")
    return isinstance(value, (list, tuple)) and all(_fits(v, inner) for v in value)


def check(values: Mapping[str, Any], expected: Iterable[str], where: str) -> dict[str, Any]:
    """`values` holding exactly the columns `expected`, each of its column's type."""
    expected = tuple(expected)
    unknown = sorted(set(values) - set(expected))
    missing = [n for n in expected if n not in values]
    if unknown or missing:
        parts = [f"unknown: {', '.join(unknown)}"] * bool(unknown)
        parts += [f"missing: {', '.join(missing)}"] * bool(missing)
        raise SchemaError(f"{where} does not match the results schema ({'; '.join(parts)})")
    for name in expected:
        if not _fits(values[name], BY_NAME[name].type):
            raise SchemaError(
                f"{where}: column {name} is {BY_NAME[name].type}, got {values[name]!r}"
            )
    return {name: values[name] for name in expected}


def part(group: str, values: Mapping[str, Any], where: str) -> dict[str, Any]:
    """One group of a row, checked: exactly that group's columns."""
    return check(values, names(group), f"{where} ({group} columns)")


def empty(group: str) -> dict[str, Any]:
    """A group with every column null: the measurement of a cell that did not run."""
    return dict.fromkeys(names(group))


def row(values: Mapping[str, Any], where: str = "row") -> dict[str, Any]:
    """A whole row, checked: every column exactly once, in file order."""
    return check(values, NAMES, where)


GROUP_TITLES = {
    "identity": "identity",
    "cell": "cell: what was measured (every model config field is a column, null where it does "
    "not apply to the variant or cannot change what it builds)",
    "measure": "measure: how carefully",
    "outcome": "outcome (every cell)",
    "execution": "execution: the executor and job that ran the cell, and the machine's load "
    "around its rounds (every cell)",
    "measurement": "measurement (ok and partial cells; a cell that failed after some rounds "
    "keeps them)",
    "quality": "quality (ok cells of mode quality; docs/quality.md)",
    "env": "environment",
}


def _cell(text: str) -> str:
    """Text for a Markdown table cell: a `|` in a column's meaning ("a | b") would split it."""
    return text.replace("|", "\\|")


def markdown() -> str:
    """The schema as the tables of docs/measurement.md (`python -m hubbench.schema` prints it)."""
    out = []
    for group in GROUPS:
        out += [f"**{GROUP_TITLES[group]}**", "", "| column | type | role | meaning |"]
        out.append("|---|---|---|---|")
        out += [
            f"| `{c.name}` | {c.type} | {c.role or ''} | {_cell(c.doc)} |"
            for c in COLUMNS
            if c.group == group
        ]
        out.append("")
    return "\n".join(out)


def arrow_schema() -> Any:
    import pyarrow as pa

    types = {
        "int64": pa.int64(),
        "float64": pa.float64(),
        "string": pa.string(),
        "bool": pa.bool_(),
        "list<float64>": pa.list_(pa.float64()),
        "list<list<float64>>": pa.list_(pa.list_(pa.float64())),
    }
    return pa.schema([(c.name, types[c.type]) for c in COLUMNS])


if __name__ == "__main__":
    print(markdown())
