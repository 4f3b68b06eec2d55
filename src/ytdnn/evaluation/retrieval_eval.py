"""Retrieval evaluation: replay every test watch, score the model and three baselines, compare indexes.

Protocol (``docs/metrics.md``, "Retrieval"): every watch (clicked impression) of the test days is
a query, in time order; its features come from the user's events strictly before it (training
*and* earlier test-day events; the model's weights stay fixed) with the serving example age.
Each method retrieves its top ``K = 200`` videos and is scored by ``recall@{10,50,100,200}``,
``ndcg@10`` (one relevant video) and ``coverage`` (distinct videos retrieved in the top 200 /
corpus size).

All methods choose from the same corpus, the model's (videos with at least
``features.min_item_clicks`` training watches): a test watch of a video outside it is a miss for
every method, and coverage has the same denominator everywhere.

Baselines, scored the same way:

- ``popularity``: training watches per video, the same list for every query.
- ``popularity_24h``: watches of each video by *anyone* in the 24 hours before the query,
  ``[t - 24 h, t)``; ties (and videos without a recent watch) ordered by ``popularity``. It peeks
  at other users' test-day watches, so it is a strong, slightly unfair reference.
- ``cooccurrence``: "users who watched X also watched Y". ``C[x, y]`` = number of training users
  who watched both x and y (x ≠ y); a query scores ``y`` by ``Σ_{x ∈ H} C[x, y]`` over the
  distinct videos ``H`` of its last ``history_length`` watches; ties ordered by ``popularity``.

``evaluate_retrieval(run_dir)`` writes ``RUN_DIR/retrieval_metrics.json``::

    {"model": "youtube_dnn",
     "methods": {"youtube_dnn": {"recall@10": …, "recall@50": …, "recall@100": …,
                                 "recall@200": …, "ndcg@10": …, "coverage": …},
                 "popularity": {…}, "popularity_24h": {…}, "cooccurrence": {…}},
     "n_queries": …, "corpus_size": …,
     "indexes": {"hnsw": {"recall@100_vs_exact": …, "batch_ms_per_query": …, …}, …}}

The FAISS indexes are compared with the exact one on the same queries (recall@100 against exact,
query latency); ``ytdnn.training.retrieval.build_index`` writes an index into the run folder and
adds its figures to this file.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from ytdnn.data.schema import InteractionData
from ytdnn.evaluation.metrics import retrieval_metrics
from ytdnn.features.retrieval import RetrievalExamples, RetrievalFeaturizer
from ytdnn.training.retrieval import (
    METRICS_FILE,
    index_comparison,
    item_index,
    load_retrieval_run,
    replay_queries,
    search_queries,
)
from ytdnn.training.trainer import torch_threads
from ytdnn.utils.io import atomic_write_json

__all__ = [
    "BASELINES",
    "METRICS_FILE",
    "MODEL_NAME",
    "RETRIEVAL_K",
    "Cooccurrence",
    "baseline_rankings",
    "cooccurrence_matrix",
    "cooccurrence_topk",
    "evaluate_retrieval",
    "popularity_24h_topk",
    "popularity_topk",
    "format_retrieval_table",
]

MODEL_NAME = "youtube_dnn"
BASELINES = ("popularity", "popularity_24h", "cooccurrence")
RETRIEVAL_K = 200
MS_PER_DAY = 86_400_000
DEFAULT_INDEX_KINDS = ("hnsw", "ivf")


# ---------------------------------------------------------------------------------------------
# Baselines. Every function returns corpus indices int64 [n_queries, k] (best first) so they
# are scored exactly like the model; ``train_watches`` is in corpus order (most watched first).
# ---------------------------------------------------------------------------------------------


def _popularity_order(train_watches: np.ndarray) -> np.ndarray:
    """Corpus indices by train watches, most first; equal counts by corpus index (stable)."""
    return np.argsort(-np.asarray(train_watches, dtype=np.int64), kind="stable")


def _tiebreak(train_watches: np.ndarray) -> np.ndarray:
    """A score in [0, 1) that orders items like ``popularity`` and never beats a whole count."""
    rank = np.empty(len(train_watches), dtype=np.float64)
    rank[_popularity_order(train_watches)] = np.arange(len(train_watches))
    return 1.0 - (rank + 1.0) / (len(train_watches) + 1.0)


def popularity_topk(train_watches: np.ndarray, n_queries: int, k: int = RETRIEVAL_K) -> np.ndarray:
    """The ``k`` most watched corpus items in training, the same row for every query."""
    top = _popularity_order(train_watches)[:k]
    return np.broadcast_to(top, (n_queries, len(top))).copy()


def _topk_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest entries of each row, best first.

    Callers add the popularity tiebreak (distinct per item, below one count), so rows have no
    ties and the order is deterministic.
    """
    k = min(k, scores.shape[1])
    return torch.topk(torch.from_numpy(scores), k, dim=1, sorted=True).indices.numpy().astype(np.int64)


