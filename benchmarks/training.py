"""Training throughput of the ranker and the retrieval model against their matrix-product limit.

    python benchmarks/training.py --dataset kuairand --dataset synthetic \
        --synthetic-impressions 1500000 --batch-size 1024 --threads 1

In one process, for every ``--dataset`` (KuaiRand-Pure's train split, and/or a simulated log of
``--synthetic-impressions`` rows):

- the ranker (default ``RankerConfig``: features, 256-128 tower, WLR, Adam) trained for
  ``--epochs`` epochs through :class:`ytdnn.training.trainer.Trainer`. Only the training loop is
  timed (``Trainer.fit`` without validation: permutation, batches, forward, backward, Adam);
  building the features (history, fitting vocabularies and quantiles, tensors) is timed apart;
- the retrieval model (default ``RetrievalConfig``: sampled softmax, 1000 unigram negatives)
  trained for ``--epochs`` epochs with :func:`ytdnn.training.retrieval.fit_candidate_model`;
- the network's own matrix-product limit at the same batch size: the bare ``torch.mm`` calls a
  training step of the dense layers cannot avoid, at the model's real layer shapes. For a layer
  ``Y = X Wᵀ`` with ``X`` [B, n_in], ``W`` [n_out, n_in] that is the forward product and the two
  backward ones, ``dX = dY W`` and ``dW = dYᵀ X``: 3 products of 2·B·n_in·n_out flops each. The
  ranker's first layer counts at its full input width (user + candidate parts: the split layer
  does the same flops as one layer); the retrieval model adds the sampled logits ``U V_negᵀ``
  ([B, d] × [d, K]) as one more layer. The fastest of ``--limit-repeats`` timed blocks is kept
  (the limit is a best case). limit examples/s = B / (seconds per batch of those products); the
  table prints throughput/limit (1.00 = at the limit) and its inverse, how many times slower;
- the peak resident memory of the process so far (``ru_maxrss``) after each stage;
- a per-phase split of ``--breakdown-batches`` ranker steps (batch slicing, embedding inputs,
  dense layers, loss, backward, Adam) and a ``torch.profiler`` profile of one ranker epoch:
  the top ops by self CPU time, the ops grouped by kind, and the part of the wall time spent
  outside any op (Python and dispatch overhead).

One thread by default (``--threads``): the trainers' own default, and the honest figure on a
shared 2-core machine where a second OpenMP thread spins against other processes.
``--out FILE`` writes every figure as JSON (atomically).
"""

from __future__ import annotations

import argparse
import math
import platform
import resource
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import torch

from ytdnn.data.schema import InteractionData
from ytdnn.data.simulator import SimulatorConfig, scale_config, simulate
from ytdnn.data.sources import load_dataset
from ytdnn.data.split import DateSplit
from ytdnn.features.layout import RankingBatch
from ytdnn.features.ranking import RankingFeaturePipeline
from ytdnn.features.retrieval import RetrievalFeaturizer
from ytdnn.models.candidate import CandidateGenerator
from ytdnn.models.ranking import RankingNet
from ytdnn.training.losses import RankingObjective, make_objective
from ytdnn.training.ranker import RankerConfig
from ytdnn.training.retrieval import (RetrievalConfig, fit_candidate_model, make_retrieval_loss, model_spec)
from ytdnn.training.trainer import Trainer, TrainerConfig
from ytdnn.utils.io import atomic_write_json

DATASETS = ("kuairand", "synthetic")
SIMULATED_DAYS = 14  # the simulator's default window: same dates, so the default DateSplit applies


# ---- memory and timing helpers ---------------------------------------------------------------------------------

def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


@dataclass
class MatmulLimit:
    """Best-case seconds per batch of a network's bare dense-layer products, at one batch size."""

    layers: list[tuple[int, int]]  # (n_in, n_out) per layer
    batch_size: int
    seconds_per_batch: float
    gflop_per_batch: float

    @property
    def examples_per_s(self) -> float:
        return self.batch_size / self.seconds_per_batch

    @property
    def gflops(self) -> float:
        return self.gflop_per_batch / self.seconds_per_batch


