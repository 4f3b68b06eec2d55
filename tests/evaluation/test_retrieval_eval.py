"""Retrieval evaluation: baselines on hand-worked cases, the report's shape, index comparison."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from ytdnn.data.schema import write_dataset
from ytdnn.data.simulator import SimulatorConfig, simulate
from ytdnn.evaluation.retrieval_eval import (
    BASELINES,
    MODEL_NAME,
    cooccurrence_matrix,
    cooccurrence_topk,
    evaluate_retrieval,
    popularity_24h_topk,
    popularity_topk,
)
from ytdnn.index import load_index
from ytdnn.training.retrieval import (
    RetrievalConfig,
    build_index,
    load_retrieval_run,
    replay_queries,
    train_retrieval,
)
from ytdnn.utils.io import read_json

HOUR = 3_600_000
METRIC_KEYS = {"recall@10", "recall@50", "recall@100", "recall@200", "ndcg@10", "coverage"}


def test_popularity_orders_by_train_watches_ties_by_corpus_order() -> None:
    top = popularity_topk(np.array([3, 9, 3, 1]), n_queries=2, k=3)
    assert top.tolist() == [[1, 0, 2], [1, 0, 2]]


def test_popularity_24h_counts_the_window_before_each_query() -> None:
    # Corpus of 3 items; training popularity orders them 0, 1, 2 (used for ties).
    train_watches = np.array([5, 3, 1])
    watch_item = np.array([2, 1, 1, 2])
    watch_time = np.array([0, 10, 20, 30]) * HOUR
    queries = np.array([0, 24 * HOUR, 24 * HOUR + 1, 25 * HOUR, 30 * HOUR, 31 * HOUR])
    # t=0: nothing before -> popularity 0,1,2.
    # t=24h: window [0, 24h) holds item 2@0h, item 1@10h, 1@20h -> 1 (2), 2 (1), 0.
    # t=24h+1ms: item 2@0h has left the window -> 1 (2), then 0, 2 by popularity.
    # t=25h: same as above. t=30h: the watch at exactly 30h is not *before* it -> 1, 0, 2.
    # t=31h: window [7h, 31h) holds 1@10h, 1@20h, 2@30h -> 1, 2, 0.
    expected = [[0, 1, 2], [1, 2, 0], [1, 0, 2], [1, 0, 2], [1, 0, 2], [1, 2, 0]]
    for batch_size in (1, 2, 256):  # the batched sweep carries counts across batches
        got = popularity_24h_topk(watch_item, watch_time, queries, train_watches, k=3, batch_size=batch_size)
        assert got.tolist() == expected
    # Queries in any order, with repeats, get the rows of their own times.
    shuffled = popularity_24h_topk(watch_item, watch_time, queries[[5, 0, 5, 1]], train_watches, k=3)
    assert shuffled.tolist() == [expected[5], expected[0], expected[5], expected[1]]


def test_cooccurrence_matrix_hand_case() -> None:
    # u1 watched {0, 1}; u2 watched {0, 1, 2} (and 1 twice); u3 watched {2, 3}.
    users = np.array([1, 1, 2, 2, 2, 2, 3, 3])
    items = np.array([0, 1, 0, 1, 2, 1, 2, 3])
    matrix = cooccurrence_matrix(users, items, n_items=4).dense()
    # C[x, y] = users who watched both, diagonal 0: (0,1) by u1 and u2; (0,2), (1,2) by u2; (2,3) by u3.
    assert matrix.tolist() == [[0, 2, 1, 0], [2, 0, 1, 0], [1, 1, 0, 1], [0, 0, 1, 0]]


def test_cooccurrence_scores_sum_over_distinct_history() -> None:
    matrix = cooccurrence_matrix(np.array([1, 1, 2, 2, 2, 3, 3]), np.array([0, 1, 0, 1, 2, 2, 3]), n_items=4)
    train_watches = np.array([2, 2, 2, 1])  # ties -> corpus order 0, 1, 2, 3
    # History rows hold corpus index + 1 (0 = padding).
    history = np.array([[0, 0, 1],  # {0}: C[0] = [0, 2, 1, 0] -> 1, 2, then 0, 3 by popularity
                        [3, 3, 4],  # {2, 3} (2 counted once): C[2] + C[3] = [1, 1, 1, 1] -> 0, 1, 2, 3
                        [0, 0, 0]])  # no history: popularity
    for batch_size in (1, 256):
        got = cooccurrence_topk(matrix, history, train_watches, k=4, batch_size=batch_size)
        assert got.tolist() == [[1, 2, 0, 3], [0, 1, 2, 3], [0, 1, 2, 3]]


@pytest.fixture(scope="module")
def evaluated_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data_dir = tmp_path_factory.mktemp("sim")
    write_dataset(simulate(SimulatorConfig(n_users=300, n_videos=300, impressions_per_user_day=6.0, n_topics=8,
                                           n_tokens=64, seed=4)), data_dir)
    config = RetrievalConfig.load(None, {"data.dataset": str(data_dir), "train.epochs": 2, "train.num_threads": 1,
                                         "model.hidden_dims": [32], "model.output_dim": 16,
                                         "model.watch_embedding_dim": 16, "loss.num_negatives": 64})
    run_dir = train_retrieval(config, tmp_path_factory.mktemp("run"))
    evaluate_retrieval(run_dir, num_threads=1)
    return run_dir


def test_report_has_the_agreed_shape(evaluated_run: Path) -> None:
    report = read_json(evaluated_run / "retrieval_metrics.json")
    assert report["model"] == MODEL_NAME
    assert set(report["methods"]) == {MODEL_NAME, *BASELINES}
    for name, row in report["methods"].items():
        assert set(row) == METRIC_KEYS, name
        assert 0.0 <= row["recall@10"] <= row["recall@50"] <= row["recall@100"] <= row["recall@200"] <= 1.0
        assert 0.0 < row["coverage"] <= 1.0
    assert set(report["indexes"]) == {"exact", "hnsw", "ivf"}
    assert report["indexes"]["hnsw"]["recall@100_vs_exact"] >= 0.95


def test_popularity_row_matches_a_direct_count(evaluated_run: Path) -> None:
    run = load_retrieval_run(evaluated_run)
    data = run.config.load_data()
    train, test = run.config.split().split(data)
    watches = train.filter(pl.col("is_click") == 1)["video_id"].value_counts().sort(
        ["count", "video_id"], descending=[True, False])
    # The corpus is ordered the same way (train watches, most first; ties by video id).
    assert watches["video_id"].to_list() == run.featurizer.video_ids.tolist()
    test_watches = test.filter(pl.col("is_click") == 1)["video_id"]
    report = read_json(evaluated_run / "retrieval_metrics.json")
    for k in (10, 50, 100, 200):
        top = set(watches["video_id"].head(k).to_list())
        expected = float(test_watches.is_in(list(top)).mean())
        assert report["methods"]["popularity"][f"recall@{k}"] == pytest.approx(expected, abs=1e-12)
    # Coverage of a constant list: 200 distinct videos (or the whole corpus) / corpus size.
    assert report["methods"]["popularity"]["coverage"] == pytest.approx(
        min(200, run.featurizer.n_items) / run.featurizer.n_items)
    assert report["n_queries"] == test_watches.len()


def test_replay_is_in_time_order_with_serving_age(evaluated_run: Path) -> None:
    run = load_retrieval_run(evaluated_run)
    queries = replay_queries(run, run.config.load_data())
    assert np.all(np.diff(queries.time_ms) >= 0)
    assert np.all(queries.example_age_days == 0.0)


def test_build_index_writes_into_the_run_folder(evaluated_run: Path) -> None:
    folder = build_index(evaluated_run, "ivf", nlist=8, nprobe=8)
    assert folder == evaluated_run / "index"
    assert (folder / "index.json").is_file() and (folder / "index_report.json").is_file()
    report = read_json(folder / "index_report.json")
    assert report["kind"] == "ivf" and report["params"]["nprobe"] == 8
    # nprobe = nlist: every list is scanned, so IVF-Flat is exact.
    assert report["recall@100_vs_exact"] == pytest.approx(1.0)
    index = load_index(folder)
    run = load_retrieval_run(evaluated_run)
    vectors, video_ids = run.item_vectors()
    assert sorted(index.ids.tolist()) == sorted(video_ids.tolist())
    _, top = index.search(vectors[:1] * 0 + np.eye(1, vectors.shape[1], vectors.shape[1] - 1), 1)
    # A query of [0 … 0, 1] scores every item by its bias b_i alone: the top id has the largest bias.
    assert top[0, 0] == video_ids[int(np.argmax(vectors[:, -1]))]
    metrics = read_json(evaluated_run / "retrieval_metrics.json")
    assert metrics["indexes"]["ivf"]["recall@100_vs_exact"] == pytest.approx(1.0)
    assert metrics["indexes"]["ivf"]["batch_ms_per_query"] > 0
    # A second build replaces the first: one index per run, no leftovers beside it.
    build_index(evaluated_run, "exact", compare=False)
    assert load_index(folder).kind == "exact"
    assert not [p for p in evaluated_run.iterdir() if p.name.startswith(".index")]


# ---- the figures (slow: minutes; run with `pytest -m slow tests/evaluation/test_retrieval_eval.py`)


@pytest.mark.slow
def test_simulator_with_user_tastes_model_doubles_popularity(tmp_path: Path) -> None:
    # Tastes drive exposure (90% personal) and clicks; popularity is flatter and does not drift.
    data_dir = tmp_path / "sim"
    write_dataset(simulate(SimulatorConfig(popularity_skew=0.5, personal_exposure_share=0.9, popularity_drift=0.0,
                                           seed=0)), data_dir)
    config = RetrievalConfig.load(None, {"data.dataset": str(data_dir)})
    report = evaluate_retrieval(train_retrieval(config, tmp_path / "run"))
    recall = {name: row["recall@100"] for name, row in report["methods"].items()}
    print(recall)
    assert recall[MODEL_NAME] >= 2.0 * recall["popularity"]


@pytest.mark.slow
def test_kuairand_model_beats_every_baseline_and_sampled_matches_full(real_data_dir: Path, tmp_path: Path) -> None:
    sampled = RetrievalConfig.load(None, {"data.data_dir": str(real_data_dir)})
    report = evaluate_retrieval(train_retrieval(sampled, tmp_path / "sampled"))
    recall = {name: row["recall@100"] for name, row in report["methods"].items()}
    full = evaluate_retrieval(train_retrieval(sampled.merged({"loss.kind": "full"}), tmp_path / "full"))
    full_recall = full["methods"][MODEL_NAME]["recall@100"]
    print(recall, "full softmax:", full_recall)
    assert all(recall[MODEL_NAME] > recall[name] for name in BASELINES)
    assert recall[MODEL_NAME] >= 1.1 * recall["popularity"]
    assert recall[MODEL_NAME] >= 0.95 * full_recall
