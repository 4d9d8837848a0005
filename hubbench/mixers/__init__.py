"""Sequence mixers, one per file, one interface: `(B, n, d) -> (B, n, d)`.

Every mixer has a `causal` flag and, after a forward, `last_backend` naming what actually ran
(so a result row records the kernel, not the request). Mixers with an auxiliary loss set
`aux_loss` during forward; the model adds it to its loss.

Causal mixers also decode incrementally, one interface again: `empty_state(batch, capacity,
like)`, `prefill(x, capacity) -> (y, state)` and `step(x_t, state) -> y_t` for x_t (B, 1, d);
a state has `nbytes()`, `snapshot()` and `restore(snap)` (docs/decode.md).
"""
