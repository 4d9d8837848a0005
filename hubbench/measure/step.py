"""The one step function. Measurement and profiling both wrap `Step.fn`; nothing else runs steps.

Inputs and the optimizer are built here, before any timing, so the timed region is the step
itself: no data generation, no host sync, no `.item()`.

CUDA graphs (run field cuda_graphs, prefill and decode): a call of the step, captured once here
as one CUDA graph, is replayed by `fn`, so a timed call is the device's work without Python and
launch gaps (per-token decode on a GPU is otherwise mostly those: state-spaces/mamba#90). The
whole call is captured, not one token: the models keep positions as Python ints (a KV cache's
length, the hub state's chunk position) that a one-token graph would freeze, while every call
of the step starts from the same snapshot and so takes the same path. A model that cannot be
captured (a host sync, a data-dependent shape) runs eagerly, with the reason in `Step.ran`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from hubbench.errors import ConfigError, UnavailableError
from hubbench.measure.device import torch_device
from hubbench.plan.fields import DTYPES, INFERENCE_MODES, MODES
from hubbench.plan.runfields import CUDA_GRAPHS, GRAPH_MODES

TORCH_DTYPES = dict(zip(DTYPES, (torch.float32, torch.bfloat16, torch.float16), strict=True))
# eager calls on a side stream before a capture: cuBLAS / cuDNN handles and lazy allocations
# are made there, not inside the graph (the order torch.cuda.graph's documentation asks for)
CAPTURE_WARMUP = 2
REASON_CHARS = 200  # the longest capture failure a row keeps


@dataclass
class Step:
    fn: Callable[[], None]  # exactly one step; the timed region
    tokens: int  # tokens processed per step (batch * seq)
    mode: str
    model: nn.Module  # the model as built (uncompiled), for params / backends
    device: torch.device
    sync: Callable[[], None]  # wait for the device; a no-op on CPU
    batch: int
    seq: int
    per_call: int = 1  # tokens per sequence one call of `fn` generates (decode); else 1
    # bytes of the state or cache per sequence after a prompt of `seq` (prefill, decode)
    state_bytes: Callable[[], int] | None = None
    # what ran, for the row's backend columns ({"cuda_graphs": "captured" | "off" | "off: why"})
    ran: dict[str, str] = field(default_factory=dict)
    # the eager call, where `fn` replays a CUDA graph: FlopCounterMode sees no replayed kernel
    eager: Callable[[], None] | None = None


def autocast_for(device: torch.device, dtype: torch.dtype, cache: bool = True) -> Callable[[], Any]:
    """A context-manager factory: autocast to `dtype` on `device`, or nothing for fp32.
    `cache=False` for a call that is captured as a CUDA graph: autocast's cache of cast weights
    must not outlive the capture (torch.cuda.make_graphed_callables asks the same)."""
    if dtype == torch.float32:
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=dtype, cache_enabled=cache)


def make_update(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    autocast: Callable[[], Any],
    optimizer: torch.optim.Optimizer | None = None,
    clip: float | None = None,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The training update both the train / fwd_bwd steps and the quality mode run: zero the
    gradients, loss under autocast, backward, clip the gradient norm to `clip` (if given), then
    the optimizer step (none: fwd_bwd). Returns the loss tensor (no host sync)."""

    def update(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        model.zero_grad(set_to_none=True)
        with autocast():
            loss = loss_fn(inputs, targets)
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if optimizer is not None:
            optimizer.step()
        return loss

    return update


def tokens_per_call(mode: str, decode_tokens: int) -> int:
    """Tokens per sequence one call of a step generates: its samples are per token (decode)."""
    return decode_tokens if mode == "decode" else 1


def build_step(
    model: nn.Module,
    mode: str,
    batch: int,
    seq: int,
    device: torch.device | str = "cpu",
    seed: int = 0,
    compile: bool = False,
    decode_tokens: int = 64,
    data_parallel: bool = False,
    cuda_graphs: str = "off",
) -> Step:
    """Move `model` to `device` and return its step for `mode` with inputs already built.

    `cuda_graphs` (prefill, decode; the module docstring): "on" replays a captured call or
    raises UnavailableError, "auto" replays one where capture works (CUDA only), "off" runs
    eagerly. Other modes ignore it.

    `data_parallel` (inside an initialised torch.distributed process group): the fwd_bwd and
    train steps run the loss through DistributedDataParallel, so backward all-reduces the
    gradients; the inference modes run as independent replicas.

    prefill: one call runs the prompt (B, seq) and builds the state (no grad). decode: the
    prompt is prefilled here, before timing; one call restores that state and generates
    `decode_tokens` tokens greedily, so every call starts from the same context.
    """
    if mode not in MODES:
        raise ConfigError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
    if batch < 1 or seq < 1:
        raise ConfigError(f"batch and seq must be >= 1 (got batch={batch}, seq={seq})")
    device = torch_device(device)
    model = model.to(device)
    config = getattr(model, "config", None)
    vocab = getattr(config, "vocab", 256)
    dtype = TORCH_DTYPES[getattr(config, "dtype", "fp32")]

    gen = torch.Generator(device="cpu").manual_seed(seed)
    idx = torch.randint(0, vocab, (batch, seq + 1), generator=gen).to(device)
    inputs, targets = idx[:, :-1].contiguous(), idx[:, 1:].contiguous()

    if cuda_graphs not in CUDA_GRAPHS:
        raise ConfigError(f"cuda_graphs={cuda_graphs!r}; valid: {', '.join(CUDA_GRAPHS)}")
    graphed = mode in GRAPH_MODES and cuda_graphs != "off" and device.type == "cuda"
    autocast = autocast_for(device, dtype, cache=not graphed)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    if mode in INFERENCE_MODES:
        if compile:
            raise ConfigError(f"mode {mode} does not run compiled")
        step = _inference_step(model, mode, inputs, device, autocast, sync, decode_tokens)
        return with_graphs(step, cuda_graphs) if mode in GRAPH_MODES else step
    if mode == "quality":
        raise ConfigError("mode quality trains on a task: hubbench.quality.train runs it")
    if mode == "fwd":
        core = _forward(model, inputs, autocast, compile)
    else:
        parallel = device if data_parallel else None
        core = _update(model, mode, inputs, targets, autocast, compile, parallel)
    return Step(
        fn=core,
        tokens=batch * seq,
        mode=mode,
        model=model,
        device=device,
        sync=sync,
        batch=batch,
        seq=seq,
    )


def _forward(
    model: nn.Module, inputs: torch.Tensor, autocast: Callable, compile: bool
) -> Callable[[], None]:
    """fwd: one forward pass, no gradients."""
    forward: Callable = torch.compile(model) if compile else model
    model.eval()

    def core() -> None:
        with torch.no_grad(), autocast():
            forward(inputs)

    return core


def _update(
    model: nn.Module,
    mode: str,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    autocast: Callable,
    compile: bool,
    parallel: torch.device | None,
) -> Callable[[], None]:
    """fwd_bwd: forward and backward; train: and the AdamW step (make_update). `parallel`: this
    rank's device, the loss data-parallel across the process group."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4) if mode == "train" else None
    loss_fn: Callable = torch.compile(model.loss) if compile else model.loss
    if parallel is not None:
        loss_fn = _data_parallel_loss(model, parallel)
    update = make_update(model, loss_fn, autocast, optimizer)

    def core() -> None:
        update(inputs, targets)

    return core


class _Loss(nn.Module):
    """The model's loss as a module's forward, which is what DistributedDataParallel wraps."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.model.loss(inputs, targets)


def _data_parallel_loss(model: nn.Module, device: torch.device) -> Callable:
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    # unused parameters (a MoE expert no token chose) would stall the all-reduce otherwise
    return DistributedDataParallel(_Loss(model), device_ids=ids, find_unused_parameters=True)


def _inference_step(
    model: nn.Module,
    mode: str,
    inputs: torch.Tensor,
    device: torch.device,
    autocast: Callable,
    sync: Callable[[], None],
    decode_tokens: int,
) -> Step:
    if not hasattr(model, "prefill"):
        raise ConfigError(f"mode {mode}: the model has no prefill/decode path")
    if decode_tokens < 1:
        raise ConfigError(f"decode_tokens must be >= 1 (got {decode_tokens})")
    model.eval()
    batch, seq = inputs.shape
    if mode == "prefill":
        core, per_sequence = _prefill(model, inputs, autocast)
    else:
        core, per_sequence = _decode(model, inputs, autocast, decode_tokens)
    return Step(
        fn=core,
        tokens=batch * (seq if mode == "prefill" else 1),
        mode=mode,
        model=model,
        device=device,
        sync=sync,
        batch=batch,
        seq=seq,
        per_call=tokens_per_call(mode, decode_tokens),
        state_bytes=per_sequence,
    )


def _prefill(
    model: nn.Module, inputs: torch.Tensor, autocast: Callable
) -> tuple[Callable[[], None], Callable[[], int]]:
    """A call runs the prompt and builds its state; the bytes per sequence of the last one."""
    held: dict[str, Any] = {}

    def core() -> None:
        held.pop("state", None)  # the last call's cache is freed before the next one
        with torch.no_grad(), autocast():
            held["state"] = model.prefill(inputs, inputs.shape[1])[1]

    def per_sequence() -> int:  # the state the last call left
        return held["state"].nbytes() // inputs.shape[0]

    return core, per_sequence


def _decode(
    model: nn.Module, inputs: torch.Tensor, autocast: Callable, tokens: int
) -> tuple[Callable[[], None], Callable[[], int]]:
    """The prompt prefilled now; a call restores its state and generates `tokens` tokens
    greedily. The bytes per sequence of the state at the prompt."""
    with torch.no_grad(), autocast():
        logits, state = model.prefill(inputs, inputs.shape[1] + tokens)
    first = logits[:, -1].argmax(-1, keepdim=True)  # (B, 1)
    snap = state.snapshot()

    def core() -> None:
        state.restore(snap)
        token = first
        with torch.no_grad(), autocast():
            for _ in range(tokens):
                token = model.decode(token, state)[:, -1].argmax(-1, keepdim=True)

    def per_sequence() -> int:  # the state at the prompt, not after a call
        state.restore(snap)
        return state.nbytes() // inputs.shape[0]

    return core, per_sequence


def with_graphs(
    step: Step,
    setting: str,
    capture: Callable[[Callable[[], None], torch.device], Any] | None = None,
) -> Step:
    """`step` with its call replayed from a CUDA graph where `setting` asks for one and the
    capture works; `step.ran["cuda_graphs"]` says which ("captured", "off", "off: why").

    `capture(fn, device)` returns the replay callable or raises (default: capture_graph).
    auto falls back to the eager call when the device is not CUDA or the capture fails; on
    turns a failed capture into UnavailableError (a skipped row that says why)."""
    if setting == "off":
        step.ran["cuda_graphs"] = "off"
        return step
    if step.device.type != "cuda":
        if setting == "on":
            raise UnavailableError(f"cuda_graphs=on needs a CUDA device, not {step.device}")
        step.ran["cuda_graphs"] = f"off: {step.device.type} (CUDA graphs need a CUDA device)"
        return step
    try:
        replay = (capture or capture_graph)(step.fn, step.device)
    except Exception as exc:  # any failure to capture: the eager call is still a measurement
        reason = f"capture failed: {type(exc).__name__}: {' '.join(str(exc).split())}"
        reason = reason.replace("+", " ")[:REASON_CHARS]  # '+' joins rounds' values in a row
        if setting == "on":
            raise UnavailableError(f"cuda_graphs=on: {reason}") from exc
        step.ran["cuda_graphs"] = f"off: {reason}"
        return step
    step.eager, step.fn = step.fn, replay
    step.ran["cuda_graphs"] = "captured"
    return step


def capture_graph(fn: Callable[[], None], device: torch.device) -> Callable[[], None]:
    """Capture one call of `fn` as a CUDA graph on `device`; its replay. `fn` must take the
    same path on every call (a decode call restores its snapshot first)."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(CAPTURE_WARMUP):
            fn()
    torch.cuda.current_stream(device).wait_stream(side)
    torch.cuda.synchronize(device)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    torch.cuda.synchronize(device)
    return graph.replay