def matmul_limit(layers: Sequence[tuple[int, int]], batch_size: int, *, repeats: int = 7,
                 min_block_s: float = 0.3, seed: int = 0) -> MatmulLimit:
    """Time the forward product and the two backward products of every layer (see the module docstring).

    Each block runs the products of one training step ``n`` times (``n`` chosen so a block lasts
    about ``min_block_s``); the fastest of ``repeats`` blocks gives the seconds per batch.
    """
    generator = torch.Generator().manual_seed(seed)
    operands = []
    for n_in, n_out in layers:
        x = torch.randn(batch_size, n_in, generator=generator)
        w = torch.randn(n_out, n_in, generator=generator)
        dy = torch.randn(batch_size, n_out, generator=generator)
        operands.append((x, w, dy, w.t(), dy.t()))

    def step() -> None:
        for x, w, dy, w_t, dy_t in operands:
            torch.mm(x, w_t)  # Y = X Wᵀ       [B, n_out]
            torch.mm(dy, w)  # dX = dY W      [B, n_in]
            torch.mm(dy_t, x)  # dW = dYᵀ X     [n_out, n_in]

    for _ in range(3):  # warm-up: thread pools, allocator
        step()
    started = time.perf_counter()
    calls = 0
    while time.perf_counter() - started < min_block_s / 3 or calls < 3:
        step()
        calls += 1
    per_call = (time.perf_counter() - started) / calls
    n = max(1, round(min_block_s / per_call))
    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(n):
            step()
        best = min(best, (time.perf_counter() - started) / n)
    flop = sum(3 * 2 * batch_size * n_in * n_out for n_in, n_out in layers)
    return MatmulLimit([tuple(layer) for layer in layers], batch_size, best, flop / 1e9)


def ranking_layers(network: RankingNet) -> list[tuple[int, int]]:
    """(n_in, n_out) of the ranking tower's dense layers, the first at its full input width."""
    widths = [network.user_width + network.candidate_width, *network.hidden, network.n_heads]
    return list(zip(widths[:-1], widths[1:]))


def retrieval_layers(model: CandidateGenerator, num_negatives: int | None) -> list[tuple[int, int]]:
    """The user tower's layers, then the sampled logits U·V_negᵀ as a [d → K] layer (full softmax: all items)."""
    spec = model.spec
    widths = [spec.input_width, *spec.hidden_dims, spec.output_dim]
    layers = list(zip(widths[:-1], widths[1:]))
    layers.append((spec.output_dim, num_negatives if num_negatives is not None else spec.n_items))
    return layers


# ---- data ---------------------------------------------------------------------------------------------------------

def synthetic_config(n_impressions: int, seed: int) -> SimulatorConfig:
    """A simulated log of about ``n_impressions`` rows shaped like the issue-6 scale set."""
    return scale_config(n_impressions, seed, n_days=SIMULATED_DAYS)


def load(dataset: str, args: argparse.Namespace) -> tuple[InteractionData, float]:
    started = time.perf_counter()
    if dataset == "kuairand":
        data = load_dataset("kuairand-pure", args.data_dir)
    else:
        data = simulate(synthetic_config(args.synthetic_impressions, args.seed))
    return data, time.perf_counter() - started


# ---- the ranker -------------------------------------------------------------------------------------------------

@dataclass
class RankerData:
    pipeline: RankingFeaturePipeline
    train: RankingBatch
    n_validation_days: int
    feature_s: float


def build_ranker_features(data: InteractionData, config: RankerConfig) -> RankerData:
    """The ranker job's feature path (``train_ranker``): history on the train split, pipeline fitted
    and applied on the train days minus the validation days (the rows the network trains on)."""
    started = time.perf_counter()
    split = DateSplit(train_end=config.data.train_end, test_start=config.data.test_start,
                      validation_days=config.data.validation_days)
    pipeline = RankingFeaturePipeline(config.features)
    train_part = data.impressions.filter(split.train_mask())
    validation_dates = split.validation_dates(train_part)
    with_history = pipeline.add_history(train_part, data.videos)
    fit_frame = with_history.filter(~pl.col("date").is_in(validation_dates))
    pipeline.fit(fit_frame, data.users, data.videos)
    train = pipeline.transform(fit_frame, data.users, data.videos)
    return RankerData(pipeline, train, len(validation_dates), time.perf_counter() - started)


