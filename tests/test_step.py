import pytest
import torch

from hubbench import models
from hubbench.errors import ConfigError, UnavailableError
from hubbench.step import build_step, torch_device


def _model(**extra: object) -> models.LanguageModel:
    return models.build_model("transformer", d_model=32, n_heads=2, n_layers=1, **extra)


@pytest.mark.parametrize("mode", ["fwd", "fwd_bwd", "train"])
def test_each_mode_runs_one_step(mode: str) -> None:
    model = _model()
    before = [p.detach().clone() for p in model.parameters()]
    step = build_step(model, mode, batch=2, seq=16)
    step.fn()
    step.sync()
    assert step.tokens == 32
    changed = any(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
    assert changed == (mode == "train")  # only the optimizer step moves parameters
    has_grad = any(p.grad is not None for p in model.parameters())
    assert has_grad == (mode != "fwd")
    assert model.training == (mode != "fwd")


def test_steps_do_not_accumulate_gradients() -> None:
    model = _model()
    step = build_step(model, "fwd_bwd", batch=1, seq=8)
    step.fn()
    first = [p.grad.clone() for p in model.parameters()]
    step.fn()
    for g0, p in zip(first, model.parameters(), strict=True):
        torch.testing.assert_close(p.grad, g0)


def test_autocast_dtype_from_config() -> None:
    model = _model(dtype="bf16")
    build_step(model, "train", batch=1, seq=8).fn()
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32


def test_bad_mode_and_shape() -> None:
    with pytest.raises(ConfigError, match="unknown mode 'decode'"):
        build_step(_model(), "decode", batch=1, seq=8)
    with pytest.raises(ConfigError, match="seq must be >= 1"):
        build_step(_model(), "fwd", batch=1, seq=0)


def test_devices() -> None:
    assert torch_device("cpu").type == "cpu"
    with pytest.raises(ConfigError, match="unknown device 'tpu'"):
        torch_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UnavailableError, match="CUDA is not available"):
            torch_device("cuda")
    else:
        with pytest.raises(UnavailableError, match="GPU"):
            torch_device(f"cuda:{torch.cuda.device_count()}")
