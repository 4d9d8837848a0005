"""MoBA, mixture of block attention (Lu et al. 2025; docs/mixers/moba.md). One module per job:
- select.py: which key blocks each query reads (block means, rounded scores, lower index wins
  ties), chunked over queries, no gradient;
- attend.py: one softmax over the query's own block (causal) and its selected blocks, the
  selected ones worked as tiles of queries that share a key block (no per-query key copies);
- layer.py: MoBA, its options and the forward (the q/k/v heads and their merge are
  in hubbench.mixers.heads, shared with swa);
- decode.py: MoBAState (KV cache + complete blocks' mean keys) and the recurrent decoding;
- naive.py: `moba_ref`, the per-token loop the fast path is tested against.
"""

from hubbench.mixers.moba.attend import block_attention
from hubbench.mixers.moba.decode import MoBAState
from hubbench.mixers.moba.layer import MoBA
from hubbench.mixers.moba.naive import moba_ref
from hubbench.mixers.moba.select import RANK_BITS, rank_key, select_blocks

__all__ = [
    "RANK_BITS",
    "MoBA",
    "MoBAState",
    "block_attention",
    "moba_ref",
    "rank_key",
    "select_blocks",
]
