"""Multi-head self-attention with three backends behind one signature.

- `naive`: explicit QK^T, mask, softmax, @V: the plain-PyTorch baseline the paper compares
  against. Materialises the (B, h, n, n) score matrix, so its memory is quadratic in n.
- `sdpa`: `torch.nn.functional.scaled_dot_product_attention`; `sdpa_kernel` may force one
  backend (flash / efficient / math / cudnn) through `torch.nn.attention.sdpa_kernel`.
- `flash`: the flash-attn package (CUDA, fp16/bf16), or an UnavailableError saying how to get it.

After a forward, `last_backend` says which kernel actually ran. For SDPA that is observed, not
assumed: the first call per input signature runs under a dispatch mode that records which aten
attention kernel PyTorch dispatched to (flash, efficient, cudnn, math, or the CPU flash kernel).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from hubbench.errors import ConfigError, UnavailableError
from hubbench.mixers.rope import rotary
from hubbench.variants import ATTENTION_BACKENDS, SDPA_KERNELS

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

    def _naive(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        n = q.shape[-2]
        scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.d_head))  # (B, h, n, n)
        if self.causal:
            mask = torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1)
            scores = scores.masked_fill(mask, float("-inf"))
        self.last_backend = "naive"
        acc = torch.promote_types(scores.dtype, torch.float32)  # softmax in >= fp32
        return torch.softmax(scores.to(acc), dim=-1).to(v.dtype) @ v  # (B, h, n, d_h)

    def _sdpa(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        key = (q.device.type, q.dtype, tuple(q.shape), self.causal, torch.is_grad_enabled())
        if torch.compiler.is_compiling():
            return self._call_sdpa(q, k, v)
        if key not in self._seen:
            spy = _KernelSpy()
            with spy:
                y = self._call_sdpa(q, k, v)
            # The math fallback is composite: it dispatches as matmuls and softmax, no fused op.
            self._seen[key] = spy.kernel or "sdpa:math"
        else:
            y = self._call_sdpa(q, k, v)
        self.last_backend = self._seen[key]
        return y

    def _call_sdpa(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if self.sdpa_kernel == "auto":
            return F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        try:
            with _sdpa_context(self.sdpa_kernel):
                return F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
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
