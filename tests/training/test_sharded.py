"""Training from feature shards: every row once per epoch per rank, sparse tables learn like dense ones."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from ytdnn.data.simulator import scale_config, simulate_to_parquet
from ytdnn.features.streaming import build_features_out_of_core, read_manifest
from ytdnn.models.ranking import RankingNet
from ytdnn.training.ranker import load_ranker
from ytdnn.training.sharded import (
    ShardedFeatureDataset,
    deal_by_rows,
    make_optimizer,
    sparse_table_names,
    train_sharded,
)
from ytdnn.training.trainer import TrainingError

TORCHRUN = Path(sys.executable).with_name("torchrun")


@pytest.fixture(scope="module")
def features(tmp_path_factory: pytest.TempPathFactory) -> Path:
    log = tmp_path_factory.mktemp("log")
    simulate_to_parquet(scale_config(40_000, seed=5), log, shard_rows=10_000)
    out = tmp_path_factory.mktemp("features")
    build_features_out_of_core(log, out, n_partitions=4, shard_rows=3_000)
    return out


def _rows_of(dataset: ShardedFeatureDataset, epoch: int) -> list[tuple[float, ...]]:
    """Each yielded row as its dense features + labels (rows are unique in this data)."""
    dataset.set_epoch(epoch)
    return [tuple(row.tolist()) for batch in dataset
            for row in torch.cat([batch.dense, batch.is_click[:, None], batch.watch_time_s[:, None]], dim=1)]


def test_deal_by_rows_balances_and_keeps_every_shard() -> None:
    parts = deal_by_rows([10, 3, 7, 7, 2], 2)
    assert sorted(i for part in parts for i in part) == [0, 1, 2, 3, 4]
    # largest first to the emptier part: 10→a, 7→b, 7→b (7 < 10), 3→a (10 < 14), 2→a (13 < 14): 15 | 14 rows
    assert parts == [[0, 1, 4], [2, 3]]
    assert deal_by_rows([5], 3) == [[0], [], []]


def test_each_rank_yields_its_rows_exactly_once_per_epoch(features: Path) -> None:
    manifest = read_manifest(features)
    n_train = manifest["rows"]["train"]
    everything = ShardedFeatureDataset(features, "train", batch_size=500, seed=1)
    all_rows = _rows_of(everything, 0)
    assert len(all_rows) == n_train == len(set(all_rows))
    ranks = [ShardedFeatureDataset(features, "train", batch_size=500, seed=1, rank=r, world_size=2) for r in (0, 1)]
    for epoch in (0, 1):
        per_rank = [_rows_of(d, epoch) for d in ranks]
        assert [len(rows) for rows in per_rank] == [d.rows for d in ranks]
        assert len(set(per_rank[0]) | set(per_rank[1])) == n_train
        assert not set(per_rank[0]) & set(per_rank[1])  # disjoint: each rank reads its own shards
    # batches are full except the last; the order changes between epochs, the rows do not
    lengths = [len(b) for b in ranks[0]]
    assert all(n == 500 for n in lengths[:-1]) and 0 < lengths[-1] <= 500
    assert _rows_of(ranks[0], 0) != _rows_of(ranks[0], 1)
    assert sorted(_rows_of(ranks[0], 0)) == sorted(_rows_of(ranks[0], 1))
    # DataLoader workers split a rank's shards again: still every row once
    loader = DataLoader(ranks[1], batch_size=None, num_workers=2)
    from_workers = [tuple(row.tolist()) for b in loader
                    for row in torch.cat([b.dense, b.is_click[:, None], b.watch_time_s[:, None]], dim=1)]
    assert sorted(from_workers) == sorted(_rows_of(ranks[1], 0))


def test_drop_last_and_bad_arguments(features: Path) -> None:
    dataset = ShardedFeatureDataset(features, "test", batch_size=1000, drop_last=True)
    assert all(len(b) == 1000 for b in dataset) and dataset.rows % 1000 == 0
    with pytest.raises(TrainingError, match="rank 2 is not in"):
        ShardedFeatureDataset(features, rank=2, world_size=2)
    with pytest.raises(TrainingError, match="no 'valid' feature shard"):
        ShardedFeatureDataset(features, "valid")


def test_sparse_tables_get_sparse_gradients_and_sparse_adam(features: Path) -> None:
    from ytdnn.features.ranking import RankingFeaturePipeline

    layout = RankingFeaturePipeline.load(features / "pipeline").layout
    sparse = sparse_table_names(layout, 1_000)
    assert sparse == {t.name for t in layout.tables if t.vocab_size >= 1_000} and "user_id" in sparse
    network = RankingNet(layout)
    optimizer = make_optimizer(network, lr=1e-2, weight_decay=1e-3, sparse_tables=sparse)
    batch = next(iter(ShardedFeatureDataset(features, batch_size=64)))
    before = network.embeddings.tables["user_id"].weight.detach().clone()
    network(batch).square().mean().backward()
    grad = network.embeddings.tables["user_id"].weight.grad
    assert grad is not None and grad.is_sparse
    optimizer.step()
    changed = (network.embeddings.tables["user_id"].weight.detach() != before).any(dim=1)
    touched = set(batch.categorical[:, layout.categorical.index(layout.features[3])].tolist()) - {0}
    assert set(torch.nonzero(changed).flatten().tolist()) == touched  # only the batch's rows moved
    with pytest.raises(TrainingError, match="not tables of the network"):
        make_optimizer(network, lr=1e-3, sparse_tables=frozenset({"nope"}))


def test_sparse_training_learns_like_dense(features: Path, tmp_path: Path) -> None:
    start = train_sharded(features, tmp_path / "init", max_examples=0, epochs=1).test["test_loss"]
    dense = train_sharded(features, tmp_path / "dense", sparse_min_rows=None, epochs=2)
    sparse = train_sharded(features, tmp_path / "sparse", sparse_min_rows=100, epochs=2)
    assert sparse.n_train == dense.n_train == read_manifest(features)["rows"]["train"]
    assert "user_id" in json.loads((tmp_path / "sparse" / "training.json").read_text())["sparse_tables"]
    # both learn (well below the starting loss) and end within 1% of each other
    assert dense.test["test_loss"] < 0.97 * start and sparse.test["test_loss"] < 0.97 * start
    assert abs(sparse.test["test_loss"] - dense.test["test_loss"]) < 0.01 * dense.test["test_loss"]
    # the run folder is a ranker run folder: it loads and scores
    ranker = load_ranker(tmp_path / "sparse")
    batch = next(iter(ShardedFeatureDataset(features, "test", batch_size=8, shuffle=False)))
    assert ranker.score_batch(batch)["expected_watch_s"].shape == (8,)


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed next to the interpreter")
def test_two_ranks_read_their_own_shards_and_reduce_metrics(features: Path, tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [str(TORCHRUN), "--standalone", "--nproc-per-node", "2", "-m", "ytdnn", "train", "sharded",
               str(features), "--out", str(tmp_path / "ddp"), "--set", "train.batch_size=512",
               "--set", "objective.name=wlr",  # the objective of train_sharded's own default, compared below
               "--sparse-min-rows", "100"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    training = json.loads((tmp_path / "ddp" / "training.json").read_text())
    manifest = read_manifest(features)
    assert training["world_size"] == 2 and training["sparse_tables"] == []  # dense under DDP (join)
    assert training["n_train"] == manifest["rows"]["train"]  # each row once, across the two ranks
    assert training["test"]["test_rows"] == manifest["rows"]["test"]
    # The same global batch (2 × 512) in a different row order: one epoch on 28k rows lands within 5%.
    single = train_sharded(features, tmp_path / "one", batch_size=1024, sparse_min_rows=100)
    start = train_sharded(features, tmp_path / "init", max_examples=0).test["test_loss"]
    assert training["test"]["test_loss"] < 0.97 * start
    assert abs(training["test"]["test_loss"] - single.test["test_loss"]) < 0.05 * single.test["test_loss"]
