import pytest
import torch

from hubbench.errors import ConfigError, UnavailableError
from hubbench.mixers.attention import Attention


def _pair(causal: bool, backend: str, kernel: str = "auto", rope: bool = True) -> Attention:
    torch.manual_seed(0)
    return Attention(64, 4, causal=causal, backend=backend, sdpa_kernel=kernel, rope=rope).double()


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("kernel", ["auto", "math"])
def test_naive_and_sdpa_agree_in_outputs_and_gradients(causal: bool, kernel: str) -> None:
    x = torch.randn(2, 37, 64, dtype=torch.float64)
    naive, sdpa = _pair(causal, "naive"), _pair(causal, "sdpa", kernel)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = naive(xa), sdpa(xb)
    torch.testing.assert_close(ya, yb, rtol=1e-10, atol=1e-10)
    ya.square().sum().backward()
    yb.square().sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-9, atol=1e-9)
    for pa, pb in zip(naive.parameters(), sdpa.parameters(), strict=True):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-9, atol=1e-9)


def test_causal_flag_changes_the_output() -> None:
    x = torch.randn(1, 16, 64, dtype=torch.float64)
    causal, full = _pair(True, "sdpa"), _pair(False, "sdpa")
    assert not torch.allclose(causal(x), full(x))
    # the first token sees only itself when causal: identical to a one-token sequence
    torch.testing.assert_close(causal(x)[:, :1], causal(x[:, :1]))


def test_backend_that_ran_is_recorded() -> None:
    x = torch.randn(1, 16, 64)
    naive = Attention(64, 4, backend="naive")
    naive(x)
    assert naive.last_backend == "naive"
    auto = Attention(64, 4, backend="sdpa")
    auto(x)
    assert auto.last_backend.startswith("sdpa:")
    forced = Attention(64, 4, backend="sdpa", sdpa_kernel="math")
    forced(x)
    assert forced.last_backend == "sdpa:math"


def test_bf16_autocast_runs() -> None:
    x = torch.randn(2, 16, 64)
    for backend in ("naive", "sdpa"):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = Attention(64, 4, backend=backend)(x)
        assert y.shape == x.shape and y.dtype == torch.bfloat16


def test_flash_without_package_or_gpu_is_unavailable() -> None:
    with pytest.raises(UnavailableError, match="flash"):
        Attention(64, 4, backend="flash")(torch.randn(1, 8, 64))


def test_forced_kernel_that_cannot_run_is_unavailable() -> None:
    if torch.cuda.is_available():
        pytest.skip("on CUDA the efficient kernel can run")
    with pytest.raises(UnavailableError, match="efficient"):
        Attention(64, 4, backend="sdpa", sdpa_kernel="efficient")(torch.randn(1, 8, 64))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"d_model": 65, "n_heads": 4}, "divisible"),
        ({"d_model": 64, "n_heads": 4, "backend": "fast"}, "valid: naive, sdpa, flash"),
        ({"d_model": 64, "n_heads": 4, "sdpa_kernel": "turbo"}, "sdpa_kernel"),
    ],
)
def test_bad_attention_config(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Attention(**kwargs)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kernel", ["flash", "efficient", "math"])
def test_sdpa_kernels_agree_with_naive_on_gpu(kernel: str) -> None:
    x = torch.randn(2, 256, 128, device="cuda", dtype=torch.bfloat16)
    torch.manual_seed(0)
    naive = Attention(128, 2, backend="naive").cuda().bfloat16()
    torch.manual_seed(0)
    fast = Attention(128, 2, backend="sdpa", sdpa_kernel=kernel).cuda().bfloat16()
    torch.testing.assert_close(naive(x), fast(x), rtol=2e-2, atol=2e-2)
    assert fast.last_backend == f"sdpa:{kernel}"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_flash_attn_package_agrees_with_sdpa_on_gpu() -> None:
    pytest.importorskip("flash_attn", reason="flash-attn not installed")
    x = torch.randn(2, 256, 128, device="cuda", dtype=torch.bfloat16)
    torch.manual_seed(0)
    ref = Attention(128, 2, backend="sdpa").cuda().bfloat16()
    torch.manual_seed(0)
    fa = Attention(128, 2, backend="flash").cuda().bfloat16()
    torch.testing.assert_close(ref(x), fa(x), rtol=2e-2, atol=2e-2)
    assert fa.last_backend == "flash-attn"
