"""The retrieval job: train the candidate generator and write a run folder.

``train_retrieval(config, out_dir)`` reads the dataset named in the config, splits it by date,
builds one example per training watch (:mod:`ytdnn.features.retrieval`), trains
:class:`~ytdnn.models.candidate.CandidateGenerator` with a full or sampled softmax
(:mod:`ytdnn.training.retrieval_losses`) and writes::

    RUN_DIR/config.json                 the resolved RetrievalConfig
    RUN_DIR/model.safetensors           network weights
    RUN_DIR/model.json                  network spec + feature metadata (token/profile vocabularies,
                                        example-age constants), enough to rebuild the featurizer
    RUN_DIR/item_vocab.json             corpus: video_ids[c] of output row c and its train watches
    RUN_DIR/item_vectors.safetensors    "vectors" [N, d'] (v_i with b_i appended when the model has a
                                        bias, so an inner-product index scores u·v_i + b_i with [u; 1]),
                                        "video_ids" [N] int64
    RUN_DIR/training_history.json       per-epoch loss and time

    RUN_DIR/index/                      after ``build_index``: the item index (keyed by video id) and
                                        index_report.json (recall@100 vs exact, latency)

Under ``torchrun`` (``torchrun --nproc-per-node N -m ytdnn train retrieval ...``) every rank
builds the same examples, trains on its slice of each global batch in ``DistributedDataParallel``
(see :func:`fit_candidate_model`) and only rank 0 writes the run folder.

Every file is written atomically; nothing is pickled. :func:`load_retrieval_run` reads a run back,
:func:`export_user_vectors` writes serving user vectors in bounded-memory shards and
:func:`build_index` writes the item index into the run folder.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveInt
from safetensors.torch import save_file
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ytdnn.config import JobConfig
from ytdnn.data.csv_reader import OnBadRows
from ytdnn.data.schema import InteractionData
from ytdnn.data.sources import load_dataset
from ytdnn.data.split import DEFAULT_TEST_START, DEFAULT_TRAIN_END, DateSplit
from ytdnn.features.retrieval import RetrievalExamples, RetrievalFeatureConfig, RetrievalFeaturizer
from ytdnn.index import VectorIndex, make_index
from ytdnn.models.candidate import CandidateGenerator, CandidateModelSpec
from ytdnn.models.ranking import load_weights, save_weights
from ytdnn.training import distributed
from ytdnn.training.retrieval_losses import (
    CandidateSampler,
    FullSoftmaxLoss,
    LogUniformSampler,
    SampledSoftmaxLoss,
    UniformSampler,
    UnigramSampler,
)
from ytdnn.training.trainer import available_cores, torch_threads
from ytdnn.utils.io import atomic_path, atomic_write_json, read_json
from ytdnn.utils.seed import seed_everything

__all__ = [
    "RetrievalConfig",
    "RetrievalDataSection",
    "RetrievalLossConfig",
    "RetrievalModelConfig",
    "RetrievalRun",
    "RetrievalRunError",
    "RetrievalTrainSection",
    "build_index",
    "export_user_vectors",
    "fit_candidate_model",
    "index_comparison",
    "item_index",
    "load_retrieval_run",
    "make_retrieval_loss",
    "make_sampler",
    "model_spec",
    "replay_queries",
    "search_queries",
    "train_retrieval",
    "user_vector_batches",
]

MODEL_FORMAT = "ytdnn-candidate-v1"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
MODEL_FILE = "model.json"
ITEM_VOCAB_FILE = "item_vocab.json"
ITEM_VECTORS_FILE = "item_vectors.safetensors"
HISTORY_FILE = "training_history.json"
METRICS_FILE = "retrieval_metrics.json"  # written by ytdnn.evaluation.retrieval_eval
INDEX_DIR = "index"


class RetrievalRunError(ValueError):
    """A run folder that is incomplete or does not hold a retrieval model; names the file."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RetrievalModelConfig(_Section):
    """Sizes of the candidate network (see :class:`~ytdnn.models.candidate.CandidateModelSpec`)."""

    watch_embedding_dim: int = Field(64, ge=1)
    token_embedding_dim: int = Field(32, ge=1)
    profile_embedding_dim: int = Field(8, ge=1)
    hidden_dims: list[PositiveInt] = Field(default_factory=lambda: [256],
                                          description="ReLU layer widths, bottom first; [] = linear")
    output_dim: int = Field(64, ge=1, description="d of the user vector u and the item vectors v_i")
    use_item_bias: bool = True
    dropout: float = Field(0.0, ge=0.0, lt=1.0)


