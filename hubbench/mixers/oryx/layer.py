"""Oryx (arXiv 2605.28769): one block, two modes, switched along the sequence.

A token runs either as softmax attention or as the base's linear recurrence (Gated DeltaNet or
Mamba-2), the mode being a pure function of its position (schedule.py). The modes share
(tie) the input projections and convs that make keys and values, the recurrence's query, the
output gate / norm and the out-projection; what is the recurrence's own is its gates and decays
(GDN beta and g; Mamba-2 dt, A, D), what is the attention's own is a small query part and a
temperature (`AttentionQuery`). Every token updates both states (a KV cache of the tied keys
and values, and the recurrent state); docs/mixers/oryx.md has the design and its reasons.

The forward runs the base's chunked recurrence over the whole sequence (its state has to pass
through attention-mode tokens), then the attention for the attention-mode runs of queries, each
inside one chunk: queries a..b-1 over keys 0..b-1 with a causal mask (C x t per chunk, never
n x n), through the flash attention kernel (attend.py; on CPU it keeps only the inputs, the
outputs and the log-sum-exps for backward). A token's output is its mode's read; the shared
gate, norm and out-projection follow.
"""

from __future__ import annotations

import inspect
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hubbench.errors import ConfigError
from hubbench.mixers.oryx.attend import Run, attend_runs
from hubbench.mixers.oryx.bases import GDNBlock, Mamba2Block, unit
from hubbench.mixers.oryx.decode import OryxDecoding
from hubbench.mixers.oryx.schedule import Schedule

BASES = {"gdn": GDNBlock, "mamba2": Mamba2Block}
QUERY_RANK = 16  # default rank of the attention query's low-rank, input-dependent delta


