"""Gated DeltaNet mixer (docs/mixers/gdn.md). One module per job:
- layer.py: GatedDeltaNet, the layer (fla's layout and parameter names), its `ref` and `fla`
  implementations behind one signature, fla's kernel behind a guarded import;
- chunked.py: the reusable core, `gated_delta_chunked` (the chunked WY/UT form, any device) and
  `gated_delta_step` (one token), which other blocks (issue 31's Oryx) call directly;
- naive.py: `gated_delta_ref` and `gated_deltanet_ref`, the per-token loops the chunked form and
  the layer are tested against;
- decode.py: GDNState and the recurrent decoding (empty_state, prefill, step).
"""

from hubbench.mixers.gdn.chunked import gated_delta_chunked, gated_delta_step
from hubbench.mixers.gdn.decode import GDNState
from hubbench.mixers.gdn.layer import GDN_IMPLS, INSTALL_HINT, GatedDeltaNet
from hubbench.mixers.gdn.naive import gated_delta_ref, gated_deltanet_ref

__all__ = [
    "GDN_IMPLS",
    "INSTALL_HINT",
    "GDNState",
    "GatedDeltaNet",
    "gated_delta_chunked",
    "gated_delta_ref",
    "gated_delta_step",
    "gated_deltanet_ref",
]
