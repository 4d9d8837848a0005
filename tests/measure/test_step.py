"""The one step function per mode: what a call runs, its tokens, the state it leaves."""

import pytest
import torch

from hubbench import models
from hubbench.errors import ConfigError
from hubbench.measure.step import build_step


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
    with pytest.raises(ConfigError, match="unknown mode 'generate'"):
        build_step(_model(), "generate", batch=1, seq=8)
    with pytest.raises(ConfigError, match="seq must be >= 1"):
        build_step(_model(), "fwd", batch=1, seq=0)


def test_prefill_step_builds_the_state_and_counts_the_prompt() -> None:
    step = build_step(_model(), "prefill", batch=2, seq=16)
    step.fn()
    assert step.tokens == 32 and step.per_call == 1
    assert step.state_bytes() == 2 * 16 * 32 * 4  # one layer's k and v, fp32, per sequence
    assert not step.model.training
    assert all(p.grad is None for p in step.model.parameters())


def test_decode_step_generates_from_the_same_context_every_call() -> None:
    model = models.build_model("hub-gpt", d_model=32, n_heads=2, n_layers=1, hubs=4, topk=4,
                               chunk=8)  # fmt: skip
    step = build_step(model, "decode", batch=2, seq=20, decode_tokens=8)
    assert step.tokens == 2 and step.per_call == 8  # a row's step is one token per sequence
    before = step.state_bytes()
    positions, logits = [], []
    original = model.decode

    def spy(idx, state):
        positions.append(state.pos)
        out = original(idx, state)
        logits.append(out)
        return out

    model.decode = spy
    for _ in range(3):
        step.fn()
    assert positions == list(range(20, 28)) * 3  # each call restores the prompt's state first
    for later in (logits[8:16], logits[16:24]):  # and generates exactly the same tokens again
        assert all(torch.equal(a, b) for a, b in zip(logits[:8], later, strict=True))
    assert step.state_bytes() == before > 0


def test_inference_modes_refuse_compile() -> None:
    with pytest.raises(ConfigError, match="does not run compiled"):
        build_step(_model(), "decode", batch=1, seq=8, compile=True)