def new_ranker(features: RankerData, config: RankerConfig) -> tuple[RankingNet, RankingObjective]:
    """A fresh network with the output bias at the objective's bias-only optimum (as ``train_ranker``)."""
    objective = make_objective(config.objective.name, **config.objective.params)
    objective.fit(features.train.is_click, features.train.watch_time_s)
    torch.manual_seed(config.seed)
    network = RankingNet(features.pipeline.layout, hidden=config.model.hidden, n_heads=objective.n_heads,
                         dropout=config.model.dropout)
    network.set_output_bias(objective.init_bias(features.train.is_click, features.train.watch_time_s))
    return network, objective


def trainer_config(config: RankerConfig, args: argparse.Namespace) -> TrainerConfig:
    # The ranker's optimiser settings; no validation set, so no early stopping and no eval pass.
    return config.train.model_copy(update={"batch_size": args.batch_size, "epochs": args.epochs, "patience": 0,
                                           "early_stopping_metric": "val_loss", "seed": config.seed,
                                           "num_threads": args.threads, "progress": False,
                                           "checkpoint_dir": None})


def train_ranker_once(features: RankerData, config: RankerConfig, args: argparse.Namespace) -> tuple[int, float]:
    """(examples trained on, seconds of ``Trainer.fit``)."""
    network, objective = new_ranker(features, config)
    trainer = Trainer(network, objective, features.train, None, trainer_config(config, args))
    started = time.perf_counter()
    history = trainer.fit()
    return history.examples_seen, time.perf_counter() - started


PHASES = ("slice batch", "embedding inputs (fwd)", "dense layers (fwd)", "loss (fwd)", "backward", "Adam step")


def ranker_phase_breakdown(features: RankerData, config: RankerConfig, args: argparse.Namespace) -> dict[str, float]:
    """Seconds per phase over ``--breakdown-batches`` training steps, the trainer's step taken apart.

    The forward is ``RankingNet.forward_tensors`` split at the first layer: the embedding lookups
    and means of bags that build [x_u; x_c], then the dense layers. Backward covers both halves
    (embedding gradients included); the Adam step includes ``zero_grad``.
    """
    network, objective = new_ranker(features, config)
    optimizer = torch.optim.Adam(network.parameters(), lr=config.train.lr, weight_decay=config.train.weight_decay,
                                 fused=True)
    data = features.train
    n_rows = len(data)
    shuffled = data.index(torch.randperm(n_rows, generator=torch.Generator().manual_seed(config.seed)))
    seconds: dict[str, float] = defaultdict(float)
    network.train()
    steps = 0
    clock = time.perf_counter
    for start in range(0, n_rows, args.batch_size):
        if steps == args.breakdown_batches:
            break
        t0 = clock()
        batch = RankingBatch(shuffled.categorical[start:start + args.batch_size],
                             [m[start:start + args.batch_size] for m in shuffled.multivalent],
                             shuffled.dense[start:start + args.batch_size],
                             shuffled.is_click[start:start + args.batch_size],
                             shuffled.watch_time_s[start:start + args.batch_size])
        t1 = clock()
        x_user = network.user_input(batch.categorical, batch.multivalent, batch.dense)
        x_candidate = network.candidate_input(batch.categorical, batch.multivalent, batch.dense)
        t2 = clock()
        outputs = network.tower(network.user_linear(x_user) + network.candidate_linear(x_candidate))
        t3 = clock()
        loss = objective.loss(outputs, batch.is_click, batch.watch_time_s)
        t4 = clock()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t5 = clock()
        optimizer.step()
        t6 = clock()
        for phase, duration in zip(PHASES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5)):
            seconds[phase] += duration
        steps += 1
    return {"steps": steps, **{phase: seconds[phase] for phase in PHASES}}


