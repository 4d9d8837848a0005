"""Oryx, a hybrid along the sequence (docs/mixers/oryx.md). One module per job:
- layer.py: Oryx, the block (one block, two modes, parameters tied) and AttentionQuery, the
  attention mode's own small query part;
- bases.py: GDNBlock and Mamba2Block, the project's Gated DeltaNet and Mamba-2 seen through the
  stages Oryx runs (tied streams, recurrence, shared output);
- schedule.py: Schedule, which positions run in attention mode (a pure function of position);
- decode.py: OryxState (KV cache + recurrent state) and the incremental decoding;
- naive.py: `oryx_ref`, the per-token reference the block is tested against.
"""

from hubbench.mixers.oryx.decode import OryxState
from hubbench.mixers.oryx.layer import BASES, QUERY_RANK, AttentionQuery, Oryx
from hubbench.mixers.oryx.naive import oryx_ref
from hubbench.mixers.oryx.schedule import POLICIES, Schedule

__all__ = [
    "BASES",
    "POLICIES",
    "QUERY_RANK",
    "AttentionQuery",
    "Oryx",
    "OryxState",
    "Schedule",
    "oryx_ref",
]
