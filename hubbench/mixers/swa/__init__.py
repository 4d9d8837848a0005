"""Causal sliding-window attention (docs/mixers/swa.md). One module per job:
- layer.py: SlidingWindow and the blocked forward (`window_attention`; the q/k/v heads and
  their merge are in hubbench.mixers.heads, shared with moba);
- decode.py: WindowState, a ring buffer of the last `window` keys and values, and the
  recurrent decoding (empty_state, prefill, step);
- naive.py: `swa_ref`, the per-token loop the blocked forward is tested against.
"""

from hubbench.mixers.swa.decode import WindowState
from hubbench.mixers.swa.layer import SlidingWindow, window_attention
from hubbench.mixers.swa.naive import swa_ref

__all__ = ["SlidingWindow", "WindowState", "swa_ref", "window_attention"]