# Profiler op names grouped by what they do in a ranker step (self CPU time summed per group).
OP_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("dense matmuls (mm/addmm)", ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear")),
    ("Adam step (fused)", ("aten::_fused_adam_", "Optimizer.step", "aten::_foreach")),
    ("embedding backward (dense grads of whole tables)",
     ("aten::embedding_dense_backward", "aten::embedding_backward", "aten::index_add_", "aten::_index_put_impl_",
      "aten::index_put_", "aten::sort", "aten::scatter_add_", "aten::_embedding_bag_backward")),
    ("embedding lookups (gather)", ("aten::embedding", "aten::index_select", "aten::index", "aten::take")),
    ("zero fills / allocation", ("aten::zero_", "aten::fill_", "aten::zeros", "aten::empty", "aten::empty_strided",
                                 "aten::zeros_like", "aten::new_zeros", "aten::resize_")),
    ("copies / cat / casts", ("aten::copy_", "aten::cat", "aten::to", "aten::_to_copy", "aten::contiguous",
                              "aten::clone", "aten::slice", "aten::select", "aten::narrow")),
    ("elementwise + reductions (mean of bags, ReLU, loss)",
     ("aten::mul", "aten::sum", "aten::div", "aten::ne", "aten::clamp", "aten::add", "aten::relu",
      "aten::threshold_backward", "aten::sub", "aten::exp", "aten::log", "aten::neg", "aten::mean",
      "aten::where", "aten::sigmoid", "aten::softplus", "aten::log1p", "aten::_log_softmax",
      "aten::binary_cross_entropy_with_logits", "aten::expand", "aten::unsqueeze", "aten::masked_fill",
      "aten::abs", "aten::max", "aten::min", "aten::maximum", "aten::minimum", "aten::pow", "aten::sqrt")),
)


def _op_group(name: str) -> str:
    for group, prefixes in OP_GROUPS:
        if any(name == prefix or name.startswith(prefix) for prefix in prefixes):
            return group
    return "other ops"


@dataclass
class Profile:
    wall_s: float
    op_self_s: float  # sum of every op's self CPU time
    table: str
    groups: dict[str, float] = field(default_factory=dict)  # seconds per OP_GROUPS group

    @property
    def outside_ops_s(self) -> float:
        """Wall time in no op at all: Python (trainer loop, module calls), autograd bookkeeping, profiler."""
        return max(0.0, self.wall_s - self.op_self_s)


def profile_ranker_epoch(features: RankerData, config: RankerConfig, args: argparse.Namespace) -> Profile:
    """One ranker epoch through the Trainer under ``torch.profiler`` (CPU activity, no shapes/stacks)."""
    from torch.profiler import ProfilerActivity, profile

    network, objective = new_ranker(features, config)
    profile_args = argparse.Namespace(**(vars(args) | {"epochs": 1}))
    trainer = Trainer(network, objective, features.train, None, trainer_config(config, profile_args))
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        started = time.perf_counter()
        trainer.fit()
        wall = time.perf_counter() - started
    averages = profiler.key_averages()
    groups: dict[str, float] = defaultdict(float)
    op_self = 0.0
    for event in averages:
        self_s = event.self_cpu_time_total / 1e6
        op_self += self_s
        groups[_op_group(event.key)] += self_s
    table = averages.table(sort_by="self_cpu_time_total", row_limit=10, max_name_column_width=48)
    return Profile(wall, op_self, table, dict(sorted(groups.items(), key=lambda item: -item[1])))


# ---- the retrieval model -----------------------------------------------------------------------------------------

def measure_retrieval(data: InteractionData, args: argparse.Namespace) -> dict[str, Any]:
    """``train_retrieval``'s steps without writing a run folder: featurise, then ``--epochs`` epochs."""
    config = RetrievalConfig(seed=args.seed)
    training = config.train.model_copy(update={"epochs": args.epochs, "num_threads": args.threads})
    started = time.perf_counter()
    train, _ = config.split().split(data)
    featurizer = RetrievalFeaturizer.fit(train, data.users, config.features)
    examples = featurizer.training_examples(train, data.users, seed=config.seed)
    feature_s = time.perf_counter() - started
    model = CandidateGenerator(model_spec(config, featurizer))
    loss = make_retrieval_loss(config.loss, featurizer.item_train_clicks)
    started = time.perf_counter()
    records = fit_candidate_model(model, examples, loss, training, seed=config.seed)
    train_s = time.perf_counter() - started
    negatives = config.loss.num_negatives if config.loss.kind == "sampled" else None
    limit = matmul_limit(retrieval_layers(model, negatives), training.batch_size, repeats=args.limit_repeats)
    n_examples = sum(int(r["examples"]) for r in records)
    return {"n_examples": n_examples, "feature_s": feature_s, "train_s": train_s, "batch_size": training.batch_size,
            "examples_per_s": n_examples / train_s, "limit": limit, "n_items": featurizer.n_items,
            "n_parameters": sum(p.numel() for p in model.parameters())}


