"""HubRouter's recurrent decoding: the state it carries from token to token, and the methods
(`empty_state`, `prefill`, `step`, `decode_flops`) that HubRouter takes from `HubDecoding`.

The state holds what the parallel forward would read at the next position, in O(1) in the
context: decoding token by token, or a prefill followed by steps, gives the forward's outputs
(tests/mixers/test_decode_states.py, `hubbench verify decode`; docs/decode.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor

from hubbench.errors import ConfigError
from hubbench.mixers.hubrouter import scans
from hubbench.mixers.rope import rotary
from hubbench.mixers.state import check_step_input, compute_dtype


@dataclass
class HubState:
    """What a causal HubRouter carries from token to token (spec: "Recurrent decoding").

    Nothing in it grows with the context: the hub softmax statistics over the sink and every
    complete chunk (`m`, `l`, `o`; per hub and head), the hub states the current chunk reads
    (folded into decode keys `g` and a block-diagonal readout `block`), the top-k members so
    far (`top_vals`, `top_pos`), their council slots after right neighbours (`slot_*`: keys
    rotated at their positions, values scaled by sigmoid(score), validity), and the tokens of
    the current chunk (`buf_*`, the first `pos % C` rows used). At a chunk boundary the chunk's
    statistics are merged into the hubs and its tokens compete for membership, as the parallel
    forward does between chunks.
    """

    pos: int  # tokens seen
    m: Tensor  # (B, hM) running max of the hub logits
    l: Tensor  # (B, hM) sum of exps
    o: Tensor  # (B, hM, d_h) weighted value sums
    g: Tensor  # (B, hM, d) decode keys of the current chunk's hub states
    block: Tensor  # (B, hM, d) block-diagonal hub states for the readout
    top_vals: Tensor  # (B, k) members' rank keys (rank_key of the score), -inf = empty
    top_pos: Tensor  # (B, k)
    slot_pos: Tensor  # (B, S) S = k (1 + r)
    slot_valid: Tensor  # (B, S)
    slot_k: Tensor  # (B, S, d)
    slot_v: Tensor  # (B, S, d)
    buf_x: Tensor  # (B, C, d) inputs (for the chunk's hub statistics)
    buf_z: Tensor  # (B, C, hM) hub logits
    buf_k: Tensor  # (B, C, d) council keys, rotated
    buf_v: Tensor  # (B, C, d) council values, unscaled
    buf_s: Tensor  # (B, C) scores
    # the fused input weight and bias (parameters folded once per state, not per token); derived
    # from the parameters, shared by every sequence, so neither counted nor snapshotted. Folded
    # when the state is made: parameters changed after that need a new state (a new prefill)
    w_in: Tensor | None = None
    b_in: Tensor | None = None

    def tensors(self) -> dict[str, Tensor]:
        skip = ("pos", "w_in", "b_in")
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    def snapshot(self) -> tuple[int, dict[str, Tensor]]:
        return self.pos, {k: t.clone() for k, t in self.tensors().items()}

    def restore(self, snap: tuple[int, dict[str, Tensor]]) -> None:
        self.pos = snap[0]
        for k, t in snap[1].items():
            setattr(self, k, t.clone())


class HubDecoding:
    """The recurrent half of HubRouter (a mixin: `self` is the HubRouter, whose parameters,
    options, `_forward`, `_fused_weights` and `_score` these methods use)."""

    def _check_decodable(self, x: Tensor) -> None:
        if not self.causal:
            raise ConfigError("hubrouter: incremental decoding needs causal=true")
        if x.shape[-1] != self.d_model:
            raise ConfigError(f"hubrouter: input width {x.shape[-1]} != d_model {self.d_model}")

    def empty_state(self, batch: int, capacity: int, like: Tensor) -> HubState:
        """The state before the first token: the sink alone, no members, an empty chunk."""
        del capacity  # the state does not grow
        B, d, h, M, C = batch, self.d_model, self.n_heads, self.hubs, self.chunk
        sd = scans.stat_dtype(like)
        cd = compute_dtype(like)  # what the fused GEMM yields: keys, values, hub logits
        S = self.topk * (1 + self.neighbours)
        m, l, o = self._sink(B, sd)
        dev = like.device
        # in the compute dtype: autocast would cast an fp32 copy again on every token
        w_in, b_in = (t.detach().to(cd) for t in self._fused_weights())
        state = HubState(
            pos=0, m=m, l=l, o=o, g=like.new_zeros(B, h * M, d), block=like.new_zeros(B, h * M, d),
            top_vals=torch.full((B, self.topk), float("-inf"), dtype=sd, device=dev),
            top_pos=torch.zeros(B, self.topk, dtype=torch.long, device=dev),
            slot_pos=torch.zeros(B, S, dtype=torch.long, device=dev),
            slot_valid=torch.zeros(B, S, dtype=torch.bool, device=dev),
            slot_k=like.new_zeros(B, S, d, dtype=cd), slot_v=like.new_zeros(B, S, d, dtype=cd),
            buf_x=like.new_zeros(B, C, d), buf_z=like.new_zeros(B, C, h * M, dtype=cd),
            buf_k=like.new_zeros(B, C, d, dtype=cd), buf_v=like.new_zeros(B, C, d, dtype=cd),
            buf_s=torch.zeros(B, C, dtype=sd, device=dev), w_in=w_in, b_in=b_in,
        )  # fmt: skip
        self._read_hubs(state, like.dtype)
        return state

    def prefill(self, x: Tensor, capacity: int = 0) -> tuple[Tensor, HubState]:
        """The parallel forward of a prompt x (B, n, d), and the state after its last token.

        The state is built from the forward's own projections and scores: hub statistics over
        the sink and the complete chunks, the top-k of their scores with right neighbours
        before the current chunk, and the tokens of the incomplete last chunk.
        """
        self._check_decodable(x)
        if x.shape[1] == 0:  # an empty prompt leaves the empty state (the forward needs a chunk)
            return self.out_proj(x), self.empty_state(x.shape[0], capacity, x)
        y, parts = self._forward(x)
        B, n, _ = x.shape
        C = self.chunk
        start = (n // C) * C  # first position of the chunk the next token falls in
        state = self.empty_state(B, capacity, x)
        sd = state.m.dtype
        z, xp, s = parts["z"], parts["xp"], parts["s"]
        k = parts["k"]
        if self.rope:  # keys rotated at their true positions, as the council rotates them
            rows = torch.arange(k.shape[1], device=x.device).view(-1, 1)
            k = rotary(k.reshape(B, k.shape[1], self.n_heads, self.d_head), rows).view(k.shape)
        if start:
            with torch.autocast(x.device.type, enabled=False):
                mc, lc, oc = self._chunk_stats(z[:, :start].to(sd), xp[:, :start].to(sd))
                state.m, state.l, state.o = scans.combine(state.m, state.l, state.o, mc, lc, oc)
            kw = min(self.topk, start)
            vals, pos = scans.top_ordered(scans.rank_key(s[:, :start]), kw)
            state.top_vals[:, :kw], state.top_pos[:, :kw] = vals, pos
            self._refill_slots(state, start, k, parts["v"], s, 0)
        self._read_hubs(state, x.dtype)
        cnt = n - start
        for name, src in (("buf_x", xp), ("buf_z", z), ("buf_k", k), ("buf_v", parts["v"])):
            getattr(state, name)[:, :cnt] = src[:, start:n]
        state.buf_s[:, :cnt] = s[:, start:n]
        state.pos = n
        return y, state

    def step(self, x: Tensor, state: HubState) -> Tensor:
        """One token per sequence, x (B, 1, d), at position `state.pos`; advances `state`.

        O(M + k' + C) work: decode against the current hub states, score, council over the
        member slots and the chunk so far. When the token completes its chunk, the boundary
        update (O(C M d), once per chunk) merges the chunk into the hubs and the members.
        """
        self._check_decodable(x)
        check_step_input(x, self.d_model, "hubrouter")
        B, d, h, d_h, C = x.shape[0], self.d_model, self.n_heads, self.d_head, self.chunk
        t, i = state.pos, state.pos % C
        proj = F.linear(x, state.w_in, state.b_in)  # (B, 1, 4d + 1 + hM)
        k_c, v_c, q_c, gate, s_tok, z = proj.split((d, d, d, d, 1, h * self.hubs), -1)
        logits = (x @ state.g.transpose(-1, -2)).view(B, 1, h, self.hubs)
        attn = torch.softmax(logits, -1, dtype=torch.promote_types(logits.dtype, torch.float32))
        fp = attn.mean(dim=2)  # (B, 1, M)
        readout = attn.view(B, 1, h * self.hubs).to(state.block.dtype) @ state.block  # (B, 1, d)
        s = self._score(s_tok.squeeze(-1), fp, x)  # (B, 1)
        if self.rope:
            pos = torch.full((1, 1), t, device=x.device)
            q_c = rotary(q_c.view(B, 1, h, d_h), pos).view(B, 1, d)
            k_c = rotary(k_c.view(B, 1, h, d_h), pos).view(B, 1, d)
        state.buf_x[:, i : i + 1], state.buf_z[:, i : i + 1] = x, z
        state.buf_k[:, i : i + 1], state.buf_v[:, i : i + 1] = k_c, v_c
        state.buf_s[:, i : i + 1] = s
        council = self._step_council(q_c, state, i)  # (B, 1, d)
        y = self.out_proj(readout.to(council.dtype) + council) * torch.sigmoid(gate)
        state.pos = t + 1
        if state.pos % C == 0:
            self._boundary(state, x.dtype)
        self.last_backend = "hubrouter:recurrent"
        return y

    def _step_council(self, q: Tensor, state: HubState, i: int) -> Tensor:
        """Query q (B, 1, d) over the member slots and the chunk's first i + 1 tokens."""
        B, d, h, d_h = q.shape[0], self.d_model, self.n_heads, self.d_head
        keys = torch.cat((state.slot_k, state.buf_k[:, : i + 1]), 1)  # (B, L, d)
        values = torch.cat((state.slot_v, state.buf_v[:, : i + 1]), 1)
        ones = state.slot_valid.new_ones(B, i + 1)
        mask = torch.cat((state.slot_valid, ones), 1).view(B, 1, 1, -1)
        L = keys.shape[1]
        qh = q.view(B, 1, h, d_h).transpose(1, 2)  # (B, h, 1, d_h)
        kh = keys.view(B, L, h, d_h).transpose(1, 2)
        vh = values.view(B, L, h, d_h).transpose(1, 2)
        council = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask)
        return council.transpose(1, 2).reshape(B, 1, d)

    def decode_flops(self, context: int) -> float:
        """Forward FLOPs of one decoded token (matmuls), the chunk-boundary work amortised.

        Constant in `context`: k' member slots plus, on average, (C + 1) / 2 local keys.
        """
        del context
        d, h, M, d_h, C = self.d_model, self.n_heads, self.hubs, self.d_head, self.chunk
        slots = self.topk * (1 + self.neighbours)
        flops = 2 * d * (4 * d + 1 + h * M)  # fused input GEMM
        flops += 2 * 2 * h * M * d  # decode logits and readout
        flops += 2 * 2 * (slots + (C + 1) / 2) * d  # council
        flops += 2 * d * d  # output projection
        # once per chunk: the chunk's weighted sums, W_v, the decode fold (the fused input
        # weight is folded once per state, in prefill)
        per_chunk = 2 * C * h * M * d + 2 * h * M * d * d_h + 2 * h * M * d_h * d
        return float(flops + per_chunk / C)

    def _sink(self, B: int, sd: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
        hM = self.n_heads * self.hubs
        m = self.init_logit.to(sd).reshape(1, hM).expand(B, hM).clone()
        o = self.init_state.to(sd).reshape(1, hM, self.d_head).expand(B, hM, self.d_head).clone()
        return m, torch.ones_like(m), o

    def _chunk_stats(self, z: Tensor, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Softmax statistics of tokens z (B, T, hM), x (B, T, d) for every hub and head."""
        B, d, h, M, d_h = x.shape[0], self.d_model, self.n_heads, self.hubs, self.d_head
        m = z.amax(dim=1)  # (B, hM)
        p = torch.exp(z - m.unsqueeze(1))  # (B, T, hM)
        xs = p.transpose(1, 2) @ x  # (B, hM, d)
        w_v = self.enc_value.weight.to(x.dtype).view(h, d_h, d)
        o = torch.einsum("bhmd,hed->bhme", xs.view(B, h, M, d), w_v).reshape(B, h * M, d_h)
        return m, p.sum(dim=1), o

    def _read_hubs(self, state: HubState, dtype: torch.dtype) -> None:
        """The current chunk's hub states, folded as `_decode` folds them."""
        B, d, h, M, d_h = state.m.shape[0], self.d_model, self.n_heads, self.hubs, self.d_head
        st = (state.o / state.l.unsqueeze(-1)).view(B, h, M, d_h).to(dtype)
        w_q = self.dec_query.weight.view(h, d_h, d)
        cd = state.slot_k.dtype  # the compute dtype the state was made for
        g = torch.einsum("bhme,hed->bhmd", st, w_q * (1.0 / math.sqrt(d_h)))
        state.g = g.reshape(B, h * M, d).to(cd)
        eye = torch.eye(h, device=st.device, dtype=st.dtype).view(1, h, 1, h, 1)
        state.block = (st.unsqueeze(3) * eye).reshape(B, h * M, d).to(cd)

    def _refill_slots(
        self, state: HubState, limit: int, k: Tensor, v: Tensor, s: Tensor, offset: int
    ) -> None:
        """Council slots of the current members: positions < `limit`, keys and scaled values
        looked up in (k, v, s), whose row j holds position j + offset."""
        B = k.shape[0]
        pos, ok = self._slots(state, limit)  # (B, S)
        rows = (pos - offset).clamp(min=0)
        idx = rows.unsqueeze(-1).expand(B, rows.shape[1], k.shape[-1])
        state.slot_k = k.gather(1, idx)
        sig = torch.sigmoid(s.gather(1, rows)).to(v.dtype)
        state.slot_v = v.gather(1, idx) * sig.unsqueeze(-1)
        state.slot_pos, state.slot_valid = pos, ok

    def _slots(self, state: HubState, limit: int) -> tuple[Tensor, Tensor]:
        """The members and their right neighbours before `limit`, duplicates masked: council
        slot positions and validity, each (B, S)."""
        valid = state.top_vals > float("-inf")
        bound = torch.full((1, 1, 1), limit, device=state.top_pos.device)
        pos, ok = scans.expand_members(
            state.top_pos.unsqueeze(1), valid.unsqueeze(1), self.neighbours, bound
        )
        return pos[:, 0], ok[:, 0]

    def _boundary(self, state: HubState, dtype: torch.dtype) -> None:
        """The chunk in the buffer is complete: merge it into the hubs and the members."""
        B, C, d = state.buf_x.shape
        start = state.pos - C
        sd = state.m.dtype
        with torch.autocast(state.buf_x.device.type, enabled=False):
            mc, lc, oc = self._chunk_stats(state.buf_z.to(sd), state.buf_x.to(sd))
            state.m, state.l, state.o = scans.combine(state.m, state.l, state.o, mc, lc, oc)
        self._read_hubs(state, dtype)
        # members: the top-k of the previous members and this chunk's tokens
        here = start + torch.arange(C, device=state.buf_s.device).expand(B, C)
        keys = torch.cat((state.top_vals, scans.rank_key(state.buf_s)), 1)
        vals, idx = scans.top_ordered(keys, self.topk)
        state.top_pos = torch.cat((state.top_pos, here), 1).gather(1, idx)
        state.top_vals = vals
        # every new slot is an old slot or a token of this chunk (a member stays a member from
        # the chunk after its own until it is pushed out, so its older neighbours are slots)
        sig = torch.sigmoid(state.buf_s).to(state.buf_v.dtype).unsqueeze(-1)
        old_pos = torch.where(state.slot_valid, state.slot_pos, -1)
        union_pos = torch.cat((old_pos, here), 1)  # (B, S + C)
        union_k = torch.cat((state.slot_k, state.buf_k), 1)
        union_v = torch.cat((state.slot_v, state.buf_v * sig), 1)
        pos, ok = self._slots(state, state.pos)
        where = (pos.unsqueeze(-1) == union_pos.unsqueeze(1)).to(torch.uint8).argmax(-1)
        gidx = where.unsqueeze(-1).expand(B, where.shape[1], d)
        state.slot_k, state.slot_v = union_k.gather(1, gidx), union_v.gather(1, gidx)
        state.slot_pos, state.slot_valid = pos, ok
