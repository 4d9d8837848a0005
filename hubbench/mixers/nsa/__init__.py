"""NSA, Native Sparse Attention (Yuan et al. 2025), docs/mixers/nsa.md. One module per job:
- layer.py: NSA, the parameters, the compression MLP and the parallel forward;
- select.py: the block-selection rule (scores from the compressed branch, ranking, ties) that
  the forward, the decode step and the reference share;
- blocked.py: attention of query blocks over per-block key sets with its own autograd Function
  (flash-style recomputation), the kernel of all three branches;
- decode.py: NSAState and the incremental decoding (empty_state, prefill, step);
- naive.py: `nsa_ref`, the slow per-token reference the forward is tested against.
"""

from hubbench.mixers.nsa.blocked import blocked_attention
from hubbench.mixers.nsa.decode import NSAState
from hubbench.mixers.nsa.layer import NSA
from hubbench.mixers.nsa.naive import nsa_ref, nsa_ref_selection
from hubbench.mixers.nsa.select import rank_key, select_blocks

__all__ = [
    "NSA",
    "NSAState",
    "blocked_attention",
    "nsa_ref",
    "nsa_ref_selection",
    "rank_key",
    "select_blocks",
]
