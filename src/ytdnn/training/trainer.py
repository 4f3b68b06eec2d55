"""A generic trainer for ranking networks: Adam, seeded shuffling, early stopping, history.

``Trainer(model, objective, train, validation, config, metric_fn).fit()`` trains ``model`` (any
module mapping a :class:`RankingBatch` to ``[B, n_heads]`` outputs) on ``objective.loss``. Each
epoch the training rows are permuted once with a ``torch.Generator`` seeded from
``config.seed`` (one bulk gather per tensor, then contiguous slices: no per-row Python work).
The objective's ``batch_transform`` (the resampling objective's expansion) is applied to every
minibatch. After each epoch the model is evaluated on ``validation``: the objective's loss over
the whole validation set (one ``loss`` call on all outputs, so it is exact whatever the
objective's normalisation) and whatever ``metric_fn(predictions)`` returns. Training stops when
``config.early_stopping_metric`` has not improved for ``config.patience`` epochs, and the best
epoch's weights are restored.

Optimiser options: per-parameter-group weight decay and learning-rate multipliers by parameter
name prefix (``weight_decay_by_prefix``, ``lr_scale_by_prefix``), decoupled (AdamW) decay, a
learning-rate schedule over the planned steps (``lr_schedule``: lr_s = lr·m(s/S), linear
m = 1 - s/S or cosine m = (1 + cos(pi s/S))/2), and tail averaging (``average_last_epochs`` = N):
at each epoch end E the weights validated, kept as the best and finally restored are
(1/N') sum_{e=E-N'+1..E} w_e with N' = min(N, E), while training goes on from the raw w_E.

Reproducible: the same seed, data, model init and thread count give identical weights.

Threads: one by default. The ranking tower's ops are small (a 1024-row batch, a few hundred
inputs), so intra-op threads gain little, and on a shared machine OpenMP threads spin against
other processes: on the 2-core box under load, one epoch of KuaiRand took 9-11 s with 1 thread
and 48-66 s with 2. ``num_threads=None`` uses every core this process may use.

``config.max_examples`` caps the number of training rows the model computes gradients on
(*after* ``batch_transform``, so an expanding objective spends its budget on its expanded rows),
for equal-budget comparisons; the last minibatch is cut so the count is exact.

Checkpoints (``config.checkpoint_dir``): at every epoch end, every ``checkpoint_every_batches``
steps, and once finished, into ``checkpoint_dir/<checkpoint_name>`` (see
:mod:`ytdnn.training.checkpoint`). ``config.resume`` continues from the latest one: the epoch's
permutation is drawn again from the saved generator state and training goes on at the saved
row, so the result is bit-identical to an uninterrupted run. A fresh run clears old ones.

Under a ``torch.distributed`` process group (``torchrun``) the model is wrapped in DDP and each
rank trains on its slice of every global batch (see :mod:`ytdnn.training.distributed`).
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import Tensor, nn
from torch import distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ytdnn.features.layout import RankingBatch
from ytdnn.training import distributed
from ytdnn.training.checkpoint import CheckpointStore, TrainingCheckpoint

__all__ = ["VALIDATION_LOSS", "EpochRecord", "MetricFn", "Objective", "Trainer", "TrainerConfig", "TrainingError",
           "TrainingHistory", "available_cores", "average_states", "lr_multiplier", "predict_outputs",
           "torch_threads"]

VALIDATION_LOSS = "val_loss"

log = logging.getLogger(__name__)


class TrainingError(ValueError):
    """Training cannot go on (bad config, empty data, a non-finite loss); says where."""


class Objective(Protocol):
    """What the trainer needs from a ranking objective (see ``ytdnn.training.losses``)."""

    name: str
    n_heads: int

    def loss(self, outputs: Tensor, is_click: Tensor, watch_time_s: Tensor) -> Tensor: ...

    def predict(self, outputs: Tensor) -> dict[str, Tensor]: ...


MetricFn = Callable[[dict[str, np.ndarray]], dict[str, float]]
"""Validation metric callback: the objective's predictions on the validation set → named metrics."""


