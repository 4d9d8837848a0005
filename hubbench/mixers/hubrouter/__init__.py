"""HubRouter: encode -> decode -> score/select -> council, non-causal and chunked-causal.

The algorithm is pinned down in shared/design/hubrouter.md; docs/hubrouter.md explains this
implementation. One module per job:
- config.py: HubRouterConfig, the options and their checks;
- layer.py: HubRouter, the parameters and the parallel forward;
- scans.py: the two log-depth scans over chunks (encode statistics, prefix top-k) and the
  ranking every path shares;
- council.py: the council, masked (the reference), split and packed, with their autograd
  Functions;
- decode.py: HubState and the recurrent decoding (empty_state, prefill, step);
- naive.py: `hubrouter_ref`, the slow per-token reference the tests hold the forward to.

Everything is vectorised over tokens and chunks; the only Python loops are the doubling steps
of the two scans. Choices where the spec is silent (`hubrouter_ref` spells each one out, and the
layer must match it):
- Heads. Encode, decode and council are all multi-head with the same `n_heads`. The routing
  fingerprint is the decode attention over hubs averaged over heads, (B, n, M).
- The learned initial hub state is a sink. It has a learned logit per hub and head and takes part
  in every hub softmax as one extra entry, so chunk 0 reads exactly the initial state and later
  chunks read a mix of it and the prefix. The non-causal encode uses the same sink, so both modes
  share one parameter set and every parameter gets gradient in either mode.
- Decode keys and values are the hub states themselves (the spec lists no decode key/value
  projection); the token query is `W_dq x`.
- Score head: `s = w . x + u . fingerprint + b` (a linear map of the token and its fingerprint).
- Members' council values are scaled by `sigmoid(s)` of the member's own score; a right neighbour
  is scaled by its own score too (after de-duplication a position occurs once, whatever brought
  it in). The causal local window (own chunk, positions <= t) is not scaled.
- Non-causal council: every token attends only to the k' members (no local window); `chunk` is
  ignored. Causal council: members visible to the chunk plus the causal local window.
- Gate: `sigmoid(W_g x)` is d-wide (one gate per output channel).
- Ranking members: by `rank_key(s)`, the score rounded to RANK_BITS significant bits (30 for
  fp64 scores, 16 for fp32), then by position, lower first (`top_ordered`: a stable sort over
  candidates laid out in position order). A token repeated in a chunk scores the same as its
  twin only up to rounding, and the parallel GEMM, prefill and the one-token step round
  differently; ranking raw scores (or with torch.topk's arbitrary tie-breaking) made the
  recurrent path pick other members than the forward. Rounded, near-ties become ties that both
  paths break the same way; the council still scales by sigmoid of the raw score. The set for
  chunk c is computed from chunks < c only, so a tie never lets a later token decide it.
- Half precision: the softmax statistics of the encode and the prefix combine run in fp32 (fp64
  for fp64 input) with autocast off; projections and the split, masked and flex councils
  follow autocast / the input; the packed council computes in fp32 (fp64 for fp64 input) and
  returns the input's dtype.
- `neighbours` r adds positions p+1 .. p+r of every member p; neighbours past n (non-causal) or at
  or after the start of the reading chunk (causal) are dropped; duplicates are masked, so the
  fixed width is k' = min(k, available) * (1 + r) slots with a validity mask.
"""

from hubbench.mixers.hubrouter.config import COUNCIL_IMPLS, HubRouterConfig
from hubbench.mixers.hubrouter.council import (
    packed_council_available,
    split_council_available,
)
from hubbench.mixers.hubrouter.decode import HubState
from hubbench.mixers.hubrouter.layer import HubRouter, ortho_loss
from hubbench.mixers.hubrouter.naive import hubrouter_ref
from hubbench.mixers.hubrouter.scans import (
    RANK_BITS,
    expand_members,
    prefix_combine,
    prefix_combine_blocked,
    prefix_topk,
    rank_key,
    top_ordered,
)

__all__ = [
    "COUNCIL_IMPLS",
    "RANK_BITS",
    "HubRouter",
    "HubRouterConfig",
    "HubState",
    "expand_members",
    "hubrouter_ref",
    "ortho_loss",
    "packed_council_available",
    "prefix_combine",
    "prefix_combine_blocked",
    "prefix_topk",
    "rank_key",
    "split_council_available",
    "top_ordered",
]
