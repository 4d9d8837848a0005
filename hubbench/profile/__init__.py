"""Profile the one step: torch.profiler traces and where the time goes.

- `trace`: build a cell's model and step as the runner does, trace it (`profile_cell`,
  `trace_step`), and write the trace where TensorBoard and Perfetto read it;
- `analyse`: read a trace back (`analyse_trace`): time per stage, forward and backward, and the
  top operators; it needs neither torch nor the model.
"""

from hubbench.profile.analyse import (
    OPTIMIZER,
    OTHER,
    STAGES,
    OpRow,
    StageRow,
    TraceSummary,
    analyse_trace,
)
from hubbench.profile.trace import (
    TRACE_SUFFIX,
    ProfileResult,
    TraceFiles,
    profile_cell,
    run_name,
    trace_step,
)

__all__ = [
    "OPTIMIZER",
    "OTHER",
    "STAGES",
    "TRACE_SUFFIX",
    "OpRow",
    "ProfileResult",
    "StageRow",
    "TraceFiles",
    "TraceSummary",
    "analyse_trace",
    "profile_cell",
    "run_name",
    "trace_step",
]
