"""The quality mode: train a model from scratch on a task for a budget of updates, evaluate it.

One update is `hubbench.measure.step.make_update`, the function the train and fwd_bwd steps
time, with AdamW (weight decay 0.1 on matrices, none on vectors and `_no_weight_decay`
parameters), a linear warm-up over the first 10% of the updates (at most 200) and a cosine decay
to 10% of the peak learning rate, and the gradient norm clipped to 1. The budget is the number of
updates (`train_updates`), never epochs: a small data set cannot silently starve the optimizer.
The loss is cross entropy at the scored positions only: the blocks run over every token, then
the scored positions' hidden states are gathered before the final norm and the LM head, so an
MQAR vocabulary of 8192 (Zoology's) costs a head over 8 positions per sequence, not 128.

Data comes from hubbench.quality.tasks, seeded by the model config's `seed`, so a seed is one
replicate: other weights (the builder seeds torch with it) and another batch stream. Three
disjoint streams: training batches (generator `seed`), a validation split (`seed +
VALIDATION_SEED_OFFSET`) and the evaluation set (`seed + EVAL_SEED_OFFSET`). The update times
are the round's step samples (so tokens/s is training throughput); batches are made before each
update's clock starts.

MQAR stops early: every CHECK_EVERY updates the model is scored on the validation split, and
once PATIENCE checks in a row are sure of 0.99 (the lower end of the validation accuracy's 95%
Wilson interval over its scored queries at or above it: 0.9944 needed at 2048 queries, 0.9961
at 1024) training stops;
`updates_to_solve` records when (sample efficiency is a result too). Stopping where the
validation accuracy merely crosses 0.99 leaves a model whose own accuracy sits at the bar, half
the time under it on the evaluation set (measured: validation 0.9907 at update 950, evaluation
0.9896, reference at (128, 8), seed 0; two checks in a row at 0.9922 still gave 0.9891 for seed
1). The validation split
also feeds the learning curve and `val_accuracy`, which is what the report picks a learning
rate by (hubbench.report.seeds.select_lr): nothing during training, and no choice, reads the
evaluation set.

Evaluation, after the last update, on data the training never saw:
- mqar: EVAL_SEQUENCES fresh sequences: loss and accuracy on the queried positions; the
  recall-free ceilings of hubbench.quality.ceilings on the same sequences (baseline_quality is
  the best of them); for every HubRouter layer the council's selection scored against the
  positions each query needs (hubbench.quality.routing), with the uniform-random expectation.
- bytes: the held-out tail of the corpus in consecutive windows: bits per byte, against the
  unigram baseline of the training split.
Last, a model that claims to be causal is put through the causality checks
(hubbench.verify.causality.check_model) as trained: a leak found there marks the row.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from hubbench.errors import ConfigError
from hubbench.measure.step import TORCH_DTYPES, autocast_for, make_update
from hubbench.plan.cell import Cell
from hubbench.plan.quality import MQAR_TASKS, mqar_layout
from hubbench.quality.ceilings import Ceilings, recall_free_ceilings
from hubbench.quality.routing import RoutingCounts, routing_counts
from hubbench.quality.tasks import (
    IGNORE,
    TaskBatch,
    byte_batch,
    byte_corpus,
    held_out_batches,
    mqar_batch,
    mqar_chance_accuracy,
    mqar_legacy_batch,
    unigram_bits_per_byte,
)

MQAR_THRESHOLD = 0.99  # accuracy that counts as solved: early stop (validation), converged (eval)
EVAL_SEQUENCES = 1024  # mqar held-out sequences
VALIDATION_SEQUENCES = 256  # mqar validation split: early stopping, the curve, lr selection
CHECK_EVERY = 50  # mqar: updates between validation checks (updates_to_solve's resolution)
PATIENCE = 2  # mqar: consecutive checks sure of the threshold before training stops
Z95 = 1.959964  # two-sided 95% normal quantile, for the validation accuracy's Wilson interval
BYTES_EVAL_TOKENS = 65536  # at most this many held-out bytes are scored
CURVE_POINTS = 20  # bytes: points of the learning curve
WEIGHT_DECAY = 0.1
CLIP = 1.0
EVAL_SEED_OFFSET = 1_000_003  # held-out data: a generator no training batch shares
VALIDATION_SEED_OFFSET = 2_000_003  # the validation split's generator: neither of the others


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


MQAR_VALUES = ("chance_accuracy", "recall_free_uniform", "recall_free_ceiling", "recall_free_rule")


class Task:
    """A task's training batches, validation split, held-out evaluation and baseline."""

    name: str
    threshold: str
    baseline: float
    description: str
    stops_early: bool = False  # stop once the validation score reaches the threshold

    def train_batch(self, gen: torch.Generator) -> TaskBatch:
        raise NotImplementedError

    def validation_batches(self) -> list[TaskBatch]:
        """What training may look at: early stopping, the learning curve, lr selection."""
        raise NotImplementedError

    def eval_batches(self) -> list[TaskBatch]:
        """The held-out evaluation set: scored once, after training."""
        raise NotImplementedError

    def score(self, loss: float, accuracy: float | None) -> float:
        """The curve's held-out number: accuracy (mqar) or bits per byte (bytes)."""
        raise NotImplementedError

    def sure(self, val: Evaluation) -> bool:
        """Whether a validation result is solid enough to stop on (tasks that stop early)."""
        return False

    def converged(self, values: dict[str, Any]) -> bool:
        raise NotImplementedError

    def extra_values(self) -> dict[str, Any]:
        """Task-specific row values besides the evaluation's (null where they do not apply)."""
        return dict.fromkeys(MQAR_VALUES)