def popularity_24h_topk(watch_item: np.ndarray, watch_time_ms: np.ndarray, query_time_ms: np.ndarray,
                        train_watches: np.ndarray, k: int = RETRIEVAL_K, window_ms: int = MS_PER_DAY,
                        batch_size: int = 256) -> np.ndarray:
    """Per query at time t: corpus items by number of watches in ``[t - window_ms, t)``.

    ``watch_item``/``watch_time_ms``: every logged watch of a corpus item (any user, any day).
    Distinct query times are processed in time order, ``batch_size`` at a time: with ``head_j``
    (``tail_j``) the number of watches before ``t_j`` (before ``t_j - window_ms``), the counts at
    ``t_j`` are the counts at the previous time plus the watches in ``[head_{j-1}, head_j)``
    minus those in ``[tail_{j-1}, tail_j)``: a cumulative sum over one delta matrix per batch.
    """
    n_items = len(train_watches)
    order = np.argsort(watch_time_ms, kind="stable")
    items = np.asarray(watch_item, dtype=np.int64)[order]
    times = np.asarray(watch_time_ms, dtype=np.int64)[order]
    distinct_times, inverse = np.unique(np.asarray(query_time_ms, dtype=np.int64), return_inverse=True)
    heads = np.searchsorted(times, distinct_times, side="left")
    tails = np.searchsorted(times, distinct_times - window_ms, side="left")
    tiebreak = _tiebreak(train_watches)
    counts = np.zeros(n_items, dtype=np.float64)
    head = tail = 0
    rows = np.empty((len(distinct_times), min(k, n_items)), dtype=np.int64)
    for start in range(0, len(distinct_times), batch_size):
        block_heads, block_tails = heads[start:start + batch_size], tails[start:start + batch_size]
        delta = np.zeros((len(block_heads), n_items), dtype=np.float64)
        # Watch e (head <= e < last head) first counts at the first j with head_j > e.
        entering = np.arange(head, block_heads[-1])
        np.add.at(delta, (np.searchsorted(block_heads, entering, side="right"), items[entering]), 1.0)
        leaving = np.arange(tail, block_tails[-1])
        np.add.at(delta, (np.searchsorted(block_tails, leaving, side="right"), items[leaving]), -1.0)
        window_counts = counts + np.cumsum(delta, axis=0)
        rows[start:start + len(block_heads)] = _topk_rows(window_counts + tiebreak, k)
        counts, head, tail = window_counts[-1], int(block_heads[-1]), int(block_tails[-1])
    return rows[inverse.reshape(-1)]


@dataclass(frozen=True)
class Cooccurrence:
    """C [n_items, n_items] in CSR form: row x holds the y with C[x, y] > 0 and their counts."""

    indptr: np.ndarray  # int64 [n_items + 1]
    indices: np.ndarray  # int64 [nnz], sorted within each row
    counts: np.ndarray  # float64 [nnz]

    @property
    def n_items(self) -> int:
        return len(self.indptr) - 1

    def dense(self) -> np.ndarray:
        out = np.zeros((self.n_items, self.n_items))
        rows = np.repeat(np.arange(self.n_items), np.diff(self.indptr))
        out[rows, self.indices] = self.counts
        return out


