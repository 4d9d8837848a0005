"""The quality mode: train a model from scratch on a task for a budget of updates, evaluate it.

One update is `hubbench.measure.step.make_update`, the function the train and fwd_bwd steps
time, with AdamW (weight decay 0.1 on matrices, none on vectors and `_no_weight_decay`
parameters), a linear warm-up over the first 10% of the updates (at most 200) and a cosine decay
to 10% of the peak learning rate, and the gradient norm clipped to 1. The budget is the number of
updates (`train_updates`), never epochs: a small data set cannot silently starve the optimizer.

Data comes from hubbench.quality.tasks, seeded by the model config's `seed`, so a seed is one
replicate: the same weights and the same batches. The update times are the round's step samples
(so tokens/s is training throughput); batches are made before each update's clock starts.

Evaluation, after the last update, on data the training never saw:
- mqar: EVAL_SEQUENCES fresh sequences (their own generator): loss and accuracy on the queried
  positions only; for every HubRouter layer the council's selection scored against the positions
  each query needs (hubbench.quality.routing), with the uniform-random expectation beside it.
- bytes: the held-out tail of the corpus in consecutive windows: bits per byte, against the
  unigram baseline of the training split.
The learning curve records, CURVE_POINTS times, the mean training loss since the last point and
a small held-out score. Last, a model that claims to be causal is put through the causality
checks (hubbench.verify.causality.check_model) as trained: a leak found there marks the row.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from hubbench.measure.step import TORCH_DTYPES, autocast_for, make_update
from hubbench.plan.cell import Cell
from hubbench.quality.routing import RoutingCounts, routing_counts
from hubbench.quality.tasks import (
    TaskBatch,
    byte_batch,
    byte_corpus,
    held_out_batches,
    mqar_batch,
    mqar_chance_accuracy,
    unigram_bits_per_byte,
)

MQAR_THRESHOLD = 0.99  # eval accuracy that counts as converged
EVAL_SEQUENCES = 1024  # mqar held-out sequences
BYTES_EVAL_TOKENS = 65536  # at most this many held-out bytes are scored
CURVE_POINTS = 20
CURVE_EVAL_SEQUENCES = 128
WEIGHT_DECAY = 0.1
CLIP = 1.0
EVAL_SEED_OFFSET = 1_000_003  # held-out data: a generator no training batch shares


@dataclass
class QualityRun:
    """What the training run measured: update times for the round, values for the row."""

    samples_s: list[float]
    quality: dict[str, Any]
    peak_mem_bytes: int | None = None
    peak_mem_reserved_bytes: int | None = None
    mem_kind: str | None = None
    mem_baseline_bytes: int | None = None
    backends: dict[str, str] = field(default_factory=dict)


class Task:
    """A task's training batches, held-out evaluation and baseline."""

    name: str
    threshold: str
    baseline: float
    description: str

    def train_batch(self, gen: torch.Generator) -> TaskBatch:
        raise NotImplementedError

    def eval_batches(self, small: bool) -> list[TaskBatch]:
        raise NotImplementedError

    def score(self, loss: float, accuracy: float | None) -> float:
        """The curve's held-out number: accuracy (mqar) or bits per byte (bytes)."""
        raise NotImplementedError

    def converged(self, values: dict[str, Any]) -> bool:
        raise NotImplementedError