class Mqar(Task):
    threshold = f"eval_accuracy >= {MQAR_THRESHOLD}"
    stops_early = True

    def __init__(self, cell: Cell, vocab: int) -> None:
        self.name = cell.task
        self.batch, self.seq, self.kv, self.vocab = cell.batch, cell.seq, cell.kv_pairs, vocab
        self.layout = mqar_layout(cell.task)
        self.make = mqar_legacy_batch if self.layout == "legacy" else mqar_batch
        self.seed = int(cell.config.seed)
        self.chance = mqar_chance_accuracy(vocab)
        self.description = (
            f"{cell.task} ({self.layout} layout): seq {self.seq}, {self.kv} kv pairs, vocab "
            f"{vocab}, power_a 0.01, {VALIDATION_SEQUENCES} validation and {EVAL_SEQUENCES} "
            "held-out sequences"
        )
        self._sets: dict[str, list[TaskBatch]] = {}
        self._ceilings: Ceilings | None = None

    @property
    def baseline(self) -> float:  # type: ignore[override]
        """The best recall-free guesser's accuracy on the evaluation set (its ceiling)."""
        return self.ceilings.ceiling

    @property
    def ceilings(self) -> Ceilings:
        if self._ceilings is None:
            self._ceilings = recall_free_ceilings(self.eval_batches(), self.kv)
        return self._ceilings

    def train_batch(self, gen: torch.Generator) -> TaskBatch:
        return self.make(self.batch, self.seq, self.kv, self.vocab, gen)

    def _set(self, which: str, count: int, offset: int) -> list[TaskBatch]:
        if which not in self._sets:
            gen = torch.Generator().manual_seed(self.seed + offset)
            per = min(self.batch, count)
            self._sets[which] = [
                self.make(per, self.seq, self.kv, self.vocab, gen) for _ in range(count // per)
            ]
        return self._sets[which]

    def validation_batches(self) -> list[TaskBatch]:
        return self._set("validation", VALIDATION_SEQUENCES, VALIDATION_SEED_OFFSET)

    def eval_batches(self) -> list[TaskBatch]:
        return self._set("eval", EVAL_SEQUENCES, EVAL_SEED_OFFSET)

    def score(self, loss: float, accuracy: float | None) -> float:
        return float(accuracy or 0.0)

    def sure(self, val: Evaluation) -> bool:
        """The validation accuracy's 95% Wilson lower bound is at the threshold or above."""
        if val.accuracy is None or not val.tokens:
            return False
        return wilson_low(val.accuracy, val.tokens) >= MQAR_THRESHOLD

    def converged(self, values: dict[str, Any]) -> bool:
        return values["eval_accuracy"] >= MQAR_THRESHOLD

    def extra_values(self) -> dict[str, Any]:
        c = self.ceilings
        return {
            "chance_accuracy": self.chance,
            "recall_free_uniform": c.uniform,
            "recall_free_ceiling": c.ceiling,
            "recall_free_rule": c.best_rule,
        }


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

    def _held_out(self, small: bool) -> list[TaskBatch]:
        if small not in self._eval:
            tokens = BYTES_EVAL_TOKENS // (8 if small else 1)
            most = max(1, tokens // (self.batch * self.seq))
            self._eval[small] = held_out_batches(self.held_out, self.batch, self.seq, most)
        return self._eval[small]

    def validation_batches(self) -> list[TaskBatch]:
        """The held-out tail's first windows: the byte LM has no split of its own for the curve
        (nothing is selected or stopped on it)."""
        return self._held_out(small=True)

    def eval_batches(self) -> list[TaskBatch]:
        return self._held_out(small=False)

    def score(self, loss: float, accuracy: float | None) -> float:
        return loss / math.log(2)

    def converged(self, values: dict[str, Any]) -> bool:
        return values["bits_per_byte"] < self.baseline


def wilson_low(p: float, n: int, z: float = Z95) -> float:
    """The lower end of the Wilson score interval of a proportion p over n trials."""
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half


def make_task(cell: Cell) -> Task:
    vocab = int(getattr(cell.config, "vocab", 256))
    return Mqar(cell, vocab) if cell.task in MQAR_TASKS else Bytes(cell)


def aux_loss(model: nn.Module) -> Tensor | None:
    """The sum of every submodule's auxiliary loss (MoE balance, hub regulariser), as
    LanguageModel.loss adds them."""
    total = None
    for module in model.modules():
        aux = getattr(module, "aux_loss", None)
        if module is not model and aux is not None:
            total = aux if total is None else total + aux
    return total


def scored_logits(model: nn.Module, inputs: Tensor, mask: Tensor) -> Tensor:
    """Logits (S, V) at the positions where `mask` (B, n) is true: the blocks see every token,
    the final norm and the head only the gathered ones (the norm is per position, so this is
    the full forward's logits at those positions)."""
    h = model.embed(inputs)  # (B, n, d)
    for block in model.blocks:
        h = block(h)
    return model.head(model.norm(h[mask]))  # (S, V)


def at_least_fp32(x: Tensor) -> Tensor:
    """Half and bf16 logits up to fp32 for the loss; fp64 stays fp64."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def target_loss(model: nn.Module) -> Any:
    """The quality update's loss: cross entropy at the scored positions plus the auxiliary
    losses; a model without LanguageModel's parts falls back to its own `loss`."""
    if not all(hasattr(model, a) for a in ("embed", "blocks", "norm", "head")):
        return model.loss

    def loss(inputs: Tensor, targets: Tensor) -> Tensor:
        mask = targets != IGNORE
        logits = scored_logits(model, inputs, mask)
        out = torch.nn.functional.cross_entropy(at_least_fp32(logits), targets[mask])
        aux = aux_loss(model)
        return out if aux is None else out + aux

    return loss


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
    gather = all(hasattr(model, a) for a in ("embed", "blocks", "norm", "head"))
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
                mask = targets != IGNORE
                with autocast():
                    if gather:
                        picked = at_least_fp32(scored_logits(model, inputs, mask))
                    else:
                        picked = at_least_fp32(model(inputs)[mask])
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


def decode_state_bytes(model: nn.Module, task: Task, device: torch.device) -> int | None:
    """Bytes of the state the trained model carries per sequence after prefilling one
    evaluation sequence (KV caches sized to it): the recall-vs-state frontier's x axis. None
    for a model without incremental decoding."""
    if not hasattr(model, "prefill"):
        return None
    prompt = task.eval_batches()[0].inputs[:1].to(device)  # (1, n)
    try:
        with torch.no_grad():
            _, state = model.prefill(prompt, capacity=prompt.shape[1])
    except ConfigError:  # a mixer without a decode path
        return None
    return int(state.nbytes())


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
    task's score on the validation split."""

    marks: set[int]
    updates: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    since: int = 0  # index into the losses of the first one after the last mark

    @classmethod
    def for_task(cls, task: Task, total: int) -> Curve:
        """Every CHECK_EVERY updates and the last (tasks that stop early: the checks are the
        curve), else CURVE_POINTS evenly spaced marks."""
        if task.stops_early:
            return cls({*range(CHECK_EVERY, total + 1, CHECK_EVERY), total})
        return cls({max(1, round(total * (i + 1) / CURVE_POINTS)) for i in range(CURVE_POINTS)})

    def record(self, losses: list[Tensor], task: Task, val: Evaluation) -> float:
        """Add the mark after the last of `losses`; return its validation score."""
        window = torch.stack(losses[self.since :]).float()
        if not torch.isfinite(window).all():
            raise FloatingPointError(f"training loss is not finite by update {len(losses)}")
        self.since = len(losses)
        self.updates.append(float(len(losses)))
        self.train_loss.append(float(window.mean()))
        self.scores.append(task.score(val.loss, val.accuracy))
        return self.scores[-1]


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
    update = make_update(model, target_loss(model), autocast, optimizer, clip=CLIP)
    memory = PeakMemory(device, rss_bytes() if device.type == "cpu" else None)
    with memory:
        samples, losses, curve, solved_at = train(
            cell, model, task, device, autocast, update, schedule
        )
    values = final_values(model, task, device, autocast, losses, curve)
    values["updates_to_solve"] = solved_at
    values["updates_run"] = len(losses)
    backends = dict(model.backends()) if hasattr(model, "backends") else {}
    values["decode_state_bytes"] = decode_state_bytes(model, task, device)
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
) -> tuple[list[float], list[Tensor], Curve, int | None]:
    """Run the cell's updates, or fewer: a task that stops early stops at the PATIENCE-th check
    in a row whose validation result is sure of the threshold (Task.sure). Returns each update's
    time (its batch made before the clock starts), each one's loss (no host sync), the learning
    curve and the update count at which the task was solved (None if it never was). The
    evaluation set is not read here."""
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    gen = torch.Generator().manual_seed(int(cell.config.seed))
    curve = Curve.for_task(task, cell.train_updates)
    samples: list[float] = []
    losses: list[Tensor] = []
    streak = 0  # consecutive checks sure of the threshold
    for u in range(cell.train_updates):
        batch = task.train_batch(gen)
        inputs, targets = batch.inputs.to(device), batch.targets.to(device)
        sync()
        t0 = time.perf_counter()
        loss = update(inputs, targets)
        sync()
        samples.append(time.perf_counter() - t0)
        schedule.step()
        losses.append(loss.detach().clone())  # a detached alias kept ~7 MB per update alive
        if u + 1 in curve.marks:
            val = evaluate(model, task.validation_batches(), device, autocast, False)
            curve.record(losses, task, val)
            streak = streak + 1 if task.sure(val) else 0
            if task.stops_early and streak >= PATIENCE:
                return samples, losses, curve, u + 1
    return samples, losses, curve, None


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
    mqar = task.name in MQAR_TASKS
    final = evaluate(model, task.eval_batches(), device, autocast, mqar)
    values: dict[str, Any] = {
        "train_loss": float(tail.mean()),
        "eval_loss": final.loss,
        "eval_accuracy": final.accuracy if mqar else None,
        "val_accuracy": curve.scores[-1] if mqar and curve.scores else None,
        "bits_per_byte": final.loss / math.log(2) if task.name == "bytes" else None,
        "baseline_quality": task.baseline,
        **_routing_values(final.routing),
        "converge_threshold": task.threshold,
        "eval_tokens": final.tokens,
        "curve_updates": curve.updates,
        "curve_train_loss": curve.train_loss,
        "curve_eval": curve.scores,
        "data_description": task.description,
        **task.extra_values(),
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