class AttentionQuery(nn.Module):
    """The attention mode's own query part, on top of the recurrence's query (tied).

    q_h = tau_h * unit(base_h * (1 + s_h) + (U (W x))_h), base_h the recurrence's query before
    its normalisation (GDN's q after the conv, Mamba-2's C): a per-channel rescale s of it (so
    the modes may weigh its channels differently), a rank-r delta read
    from the block input (so attention may ask for something the recurrence's query does not
    say), then unit length times a per-head temperature tau_h (keys are unit length too, so the
    logits are tau cos(q, k): the same temperature knob for GDN's normalised keys and Mamba-2's
    raw B). At init s = 0 and U = 0, so the attention asks exactly the recurrence's question,
    and tau = sqrt(Dk), which gives unit-length vectors the logit spread of standard attention
    on unit-variance ones.
    """

    def __init__(self, d_model: int, heads: int, key_heads: int, width: int, rank: int) -> None:
        super().__init__()
        self.heads, self.key_heads, self.width = heads, key_heads, width
        self.scale = nn.Parameter(torch.zeros(heads, width))
        self.down = nn.Linear(d_model, rank, bias=False)
        self.up = nn.Parameter(torch.zeros(heads * width, rank))  # zero: no delta at init
        self.log_temperature = nn.Parameter(torch.full((heads,), 0.5 * math.log(width)))
        for p in (self.scale, self.log_temperature):
            p._no_weight_decay = True

    def forward(self, base: Tensor, x: Tensor) -> Tensor:
        """base (B, L, H, Dk), or (B, L, Hk, 1, Dk) for one query per key head (Mamba-2's C);
        x (B, L, d_model). Returns (B, L, H, Dk) in >= fp32."""
        f = torch.promote_types(x.dtype, torch.float32)
        B, L = x.shape[:2]
        H, Hk, Dk = self.heads, self.key_heads, self.width
        delta = F.linear(self.down(x), self.up).to(f).view(B, L, H, Dk)
        gain = 1 + self.scale.to(f)  # (H, Dk)
        if base.dim() == 5:  # one base per key head, broadcast over its H / Hk heads
            q = (base.to(f) * gain.view(Hk, H // Hk, Dk)).view(B, L, H, Dk)
        else:
            q = base.to(f) * gain
        return unit(q + delta) * self.log_temperature.to(f).exp()[:, None]


def _base_options(base: str, d_model: int, n_heads: int, options: dict) -> dict:
    """The keyword options the base block takes, checked, with Mamba-2's head width from
    n_heads (Oryx's heads are the base's heads)."""
    cls = BASES[base]
    valid = [
        name
        for name, p in inspect.signature(cls.__init__).parameters.items()
        if p.kind is p.KEYWORD_ONLY and name not in ("chunk", "causal")
    ]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ConfigError(
            f"oryx: unknown option(s) {', '.join(unknown)} for base {base!r}; "
            f"valid: {', '.join(valid)}",
            tuple(unknown),
        )
    opts = dict(options)
    if base == "mamba2":
        inner = opts.get("expand", 2) * d_model
        if inner % n_heads:
            raise ConfigError(
                f"oryx: base mamba2 needs n_heads ({n_heads}) to divide expand * d_model ({inner})",
                ("n_heads",),
            )
        headdim = opts.setdefault("headdim", inner // n_heads)
        if headdim * n_heads != inner:
            raise ConfigError(
                f"oryx: headdim {headdim} x n_heads {n_heads} != expand * d_model {inner}; "
                "leave headdim out (n_heads sets it)",
                ("headdim", "n_heads"),
            )
    return opts


class Oryx(OryxDecoding, nn.Module):
    """Oryx mixer: x (B, n, d_model) -> (B, n, d_model), causal unless `causal=False`.

    base: "gdn" (Gated DeltaNet, n_heads heads of d_model / n_heads) or "mamba2" (n_heads SSD
    heads of expand * d_model / n_heads); attn_fraction and policy: the schedule (schedule.py);
    chunk: the schedule's granularity and the base's chunk; query_rank: the rank of the
    attention query's delta; base_options: the base's own keywords (GDN: d_conv, expand_v,
    impl; Mamba-2: d_state, expand, d_conv, ngroups, impl, headdim). `causal=False` builds the
    leaky control: attention-mode tokens see every key of their own chunk.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        *,
        base: str = "gdn",
        attn_fraction: float = 0.0625,
        policy: str = "spread",
        chunk: int = 64,
        causal: bool = True,
        query_rank: int = QUERY_RANK,
        **base_options: object,
    ) -> None:
        super().__init__()
        if base not in BASES:
            raise ConfigError(f"oryx: unknown base {base!r}; valid: {', '.join(BASES)}", ("base",))
        if not isinstance(causal, bool):
            raise ConfigError(f"oryx: causal must be true or false, got {causal!r}", ("causal",))
        if isinstance(query_rank, bool) or not isinstance(query_rank, int) or query_rank < 1:
            raise ConfigError(
                f"oryx: query_rank must be a positive integer, got {query_rank!r}", ("query_rank",)
            )
        if isinstance(n_heads, bool) or not isinstance(n_heads, int) or n_heads < 1:
            raise ConfigError(f"oryx: n_heads must be a positive integer, got {n_heads!r}")
        self.schedule = Schedule.parse(policy, attn_fraction, chunk)
        opts = _base_options(base, d_model, n_heads, base_options)
        if base == "gdn":
            self.block = GDNBlock(d_model, n_heads, chunk=chunk, **opts)
        else:
            self.block = Mamba2Block(d_model, chunk=chunk, **opts)
        blk = self.block
        self.query = AttentionQuery(d_model, blk.heads, blk.key_heads, blk.key_width, query_rank)
        self.d_model, self.n_heads, self.chunk, self.base = d_model, blk.heads, chunk, base
        self.attn_fraction, self.policy = attn_fraction, policy
        self.causal = causal
        self.last_backend: str | None = None
        self.aux_loss: Tensor | None = None
        self._kernels: dict[tuple, str] = {}

    # ------------------------------------------------------------------ forward

    def forward(self, x: Tensor) -> Tensor:
        y, _, _ = self._run(x, want_state=False)
        return y

    def _run(self, x: Tensor, want_state: bool):
        """The whole sequence: (y, the base's segments, the base's state after it or None)."""
        if x.shape[1] == 0:
            return self.block.empty_output(x), [], None
        segments, state = self.block.run(x, want_state)
        backend = self.block.last_backend
        pieces = self.schedule.pieces(0, x.shape[1])
        if pieces:
            kv, kernel = self._keys_values(segments), None
            for seg in segments:
                mine = self.schedule.pieces(seg.t0, seg.t0 + seg.o.shape[1])
                if mine:
                    seg.o, kernel = self._attend(seg, x, mine, kv, kernel)
            backend = f"{backend}+{kernel}"
        self.last_backend = f"oryx:{backend}"
        ys = [self.block.finish(seg.o, seg.streams) for seg in segments]
        return (ys[0] if len(ys) == 1 else torch.cat(ys, 1)), segments, state

    def _keys_values(self, segments: list) -> tuple[Tensor, Tensor]:
        """Keys (B, H, n, D) and values (B, H, n, D) of the whole sequence as SDPA takes them:
        Mamba-2's group keys repeated per head, the narrower of D_k, D_v zero-padded (CPU's
        flash kernel wants one width; zeros leave dot products and outputs as they are)."""
        H, Hk = self.block.heads, self.block.key_heads
        cat = (lambda ts: ts[0]) if len(segments) == 1 else (lambda ts: torch.cat(ts, 1))
        keys = cat([seg.streams.keys for seg in segments]).transpose(1, 2)  # (B, Hk, n, Dk)
        values = cat([seg.streams.values for seg in segments]).transpose(1, 2)  # (B, H, n, Dv)
        if Hk != H:  # SDPA wants keys per query head when the values have them
            keys = keys.repeat_interleave(H // Hk, dim=1)  # once per forward
        Dk, Dv = keys.shape[-1], values.shape[-1]
        return F.pad(keys, (0, max(Dv - Dk, 0))), F.pad(values, (0, max(Dk - Dv, 0)))

    def _attend(self, seg, x: Tensor, pieces: list[tuple[int, int]], kv, kernel: str | None):
        """The segment's outputs with the attention's in place of the recurrence's at its
        attention-mode positions. Each piece [a, b) lies inside one chunk: queries a..b-1 over
        keys 0..b-1, masked causally (the leaky control: keys to the end of the chunk, no mask).
        """
        keys, values = kv
        n, C, t0 = keys.shape[2], self.chunk, seg.t0
        o, s = seg.o, seg.streams
        Dk, Dv = self.block.key_width, self.block.value_width
        runs, qs = [], []
        for a, b in pieces:
            if self.causal:
                runs.append(Run(a, b, b, "mask" if a > 0 else "causal"))
            else:
                runs.append(Run(a, b, min(n, (a // C + 1) * C), "none"))
            q = self.query(s.query[:, a - t0 : b - t0], x[:, a:b])  # (B, L, H, Dk) in >= fp32
            qs.append(F.pad(q.to(values.dtype).transpose(1, 2), (0, max(Dv - Dk, 0))))
        sig = (x.device.type, values.dtype, torch.is_grad_enabled())
        spy = kernel is None and sig not in self._kernels
        outs, seen = attend_runs(qs, keys, values, runs, spy)
        if seen is not None:
            self._kernels[sig] = seen
        parts, prev = [], 0
        for (a, b), att in zip(pieces, outs, strict=True):
            parts += [o[:, prev : a - t0], att[..., :Dv].transpose(1, 2)]  # (B, L, H, Dv)
            prev = b - t0
        parts.append(o[:, prev:])
        return torch.cat(parts, 1), kernel or self._kernels.get(sig)

    # ------------------------------------------------------------------ accounting

    def tied_share(self) -> float:
        """Parameters used by both modes / all parameters of the mixer (the row records it).

        Mode-specific: the recurrence's gates and decays (`block.recurrence_only`) and the
        attention's query part and temperature (`query`); everything else is used by both.
        """
        total = sum(p.numel() for p in self.parameters())
        own = sum(self.block.recurrence_only().values())
        own += sum(p.numel() for p in self.query.parameters())
        return (total - own) / total

    def _key_flops(self) -> float:
        """Per token: the attention keys normalised for the cache (GDN's core normalises its
        own copy inside, Mamba-2's scan reads B raw)."""
        return 3.0 * self.block.key_heads * self.block.key_width

    def _query_flops(self) -> float:
        """Per attention-mode token: the rank-r delta, the rescale, the norm and temperature."""
        q = self.query
        r, HD = q.down.out_features, q.heads * q.width
        return float(2 * self.d_model * r + 2 * r * HD + 6 * HD)

    def _read_flops(self, keys: int) -> float:
        """One query per head over `keys` keys: Q K^T and A V (as attention.py counts)."""
        blk = self.block
        return float(2 * keys * blk.heads * (blk.key_width + blk.value_width))

    def analytic_flops(self, seq: int) -> float:
        """Forward FLOPs of one sequence: the base over every token (recurrence and readout run
        everywhere), the key normalisation, and for each attention-mode token its query and its
        read of the keys it sees (t + 1 causal; to the end of its chunk in the leaky control)."""
        if seq <= 0:
            return 0.0
        flops = self.block.analytic_flops(seq) + seq * self._key_flops()
        for a, b in self.schedule.pieces(0, seq):
            if self.causal:
                seen = (b - a) * (a + b + 1) // 2  # sum of t + 1 over t in [a, b)
            else:
                seen = (b - a) * min(seq, (a // self.chunk + 1) * self.chunk)
            flops += (b - a) * self._query_flops() + self._read_flops(seen)
        return float(flops)
