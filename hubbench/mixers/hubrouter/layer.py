"""HubRouter, the layer: its parameters and the parallel forward, encode -> decode ->
score/select -> council, non-causal and chunked-causal (the choices it makes where the spec is
silent are listed in the package's docstring, hubbench/mixers/hubrouter/__init__.py).

Speed: the encode key projection is folded into the hub queries (logits are `x @ (W_k^T q_hub)`),
and the encode value projection is applied to per-chunk weighted sums of x, not to every token;
the decode query is folded into the hub states in the same way. Both are exact rewrites that keep
the spec's parameters (W_hq, W_ek, W_ev, W_dq) and cut the per-token projection work from 8 d^2
to about 5 d^2 multiply-adds. All remaining per-token linear maps are one fused GEMM.

Complexity (causal): O(n (M + k' + C) d) time, activations O(n (d + k' + C)) plus
O((n / C) M d) for hub states: linear in n for fixed M, k, C.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.profiler import record_function

from hubbench.errors import ConfigError
from hubbench.mixers.hubrouter import council as councils
from hubbench.mixers.hubrouter import scans
from hubbench.mixers.hubrouter.config import HubRouterConfig
from hubbench.mixers.hubrouter.decode import HubDecoding
from hubbench.mixers.rope import rotary


def ortho_loss(hubs: Tensor) -> Tensor:
    """`|| E_hat E_hat^T - I ||_F^2` over row-normalised hub embeddings E (M, d)."""
    e = F.normalize(hubs if hubs.dtype == torch.float64 else hubs.float(), dim=-1)
    gram = e @ e.t()  # (M, M)
    eye = torch.eye(gram.shape[0], device=gram.device, dtype=gram.dtype)
    return (gram - eye).pow(2).sum()


class HubRouter(HubDecoding, nn.Module):
    """x (B, n, d) -> (B, n, d). Options: HubRouterConfig; the algorithm: the package docstring
    and shared/design/hubrouter.md; decoding one token at a time: HubDecoding (decode.py)."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        hubs: int = 8,
        topk: int = 64,
        neighbours: int = 1,
        chunk: int = 64,
        causal: bool = True,
        ortho_weight: float = 0.0,
        rope: bool = False,
        council: str = "auto",
    ) -> None:
        super().__init__()
        self.config = HubRouterConfig(
            d_model, n_heads, hubs, topk, neighbours, chunk, causal, ortho_weight, rope, council
        )
        self.council = council
        self._last_council = "masked"
        self.d_model, self.n_heads, self.d_head = d_model, n_heads, d_model // n_heads
        self.hubs, self.topk, self.neighbours, self.chunk = hubs, topk, neighbours, chunk
        self.causal, self.ortho_weight, self.rope = causal, ortho_weight, rope
        d, h, M = d_model, n_heads, hubs
        self.hub_embed = nn.Parameter(torch.empty(M, d))  # E
        nn.init.orthogonal_(self.hub_embed)
        self.hub_query = nn.Linear(d, d, bias=False)  # hub queries from E
        self.enc_key = nn.Linear(d, d, bias=False)  # encode keys from x (folded, see forward)
        self.enc_value = nn.Linear(d, d, bias=False)  # encode values from x (folded)
        self.dec_query = nn.Linear(d, d, bias=False)  # decode token queries (folded)
        # council k, v, q, gate and the token part of the score head share one GEMM
        self.in_proj = nn.Linear(d, 4 * d + 1)
        self.score_fp = nn.Linear(M, 1, bias=False)  # fingerprint part of the score head
        self.init_logit = nn.Parameter(torch.zeros(h, M))  # sink logit of the initial state
        self.init_state = nn.Parameter(0.02 * torch.randn(h, M, self.d_head))
        self.out_proj = nn.Linear(d, d)
        self.last_backend: str | None = None
        # set record_routing to keep the last forward's council members: (positions (B, nc, k'),
        # validity (B, nc, k'), chunk C); off by default, so a forward keeps nothing extra
        self.record_routing = False
        self.last_routing: tuple[Tensor, Tensor, int] | None = None
        self.aux_loss: Tensor | None = None

    def ortho_loss(self) -> Tensor:
        """The unweighted orthogonal hub regulariser."""
        return ortho_loss(self.hub_embed)

    def analytic_flops(self, seq: int) -> float:
        """Forward FLOPs for one sequence as this implementation computes it (matmuls only).

        The council counts the key slots each chunk's queries are scored against: k' member
        slots plus, causally, (C+1)/2 local keys on average. Causally, the member slots are
        min(k, (nc - 1) C) wide (what `_members` allocates: chunk c draws on chunks before it),
        so at n <= C there are none and the council is the causal local window alone.
        Elementwise work (softmax, scans, gathers) is not counted.
        """
        d, h, M, d_h = self.d_model, self.n_heads, self.hubs, self.d_head
        C = self.chunk if self.causal else seq
        nc = -(-seq // C)
        n_pad = nc * C
        members = min(self.topk, (nc - 1) * C) if self.causal else min(self.topk, seq)
        slots = members * (1 + self.neighbours)
        visible = slots + ((C + 1) / 2 if self.causal else 0)
        flops = 2 * n_pad * d * (4 * d + 1 + h * M)  # fused input GEMM
        flops += 2 * M * d * d + 2 * h * M * d_h * d  # hub queries folded into W_k
        flops += 2 * n_pad * h * M * d + 2 * nc * h * M * d * d_h  # encode sums, W_v
        flops += 2 * nc * h * M * d_h * d  # decode query folded into the hub states
        flops += 2 * 2 * n_pad * h * M * d  # decode logits and (block-diagonal) readout
        flops += 2 * 2 * n_pad * visible * d  # council QK^T and AV
        flops += 2 * n_pad * d * d  # output projection
        return float(flops)

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, n_heads={self.n_heads}, hubs={self.hubs}, topk={self.topk}, "
            f"neighbours={self.neighbours}, chunk={self.chunk}, causal={self.causal}, "
            f"ortho_weight={self.ortho_weight}, rope={self.rope}"
        )

    # -- forward --------------------------------------------------------------------------------

    def forward(self, x: Tensor) -> Tensor:
        return self._forward(x)[0]

    def _forward(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The output (B, n, d) and what prefill reads: projections and scores, padded to n_pad."""
        _, n, d = x.shape
        if d != self.d_model:
            raise ConfigError(f"hubrouter: input width {d} != d_model {self.d_model}")
        C = self.chunk if self.causal else n
        nc = -(-n // C)
        n_pad = nc * C
        xp = F.pad(x, (0, 0, 0, n_pad - n)) if n_pad != n else x  # (B, n_pad, d)
        proj = F.linear(xp, *self._fused_weights())  # (B, n_pad, 4d + 1 + hM)
        # one split, not slices: each slice's backward would zero-fill a full-size gradient
        k_c, v_c, q_c, gate, s_tok, z = proj.split((d, d, d, d, 1, self.n_heads * self.hubs), -1)
        s_tok = s_tok.squeeze(-1)  # (B, n_pad)

        with record_function("hub.encode"):
            states = self._encode(xp, z, nc, C)  # (B, nc, h, M, d_h)
        with record_function("hub.decode"):
            readout, fp = self._decode(xp, states, nc, C)  # (B, n_pad, d), (B, n_pad, M)
        with record_function("hub.select"):
            s = self._score(s_tok, fp, x)
            if n_pad != n:
                pad = torch.arange(n_pad, device=x.device) >= n
                s = s.masked_fill(pad, float("-inf"))  # (B, n_pad)
            mpos, mvalid = self._select(s, n, nc, C)  # (B, nc, k') each
            if self.record_routing:  # quality mode scores the selection (quality.routing)
                self.last_routing = (mpos.detach(), mvalid.detach(), C)
        with record_function("hub.council"):
            council = self._council(q_c, k_c, v_c, s, (mpos, mvalid))  # (B, n_pad, d)

        y = self.out_proj(readout.to(council.dtype) + council) * torch.sigmoid(gate)
        self.aux_loss = self.ortho_weight * self.ortho_loss() if self.ortho_weight > 0 else None
        self.last_backend = self._backend_name()
        parts = {"xp": xp, "k": k_c, "v": v_c, "s": s, "z": z}
        return (y[:, :n] if n_pad != n else y), parts

    def _score(self, s_tok: Tensor, fp: Tensor, x: Tensor) -> Tensor:
        """s = w . x + b (from the fused GEMM) + u . fingerprint, in >= fp32 (bf16: top-k ties)."""
        sd = scans.stat_dtype(x)
        return s_tok.to(sd) + self.score_fp(fp.to(self.score_fp.weight.dtype)).squeeze(-1).to(sd)

    def _backend_name(self) -> str:
        if not self.causal:
            return "hubrouter:bidirectional"
        return f"hubrouter:causal:{self._last_council}-council"

    def _fused_weights(self) -> tuple[Tensor, Tensor]:
        """One (4d + 1 + hM, d) weight: council k, v, q, gate, token score, encode logits."""
        h, M, d_h = self.n_heads, self.hubs, self.d_head
        q_hub = self.hub_query(self.hub_embed).view(M, h, d_h).transpose(0, 1)  # (h, M, d_h)
        w_k = self.enc_key.weight.view(h, d_h, self.d_model)  # (h, d_h, d)
        w_z = (q_hub @ w_k).reshape(h * M, self.d_model) * (1.0 / math.sqrt(d_h))  # (hM, d)
        weight = torch.cat((self.in_proj.weight, w_z), 0)
        bias = torch.cat((self.in_proj.bias, self.in_proj.bias.new_zeros(h * M)))
        return weight, bias

    def _encode(self, xp: Tensor, z: Tensor, nc: int, C: int) -> Tensor:
        """Hub states read by each chunk: (B, nc, h, M, d_h).

        Causal: chunk c reads sink + chunks 0..c-1 (exclusive prefix). Non-causal (nc == 1,
        C == n): sink + every token.
        """
        B, d, h, M, d_h = xp.shape[0], self.d_model, self.n_heads, self.hubs, self.d_head
        sd = scans.stat_dtype(xp)
        used = nc - 1 if self.causal else nc  # the last causal chunk is read by no one
        with torch.autocast(xp.device.type, enabled=False):
            zc = z.to(sd).view(B, nc, C, h * M)
            xc = xp.to(sd).view(B, nc, C, d)
            if used < nc:
                zc, xc = zc.split((used, 1), 1)[0], xc.split((used, 1), 1)[0]
            m = zc.amax(dim=2)  # (B, used, hM)
            p = torch.exp(zc - m.unsqueeze(2))  # (B, used, C, hM)
            l = p.sum(dim=2)  # (B, used, hM)
            xs = p.transpose(2, 3) @ xc  # (B, used, hM, d) weighted sums of x
            w_v = self.enc_value.weight.to(sd).view(h, d_h, d)  # (h, d_h, d)
            # einsum makes this one GEMM per head (a broadcast @ would copy W per chunk)
            o = torch.einsum("bchmd,hed->bchme", xs.view(B, used, h, M, d), w_v)
            o = o.reshape(B, used, h * M, d_h)
            m0 = self.init_logit.to(sd).reshape(1, 1, h * M).expand(B, 1, h * M)
            o0 = self.init_state.to(sd).reshape(1, 1, h * M, d_h).expand(B, 1, h * M, d_h)
            m = torch.cat((m0, m), 1)  # (B, used + 1, hM)
            l = torch.cat((torch.ones_like(m0), l), 1)
            o = torch.cat((o0, o), 1)
            if self.causal:
                m, l, o = scans.prefix_combine_blocked(m, l, o)  # entry c = sink + chunks < c
            else:
                m, l, o = scans.combine(m[:, :1], l[:, :1], o[:, :1], m[:, 1:], l[:, 1:], o[:, 1:])
            states = o / l.unsqueeze(-1)  # (B, nc, hM, d_h)
        return states.view(B, nc, h, M, d_h)

    def _decode(self, xp: Tensor, states: Tensor, nc: int, C: int) -> tuple[Tensor, Tensor]:
        """Readout (B, n_pad, d) and fingerprint (B, n_pad, M) of every token.

        The decode query is folded into the hub states (G = H W_dq per head), and the readout
        uses a block-diagonal copy of H, so both are single batched GEMMs per chunk with no
        permutes of token-sized tensors.
        """
        B, d, h, M, d_h = xp.shape[0], self.d_model, self.n_heads, self.hubs, self.d_head
        # outside autocast everything runs in the input's dtype; inside, autocast picks
        st = states if torch.is_autocast_enabled(xp.device.type) else states.to(xp.dtype)
        w_q = self.dec_query.weight.view(h, d_h, d)  # (h, d_h, d)
        g = torch.einsum("bchme,hed->bchmd", st, w_q * (1.0 / math.sqrt(d_h)))
        g = g.reshape(B, nc, h * M, d)  # (B, nc, hM, d)
        logits = (xp.view(B, nc, C, d) @ g.transpose(-1, -2)).view(B, nc, C, h, M)
        attn = torch.softmax(logits, -1, dtype=torch.promote_types(logits.dtype, torch.float32))
        fp = attn.mean(dim=3).reshape(B, nc * C, M)  # (B, n_pad, M)
        eye = torch.eye(h, device=xp.device, dtype=st.dtype).view(1, 1, h, 1, h, 1)
        block = (st.unsqueeze(4) * eye).reshape(B, nc, h * M, d)  # (B, nc, hM, d) block-diag
        readout = attn.view(B, nc, C, h * M).to(block.dtype) @ block  # (B, nc, C, d)
        return readout.view(B, nc * C, d), fp

    def _select(self, s: Tensor, n: int, nc: int, C: int) -> tuple[Tensor, Tensor]:
        """Members per chunk after adding right neighbours: positions, validity (B, nc, k')."""
        pos, valid = self._members(scans.rank_key(s.detach()), n, nc, C)
        limit = self._neighbour_limit(n, nc, C, s)
        return scans.expand_members(pos, valid, self.neighbours, limit)

    def _neighbour_limit(self, n: int, nc: int, C: int, s: Tensor) -> Tensor:
        """First position a neighbour may not reach: the reading chunk's start (causal) or n."""
        if not self.causal:
            return torch.full((1, 1, 1), n, device=s.device)
        return torch.arange(nc, device=s.device).view(1, nc, 1) * C

    def _members(self, sd: Tensor, n: int, nc: int, C: int) -> tuple[Tensor, Tensor]:
        """Top-k members per chunk before neighbours: positions, validity (B, nc, k).

        Causal: chunk c sees the top-k of positions in chunks 0..c-1 (a prefix top-k merge over
        per-chunk candidates). Non-causal: one top-k over the whole sequence (nc == 1).
        """
        if not self.causal:
            vals, pos = scans.top_ordered(sd, min(self.topk, n))  # (B, k)
            return pos.unsqueeze(1), vals.unsqueeze(1) > float("-inf")
        B = sd.shape[0]
        kw = min(self.topk, (nc - 1) * C)
        kc = min(self.topk, C)
        # slot 0 is the empty set, so the inclusive scan at c covers chunks 0..c-1
        vals = torch.full((B, nc, kw), float("-inf"), dtype=sd.dtype, device=sd.device)
        pos = torch.zeros(B, nc, kw, dtype=torch.long, device=sd.device)
        if kw > 0:
            cand = sd[:, : (nc - 1) * C].view(B, nc - 1, C)
            cv, ci = scans.top_ordered(cand, kc)  # (B, nc-1, kc)
            starts = torch.arange(nc - 1, device=sd.device).view(1, -1, 1) * C
            vals[:, 1:, :kc] = cv
            pos[:, 1:, :kc] = ci + starts
            vals, pos = scans.prefix_topk(vals, pos, kw)
        return pos, vals > float("-inf")

    def _council(
        self, q: Tensor, k: Tensor, v: Tensor, s: Tensor, members: tuple[Tensor, Tensor]
    ) -> Tensor:
        """Each chunk's queries attend to its members (+ the causal local window): (B, n_pad, d)."""
        if self.rope:
            q, k = self._rotate(q, k)
        self._last_council = self._council_impl(q) if self.causal else "masked"
        if self._last_council == "packed":
            return councils.packed_council(q, k, v, s, members, self.n_heads)
        if self._last_council == "split":
            return councils.split_council(q, k, v, s, members, self.n_heads)
        if self._last_council == "flex":
            from hubbench.mixers.hubrouter.flex import flex_council  # imports FlexAttention

            return flex_council(q, k, v, s, members, self.n_heads)
        return councils.masked_council(q, k, v, s, members, self.n_heads, self.causal)

    def _council_impl(self, q: Tensor) -> str:
        """Which council runs: flex (one block-sparse FlexAttention, compiled on CUDA), packed
        (one softmax per slice of chunks as batched GEMMs, probabilities kept), split (two
        CPU flash attentions merged by log-sum-exp) or masked (one attention under a dense
        mask). auto: flex on CUDA; on CPU packed in fp32/fp64, split in half precision (flex's
        CPU path is the dense eager reference; docs/hubrouter.md has the figures)."""
        if self.council != "auto":
            return self.council
        if q.device.type == "cuda":
            from hubbench.mixers.hubrouter.flex import flex_council_available

            if flex_council_available(q):
                return "flex"
        if councils.packed_council_available(q):
            return "packed"
        return "split" if councils.split_council_available(q) else "masked"

    def _rotate(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        """Rotary on council queries and keys at their true positions, before the gather, so
        a gathered member keeps the rotation of where it sits in the sequence."""
        B, n_pad, d = q.shape
        shape = (B, n_pad, self.n_heads, self.d_head)
        # positions (n, 1) broadcast over heads: rotating the (B, n, h, d_h) layout in place of
        # memory avoids transposed copies
        pos = torch.arange(n_pad, device=q.device).view(n_pad, 1)
        q_rot = rotary(q.reshape(shape), pos).view(B, n_pad, d)
        return q_rot, rotary(k.reshape(shape), pos).view(B, n_pad, d)