def cooccurrence_matrix(train_user: np.ndarray, train_item: np.ndarray, n_items: int) -> Cooccurrence:
    """C[x, y] = number of training users who watched both x and y (x ≠ y), from (user, item) watches.

    Every ordered pair of distinct items of a user's distinct watches is generated at once (no
    Python loop): memory is Σ_u n_u² over users' distinct watch counts n_u.
    """
    pairs = np.unique(np.stack([np.asarray(train_user, np.int64), np.asarray(train_item, np.int64)]), axis=1)
    user, item = pairs[0], pairs[1]  # sorted by user, then item
    if len(user) == 0:
        return Cooccurrence(np.zeros(n_items + 1, np.int64), np.zeros(0, np.int64), np.zeros(0))
    _, block_start, block_size = np.unique(user, return_index=True, return_counts=True)
    block_of_row = np.repeat(np.arange(len(block_start)), block_size)
    partners = block_size[block_of_row]  # each row pairs with every row of its user's block
    left = np.repeat(np.arange(len(user)), partners)
    first_pair = np.cumsum(partners) - partners
    right = block_start[block_of_row[left]] + (np.arange(len(left)) - np.repeat(first_pair, partners))
    keep = left != right
    keys, counts = np.unique(item[left[keep]] * n_items + item[right[keep]], return_counts=True)
    indptr = np.searchsorted(keys, np.arange(n_items + 1, dtype=np.int64) * n_items, side="left")
    return Cooccurrence(indptr.astype(np.int64), keys % n_items, counts.astype(np.float64))


def cooccurrence_topk(cooccurrence: Cooccurrence, history: np.ndarray, train_watches: np.ndarray,
                      k: int = RETRIEVAL_K, batch_size: int = 256) -> np.ndarray:
    """Per query: corpus items by Σ_{x ∈ distinct history} C[x, ·], ties by popularity.

    ``history`` holds corpus index + 1 per row (0 = padding), as built for the model.
    """
    n_items = cooccurrence.n_items
    tiebreak = _tiebreak(train_watches)
    out = np.empty((history.shape[0], min(k, n_items)), dtype=np.int64)
    indptr, indices, counts = cooccurrence.indptr, cooccurrence.indices, cooccurrence.counts
    for start in range(0, history.shape[0], batch_size):
        block = history[start:start + batch_size]
        rows, cols = np.nonzero(block)
        query, item = np.unique(np.stack([rows, block[rows, cols] - 1]), axis=1)  # distinct videos per query
        length = indptr[item + 1] - indptr[item]
        entry = np.repeat(indptr[item], length) + (np.arange(length.sum()) - np.repeat(np.cumsum(length) - length,
                                                                                       length))
        flat = np.repeat(query, length) * n_items + indices[entry]
        scores = np.bincount(flat, weights=counts[entry], minlength=len(block) * n_items).reshape(len(block), n_items)
        out[start:start + len(block)] = _topk_rows(scores + tiebreak, k)
    return out


def _video_ids(top_corpus: np.ndarray, featurizer: RetrievalFeaturizer) -> np.ndarray:
    return np.where(top_corpus >= 0, featurizer.video_ids[np.maximum(top_corpus, 0)], -1)


def _score(retrieved_video_ids: np.ndarray, examples: RetrievalExamples, corpus_size: int) -> dict[str, float]:
    # Scored on video ids: a watch of a video outside the corpus (target -1) is a miss.
    return retrieval_metrics(retrieved_video_ids, examples.video_id, corpus_size)


