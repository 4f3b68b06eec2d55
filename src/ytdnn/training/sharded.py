"""Training from feature shards, batch by batch: bounded memory, DDP ranks on their own shards, sparse tables.

Input: the folder :func:`ytdnn.features.streaming.build_features_out_of_core` writes (fitted
pipeline + ``train/`` and ``test/`` safetensors shards + ``manifest.json``).

**Reading** (:class:`ShardedFeatureDataset`, a ``torch.utils.data.IterableDataset``). Shards
are dealt to DDP ranks by rows (greedy: the largest shard to the rank with the fewest rows, ties
by shard order) and, inside a rank, to DataLoader workers the same way. Each epoch a rank visits
its shards in a random order (seeded by ``seed`` and the epoch) and loads ``buffer_shards`` of
them at a time into a shuffle buffer that is permuted whole; rows left over from a buffer
(less than a batch) lead the next one. Every row of the rank's shards is yielded exactly once
per epoch; memory is ``buffer_shards`` shards. Feature shards hold the users of one hash
partition, so the buffer mixes several partitions (``buffer_shards`` ≥ 2 by default).

**Optimising** (:func:`make_optimizer`). With millions of ids a dense Adam step over every
table row each batch costs O(vocabulary), not O(batch): at 5M users that is most of a step.
Tables with at least ``sparse_min_rows`` rows therefore get sparse gradients and
``torch.optim.SparseAdam`` (the moments of a row move only when a batch touches it: "lazy Adam");
everything else, the dense layers and the small tables, plain (fused) Adam. Tested to learn the
same as dense Adam on a small problem (``tests/training/test_sharded.py``).

**Distributed.** Under ``torchrun`` every rank reads its own shards; ranks may hold different
numbers of rows, so the loop runs inside DDP's ``join()`` (ranks that run out early shadow the
others' all-reduces); DDP's join cannot shadow sparse gradients, so under DDP every table is
dense (a limit: at millions of ids one process with sparse tables may beat two dense ranks).
Global metrics (training loss, test loss, test sums) are sums reduced across ranks; rank 0
writes the run folder. Not here yet: mid-epoch checkpoints (the in-memory
trainer has them), validation-day early stopping.

The objective's constants (``fit``, ``init_bias``) need only the label columns of the training
shards: 8 bytes a row, read tensor by tensor (``safe_open``), 400 MB at 50M rows.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors import safe_open
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import IterableDataset, get_worker_info

from ytdnn.features.layout import FeatureLayout, RankingBatch
from ytdnn.features.ranking import RankingFeaturePipeline
from ytdnn.features.streaming import read_feature_shard, read_manifest
from ytdnn.models.ranking import RankingNet
from ytdnn.training import distributed
from ytdnn.training.losses import RankingObjective, make_objective
from ytdnn.training.trainer import EpochRecord, TrainingError, TrainingHistory, torch_threads
from ytdnn.utils.io import atomic_write_json

__all__ = ["ShardedFeatureDataset", "ShardedRunResult", "make_optimizer", "sparse_table_names", "train_sharded"]

log = logging.getLogger(__name__)

DEFAULT_SPARSE_MIN_ROWS = 10_000


# ---- reading ------------------------------------------------------------------------------------------------------

def _cat(batches: list[RankingBatch]) -> RankingBatch:
    if len(batches) == 1:
        return batches[0]
    return RankingBatch(torch.cat([b.categorical for b in batches]),
                        [torch.cat([b.multivalent[j] for b in batches]) for j in range(len(batches[0].multivalent))],
                        torch.cat([b.dense for b in batches]), torch.cat([b.is_click for b in batches]),
                        torch.cat([b.watch_time_s for b in batches]))


def _slice(batch: RankingBatch, start: int, stop: int) -> RankingBatch:
    return RankingBatch(batch.categorical[start:stop], [m[start:stop] for m in batch.multivalent],
                        batch.dense[start:stop], batch.is_click[start:stop], batch.watch_time_s[start:stop])


def deal_by_rows(rows: list[int], n_parts: int) -> list[list[int]]:
    """Indices of ``rows`` dealt to ``n_parts`` parts: largest first to the part with the fewest rows."""
    parts: list[list[int]] = [[] for _ in range(n_parts)]
    totals = [0] * n_parts
    for index in sorted(range(len(rows)), key=lambda i: (-rows[i], i)):
        target = min(range(n_parts), key=lambda p: (totals[p], p))
        parts[target].append(index)
        totals[target] += rows[index]
    return [sorted(part) for part in parts]


class ShardedFeatureDataset(IterableDataset):
    """Batches of one split's feature shards for this rank (module docstring: dealing, shuffling, memory)."""

    def __init__(self, directory: str | Path, split: str = "train", *, batch_size: int = 1024, shuffle: bool = True,
                 seed: int = 0, buffer_shards: int = 2, rank: int | None = None, world_size: int | None = None,
                 drop_last: bool = False) -> None:
        super().__init__()
        if batch_size < 1 or buffer_shards < 1:
            raise TrainingError(f"batch_size and buffer_shards must be >= 1; got {batch_size}, {buffer_shards}")
        self.directory = Path(directory)
        self.manifest = read_manifest(self.directory)
        self.split = split
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.buffer_shards, self.drop_last = buffer_shards, drop_last
        context = distributed.current()
        self.rank = context.rank if rank is None else rank
        self.world_size = context.world_size if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise TrainingError(f"rank {self.rank} is not in [0, {self.world_size})")
        shards = [s for s in self.manifest["shards"] if s["split"] == split]
        if not shards:
            raise TrainingError(f"{self.directory}: no {split!r} feature shard in the manifest")
        self.n_multivalent = int(self.manifest["n_multivalent"])
        mine = deal_by_rows([int(s["rows"]) for s in shards], self.world_size)[self.rank]
        self.shards = [shards[i] for i in mine]
        self.epoch = 0

    @property
    def rows(self) -> int:
        """Rows this rank yields per epoch (all of its shards' rows, unless ``drop_last``)."""
        total = sum(int(s["rows"]) for s in self.shards)
        return total - total % self.batch_size if self.drop_last else total

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _my_shards(self) -> list[dict[str, Any]]:
        worker = get_worker_info()
        if worker is None or worker.num_workers == 1:
            return self.shards
        parts = deal_by_rows([int(s["rows"]) for s in self.shards], worker.num_workers)[worker.id]
        return [self.shards[i] for i in parts]

    def _load(self, shard: dict[str, Any]) -> RankingBatch:
        batch, _, _ = read_feature_shard(self.directory / shard["path"], self.n_multivalent)
        if len(batch) != int(shard["rows"]):
            raise TrainingError(f"{self.directory / shard['path']}: {len(batch)} rows, manifest says {shard['rows']}")
        return batch

    def __iter__(self) -> Iterator[RankingBatch]:
        shards = self._my_shards()
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(len(shards), generator=generator).tolist() if self.shuffle else list(range(len(shards)))
        carry: RankingBatch | None = None
        for start in range(0, len(order), self.buffer_shards):
            loaded = [self._load(shards[i]) for i in order[start:start + self.buffer_shards]]
            buffer = _cat(loaded)
            del loaded
            if self.shuffle:
                buffer = buffer.index(torch.randperm(len(buffer), generator=generator))
            if carry is not None:
                buffer = _cat([carry, buffer])
            full = len(buffer) - len(buffer) % self.batch_size
            for row in range(0, full, self.batch_size):
                yield _slice(buffer, row, row + self.batch_size)
            carry = _slice(buffer, full, len(buffer)) if full < len(buffer) else None
        if carry is not None and not self.drop_last:
            yield carry


