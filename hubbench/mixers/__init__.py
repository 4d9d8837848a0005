"""Sequence mixers, one per file, one interface: `(B, n, d) -> (B, n, d)`.

Every mixer has a `causal` flag and, after a forward, `last_backend` naming what actually ran
(so a result row records the kernel, not the request). Mixers with an auxiliary loss set
`aux_loss` during forward; the model adds it to its loss.
"""
