"""Multi-head self-attention with three backends behind one signature.

- `naive`: explicit QK^T, mask, softmax, @V: the plain-PyTorch baseline the paper compares
  against. Materialises the (B, h, n, n) score matrix, so its memory is quadratic in n.
- `sdpa`: `torch.nn.functional.scaled_dot_product_attention`; `sdpa_kernel` may force one
  backend (flash / efficient / math / cudnn) through `torch.nn.attention.sdpa_kernel`.
- `flash`: the flash-attn package (CUDA, fp16/bf16), or an UnavailableError saying how to get it.

Incremental inference (`prefill`, `step`): the keys (rotated at their positions) and values of
every token so far live in a `KVCache`, preallocated to a capacity and grown by doubling; a step
writes one token's key and value in place and attends its query over the whole cache (no causal
mask: the cache holds only the past and the token itself). Its bytes grow linearly with context.

After a forward, `last_backend` says which kernel actually ran. For SDPA that is observed, not
assumed: the first call per input signature runs under a dispatch mode that records which aten
attention kernel PyTorch dispatched to (flash, efficient, cudnn, math, or the CPU flash kernel).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from hubbench.errors import ConfigError, UnavailableError
from hubbench.mixers.rope import rotary
from hubbench.mixers.state import check_step_input, compute_dtype
from hubbench.plan.variants import ATTENTION_BACKENDS, SDPA_KERNELS

try:
    from flash_attn import flash_attn_func
except ImportError:
    flash_attn_func = None


# aten op (as dispatched) -> the name recorded in results
_SDPA_OPS = {
    "_scaled_dot_product_flash_attention_for_cpu": "sdpa:flash-cpu",
    "_scaled_dot_product_flash_attention": "sdpa:flash",
    "_scaled_dot_product_efficient_attention": "sdpa:efficient",
    "_scaled_dot_product_cudnn_attention": "sdpa:cudnn",
    "_scaled_dot_product_attention_math": "sdpa:math",
    "_scaled_dot_product_fused_attention_overrideable": "sdpa:overrideable",
}


class _KernelSpy(TorchDispatchMode):
    """Records the first SDPA kernel dispatched inside the context."""

    def __init__(self) -> None:
        super().__init__()
        self.kernel: str | None = None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if self.kernel is None and name in _SDPA_OPS:
            self.kernel = _SDPA_OPS[name]
        return func(*args, **(kwargs or {}))


def _sdpa_context(kernel: str):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    chosen = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "math": SDPBackend.MATH,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
    }[kernel]
    return sdpa_kernel([chosen])


@dataclass
class KVCache:
    """Keys (rotated) and values of the tokens so far: (B, h, capacity, d_h); `length` used."""

    k: torch.Tensor
    v: torch.Tensor
    length: int

    @classmethod
    def empty(cls, batch: int, heads: int, d_head: int, capacity: int, like: torch.Tensor):
        """Zeros for `capacity` tokens in the dtype keys are computed in (`compute_dtype`)."""
        shape = (batch, heads, max(capacity, 1), d_head)
        dtype = compute_dtype(like)
        return cls(like.new_zeros(shape, dtype=dtype), like.new_zeros(shape, dtype=dtype), 0)

    def append(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Write keys and values (B, h, t, d_h) after the last one, growing by doubling."""
        end = self.length + k.shape[2]
        if end > self.k.shape[2]:
            grow = max(end, 2 * self.k.shape[2]) - self.k.shape[2]
            pad = (0, 0, 0, grow)
            self.k = torch.nn.functional.pad(self.k, pad)
            self.v = torch.nn.functional.pad(self.v, pad)
        self.k[:, :, self.length : end] = k
        self.v[:, :, self.length : end] = v
        self.length = end

    def view(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.k[:, :, : self.length], self.v[:, :, : self.length]

    def nbytes(self) -> int:
        """Bytes of the keys and values held (the used length, not the spare capacity)."""
        per = self.k.shape[0] * self.k.shape[1] * self.k.shape[3] * self.k.element_size()
        return 2 * self.length * per

    def snapshot(self) -> int:
        return self.length

    def restore(self, snap: int) -> None:
        """Back to `snap` tokens: later writes overwrite what came after (no copy)."""
        self.length = snap


class Attention(nn.Module):
    """Pre-projection multi-head attention: x (B, n, d) -> (B, n, d)."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        causal: bool = True,
        backend: str = "sdpa",
        sdpa_kernel: str = "auto",
        rope: bool = True,
    ) -> None:
        super().__init__()
        if n_heads < 1 or d_model % n_heads:
            raise ConfigError(
                f"attention: d_model={d_model} must be divisible by n_heads={n_heads}"
            )
        if backend not in ATTENTION_BACKENDS:
            raise ConfigError(
                f"attention: unknown backend {backend!r}; valid: {', '.join(ATTENTION_BACKENDS)}"
            )
        if sdpa_kernel not in SDPA_KERNELS:
            raise ConfigError(
                f"attention: unknown sdpa_kernel {sdpa_kernel!r}; valid: {', '.join(SDPA_KERNELS)}"
            )
        if rope and (d_model // n_heads) % 2:
            raise ConfigError(f"attention: rope needs an even head width, got {d_model // n_heads}")
        self.d_model, self.n_heads, self.d_head = d_model, n_heads, d_model // n_heads
        self.causal, self.backend, self.sdpa_kernel, self.rope = causal, backend, sdpa_kernel, rope
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)
        self.last_backend: str | None = None
        self._seen: dict[tuple, str] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, n, _ = x.shape
        q, k, v = self.qkv(x).view(B, n, 3, self.n_heads, self.d_head).unbind(2)  # (B, n, h, d_h)
        if self.backend == "flash":
            y = self._flash(q, k, v)  # (B, n, h, d_h)
        else:
            q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, h, n, d_h)
            if self.rope:
                pos = torch.arange(n, device=x.device)
                q, k = rotary(q, pos), rotary(k, pos)
            y = self._naive(q, k, v) if self.backend == "naive" else self._sdpa(q, k, v)
            y = y.transpose(1, 2)  # (B, n, h, d_h)
        return self.out(y.reshape(B, n, self.d_model))

    # -- incremental inference ----------------------------------------------------------------

    def empty_state(self, batch: int, capacity: int, like: torch.Tensor) -> KVCache:
        return KVCache.empty(batch, self.n_heads, self.d_head, capacity, like)

    def prefill(self, x: torch.Tensor, capacity: int = 0) -> tuple[torch.Tensor, KVCache]:
        """The forward of a prompt x (B, n, d), and the cache of its keys and values."""
        if not self.causal:
            raise ConfigError("attention: incremental decoding needs causal=true")
        B, n, _ = x.shape
        q, k, v = self.qkv(x).view(B, n, 3, self.n_heads, self.d_head).unbind(2)
        kt, vt = k.transpose(1, 2), v.transpose(1, 2)  # (B, h, n, d_h)
        if self.rope:
            kt = rotary(kt, torch.arange(n, device=x.device))
        if self.backend == "flash":
            y = self._flash(q, k, v).reshape(B, n, self.d_model)
        else:
            qt = q.transpose(1, 2)
            if self.rope:
                qt = rotary(qt, torch.arange(n, device=x.device))
            y = self._attend(qt, kt, vt, causal=True).transpose(1, 2).reshape(B, n, self.d_model)
        cache = self.empty_state(B, max(capacity, n), x)
        cache.append(kt, vt)
        return self.out(y), cache

    def step(self, x: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """One token per sequence, x (B, 1, d), at position `cache.length`; appends to `cache`."""
        check_step_input(x, self.d_model, "attention")
        B = x.shape[0]
        q, k, v = (t.transpose(1, 2) for t in self.qkv(x).view(B, 1, 3, self.n_heads,
                                                                self.d_head).unbind(2))  # fmt: skip
        if self.rope:
            pos = torch.full((1,), cache.length, device=x.device)
            q, k = rotary(q, pos), rotary(k, pos)
        cache.append(k, v)
        keys, values = cache.view()  # (B, h, t + 1, d_h)
        if self.backend == "flash":
            # flash-attn's layout is (B, n, h, d_h); one query sees every cached key
            y = self._flash_step(q.transpose(1, 2), keys.transpose(1, 2), values.transpose(1, 2))
        else:
            y = self._attend(q, keys, values, causal=False).transpose(1, 2)
        return self.out(y.reshape(B, 1, self.d_model))

    def decode_flops(self, context: int) -> float:
        """Forward FLOPs of one decoded token after `context` tokens: projections, QK^T, AV."""
        return 2 * self.d_model * 4 * self.d_model + 2 * 2 * (context + 1) * self.d_model

    def _attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool
    ) -> torch.Tensor:
        if self.backend == "naive":
            return self._naive(q, k, v, causal)
        return self._sdpa(q, k, v, causal)

    def _flash_step(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if flash_attn_func is None or q.device.type != "cuda":
            self._flash(q, k, v)  # raises the UnavailableError that says why
        self.last_backend = "flash-attn"
        return flash_attn_func(q, k.contiguous(), v.contiguous(), causal=False)

    def _naive(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool | None = None
    ) -> torch.Tensor:
        causal = self.causal if causal is None else causal
        n = q.shape[-2]
        scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.d_head))  # (B, h, n, n)
        if causal:
            mask = torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1)
            scores = scores.masked_fill(mask, float("-inf"))
        self.last_backend = "naive"
        acc = torch.promote_types(scores.dtype, torch.float32)  # softmax in >= fp32
        return torch.softmax(scores.to(acc), dim=-1).to(v.dtype) @ v  # (B, h, n, d_h)

    def _sdpa(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool | None = None
    ) -> torch.Tensor:
        causal = self.causal if causal is None else causal
        # a decode step's key length changes every token; its kernel choice does not
        shape = tuple(q.shape) if q.shape[-2] == k.shape[-2] else (*q.shape, "step")
        key = (q.device.type, q.dtype, shape, causal, torch.is_grad_enabled())
        if torch.compiler.is_compiling():
            return self._call_sdpa(q, k, v, causal)
        if key not in self._seen:
            spy = _KernelSpy()
            with spy:
                y = self._call_sdpa(q, k, v, causal)
            # The math fallback is composite: it dispatches as matmuls and softmax, no fused op.
            self._seen[key] = spy.kernel or "sdpa:math"
        else:
            y = self._call_sdpa(q, k, v, causal)
        self.last_backend = self._seen[key]
        return y

    def _call_sdpa(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool
    ) -> torch.Tensor:
        if self.sdpa_kernel == "auto":
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        try:
            with _sdpa_context(self.sdpa_kernel):
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        except RuntimeError as exc:
            if "No available kernel" in str(exc) or "No viable backend" in str(exc):
                raise UnavailableError(
                    f"sdpa kernel {self.sdpa_kernel!r} cannot run here "
                    f"(device {q.device.type}, dtype {q.dtype}, head width {self.d_head})"
                ) from exc
            raise

    def _flash(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if flash_attn_func is None:
            raise UnavailableError(
                "attention backend 'flash' needs the flash-attn package: "
                "pip install 'hubbench[flash]' on a CUDA machine"
            )
        if q.device.type != "cuda" or q.dtype not in (torch.float16, torch.bfloat16):
            raise UnavailableError(
                f"flash-attn runs on CUDA in fp16/bf16 only (got {q.device.type}, {q.dtype}); "
                "use --dtype bf16 on a GPU"
            )
        if self.rope:
            pos = torch.arange(q.shape[1], device=q.device)
            q = rotary(q.transpose(1, 2), pos).transpose(1, 2)
            k = rotary(k.transpose(1, 2), pos).transpose(1, 2)
        self.last_backend = "flash-attn"
        return flash_attn_func(q, k, v, causal=self.causal)  # (B, n, h, d_h)

    def analytic_flops(self, seq: int) -> float:
        """Forward FLOPs for one sequence: projections plus QK^T and AV over the visible keys."""
        visible = (seq + 1) / 2 if self.causal else seq  # mean keys per query
        proj = 2 * seq * self.d_model * 4 * self.d_model
        return proj + 2 * 2 * seq * visible * self.d_model