def read_labels(directory: str | Path, split: str = "train") -> tuple[Tensor, Tensor]:
    """(is_click, watch_time_s) of every row of a split, read tensor by tensor (no features loaded)."""
    directory = Path(directory)
    clicks, watches = [], []
    for shard in read_manifest(directory)["shards"]:
        if shard["split"] != split:
            continue
        with safe_open(str(directory / shard["path"]), framework="pt") as handle:
            clicks.append(handle.get_tensor("is_click"))
            watches.append(handle.get_tensor("watch_time_s"))
    if not clicks:
        raise TrainingError(f"{directory}: no {split!r} feature shard")
    return torch.cat(clicks), torch.cat(watches)


# ---- optimising ----------------------------------------------------------------------------------------------------

def sparse_table_names(layout: FeatureLayout, min_rows: int | None) -> frozenset[str]:
    """Tables big enough that sparse gradients pay (``min_rows`` rows or more; None = none)."""
    if min_rows is None:
        return frozenset()
    return frozenset(t.name for t in layout.tables if t.vocab_size >= min_rows)


class _Optimizers:
    """Adam over the dense parameters and SparseAdam over the sparse tables, stepped together.

    L2 on a sparse table is *lazy*, like its moments: the gradient of the rows a batch touched
    gets ``weight_decay · row`` added (SparseAdam has no weight decay of its own), so a row
    decays when it is used, not every step. Dense parameters get Adam's own (coupled) L2.
    """

    def __init__(self, optimizers: list[torch.optim.Optimizer], sparse: list[Tensor], weight_decay: float) -> None:
        self.optimizers = optimizers
        self.sparse = sparse
        self.weight_decay = weight_decay

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        if self.weight_decay:
            for weight in self.sparse:
                if weight.grad is None:
                    continue
                grad = weight.grad.coalesce()
                grad.values().add_(weight.detach()[grad.indices()[0]], alpha=self.weight_decay)
                weight.grad = grad
        for optimizer in self.optimizers:
            optimizer.step()

    def state_dict(self) -> list[dict[str, Any]]:
        return [o.state_dict() for o in self.optimizers]


