"""Sequence mixers, one interface: `(B, n, d) -> (B, n, d)` (the Protocols in base.py).

One mixer per module or package: attention.py (multi-head attention, three backends),
hubrouter/ and mamba/ (each split by job, its fast path beside a slow `naive` reference), the
field's mixers in the same shape (mamba2/ Mamba-2, gdn/ Gated DeltaNet, oryx/ the hybrid along
the sequence on either, swa/ sliding-window, moba/ and nsa/ block-sparse attention; each
documented in docs/mixers/), and plugin.py (a user's mixer held to the same contract). rope.py
and state.py are what they share.

Every mixer has a `causal` flag and, after a forward, `last_backend` naming what actually ran
(so a result row records the kernel, not the request). Mixers with an auxiliary loss set
`aux_loss` during forward; the model adds it to its loss.

Causal mixers also decode incrementally, one interface again: `empty_state(batch, capacity,
like)`, `prefill(x, capacity) -> (y, state)` and `step(x_t, state) -> y_t` for x_t (B, 1, d);
a state has `nbytes()`, `snapshot()` and `restore(snap)` (docs/decode.md).
"""