class TrainerConfig(BaseModel):
    """Optimisation settings. Every early-stopping metric is *lower is better* unless ``mode="max"``."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    batch_size: int = Field(1024, ge=1)
    eval_batch_size: int = Field(16384, ge=1)
    lr: float = Field(1e-3, gt=0)
    epochs: int = Field(10, ge=1)
    weight_decay: float = Field(0.0, ge=0)
    weight_decay_by_prefix: dict[str, float] = Field(
        default_factory=dict, description="parameter-name prefix -> weight decay for those parameters (the longest "
                                          "matching prefix wins; e.g. {'embeddings.': 1e-4}); others use weight_decay")
    lr_scale_by_prefix: dict[str, float] = Field(
        default_factory=dict, description="parameter-name prefix -> learning-rate multiplier (longest prefix wins)")
    decoupled_weight_decay: bool = Field(False, description="AdamW: shrink weights by lr·decay each step instead of "
                                                            "adding decay·w to the gradient (Adam's L2)")
    average_last_epochs: int = Field(
        1, ge=1, description="validate and keep, at each epoch end, the mean of the last N epoch-end weights "
                             "(tail averaging); training continues from the raw weights; 1 = no averaging")
    lr_schedule: Literal["constant", "linear", "cosine"] = Field(
        "constant", description="learning-rate multiplier over the planned steps (epochs × batches): constant 1, "
                                "linear 1 - s/S, or cosine (1 + cos(pi s/S)) / 2")
    patience: int = Field(2, ge=0, description="epochs without improvement before stopping; 0 = never stop early")
    early_stopping_metric: str = Field(VALIDATION_LOSS, description="'val_loss' or a key of the metric callback")
    mode: Literal["min", "max"] = "min"
    seed: int | None = Field(None, description="shuffling/dropout seed; None = 0 (jobs pass their own seed)")
    max_examples: int | None = Field(None, ge=1, description="budget of training rows (after batch_transform)")
    num_threads: int | None = Field(1, ge=1, description="torch threads; None = every core this process may use")
    progress: bool = True
    checkpoint_dir: str | None = Field(None, description="folder for checkpoints (one subfolder per trained model); "
                                                         "None = no checkpoints")
    checkpoint_every_batches: int | None = Field(None, ge=1, description="also checkpoint every N optimiser steps "
                                                                         "(epoch ends always are); None = epoch ends only")
    checkpoint_keep: int = Field(2, ge=1, description="most recent checkpoints kept on disk")
    resume: bool = Field(False, description="continue from the latest checkpoint in checkpoint_dir, if any")


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    examples_seen: int  # cumulative, after batch_transform
    seconds: float  # this epoch's wall time, training and validation
    validation: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "train_loss": self.train_loss, "examples_seen": self.examples_seen,
                "seconds": self.seconds, "validation": dict(self.validation)}


@dataclass
class TrainingHistory:
    epochs: list[EpochRecord] = field(default_factory=list)
    best_epoch: int | None = None  # 1-based; None without validation (the last epoch is kept)
    stopped_early: bool = False
    budget_exhausted: bool = False
    early_stopping_metric: str = VALIDATION_LOSS
    num_threads: int = 1
    resumed_from_step: int | None = None  # the checkpoint's step when the run was resumed

    @property
    def best(self) -> EpochRecord | None:
        return None if self.best_epoch is None else self.epochs[self.best_epoch - 1]

    @property
    def examples_seen(self) -> int:
        return self.epochs[-1].examples_seen if self.epochs else 0

    def to_dict(self) -> dict[str, Any]:
        return {"epochs": [e.to_dict() for e in self.epochs], "best_epoch": self.best_epoch,
                "best_validation": dict(self.best.validation) if self.best else None,
                "stopped_early": self.stopped_early, "budget_exhausted": self.budget_exhausted,
                "early_stopping_metric": self.early_stopping_metric, "examples_seen": self.examples_seen,
                "seconds": sum(e.seconds for e in self.epochs), "num_threads": self.num_threads,
                "resumed_from_step": self.resumed_from_step}

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> TrainingHistory:
        epochs = [EpochRecord(int(e["epoch"]), float(e["train_loss"]) if e["train_loss"] is not None else math.nan,
                              int(e["examples_seen"]), float(e["seconds"]),
                              {k: (math.nan if v is None else float(v)) for k, v in e["validation"].items()})
                  for e in payload["epochs"]]
        return cls(epochs, payload.get("best_epoch"), bool(payload.get("stopped_early", False)),
                   bool(payload.get("budget_exhausted", False)),
                   str(payload.get("early_stopping_metric", VALIDATION_LOSS)), int(payload.get("num_threads", 1)),
                   payload.get("resumed_from_step"))


@dataclass
class _Position:
    """Where a run is: the next row of epoch ``epoch``'s permutation, and the running sums.

    ``loss_sum`` and ``epoch_seconds`` cover the part of the epoch already done; the
    early-stopping state travels with it so a resumed run decides exactly as an unbroken one.
    """

    epoch: int = 1
    next_start: int = 0
    step: int = 0  # optimiser steps, all epochs
    seen: int = 0  # training rows, all epochs (after batch_transform)
    loss_sum: float = 0.0
    rows_in_epoch: int = 0
    epoch_seconds: float = 0.0
    best_value: float | None = None
    epochs_without_improvement: int = 0
    finished: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> _Position:
        return cls(**payload)


_global_sum = distributed.global_sum


def available_cores() -> int:
    """Cores this process may run on (the affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS/Windows
        return max(1, os.cpu_count() or 1)


@contextmanager
def torch_threads(n_threads: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(n_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _to_dict(batch: RankingBatch) -> dict[str, Tensor]:
    out = {"categorical": batch.categorical, "dense": batch.dense, "is_click": batch.is_click,
           "watch_time_s": batch.watch_time_s}
    out.update({f"multivalent_{j}": ids for j, ids in enumerate(batch.multivalent)})
    return out


def _from_dict(tensors: dict[str, Tensor], n_multivalent: int) -> RankingBatch:
    return RankingBatch(tensors["categorical"], [tensors[f"multivalent_{j}"] for j in range(n_multivalent)],
                        tensors["dense"], tensors["is_click"], tensors["watch_time_s"])


def _slice(batch: RankingBatch, start: int, stop: int) -> RankingBatch:
    return RankingBatch(batch.categorical[start:stop], [m[start:stop] for m in batch.multivalent],
                        batch.dense[start:stop], batch.is_click[start:stop], batch.watch_time_s[start:stop])


def _longest_prefix(name: str, table: dict[str, float], default: float) -> float:
    matches = [prefix for prefix in table if name.startswith(prefix)]
    return table[max(matches, key=len)] if matches else default


def _adam(model: nn.Module, config: TrainerConfig) -> torch.optim.Adam:
    """Adam (AdamW with ``decoupled_weight_decay``); the fused kernel when every parameter allows it
    (same update, ~25% less time per step on CPU, where the step over the embedding tables is a
    large share of a batch).

    Parameters are grouped by (weight decay, lr multiplier) from ``weight_decay_by_prefix`` and
    ``lr_scale_by_prefix`` (matched on ``model.named_parameters()`` names, longest prefix first);
    each group remembers its unscheduled learning rate as ``base_lr``.
    """
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise TrainingError("the model has no trainable parameter")
    for what, table in (("weight_decay_by_prefix", config.weight_decay_by_prefix),
                        ("lr_scale_by_prefix", config.lr_scale_by_prefix)):
        unused = [prefix for prefix in table if not any(name.startswith(prefix) for name, _ in named)]
        if unused:
            raise TrainingError(f"{what}: prefix(es) {unused} match no parameter; names start with "
                                f"{sorted({name.split('.')[0] for name, _ in named})}")
    groups: dict[tuple[float, float], list[Tensor]] = {}
    for name, p in named:
        key = (_longest_prefix(name, config.weight_decay_by_prefix, config.weight_decay),
               _longest_prefix(name, config.lr_scale_by_prefix, 1.0))
        groups.setdefault(key, []).append(p)
    parameters = [p for _, p in named]
    fusable = all(p.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64) and not p.is_sparse
                  for p in parameters) and len({p.device.type for p in parameters}) == 1
    param_groups = [{"params": params, "weight_decay": decay, "lr": config.lr * scale, "base_lr": config.lr * scale}
                    for (decay, scale), params in groups.items()]
    return torch.optim.Adam(param_groups, lr=config.lr, weight_decay=config.weight_decay, fused=fusable or None,
                            decoupled_weight_decay=config.decoupled_weight_decay)


def lr_multiplier(schedule: str, step: int, total_steps: int) -> float:
    """The learning-rate multiplier before optimiser step ``step`` (0-based) of ``total_steps``.

    constant: 1; linear: 1 - s/S; cosine: (1 + cos(pi s/S)) / 2 — both decay from 1 at s = 0
    towards 0 at s = S (the last step s = S - 1 still moves, by 1/S of the rate for linear).
    """
    if schedule == "constant" or total_steps <= 0:
        return 1.0
    fraction = min(max(step / total_steps, 0.0), 1.0)
    if schedule == "linear":
        return 1.0 - fraction
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * fraction))
    raise TrainingError(f"lr_schedule must be constant, linear or cosine, got {schedule!r}")