def make_optimizer(network: RankingNet, *, lr: float, weight_decay: float = 0.0,
                   sparse_tables: frozenset[str] = frozenset()) -> _Optimizers:
    """Mark ``sparse_tables`` sparse on the network; SparseAdam for them, (fused) Adam for the rest."""
    bank = network.embeddings
    unknown = sorted(set(sparse_tables) - set(bank.tables))
    if unknown:
        raise TrainingError(f"sparse tables {unknown} are not tables of the network; it has {sorted(bank.tables)}")
    bank.sparse_tables = frozenset(sparse_tables)
    sparse_ids = {id(bank.tables[name].weight) for name in sparse_tables}
    dense = [p for p in network.parameters() if p.requires_grad and id(p) not in sparse_ids]
    sparse = [bank.tables[name].weight for name in sorted(sparse_tables)]
    optimizers: list[torch.optim.Optimizer] = [torch.optim.Adam(dense, lr=lr, weight_decay=weight_decay, fused=True)]
    if sparse:
        optimizers.append(torch.optim.SparseAdam(sparse, lr=lr))
    return _Optimizers(optimizers, sparse, weight_decay)


# ---- the run -------------------------------------------------------------------------------------------------------

@dataclass
class ShardedRunResult:
    out_dir: Path
    network: RankingNet
    history: TrainingHistory
    test: dict[str, float]
    n_train: int  # global rows per epoch
    seconds: dict[str, float] = field(default_factory=dict)


def _reduce(values: list[float]) -> list[float]:
    """Sums across ranks (float64); the values themselves in one process."""
    tensor = torch.tensor(values, dtype=torch.float64)
    if distributed.current().enabled:
        dist.all_reduce(tensor)
    return tensor.tolist()


@torch.no_grad()
def evaluate_shards(network: RankingNet, objective: RankingObjective, directory: Path, split: str = "test",
                    batch_size: int = 16384) -> dict[str, float]:
    """Global test metrics over every rank's shards of ``split``: mean objective loss, rows, and the
    predicted vs logged watch seconds (sum of the served ``ranking_key`` over the sum of watch time)."""
    network.eval()
    dataset = ShardedFeatureDataset(directory, split, batch_size=batch_size, shuffle=False)
    loss_sum = rows = predicted = watched = clicks = 0.0
    for batch in dataset:
        outputs = network(batch)
        loss_sum += float(objective.loss(outputs, batch.is_click, batch.watch_time_s)) * len(batch)
        rows += len(batch)
        served = objective.predict(outputs).get(objective.ranking_key)
        if served is not None:
            predicted += float(served.double().sum())
        watched += float(batch.watch_time_s.double().sum())
        clicks += float(batch.is_click.double().sum())
    loss_sum, rows, predicted, watched, clicks = _reduce([loss_sum, rows, predicted, watched, clicks])
    network.train()
    return {"test_loss": loss_sum / rows if rows else math.nan, "test_rows": rows,
            "test_click_rate": clicks / rows if rows else math.nan,
            "predicted_over_logged_watch": predicted / watched if watched else math.nan}