def baseline_rankings(featurizer: RetrievalFeaturizer, data: InteractionData, train: pl.DataFrame,
                      examples: RetrievalExamples, k: int = RETRIEVAL_K) -> dict[str, np.ndarray]:
    """Top-k corpus indices of every baseline for ``examples`` (see the module docstring)."""
    train_watches = featurizer.item_train_clicks
    watches = data.impressions.filter(pl.col("is_click") == 1).select("user_id", "video_id", "time_ms") \
        .unique(maintain_order=True)
    corpus = featurizer.corpus_index(watches["video_id"].to_numpy())
    in_corpus = corpus >= 0
    train_watch = train.filter(pl.col("is_click") == 1)
    train_corpus = featurizer.corpus_index(train_watch["video_id"].to_numpy())
    keep = train_corpus >= 0
    matrix = cooccurrence_matrix(train_watch["user_id"].to_numpy()[keep], train_corpus[keep], featurizer.n_items)
    return {
        "popularity": popularity_topk(train_watches, len(examples), k),
        "popularity_24h": popularity_24h_topk(corpus[in_corpus], watches["time_ms"].to_numpy()[in_corpus],
                                              examples.time_ms, train_watches, k),
        "cooccurrence": cooccurrence_topk(matrix, examples.history, train_watches, k),
    }


def evaluate_retrieval(run_dir: str | Path, *, data: InteractionData | None = None,
                       index_kinds: Sequence[str] = DEFAULT_INDEX_KINDS, k: int = RETRIEVAL_K,
                       batch_size: int = 4096, num_threads: int | None = None) -> dict[str, Any]:
    """Score the run's model and the baselines on the test watches; write and return the report.

    The model retrieves with the exact index (``u·v_i + b_i``, top ``k``). For each kind in
    ``index_kinds`` (FAISS ``hnsw``/``ivf`` with default parameters) an index of the same item
    vectors is built in memory and compared with the exact one on the same queries. ``data``
    overrides loading the run's dataset; ``num_threads`` defaults to the run's ``train.num_threads``.
    """
    run = load_retrieval_run(run_dir)
    data = data if data is not None else run.config.load_data()
    with torch_threads(num_threads or run.config.threads()):
        train, _ = run.config.split().split(data)
        examples = replay_queries(run, data)
        if len(examples) == 0:
            raise ValueError(f"{run.run_dir}: the test split has no watch to replay")
        exact = item_index(run, "exact")
        model_top, exact_seconds = search_queries(exact, run, examples, k, batch_size)
        corpus_size = run.featurizer.n_items
        methods: dict[str, dict[str, float]] = {MODEL_NAME: _score(model_top, examples, corpus_size)}
        for name, top in baseline_rankings(run.featurizer, data, train, examples, k).items():
            methods[name] = _score(_video_ids(top, run.featurizer), examples, corpus_size)
        indexes: dict[str, dict[str, float]] = {
            "exact": {"recall@100_vs_exact": 1.0, "batch_ms_per_query": 1e3 * exact_seconds / len(examples)}}
        for kind in index_kinds:
            indexes[kind] = index_comparison(run, examples, item_index(run, kind), model_top, k=100,
                                             batch_size=batch_size)
    report = {"model": MODEL_NAME, "methods": methods, "n_queries": len(examples),
              "n_queries_outside_corpus": int((examples.target < 0).sum()),
              "corpus_size": run.featurizer.n_items, "indexes": indexes}
    atomic_write_json(run.run_dir / METRICS_FILE, report)
    return report


def format_retrieval_table(report: dict[str, Any], methods: Iterable[str] | None = None) -> str:
    """A small text table of a report's methods (for logs and the CLI)."""
    names = list(methods) if methods is not None else list(report["methods"])
    keys = ["recall@10", "recall@50", "recall@100", "recall@200", "ndcg@10", "coverage"]
    lines = ["method".ljust(16) + "".join(key.rjust(12) for key in keys)]
    for name in names:
        row = report["methods"][name]
        lines.append(name.ljust(16) + "".join(f"{row.get(key, float('nan')):12.4f}" for key in keys))
    return "\n".join(lines)
