"""HubRouter written as plain loops over tokens: slow, obviously right, the ground truth the
parallel forward is tested against (as mamba-ssm keeps `selective_scan_ref` beside its kernels).

It reads the layer's parameters and options and, of its code, only the ranking
(`scans.rank_key`), which both must share to break near-ties alike.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from hubbench.mixers.hubrouter import scans
from hubbench.mixers.rope import rotary


def hubrouter_ref(m: nn.Module, x: Tensor) -> Tensor:
    """HubRouter `m`'s output for x (B, n, d), one sequence and one token at a time."""
    C = m.chunk if m.causal else x.shape[1]
    return torch.stack([_sequence(m, seq, C) for seq in x])


def _sequence(m: nn.Module, x: Tensor, C: int) -> Tensor:
    """One sequence x (n, d) -> (n, d)."""
    n, d = x.shape
    h, dh = m.n_heads, m.d_head
    w, bias = m.in_proj.weight, m.in_proj.bias
    ck, cv, cq, gate = (
        x @ w[i * d : (i + 1) * d].t() + bias[i * d : (i + 1) * d] for i in range(4)
    )
    s_tok = x @ w[4 * d] + bias[4 * d]  # (n,)
    if m.rope:  # every token's council query and key, rotated at its position
        pos = torch.arange(n, device=x.device)
        cq, ck = (rotary(t.view(n, h, dh).transpose(0, 1), pos).transpose(0, 1).reshape(n, d)
                  for t in (cq, ck))  # fmt: skip
    readout, s = _readout_and_scores(m, x, s_tok, C)
    out = torch.zeros_like(x)
    for t in range(n):
        council = _council(m, cq, ck, cv, s, t, C)
        out[t] = m.out_proj(readout[t] + council) * torch.sigmoid(gate[t])
    return out


def _readout_and_scores(m: nn.Module, x: Tensor, s_tok: Tensor, C: int) -> tuple[Tensor, Tensor]:
    """Each token's readout of the hubs its chunk reads (n, d), and its score (n,)."""
    n, h, M, dh = x.shape[0], m.n_heads, m.hubs, m.d_head
    sc = 1.0 / math.sqrt(dh)
    q_dec = m.dec_query(x).view(n, h, dh)
    k_enc, v_enc = m.enc_key(x).view(n, h, dh), m.enc_value(x).view(n, h, dh)
    states: dict[int, Tensor] = {}
    readout, s = torch.zeros_like(x), torch.zeros_like(s_tok)
    for t in range(n):
        start = (t // C) * C if m.causal else n  # hubs see tokens before `start`
        if start not in states:
            states[start] = _hub_states(m, k_enc, v_enc, start)
        st = states[start]
        fp = torch.zeros(M, dtype=x.dtype, device=x.device)  # the routing fingerprint
        for hh in range(h):
            a = torch.softmax(st[hh] @ q_dec[t, hh] * sc, 0)  # (M,)
            readout[t, hh * dh : (hh + 1) * dh] = a @ st[hh]
            fp += a / h
        s[t] = s_tok[t] + m.score_fp.weight[0] @ fp
    return readout, s


def _hub_states(m: nn.Module, k_enc: Tensor, v_enc: Tensor, start: int) -> Tensor:
    """(h, M, d_h): every hub's softmax over its sink and the tokens before `start`."""
    h, M, dh = m.n_heads, m.hubs, m.d_head
    sc = 1.0 / math.sqrt(dh)
    q_hub = m.hub_query(m.hub_embed).view(M, h, dh)
    st = k_enc.new_zeros(h, M, dh)
    for hh in range(h):
        for mm in range(M):
            logits = [m.init_logit[hh, mm]]
            vals = [m.init_state[hh, mm]]
            for j in range(start):
                logits.append(q_hub[mm, hh] @ k_enc[j, hh] * sc)
                vals.append(v_enc[j, hh])
            a = torch.softmax(torch.stack(logits), 0)
            st[hh, mm] = (a[:, None] * torch.stack(vals)).sum(0)
    return st


def _council(m: nn.Module, cq: Tensor, ck: Tensor, cv: Tensor, s: Tensor, t: int, C: int) -> Tensor:
    """Token t's council (d,): attention over its members (the top-k before its chunk, ranked
    by rounded score then position, with r right neighbours each, values scaled by sigmoid of
    their score) and, causally, its chunk's tokens up to t."""
    start = (t // C) * C if m.causal else len(s)
    key = scans.rank_key(s[:start]).tolist()
    top = sorted(sorted(range(start), key=lambda p: (-key[p], p))[: min(m.topk, start)])
    members = sorted({p + j for p in top for j in range(m.neighbours + 1) if p + j < start})
    keys, scale = list(members), [torch.sigmoid(s[p]) for p in members]
    if m.causal:
        keys += list(range(start, t + 1))
        scale += [torch.tensor(1.0, dtype=s.dtype, device=s.device)] * (t + 1 - start)
    dh = m.d_head
    sc = 1.0 / math.sqrt(dh)
    council = torch.zeros_like(cq[t])
    for hh in range(m.n_heads):
        sl = slice(hh * dh, (hh + 1) * dh)
        logits = torch.stack([cq[t, sl] @ ck[j, sl] * sc for j in keys])
        a = torch.softmax(logits, 0)
        council[sl] = sum(a[i] * cv[j, sl] * scale[i] for i, j in enumerate(keys))
    return council