def train_sharded(features_dir: str | Path, out_dir: str | Path, *, objective_name: str = "wlr",
                  objective_params: dict[str, Any] | None = None, hidden: tuple[int, ...] = (256, 128),
                  dropout: float = 0.0, lr: float = 1e-3, weight_decay: float = 0.0, batch_size: int = 1024,
                  epochs: int = 1, seed: int = 0, buffer_shards: int = 2,
                  sparse_min_rows: int | None = DEFAULT_SPARSE_MIN_ROWS, num_threads: int | None = 1,
                  max_examples: int | None = None, evaluate: bool = True, log_every: int = 0) -> ShardedRunResult:
    """Train the ranker on the feature shards of ``features_dir`` (module docstring); write ``out_dir`` on rank 0.

    ``batch_size`` is per rank. ``max_examples`` caps this rank's rows (benchmarks). The run folder
    is the ranker's (``model.json``, ``model.safetensors``, ``features/``, ``training.json``), so
    ``load_ranker(out_dir)`` serves it.
    """
    from ytdnn.training.ranker import FEATURES_DIR, _write_model  # the ranker's run-folder writer

    features_dir, out_dir = Path(features_dir), Path(out_dir)
    manifest = read_manifest(features_dir)
    pipeline = RankingFeaturePipeline.load(features_dir / manifest["pipeline"])
    layout = pipeline.layout
    context = distributed.current()
    seconds: dict[str, float] = {}
    with torch_threads(num_threads or 1):
        started = time.perf_counter()
        is_click, watch_time_s = read_labels(features_dir, "train")
        objective = make_objective(objective_name, **(objective_params or {}))
        objective.fit(is_click, watch_time_s)
        init_bias = objective.init_bias(is_click, watch_time_s)
        del is_click, watch_time_s
        seconds["labels"] = time.perf_counter() - started
        torch.manual_seed(seed)
        network = RankingNet(layout, hidden=hidden, n_heads=objective.n_heads, dropout=dropout)
        network.set_output_bias(init_bias)
        sparse = sparse_table_names(layout, sparse_min_rows)
        if sparse and context.enabled:
            # DDP's join() (uneven shards per rank) cannot shadow sparse all-reduces
            # ("Cannot access storage of SparseTensorImpl"): every table trains dense under DDP.
            log.warning("sharded training under DDP: tables %s train dense (no sparse gradients with join())",
                        sorted(sparse))
            sparse = frozenset()
        optimizer = make_optimizer(network, lr=lr, weight_decay=weight_decay, sparse_tables=sparse)
        model: nn.Module = DistributedDataParallel(network) if context.enabled else network
        dataset = ShardedFeatureDataset(features_dir, "train", batch_size=batch_size, seed=seed,
                                        buffer_shards=buffer_shards)
        history = TrainingHistory(num_threads=num_threads or 1)
        seen = 0
        train_started = time.perf_counter()
        for epoch in range(1, epochs + 1):
            epoch_started = time.perf_counter()
            dataset.set_epoch(epoch)
            network.train()
            loss_sum, rows, steps = 0.0, 0, 0
            joined = model.join() if context.enabled else contextlib.nullcontext()  # type: ignore[operator]
            with joined:
                for batch in dataset:
                    if max_examples is not None and rows >= max_examples:
                        break
                    outputs = model(batch)
                    loss = objective.loss(outputs, batch.is_click, batch.watch_time_s)
                    if not torch.isfinite(loss):
                        raise TrainingError(f"epoch {epoch}, step {steps}: the loss is {loss.item()}; lower the "
                                            f"learning rate (lr={lr})")
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    loss_sum += float(loss.detach()) * len(batch)
                    rows += len(batch)
                    steps += 1
                    if log_every and steps % log_every == 0 and context.is_main:
                        elapsed = time.perf_counter() - epoch_started
                        log.info("epoch %d: %d rows, %.0f rows/s, loss %.4f", epoch, rows, rows / elapsed,
                                 loss_sum / rows)
            global_loss, global_rows = _reduce([loss_sum, float(rows)])
            seen += int(global_rows)
            epoch_seconds = time.perf_counter() - epoch_started
            history.epochs.append(EpochRecord(epoch, global_loss / global_rows if global_rows else math.nan, seen,
                                              epoch_seconds, {}))
        seconds["train"] = time.perf_counter() - train_started
        test: dict[str, float] = {}
        if evaluate:
            eval_started = time.perf_counter()
            test = evaluate_shards(network, objective, features_dir)
            seconds["evaluate"] = time.perf_counter() - eval_started
            history.epochs[-1].validation.update(test)
    network.eval()
    if context.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        pipeline.save(out_dir / FEATURES_DIR)
        extra = {"init_bias": init_bias, "n_train": seen // max(1, epochs), "sparse_tables": sorted(sparse),
                 "batch_size_per_rank": batch_size, "world_size": context.world_size, "seconds": seconds,
                 "trainer": "sharded", "features_dir": str(features_dir), "test": test}
        _write_model(out_dir, network, objective, history, pipeline, FEATURES_DIR, extra)
        atomic_write_json(out_dir / "metrics.json", {"test": test, "history": history.to_dict(),
                                                     "seconds": seconds})
    return ShardedRunResult(out_dir, network, history, test, seen // max(1, epochs), seconds)