class Mqar(Task):
    name = "mqar"
    threshold = f"eval_accuracy >= {MQAR_THRESHOLD}"

    def __init__(self, cell: Cell, vocab: int) -> None:
        self.batch, self.seq, self.kv, self.vocab = cell.batch, cell.seq, cell.kv_pairs, vocab
        self.seed = int(cell.config.seed)
        self.baseline = mqar_chance_accuracy(vocab)
        self.description = (
            f"mqar: seq {self.seq}, {self.kv} kv pairs, vocab {vocab}, power_a 0.01, "
            f"{EVAL_SEQUENCES} held-out sequences"
        )
        self._eval: dict[bool, list[TaskBatch]] = {}

    def train_batch(self, gen: torch.Generator) -> TaskBatch:
        return mqar_batch(self.batch, self.seq, self.kv, self.vocab, gen)

    def eval_batches(self, small: bool) -> list[TaskBatch]:
        if small not in self._eval:
            count = CURVE_EVAL_SEQUENCES if small else EVAL_SEQUENCES
            gen = torch.Generator().manual_seed(self.seed + EVAL_SEED_OFFSET + small)
            per = min(self.batch, count)
            self._eval[small] = [
                mqar_batch(per, self.seq, self.kv, self.vocab, gen) for _ in range(count // per)
            ]
        return self._eval[small]

    def score(self, loss: float, accuracy: float | None) -> float:
        return float(accuracy or 0.0)

    def converged(self, values: dict[str, Any]) -> bool:
        return values["eval_accuracy"] >= MQAR_THRESHOLD


class Bytes(Task):
    name = "bytes"
    threshold = "bits_per_byte < baseline_quality (the unigram model)"

    def __init__(self, cell: Cell) -> None:
        self.batch, self.seq = cell.batch, cell.seq
        corpus = byte_corpus(cell.data)
        self.train, self.held_out = corpus.train, corpus.held_out
        self.baseline = unigram_bits_per_byte(corpus.train, corpus.held_out)
        self.description = f"bytes: {corpus.description}"
        self._eval: dict[bool, list[TaskBatch]] = {}

    def train_batch(self, gen: torch.Generator) -> TaskBatch:
        return byte_batch(self.train, self.batch, self.seq, gen)

    def eval_batches(self, small: bool) -> list[TaskBatch]:
        if small not in self._eval:
            tokens = BYTES_EVAL_TOKENS // (8 if small else 1)
            most = max(1, tokens // (self.batch * self.seq))
            self._eval[small] = held_out_batches(self.held_out, self.batch, self.seq, most)
        return self._eval[small]

    def score(self, loss: float, accuracy: float | None) -> float:
        return loss / math.log(2)

    def converged(self, values: dict[str, Any]) -> bool:
        return values["bits_per_byte"] < self.baseline


def make_task(cell: Cell) -> Task:
    vocab = int(getattr(cell.config, "vocab", 256))
    return Mqar(cell, vocab) if cell.task == "mqar" else Bytes(cell)


def lr_factor(update: int, total: int) -> float:
    """Linear warm-up over min(10% of the updates, 200), then cosine down to 0.1."""
    warm = max(1, min(200, total // 10))
    if update < warm:
        return (update + 1) / warm
    progress = (update - warm) / max(1, total - warm)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def optimizer_for(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    decay, plain = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim < 2 or getattr(p, "_no_weight_decay", False)
        (plain if no_decay else decay).append(p)
    groups = [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": plain, "weight_decay": 0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98))


def _hub_layers(model: nn.Module) -> list[nn.Module]:
    from hubbench.mixers.hubrouter import HubRouter

    return [m for m in model.modules() if isinstance(m, HubRouter)]


@dataclass
class Evaluation:
    loss: float
    accuracy: float | None
    tokens: int
    routing: list[RoutingCounts] | None  # one per hub layer (mqar, hub models)


def evaluate(
    model: nn.Module, batches: list[TaskBatch], device: torch.device, autocast: Any, route: bool
) -> Evaluation:
    """Loss (nats per scored position), accuracy and routing counts over `batches`."""
    hubs = _hub_layers(model) if route else []
    counts = [RoutingCounts() for _ in hubs]
    for layer in hubs:
        layer.record_routing = True
    was_training = model.training
    model.eval()
    total_loss, correct, scored = 0.0, 0, 0
    try:
        with torch.no_grad():
            for b in batches:
                inputs, targets = b.inputs.to(device), b.targets.to(device)
                with autocast():
                    logits = model(inputs)
                mask = targets != -100
                picked = logits[mask].float()
                want = targets[mask]
                total_loss += float(
                    torch.nn.functional.cross_entropy(picked, want, reduction="sum")
                )
                correct += int((picked.argmax(-1) == want).sum())
                scored += int(mask.sum())
                for i, layer in enumerate(hubs):
                    if layer.last_routing is not None and b.needed is not None:
                        pos, valid, chunk = layer.last_routing
                        counts[i] = counts[i] + routing_counts(
                            pos.cpu(), valid.cpu(), chunk, b.needed, b.targets != -100
                        )
    finally:
        for layer in hubs:
            layer.record_routing, layer.last_routing = False, None
        model.train(was_training)
    accuracy = correct / scored if scored else None
    return Evaluation(total_loss / max(1, scored), accuracy, scored, counts if hubs else None)


def causal_verdict(model: nn.Module, seq: int) -> str:
    """pass | fail: <checks> | not causal, for the model as trained."""
    from hubbench.verify.causality import check_model, claims_causal

    if not claims_causal(model):
        return "not causal"
    chunk = getattr(model.config, "chunk", None)
    n = max(8, min(seq, 3 * chunk + 5 if chunk else 32))
    report = check_model(model.cpu(), n=n, batch=2, seeds=(0, 1))
    return "pass" if report.passed else f"fail: {report.summary()}"


@dataclass
class Curve:
    """The learning curve: at each mark, the mean training loss since the last mark and the
    task's held-out score on the small evaluation set."""

    marks: set[int]
    updates: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    since: int = 0  # index into the losses of the first one after the last mark

    @classmethod
    def for_updates(cls, total: int) -> Curve:
        return cls({max(1, round(total * (i + 1) / CURVE_POINTS)) for i in range(CURVE_POINTS)})

    def record(self, losses: list[Tensor], task: Task, small: Evaluation) -> None:
        window = torch.stack(losses[self.since :]).float()
        if not torch.isfinite(window).all():
            raise FloatingPointError(f"training loss is not finite by update {len(losses)}")
        self.since = len(losses)
        self.updates.append(float(len(losses)))
        self.train_loss.append(float(window.mean()))
        self.scores.append(task.score(small.loss, small.accuracy))


def train_and_evaluate(cell: Cell, model: nn.Module, device: torch.device) -> QualityRun:
    """Train `model` (fresh from the builder) on the cell's task, evaluate it; see the module."""
    from hubbench.measure.memory import PeakMemory, rss_bytes

    started = time.perf_counter()
    task = make_task(cell)
    model = model.to(device)
    model.train()
    autocast = autocast_for(device, TORCH_DTYPES[getattr(model.config, "dtype", "fp32")])
    optimizer = optimizer_for(model, cell.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda u: lr_factor(u, cell.train_updates)
    )
    update = make_update(model, model.loss, autocast, optimizer, clip=CLIP)
    memory = PeakMemory(device, rss_bytes() if device.type == "cpu" else None)
    with memory:
        samples, losses, curve = train(cell, model, task, device, autocast, update, schedule)
    values = final_values(model, task, device, autocast, losses, curve)
    backends = dict(model.backends()) if hasattr(model, "backends") else {}
    values["causal_check"] = causal_verdict(model, cell.seq)
    values["train_wall_s"] = time.perf_counter() - started
    return QualityRun(
        samples_s=samples,
        quality=values,
        peak_mem_bytes=memory.peak,
        peak_mem_reserved_bytes=memory.reserved,
        mem_kind=memory.kind,
        mem_baseline_bytes=memory.baseline,
        backends=backends,
    )


def train(
    cell: Cell,
    model: nn.Module,
    task: Task,
    device: torch.device,
    autocast: Any,
    update: Any,
    schedule: torch.optim.lr_scheduler.LRScheduler,
) -> tuple[list[float], list[Tensor], Curve]:
    """Run the cell's updates: each one's time (its batch made before the clock starts), each
    one's loss (no host sync), and the learning curve."""
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    gen = torch.Generator().manual_seed(int(cell.config.seed))
    curve = Curve.for_updates(cell.train_updates)
    samples: list[float] = []
    losses: list[Tensor] = []
    for u in range(cell.train_updates):
        batch = task.train_batch(gen)
        inputs, targets = batch.inputs.to(device), batch.targets.to(device)
        sync()
        t0 = time.perf_counter()
        loss = update(inputs, targets)
        sync()
        samples.append(time.perf_counter() - t0)
        schedule.step()
        losses.append(loss.detach())
        if u + 1 in curve.marks:
            small = evaluate(model, task.eval_batches(small=True), device, autocast, False)
            curve.record(losses, task, small)
    return samples, losses, curve


def final_values(
    model: nn.Module,
    task: Task,
    device: torch.device,
    autocast: Any,
    losses: list[Tensor],
    curve: Curve,
) -> dict[str, Any]:
    """The row's quality values from the held-out evaluation after the last update."""
    tail = torch.stack(losses[-max(1, len(losses) // 10) :]).float()
    final = evaluate(model, task.eval_batches(small=False), device, autocast, task.name == "mqar")
    values: dict[str, Any] = {
        "train_loss": float(tail.mean()),
        "eval_loss": final.loss,
        "eval_accuracy": final.accuracy if task.name == "mqar" else None,
        "bits_per_byte": final.loss / math.log(2) if task.name == "bytes" else None,
        "baseline_quality": task.baseline,
        **_routing_values(final.routing),
        "converge_threshold": task.threshold,
        "eval_tokens": final.tokens,
        "curve_updates": curve.updates,
        "curve_train_loss": curve.train_loss,
        "curve_eval": curve.scores,
        "data_description": task.description,
    }
    values["converged"] = task.converged(values)
    return values


def _routing_values(layers: list[RoutingCounts] | None) -> dict[str, Any]:
    keys = ("routing_precision", "routing_recall", "routing_precision_random",
            "routing_recall_random", "routing_precision_layers",
            "routing_recall_layers")  # fmt: skip
    if not layers:
        return dict.fromkeys(keys)
    scores = [c.score() for c in layers]
    total = sum(layers[1:], layers[0]).score()  # pooled over layers
    per_p = [s.precision for s in scores]
    per_r = [s.recall for s in scores]
    return {
        "routing_precision": total.precision,
        "routing_recall": total.recall,
        "routing_precision_random": total.random_precision,
        "routing_recall_random": total.random_recall,
        "routing_precision_layers": None if None in per_p else per_p,
        "routing_recall_layers": None if None in per_r else per_r,
    }