class RetrievalLossConfig(_Section):
    """Softmax over the corpus: ``full`` (exact) or ``sampled`` (K negatives per batch, log-Q)."""

    kind: Literal["full", "sampled"] = "sampled"
    num_negatives: int = Field(1000, ge=1, description="K: negatives drawn per batch, shared by its rows")
    sampler: Literal["uniform", "unigram", "log_uniform"] = "unigram"
    unigram_alpha: float = Field(0.75, ge=0.0, description="q_i ∝ train_watches_i ^ alpha")
    log_q_correction: bool = True
    remove_accidental_hits: bool = True


class RetrievalDataSection(_Section):
    dataset: str = Field("kuairand-pure", description="'kuairand-pure' or a dataset folder")
    data_dir: str | None = Field(None, description="where kuairand-pure lives "
                                 "(default: $YTDNN_DATA_DIR, ../shared/data)")
    train_end: int = DEFAULT_TRAIN_END
    test_start: int = DEFAULT_TEST_START
    on_bad_rows: OnBadRows = "error"


class RetrievalTrainSection(_Section):
    epochs: int = Field(8, ge=1)
    batch_size: int = Field(512, ge=1)
    lr: float = Field(1e-3, gt=0.0, description="Adam learning rate")
    weight_decay: float = Field(0.0, ge=0.0)
    num_threads: int | None = Field(1, ge=1, description="torch threads; None = every core this process may use")


class RetrievalConfig(JobConfig):
    """Config of ``ytdnn train retrieval``: data and split, features, network, loss, optimiser.

    Sections (TOML tables / dotted overrides): ``data``, ``features``
    (:class:`~ytdnn.features.retrieval.RetrievalFeatureConfig`), ``model``, ``loss``, ``train``.
    """

    data: RetrievalDataSection = Field(default_factory=RetrievalDataSection)
    features: RetrievalFeatureConfig = Field(default_factory=RetrievalFeatureConfig)
    model: RetrievalModelConfig = Field(default_factory=RetrievalModelConfig)
    loss: RetrievalLossConfig = Field(default_factory=RetrievalLossConfig)
    train: RetrievalTrainSection = Field(default_factory=RetrievalTrainSection)
    seed: int = 0

    def split(self) -> DateSplit:
        return DateSplit(train_end=self.data.train_end, test_start=self.data.test_start)

    def load_data(self) -> InteractionData:
        return load_dataset(self.data.dataset, self.data.data_dir, on_bad_rows=self.data.on_bad_rows)

    def threads(self) -> int:
        return self.train.num_threads or available_cores()


def make_sampler(config: RetrievalLossConfig, item_train_clicks: np.ndarray) -> CandidateSampler:
    """The negative sampler over corpus rows; rows are sorted by train watches (most first),
    which is the order :class:`LogUniformSampler` assumes."""
    n_items = int(len(item_train_clicks))
    if config.sampler == "uniform":
        return UniformSampler(n_items)
    if config.sampler == "log_uniform":
        return LogUniformSampler(n_items)
    return UnigramSampler(torch.as_tensor(item_train_clicks, dtype=torch.float64), alpha=config.unigram_alpha)


def make_retrieval_loss(config: RetrievalLossConfig,
                        item_train_clicks: np.ndarray) -> FullSoftmaxLoss | SampledSoftmaxLoss:
    """The loss object the trainer calls as ``loss(u, item_table, item_bias, target_ids)``."""
    if config.kind == "full":
        return FullSoftmaxLoss()
    return SampledSoftmaxLoss(config.num_negatives, make_sampler(config, item_train_clicks),
                              log_q_correction=config.log_q_correction,
                              remove_accidental_hits=config.remove_accidental_hits)


def model_spec(config: RetrievalConfig, featurizer: RetrievalFeaturizer) -> CandidateModelSpec:
    m = config.model
    return CandidateModelSpec(
        n_items=featurizer.n_items, n_tokens=featurizer.n_tokens,
        profile_cardinalities=featurizer.profile_cardinalities, dense_width=featurizer.dense_width,
        watch_embedding_dim=m.watch_embedding_dim, token_embedding_dim=m.token_embedding_dim,
        profile_embedding_dim=m.profile_embedding_dim, hidden_dims=list(m.hidden_dims), output_dim=m.output_dim,
        use_item_bias=m.use_item_bias, dropout=m.dropout)


