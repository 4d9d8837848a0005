"""Mamba-1 selective-SSM mixer (docs/mamba.md). One module per job:
- block.py: Mamba, the block (mamba-ssm's layout and parameter names), its `ref` and `fused`
  implementations behind one signature, the fused one behind a guarded import of mamba-ssm;
- scan.py: the chunked selective scan, vectorised, with its own autograd Function: the `ref`
  path, on any device;
- naive.py: `selective_scan_ref`, the per-token loop the chunked scan is tested against
  (mamba-ssm's naming: `_ref` is the plain reference);
- decode.py: MambaState and the recurrent decoding (empty_state, prefill, step).
"""

from hubbench.mixers.mamba.block import INSTALL_HINT, Mamba
from hubbench.mixers.mamba.decode import MambaState
from hubbench.mixers.mamba.naive import selective_scan_ref
from hubbench.mixers.mamba.scan import selective_scan_chunked

# the tunables (scan.SCAN_CHUNK, scan.SCAN_WORK_ELEMS) and the optional kernels
# (block.selective_scan_fn, block.causal_conv1d_fn) are read where they live: patch them there
__all__ = ["INSTALL_HINT", "Mamba", "MambaState", "selective_scan_chunked", "selective_scan_ref"]
