"""Mamba-2 (SSD) mixer (docs/mixers/mamba2.md). One module per job:
- ssd.py: the chunked SSD core `ssd_chunked` and its one-token twin `ssd_step`, reusable on
  their own (the Oryx block ties B/C to an attention's K/Q and calls them directly);
- block.py: Mamba2, the block (mamba-ssm's layout and parameter names), its `ref` and `fused`
  implementations behind one signature, the fused one behind a guarded import of mamba-ssm;
- decode.py: Mamba2State and the recurrent decoding (empty_state, prefill, step);
- naive.py: `ssd_ref` and `mamba2_ref`, the per-token references the chunked path is tested
  against.
"""

from hubbench.mixers.mamba2.block import INSTALL_HINT, GatedRMSNorm, Mamba2
from hubbench.mixers.mamba2.decode import Mamba2State
from hubbench.mixers.mamba2.naive import mamba2_ref, ssd_ref
from hubbench.mixers.mamba2.ssd import ssd_chunked, ssd_step

__all__ = [
    "INSTALL_HINT",
    "GatedRMSNorm",
    "Mamba2",
    "Mamba2State",
    "mamba2_ref",
    "ssd_chunked",
    "ssd_ref",
    "ssd_step",
]