def average_states(states: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Element-wise mean of state dicts (floating tensors; other tensors are taken from the last one).

    With epoch-end weights w_e this is the tail average (1/N) sum_{e > E-N} w_e (SWA over epoch
    ends, with a constant learning rate between them).
    """
    if not states:
        raise TrainingError("average_states: no state to average")
    last = states[-1]
    return {name: (torch.stack([state[name] for state in states]).mean(dim=0).to(tensor.dtype)
                   if tensor.is_floating_point() else tensor.clone()) for name, tensor in last.items()}


@torch.no_grad()
def predict_outputs(model: nn.Module, batch: RankingBatch, batch_size: int = 16384) -> Tensor:
    """Model outputs [N, n_heads] for every row of ``batch``, in eval mode, in chunks."""
    was_training = model.training
    model.eval()
    try:
        chunks = [model(_slice(batch, start, start + batch_size)) for start in range(0, len(batch), batch_size)]
    finally:
        model.train(was_training)
    if not chunks:
        raise TrainingError("cannot predict on an empty batch (0 rows)")
    return torch.cat(chunks, dim=0)


class Trainer:
    """Train ``model`` on ``objective`` over ``train``; validate on ``validation`` after each epoch.

    ``metric_fn`` receives the objective's predictions on the validation rows (NumPy arrays,
    validation row order) and returns named metrics, e.g. the weighted per-user loss; they are
    recorded under their names and may be chosen as ``config.early_stopping_metric``.
    The objective must already be fitted (``objective.fit``) and the output bias set.
    """

    def __init__(self, model: nn.Module, objective: Objective, train: RankingBatch,
                 validation: RankingBatch | None, config: TrainerConfig | None = None,
                 metric_fn: MetricFn | None = None, checkpoint_name: str | None = None) -> None:
        self.model = model
        self.objective = objective
        self.train_data = train
        self.validation = validation
        self.config = config or TrainerConfig()
        self.metric_fn = metric_fn
        # Checkpoints go to config.checkpoint_dir/<checkpoint_name>: two models trained into one
        # run folder (the ranker and its click baseline) keep separate checkpoints.
        self.checkpoint_name = checkpoint_name or str(getattr(objective, "name", "model"))
        if len(train) == 0:
            raise TrainingError("train: the training batch has 0 rows")
        if validation is not None and len(validation) == 0:
            raise TrainingError("validation: the validation batch has 0 rows (pass None to train without it)")
        if validation is None and self.config.early_stopping_metric != VALIDATION_LOSS:
            raise TrainingError(f"early_stopping_metric={self.config.early_stopping_metric!r} needs a validation set")

    # -- one pass -------------------------------------------------------------------------------
    def _transform(self, batch: RankingBatch, generator: torch.Generator) -> RankingBatch:
        transform = getattr(self.objective, "batch_transform", None)
        if transform is None:
            return batch
        transformed = transform(_to_dict(batch), generator)
        if isinstance(transformed, RankingBatch):
            return transformed
        return _from_dict(transformed, len(batch.multivalent))

    def evaluate(self) -> dict[str, float]:
        """Validation loss (``val_loss``) and the metric callback's values, for the current weights."""
        if self.validation is None:
            return {}
        outputs = predict_outputs(self.model, self.validation, self.config.eval_batch_size)
        with torch.no_grad():
            val_loss = float(self.objective.loss(outputs, self.validation.is_click, self.validation.watch_time_s))
            metrics = {VALIDATION_LOSS: val_loss}
            if self.metric_fn is not None:
                predictions = {k: v.detach().cpu().numpy() for k, v in self.objective.predict(outputs).items()}
                extra = self.metric_fn(predictions)
                if VALIDATION_LOSS in extra:
                    raise TrainingError(f"metric_fn must not return the reserved key {VALIDATION_LOSS!r}")
                metrics.update({k: float(v) for k, v in extra.items()})
        if self.config.early_stopping_metric not in metrics:
            raise TrainingError(f"early_stopping_metric={self.config.early_stopping_metric!r} is not among the "
                                f"validation metrics {sorted(metrics)}")
        return metrics

    def _improved(self, value: float, best: float | None) -> bool:
        if not math.isfinite(value):
            return False
        if best is None:
            return True
        return value < best if self.config.mode == "min" else value > best

    def fit(self) -> TrainingHistory:
        """Train; return the per-epoch history. The model ends with the best epoch's weights."""
        config = self.config
        n_threads = config.num_threads or available_cores()
        history = TrainingHistory(early_stopping_metric=config.early_stopping_metric, num_threads=n_threads)
        with torch_threads(n_threads):
            self._fit(history)
        return history

    # -- checkpoints ------------------------------------------------------------------------------
    def _checkpoint_store(self) -> CheckpointStore | None:
        if self.config.checkpoint_dir is None:
            return None
        return CheckpointStore(Path(self.config.checkpoint_dir) / self.checkpoint_name, keep=self.config.checkpoint_keep)

    def _fingerprint(self) -> dict[str, Any]:
        """What must match for a checkpoint to be resumed by this trainer (same data order, same steps)."""
        config = self.config
        return {"n_rows": len(self.train_data), "batch_size": config.batch_size,
                "seed": 0 if config.seed is None else config.seed, "max_examples": config.max_examples,
                "objective": getattr(self.objective, "name", type(self.objective).__name__)}

    def _save_checkpoint(self, store: CheckpointStore, position: _Position, optimizer: torch.optim.Optimizer,
                         generator: torch.Generator, epoch_generator_state: Tensor | None,
                         best_state: dict[str, Tensor] | None, history: TrainingHistory,
                         recent: list[dict[str, Tensor]]) -> None:
        rng = {"torch": torch.get_rng_state(), "generator": generator.get_state()}
        if epoch_generator_state is not None:
            rng["epoch_generator"] = epoch_generator_state
        state = {"position": position.to_dict(), "history": history.to_dict(), "fingerprint": self._fingerprint()}
        store.save(TrainingCheckpoint(position.step, self.model.state_dict(), optimizer.state_dict(), rng, state,
                                      best_state, recent_epochs=list(recent)))

    def _restore(self, checkpoint: TrainingCheckpoint, optimizer: torch.optim.Optimizer, generator: torch.Generator,
                 history: TrainingHistory
                 ) -> tuple[_Position, Tensor | None, dict[str, Tensor] | None, list[dict[str, Tensor]]]:
        expected, found = self._fingerprint(), checkpoint.state.get("fingerprint", {})
        if found != expected:
            differing = sorted(k for k in expected if found.get(k) != expected[k])
            raise TrainingError(f"{checkpoint.path}: the checkpoint belongs to a different run ({differing} differ: "
                                f"checkpoint {[found.get(k) for k in differing]}, now "
                                f"{[expected[k] for k in differing]}); resume with the same data and settings")
        try:
            self.model.load_state_dict(checkpoint.model, strict=True)
            optimizer.load_state_dict(checkpoint.optimizer)
        except (RuntimeError, ValueError, KeyError) as exc:
            raise TrainingError(f"{checkpoint.path}: the checkpoint does not fit this model: {exc}") from exc
        torch.set_rng_state(checkpoint.rng["torch"])
        generator.set_state(checkpoint.rng["generator"])
        restored = TrainingHistory.from_dict(checkpoint.state["history"])
        history.epochs = restored.epochs
        history.best_epoch = restored.best_epoch
        history.stopped_early = restored.stopped_early
        history.budget_exhausted = restored.budget_exhausted
        history.resumed_from_step = checkpoint.step
        return (_Position.from_dict(checkpoint.state["position"]), checkpoint.rng.get("epoch_generator"),
                checkpoint.best_model, list(checkpoint.recent_epochs))

    # -- the loop ---------------------------------------------------------------------------------
    def _fit(self, history: TrainingHistory) -> None:
        config = self.config
        seed = 0 if config.seed is None else config.seed
        torch.manual_seed(seed)  # dropout draws
        generator = torch.Generator().manual_seed(seed)
        optimizer = _adam(self.model, config)
        n_rows = len(self.train_data)
        n_batches = math.ceil(n_rows / config.batch_size)
        budget = config.max_examples
        # The schedule's horizon: the planned steps (a budget of rows ends it earlier; an expanding
        # batch_transform makes that count approximate, which only stretches the schedule's tail).
        total_steps = config.epochs * n_batches
        if budget is not None:
            total_steps = min(total_steps, math.ceil(budget / config.batch_size))
        position = _Position()
        best_state: dict[str, Tensor] | None = None
        # Raw epoch-end weights of the last average_last_epochs - 1 epochs (for tail averaging).
        recent: list[dict[str, Tensor]] = []
        # The shuffling generator's state before this epoch's permutation: a mid-epoch checkpoint
        # stores it so a resumed run draws the same permutation again.
        epoch_generator_state: Tensor | None = None

        ctx = distributed.current()
        network: nn.Module = self.model
        if ctx.enabled:
            network = DistributedDataParallel(self.model)

        store = self._checkpoint_store()
        if store is not None:
            checkpoint = store.latest() if config.resume else None
            if ctx.enabled:
                dist.barrier()  # every rank has read the checkpoint before rank 0 touches the folder
            if ctx.is_main:
                store.remove_stale_temp_files()
                if checkpoint is None:
                    store.clear()
            if checkpoint is not None:
                position, epoch_generator_state, best_state, recent = self._restore(checkpoint, optimizer, generator,
                                                                                    history)
                log.info("resuming %s from %s (epoch %d, row %d, %d examples seen)", self.checkpoint_name,
                         checkpoint.path, position.epoch, position.next_start, position.seen)
                if position.finished:  # the run had completed: the checkpoint holds its final weights
                    self.model.eval()
                    return

        def save(at: _Position) -> None:
            if store is not None and ctx.is_main:
                self._save_checkpoint(store, at, optimizer, generator, epoch_generator_state, best_state, history,
                                      recent)

        progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("loss {task.fields[loss]:.4f}"), TimeElapsedColumn(),
                            disable=not config.progress or not ctx.is_main, transient=True)
        with progress:
            task = progress.add_task("epoch 1", total=n_batches, loss=math.nan)
            for epoch in range(position.epoch, config.epochs + 1):
                started = time.perf_counter() - position.epoch_seconds
                progress.reset(task, total=n_batches, completed=position.next_start // config.batch_size,
                               description=f"epoch {epoch}/{config.epochs}", loss=math.nan)
                self.model.train()
                if epoch_generator_state is None:  # a fresh epoch
                    epoch_generator_state = generator.get_state()
                    permutation = torch.randperm(n_rows, generator=generator)
                else:  # resumed mid-epoch: the same permutation, then the generator as it was
                    current = generator.get_state()
                    generator.set_state(epoch_generator_state)
                    permutation = torch.randperm(n_rows, generator=generator)
                    generator.set_state(current)
                shuffled = self.train_data.index(permutation)
                # The loss sum of this epoch so far; across ranks the stored one is the global sum,
                # held by rank 0 only so that the reduction does not count it N times.
                loss_sum = torch.tensor(position.loss_sum if ctx.is_main else 0.0, dtype=torch.float64)
                for start in range(position.next_start, n_rows, config.batch_size):
                    if budget is not None and position.seen >= budget:
                        break
                    if ctx.enabled:
                        # This rank's slice of the global batch (cut to the budget first).
                        global_rows = min(config.batch_size, n_rows - start)
                        if budget is not None:
                            global_rows = min(global_rows, budget - position.seen)
                        low, high = ctx.share(global_rows)
                        batch = self._transform(_slice(shuffled, start + low, start + high), generator)
                        if len(batch) != high - low:
                            # Counting and weighting rows across ranks assumes one row in, one row out.
                            raise TrainingError(f"objective {getattr(self.objective, 'name', '?')!r} expands "
                                                "batches (batch_transform); distributed training does not support "
                                                "it yet: train it in one process")
                    else:
                        batch = self._transform(_slice(shuffled, start, start + config.batch_size), generator)
                        if budget is not None and position.seen + len(batch) > budget:
                            batch = _slice(batch, 0, budget - position.seen)
                        global_rows = len(batch)
                    if global_rows == 0:
                        break
                    if len(batch):
                        outputs = network(batch)
                        loss = self.objective.loss(outputs, batch.is_click, batch.watch_time_s)
                    else:  # a rank without rows in a tiny last batch still joins the gradient all-reduce
                        loss = sum((p.sum() * 0.0 for p in network.parameters()), torch.zeros(()))
                    if not torch.isfinite(loss):
                        raise TrainingError(f"epoch {epoch}, rows {start}..{start + config.batch_size}: the loss is "
                                            f"{loss.item()}; lower the learning rate (lr={config.lr})")
                    optimizer.zero_grad(set_to_none=True)
                    if config.lr_schedule != "constant":
                        multiplier = lr_multiplier(config.lr_schedule, position.step, total_steps)
                        for group in optimizer.param_groups:
                            group["lr"] = group["base_lr"] * multiplier
                    if ctx.enabled:
                        # DDP averages gradients over ranks: weight each rank's mean loss by its share.
                        (loss * (len(batch) * ctx.world_size / global_rows)).backward()
                    else:
                        loss.backward()
                    optimizer.step()
                    loss_sum += loss.detach().double() * len(batch)
                    position.rows_in_epoch += global_rows
                    position.seen += global_rows
                    position.step += 1
                    progress.update(task, advance=1, loss=loss.item())
                    if config.checkpoint_every_batches and position.step % config.checkpoint_every_batches == 0:
                        save(replace(position, next_start=start + config.batch_size, loss_sum=_global_sum(loss_sum),
                                     epoch_seconds=time.perf_counter() - started))
                epoch_loss_sum = _global_sum(loss_sum)
                train_loss = epoch_loss_sum / position.rows_in_epoch if position.rows_in_epoch else math.nan
                progress.update(task, description=f"epoch {epoch}: validating")
                raw_state: dict[str, Tensor] | None = None
                if config.average_last_epochs > 1:
                    # Validate (and keep) the mean of the last N epoch-end weights; train on from the raw ones.
                    raw_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
                    self.model.load_state_dict(average_states([*recent, raw_state]))
                validation = self.evaluate()
                record = EpochRecord(epoch, train_loss, position.seen, time.perf_counter() - started, validation)
                history.epochs.append(record)
                if validation:
                    value = validation[config.early_stopping_metric]
                    if self._improved(value, position.best_value):
                        position.best_value = value
                        history.best_epoch = epoch
                        best_state = copy.deepcopy(self.model.state_dict())
                        position.epochs_without_improvement = 0
                    else:
                        position.epochs_without_improvement += 1
                if raw_state is not None:
                    averaged_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
                    self.model.load_state_dict(raw_state)
                    recent = [*recent, raw_state][-(config.average_last_epochs - 1):]
                    if not validation:  # no early stopping: the run ends with the last averaged weights
                        best_state = averaged_state
                position = replace(position, epoch=epoch + 1, next_start=0, loss_sum=0.0, rows_in_epoch=0,
                                   epoch_seconds=0.0)
                epoch_generator_state = None
                if budget is not None and position.seen >= budget:
                    history.budget_exhausted = True
                    break
                if validation and config.patience and position.epochs_without_improvement >= config.patience:
                    history.stopped_early = epoch < config.epochs
                    break
                if epoch < config.epochs:
                    save(position)
        if best_state is not None:
            self.model.load_state_dict(best_state)
        self.model.eval()
        position.finished = True
        save(position)