def _inputs(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    return batch["history"], batch["tokens"], batch["profile"], batch["dense"]


class _BatchLoss(nn.Module):
    """The candidate model and its loss as one module, so that ``DistributedDataParallel`` sees
    the whole step (user tower *and* the item table the softmax reads) in one ``forward``."""

    def __init__(self, model: CandidateGenerator, loss: FullSoftmaxLoss | SampledSoftmaxLoss) -> None:
        super().__init__()
        self.model = model
        self.objective = loss

    def forward(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> torch.Tensor:
        model = self.model
        if int(batch["target"].shape[0]) == 0:
            # A rank without rows in a tiny last batch still joins the gradient all-reduce.
            return sum((p.sum() * 0.0 for p in model.parameters()), torch.zeros(()))
        user = model.user_vectors(*_inputs(batch))
        if isinstance(self.objective, SampledSoftmaxLoss):
            return self.objective.loss(user, model.item_vectors.weight, model.item_bias, batch["target"],
                                       generator=generator)
        return self.objective.loss(user, model.item_vectors.weight, model.item_bias, batch["target"])


def fit_candidate_model(model: CandidateGenerator, examples: RetrievalExamples,
                        loss: FullSoftmaxLoss | SampledSoftmaxLoss, training: RetrievalTrainSection,
                        seed: int = 0, log: Any = None) -> list[dict[str, float]]:
    """Adam over shuffled mini-batches for ``training.epochs`` epochs; returns per-epoch records.

    Under a ``torch.distributed`` process group (``torchrun``) of N ranks, as in
    :mod:`ytdnn.training.distributed`: every rank draws the same permutation (same ``seed``) and
    rank r takes the r-th of N near-equal slices of each global batch of ``batch_size`` rows; the
    step runs in ``DistributedDataParallel`` with rank r's mean loss L_r scaled by
    ``N · b_r / B`` (b_r its rows, B the global batch's), so the averaged gradient is
    ∇ Σ_r (b_r / B) L_r, the gradient of the global batch's mean loss. The sampled softmax draws
    its K negatives *per rank* from a generator seeded ``seed + 1 + r`` (deterministic; one process
    is rank 0), so a global step sees N·K negatives, each rank's rows scored against their own K —
    an unbiased estimate of the same full softmax, slightly lower variance than one process's.
    The recorded epoch loss and example count are summed over ranks (global figures).
    """
    if len(examples) == 0:
        raise RetrievalRunError("no training examples: the training window has no watch of a corpus video")
    if int(examples.target.min()) < 0:
        raise RetrievalRunError("training examples must all have a corpus target (target >= 0)")
    optimizer = torch.optim.Adam(model.parameters(), lr=training.lr, weight_decay=training.weight_decay,
                                 fused=True)  # fused: one kernel for all tables, much less per-step overhead on CPU
    ctx = distributed.current()
    order_rng = np.random.default_rng(seed)  # the same on every rank: one permutation per epoch
    negative_generator = torch.Generator().manual_seed(seed + 1 + ctx.rank)
    step: nn.Module = _BatchLoss(model, loss)
    if ctx.enabled:
        step = DistributedDataParallel(step)
    n_rows = len(examples)
    records: list[dict[str, float]] = []
    model.train()
    for epoch in range(1, training.epochs + 1):
        started = time.perf_counter()
        loss_sum = torch.zeros((), dtype=torch.float64)
        order = np.arange(n_rows)
        order_rng.shuffle(order)
        for start in range(0, n_rows, training.batch_size):
            rows = order[start:start + training.batch_size]
            low, high = ctx.share(len(rows))
            batch = examples.tensors(rows[low:high])
            value = step(batch, negative_generator)
            optimizer.zero_grad(set_to_none=True)
            if ctx.enabled:
                # DDP averages gradients over ranks: weight each rank's mean loss by its share.
                (value * ((high - low) * ctx.world_size / len(rows))).backward()
            else:
                value.backward()
            optimizer.step()
            loss_sum += value.detach().double() * (high - low)
        record = {"epoch": epoch, "loss": distributed.global_sum(loss_sum) / n_rows,
                  "seconds": time.perf_counter() - started, "examples": n_rows}
        if not math.isfinite(record["loss"]):
            raise RetrievalRunError(f"epoch {epoch}: the training loss is not finite ({record['loss']})")
        records.append(record)
        if log is not None and ctx.is_main:
            log(f"epoch {epoch}: loss {record['loss']:.4f} ({record['seconds']:.1f} s)")
    model.eval()
    return records


def train_retrieval(config: RetrievalConfig, out_dir: str | Path, *, data: InteractionData | None = None,
                    log: Any = None) -> Path:
    """Train the candidate generator described by ``config`` and write the run folder ``out_dir``.

    ``data`` overrides loading ``config.data.dataset`` (tests, notebooks); ``log`` is an optional
    ``callable(str)`` for progress lines. Returns the run folder.
    """
    run_dir = Path(out_dir)
    ctx = distributed.current()
    if ctx.is_main:  # under torchrun only rank 0 writes; every rank trains
        run_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(config.seed)
    data = data if data is not None else config.load_data()
    train, _ = config.split().split(data)
    threads = config.threads()
    started = time.perf_counter()
    with torch_threads(threads):
        featurizer = RetrievalFeaturizer.fit(train, data.users, config.features)
        examples = featurizer.training_examples(train, data.users, seed=config.seed)
        feature_seconds = time.perf_counter() - started
        spec = model_spec(config, featurizer)
        model = CandidateGenerator(spec)
        loss = make_retrieval_loss(config.loss, featurizer.item_train_clicks)
        epochs = fit_candidate_model(model, examples, loss, config.train, seed=config.seed, log=log)

    if ctx.is_main:
        config.save(run_dir / CONFIG_FILE)
        save_weights(model, run_dir / WEIGHTS_FILE)
        features = featurizer.to_dict()
        atomic_write_json(run_dir / ITEM_VOCAB_FILE, {"video_ids": features.pop("video_ids"),
                                                      "train_watches": features.pop("item_train_clicks")})
        atomic_write_json(run_dir / MODEL_FILE, {"format": MODEL_FORMAT, "spec": spec.to_dict(),
                                                 "features": features})
        write_item_vectors(model, featurizer, run_dir / ITEM_VECTORS_FILE)
        atomic_write_json(run_dir / HISTORY_FILE, {
            "epochs": epochs, "n_examples": len(examples), "n_items": featurizer.n_items,
            "n_users": int(np.unique(examples.user_id).size), "num_threads": threads,
            "world_size": ctx.world_size, "feature_seconds": feature_seconds,
            "total_seconds": time.perf_counter() - started, "loss": config.loss.kind})
    if ctx.enabled:
        torch.distributed.barrier()  # the run folder is complete when any rank returns
    return run_dir


def write_item_vectors(model: CandidateGenerator, featurizer: RetrievalFeaturizer, path: str | Path) -> None:
    tensors = {"vectors": model.serving_item_vectors().float().contiguous(),
               "video_ids": torch.from_numpy(featurizer.video_ids.copy())}
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file(tensors, str(tmp))


@dataclass
class RetrievalRun:
    """A trained run read back from its folder."""

    run_dir: Path
    config: RetrievalConfig
    featurizer: RetrievalFeaturizer
    model: CandidateGenerator

    def user_vectors(self, examples: RetrievalExamples, batch_size: int = 4096) -> Iterator[np.ndarray]:
        """Serving user vectors [b, serving_dim] (bias column included), batch by batch."""
        return user_vector_batches(self.model, examples, batch_size)

    def item_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """(serving item vectors [N, serving_dim] float32, video ids [N] int64)."""
        return self.model.serving_item_vectors().numpy().astype(np.float32), self.featurizer.video_ids.copy()


def load_retrieval_run(run_dir: str | Path) -> RetrievalRun:
    """Read config, featurizer and weights written by :func:`train_retrieval`."""
    run_dir = Path(run_dir)
    for name in (CONFIG_FILE, MODEL_FILE, ITEM_VOCAB_FILE, WEIGHTS_FILE):
        if not (run_dir / name).is_file():
            raise RetrievalRunError(f"{run_dir / name}: missing; is {run_dir} a retrieval run folder?")
    meta = read_json(run_dir / MODEL_FILE)
    if not isinstance(meta, dict) or meta.get("format") != MODEL_FORMAT:
        raise RetrievalRunError(f"{run_dir / MODEL_FILE}: format {meta.get('format')!r}, expected {MODEL_FORMAT!r}")
    payload = read_json(run_dir / CONFIG_FILE)
    if payload.get("job") not in (None, RetrievalConfig.__name__):
        raise RetrievalRunError(f"{run_dir / CONFIG_FILE}: written by job {payload.get('job')!r}, not a retrieval run")
    config = RetrievalConfig.read(run_dir / CONFIG_FILE)
    vocab = read_json(run_dir / ITEM_VOCAB_FILE)
    featurizer = RetrievalFeaturizer.from_dict({**meta["features"], "video_ids": vocab["video_ids"],
                                                "item_train_clicks": vocab["train_watches"]})
    model = CandidateGenerator(CandidateModelSpec.from_dict(meta["spec"]))
    load_weights(model, run_dir / WEIGHTS_FILE)
    model.eval()
    return RetrievalRun(run_dir, config, featurizer, model)


@torch.no_grad()
def user_vector_batches(model: CandidateGenerator, examples: RetrievalExamples,
                        batch_size: int = 4096) -> Iterator[np.ndarray]:
    """Serving user vectors ([u; 1] with a bias) for ``examples``, ``batch_size`` rows at a time,
    so memory stays O(batch_size · d) whatever the number of queries."""
    if batch_size < 1:
        raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
    model.eval()
    for start in range(0, len(examples), batch_size):
        batch = examples.tensors(slice(start, start + batch_size))
        yield model.serving_user_vectors(model.user_vectors(*_inputs(batch))).numpy().astype(np.float32)


def export_user_vectors(run_dir: str | Path, out_dir: str | Path | None = None, *,
                        user_ids: np.ndarray | None = None, batch_size: int = 65_536,
                        data: InteractionData | None = None) -> Path:
    """Write serving user vectors of ``user_ids`` (default: every user in the log) "now" — with
    all their logged history and the serving example age — as safetensors shards
    ``part-00000.safetensors`` … (tensors ``user_ids`` int64 [b], ``vectors`` float32 [b, d']).

    Features and vectors are built one shard of ``batch_size`` users at a time, so memory is
    bounded by the shard, not by the number of users. Returns the folder
    (``RUN_DIR/user_vectors`` by default).
    """
    run = load_retrieval_run(run_dir)
    folder = Path(out_dir) if out_dir is not None else run.run_dir / "user_vectors"
    folder.mkdir(parents=True, exist_ok=True)
    data = data if data is not None else run.config.load_data()
    impressions = data.impressions
    if user_ids is None:
        user_ids = impressions["user_id"].unique().sort().to_numpy()
    user_ids = np.asarray(user_ids, dtype=np.int64)
    now_ms = int(impressions["time_ms"].max()) + 1 if impressions.height else 0
    shards = []
    for part, start in enumerate(range(0, len(user_ids), batch_size)):
        chunk = user_ids[start:start + batch_size]
        history = impressions.filter(pl.col("user_id").is_in(chunk.tolist()))
        examples = run.featurizer.serving_examples(history, data.users, chunk, at_time_ms=now_ms)
        vectors = np.concatenate(list(user_vector_batches(run.model, examples, 8192)), axis=0)
        name = f"part-{part:05d}.safetensors"
        with atomic_path(folder / name, suffix=".safetensors") as tmp:
            save_file({"user_ids": torch.from_numpy(chunk.copy()), "vectors": torch.from_numpy(vectors)}, str(tmp))
        shards.append({"file": name, "rows": int(len(chunk))})
    atomic_write_json(folder / "user_vectors.json", {
        "shards": shards, "dim": int(run.model.spec.serving_dim), "at_time_ms": now_ms,
        "example_age_days": run.featurizer.config.serving_example_age_days,
        "bias_column": bool(run.model.spec.use_item_bias)})
    return folder


# ---------------------------------------------------------------------------------------------
# Item indexes over a run: build, search, compare with exact
# ---------------------------------------------------------------------------------------------


def item_index(run: RetrievalRun, kind: str, **params: Any) -> VectorIndex:
    """An index of the run's serving item vectors [v_i; b_i], keyed by video id."""
    vectors, video_ids = run.item_vectors()
    index = make_index(kind, vectors.shape[1], **params)
    index.build(vectors, video_ids)
    return index


def search_queries(index: VectorIndex, run: RetrievalRun, examples: RetrievalExamples, k: int,
                batch_size: int) -> tuple[np.ndarray, float]:
    """Top-k ids (video ids) for every example, user vectors computed and searched batch by
    batch; returns (ids [n, k], seconds spent in index search)."""
    out = np.empty((len(examples), k), dtype=np.int64)
    search_seconds = 0.0
    start = 0
    for vectors in user_vector_batches(run.model, examples, batch_size):
        began = time.perf_counter()
        _, ids = index.search(vectors, k)
        search_seconds += time.perf_counter() - began
        out[start:start + len(vectors)] = ids
        start += len(vectors)
    return out, search_seconds


def index_comparison(run: RetrievalRun, examples: RetrievalExamples, index: VectorIndex,
                     exact_top: np.ndarray | None = None, *, k: int = 100, batch_size: int = 4096,
                     n_single_queries: int = 500) -> dict[str, float]:
    """recall@k of ``index`` against the exact top-k on these queries, and query latency.

    ``recall@k_vs_exact`` = mean over queries of |top-k(index) ∩ top-k(exact)| / k.
    ``batch_ms_per_query``: search time of all queries in batches / number of queries;
    ``single_query_ms_p50``/``p99``: one query at a time, over ``n_single_queries`` queries.
    """
    if exact_top is None:
        exact_top, _ = search_queries(item_index(run, "exact"), run, examples, k, batch_size)
    approx_top, seconds = search_queries(index, run, examples, k, batch_size)
    exact_k = exact_top[:, :k]
    overlap = np.array([np.intersect1d(a[a >= 0], e).size for a, e in zip(approx_top, exact_k, strict=True)])
    denominator = np.minimum(k, (exact_k >= 0).sum(axis=1)).clip(min=1)
    sample = examples.take(slice(0, min(n_single_queries, len(examples))))
    vectors = np.concatenate(list(user_vector_batches(run.model, sample, batch_size)), axis=0) if len(sample) else \
        np.zeros((0, index.dim), dtype=np.float32)
    single = []
    for row in vectors:
        began = time.perf_counter()
        index.search(row[None, :], k)
        single.append(time.perf_counter() - began)
    single_ms = np.asarray(single) * 1e3
    return {
        f"recall@{k}_vs_exact": float(np.mean(overlap / denominator)) if len(overlap) else float("nan"),
        "batch_ms_per_query": 1e3 * seconds / max(len(examples), 1),
        "single_query_ms_p50": float(np.percentile(single_ms, 50)) if len(single_ms) else float("nan"),
        "single_query_ms_p99": float(np.percentile(single_ms, 99)) if len(single_ms) else float("nan"),
        "n_queries": int(len(examples)),
        "n_items": int(len(index)),
    }


def replay_queries(run: RetrievalRun, data: InteractionData) -> RetrievalExamples:
    """Every test watch, in time order, with its earlier history and the serving example age."""
    return run.featurizer.replay_examples(data.impressions, data.users, run.config.split().test_mask())


def build_index(run_dir: str | Path, kind: str = "hnsw", *, data: InteractionData | None = None,
                compare: bool = True, **params: Any) -> Path:
    """Build a ``kind`` index ("exact", "hnsw", "ivf"; ``params`` go to its constructor) over the
    run's serving item vectors [v_i; b_i], keyed by *video id*, and save it to ``RUN_DIR/index/``
    (query it with [u; 1]; ``ytdnn.index.load_index`` reads it back).

    The new index is written beside the old one and swapped in only when complete, so a failed
    build leaves the previous index intact. With ``compare``, its recall@100 against the exact
    index and its latency on the test queries are measured, written to
    ``RUN_DIR/index/index_report.json`` and merged into ``retrieval_metrics.json`` (under
    ``"indexes"``) when that file exists. Returns the index folder.
    """
    run = load_retrieval_run(run_dir)
    began = time.perf_counter()
    index = item_index(run, kind, **params)
    build_seconds = time.perf_counter() - began
    report: dict[str, Any] = {"kind": kind, "params": index.params(), "n_items": len(index), "dim": index.dim,
                              "build_seconds": build_seconds}
    if compare:
        data = data if data is not None else run.config.load_data()
        report.update(index_comparison(run, replay_queries(run, data), index, k=100))
    final = run.run_dir / INDEX_DIR
    staging = Path(tempfile.mkdtemp(prefix=f".{INDEX_DIR}.", dir=run.run_dir))
    try:
        index.save(staging)
        atomic_write_json(staging / "index_report.json", report)
        if final.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{INDEX_DIR}.old.", dir=run.run_dir))
            os.replace(final, retired / INDEX_DIR)
            shutil.rmtree(retired)
        os.replace(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    metrics_path = run.run_dir / METRICS_FILE
    if compare and metrics_path.is_file():
        metrics = read_json(metrics_path)
        metrics.setdefault("indexes", {})[kind] = {key: value for key, value in report.items()
                                                   if key not in ("params", "kind")}
        atomic_write_json(metrics_path, metrics)
    return final