# ---- reporting -------------------------------------------------------------------------------------------------

@dataclass
class Row:
    model: str
    dataset: str
    rows_per_epoch: int
    batch_size: int
    feature_s: float
    train_s: float
    examples_per_s: float
    limit_examples_per_s: float
    limit_gflops: float
    parameters: int
    peak_rss_mib: float

    @property
    def ratio(self) -> float:
        """How many times slower than the matrix-product limit (1.0 = at the limit)."""
        return self.limit_examples_per_s / self.examples_per_s


def print_table(rows: list[Row]) -> None:
    header = (f"{'model':<10} {'dataset':<10} {'rows/epoch':>11} {'batch':>6} {'features s':>10} {'train s':>8} "
              f"{'examples/s':>11} {'limit ex/s':>11} {'thru/limit':>10} {'limit/thru':>10} {'mm GFLOP/s':>10} "
              f"{'params':>10} {'peak MiB':>9}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r.model:<10} {r.dataset:<10} {r.rows_per_epoch:>11,} {r.batch_size:>6} {r.feature_s:>10.1f} "
              f"{r.train_s:>8.1f} {r.examples_per_s:>11,.0f} {r.limit_examples_per_s:>11,.0f} "
              f"{1 / r.ratio:>10.2f} {r.ratio:>9.1f}x {r.limit_gflops:>10.1f} {r.parameters:>10,} "
              f"{r.peak_rss_mib:>9,.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", action="append", choices=DATASETS,
                        help="repeat for several; default: kuairand and synthetic")
    parser.add_argument("--data-dir", default=None, help="folder holding KuaiRand-Pure (default: $YTDNN_DATA_DIR, "
                                                          "../shared/data)")
    parser.add_argument("--synthetic-impressions", type=int, default=1_500_000)
    parser.add_argument("--batch-size", type=int, default=1024, help="the ranker's batch (the retrieval model "
                                                                      "keeps its default)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--no-retrieval", action="store_true", help="measure the ranker only")
    parser.add_argument("--profile", choices=(*DATASETS, "none"), default=None,
                        help="dataset whose ranker epoch is profiled (default: the first one)")
    parser.add_argument("--breakdown-batches", type=int, default=200, help="ranker steps in the per-phase split")
    parser.add_argument("--limit-repeats", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    args = parser.parse_args()
    datasets = list(dict.fromkeys(args.dataset or DATASETS))
    for name, value in (("--synthetic-impressions", args.synthetic_impressions), ("--batch-size", args.batch_size),
                        ("--epochs", args.epochs), ("--threads", args.threads)):
        if value < 1:
            parser.error(f"{name} must be >= 1, got {value}")
    profiled = args.profile or datasets[0]

    torch.set_num_threads(args.threads)
    # The first optimiser built in a process imports torch._dynamo (2.5-4 s here): a one-off cost
    # paid here so that it does not count as training time of the first model measured.
    torch.optim.Adam([torch.zeros(1, requires_grad=True)], fused=True)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {platform.processor() or platform.machine()}, "
          f"datasets {datasets}, ranker batch {args.batch_size}, epochs {args.epochs}")
    config = RankerConfig(seed=args.seed)
    rows: list[Row] = []
    results: dict[str, Any] = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                               "torch": torch.__version__, "datasets": {}}
    profile: Profile | None = None
    for dataset in datasets:
        data, load_s = load(dataset, args)
        n_impressions = data.impressions.height
        print(f"\n[{dataset}] {n_impressions:,} impressions, {data.users.height:,} users, "
              f"{data.videos.height:,} videos (loaded in {load_s:.1f} s); peak RSS {peak_rss_mib():,.0f} MiB")
        features = build_ranker_features(data, config)
        print(f"[{dataset}] ranker features: {len(features.train):,} training rows in {features.feature_s:.1f} s; "
              f"peak RSS {peak_rss_mib():,.0f} MiB")
        seen, train_s = train_ranker_once(features, config, args)
        network, _ = new_ranker(features, config)
        limit = matmul_limit(ranking_layers(network), args.batch_size, repeats=args.limit_repeats)
        rows.append(Row("ranker", dataset, len(features.train), args.batch_size, features.feature_s, train_s,
                        seen / train_s, limit.examples_per_s, limit.gflops,
                        sum(p.numel() for p in network.parameters()), peak_rss_mib()))
        print(f"[{dataset}] ranker: {seen:,} examples in {train_s:.1f} s = {seen / train_s:,.0f}/s; matmul limit "
              f"{limit.examples_per_s:,.0f}/s (layers {limit.layers}, {limit.gflops:.1f} GFLOP/s); "
              f"{rows[-1].ratio:.1f}x below the limit")
        breakdown = ranker_phase_breakdown(features, config, args)
        step_total = sum(breakdown[p] for p in PHASES)
        print(f"[{dataset}] ranker step, {breakdown['steps']} batches: " + ", ".join(
            f"{p} {1e3 * breakdown[p] / breakdown['steps']:.2f} ms ({100 * breakdown[p] / step_total:.0f}%)"
            for p in PHASES) + f"; matmul limit {1e3 * limit.seconds_per_batch:.2f} ms")
        entry: dict[str, Any] = {
            "impressions": n_impressions, "users": data.users.height, "videos": data.videos.height, "load_s": load_s,
            "ranker": asdict(rows[-1]) | {"ratio": rows[-1].ratio, "limit": asdict(limit),
                                           "layout_tables": [asdict(t) for t in features.pipeline.layout.tables],
                                           "step_breakdown_s": breakdown}}
        if not args.no_retrieval:
            retrieval = measure_retrieval(data, args)
            r_limit: MatmulLimit = retrieval["limit"]
            rows.append(Row("retrieval", dataset, retrieval["n_examples"] // args.epochs, retrieval["batch_size"],
                            retrieval["feature_s"], retrieval["train_s"], retrieval["examples_per_s"],
                            r_limit.examples_per_s, r_limit.gflops, retrieval["n_parameters"], peak_rss_mib()))
            print(f"[{dataset}] retrieval: {retrieval['n_examples']:,} examples in {retrieval['train_s']:.1f} s = "
                  f"{retrieval['examples_per_s']:,.0f}/s; matmul limit {r_limit.examples_per_s:,.0f}/s "
                  f"(layers {r_limit.layers}); {rows[-1].ratio:.1f}x below the limit")
            entry["retrieval"] = asdict(rows[-1]) | {"ratio": rows[-1].ratio, "limit": asdict(r_limit),
                                                     "n_items": retrieval["n_items"]}
        if dataset == profiled:  # last, so that the profiler's own memory is in no row's peak
            profile = profile_ranker_epoch(features, config, args)
            entry["profile"] = asdict(profile) | {"outside_ops_s": profile.outside_ops_s}
            print(f"[{dataset}] profiled one ranker epoch; peak RSS {peak_rss_mib():,.0f} MiB")
        results["datasets"][dataset] = entry
        del data, features

    print("\nthru/limit = measured examples/s over the matrix-product limit's examples/s (1.00 = at the limit); "
          "limit/thru = its inverse, how many times slower than the limit")
    print_table(rows)
    if profile is not None:
        print(f"\nProfile of one ranker epoch on {profiled} (torch.profiler, CPU): wall {profile.wall_s:.1f} s, "
              f"in ops {profile.op_self_s:.1f} s, outside any op (Python, autograd, profiler) "
              f"{profile.outside_ops_s:.1f} s ({100 * profile.outside_ops_s / profile.wall_s:.0f}%)")
        for group, seconds in profile.groups.items():
            print(f"  {group:<52} {seconds:7.2f} s  {100 * seconds / profile.wall_s:5.1f}% of wall")
        print(profile.table)
    results["peak_rss_mib"] = peak_rss_mib()
    print(f"peak RSS of the process: {results['peak_rss_mib']:,.0f} MiB")
    if args.out is not None:
        atomic_write_json(args.out, results)


if __name__ == "__main__":
    main()
