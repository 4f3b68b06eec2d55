"""Out-of-core features equal the in-memory pipeline's on a log that fits: history, fitted state, tensors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from ytdnn.data.schema import read_dataset
from ytdnn.data.simulator import scale_config, simulate_to_parquet
from ytdnn.data.split import DateSplit
from ytdnn.features.history import HISTORY_COLUMNS, KEY
from ytdnn.features.quantile import QuantileNormaliser, QuantileSketch
from ytdnn.features.ranking import RankingFeaturePipeline
from ytdnn.features.streaming import (
    StreamingError,
    build_features_out_of_core,
    read_feature_shard,
    read_manifest,
    with_history_out_of_core,
)
from ytdnn.features.vocab import Vocabulary, VocabularyCounter


@pytest.fixture(scope="module")
def small_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 30k impressions over 14 days in 7 Parquet shards; duplicates are added to test their handling.
    directory = tmp_path_factory.mktemp("log")
    simulate_to_parquet(scale_config(30_000, seed=3), directory, shard_rows=5_000)
    first = directory / "impressions" / "part-00000.parquet"
    frame = pl.read_parquet(first)
    pl.concat([frame, frame.head(50)]).write_parquet(first)  # 50 exact duplicates (same user, video, time)
    return directory


@pytest.fixture(scope="module")
def in_memory(small_log: Path):
    data = read_dataset(small_log)
    pipeline = RankingFeaturePipeline()
    with_history = pipeline.add_history(data.impressions, data.videos)
    pipeline.fit(with_history.filter(DateSplit().train_mask()), data.users, data.videos)
    return data, pipeline, with_history


@pytest.fixture(scope="module")
def streamed(small_log: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("features")
    return build_features_out_of_core(small_log, out, n_partitions=3, shard_rows=4_000, keep_work=True)


def test_history_from_partitions_equals_the_whole_log(in_memory, streamed) -> None:
    _, _, with_history = in_memory
    partitioned = with_history_out_of_core(streamed.directory)
    assert partitioned[KEY].to_list() == list(range(with_history.height))
    assert partitioned.select(with_history.columns).equals(with_history)
    # The duplicates never count each other: the copy of row 0 (key 5000) has row 0's history.
    history = partitioned.select(HISTORY_COLUMNS)
    assert history.row(5_000) == history.row(0)
    assert partitioned["user_id"][5_000] == partitioned["user_id"][0]


def test_fitted_vocabularies_and_quantiles_equal_in_memory(in_memory, streamed) -> None:
    _, pipeline, _ = in_memory
    assert streamed.pipeline.to_dict() == pipeline.to_dict()
    # and the saved state loads back to the same thing
    loaded = RankingFeaturePipeline.load(streamed.directory / "pipeline")
    assert loaded.to_dict() == pipeline.to_dict()


def test_feature_shards_hold_the_in_memory_tensors(in_memory, streamed) -> None:
    data, pipeline, with_history = in_memory
    manifest = read_manifest(streamed.directory)
    for split, mask in (("train", DateSplit().train_mask()), ("test", DateSplit().test_mask())):
        parts = [read_feature_shard(streamed.directory / s["path"], manifest["n_multivalent"])
                 for s in manifest["shards"] if s["split"] == split]
        assert all(len(batch) <= 4_000 for batch, _, _ in parts)
        keys = torch.cat([key for _, _, key in parts])
        order = torch.argsort(keys)
        rows = with_history.with_row_index(KEY).filter(mask)
        assert keys[order].tolist() == rows[KEY].to_list()  # every row of the split exactly once
        reference = pipeline.transform(rows.drop(KEY), data.users, data.videos)
        assert torch.equal(torch.cat([b.categorical for b, _, _ in parts])[order], reference.categorical)
        assert torch.equal(torch.cat([b.dense for b, _, _ in parts])[order], reference.dense)
        for j in range(manifest["n_multivalent"]):
            assert torch.equal(torch.cat([b.multivalent[j] for b, _, _ in parts])[order], reference.multivalent[j])
        assert torch.equal(torch.cat([b.watch_time_s for b, _, _ in parts])[order], reference.watch_time_s)
        assert torch.equal(torch.cat([u for _, u, _ in parts])[order], torch.from_numpy(rows["user_id"].to_numpy()))
    assert manifest["rows"]["train"] + manifest["rows"]["test"] == with_history.height


def test_csv_shards_give_the_same_features(small_log: Path, streamed, tmp_path: Path) -> None:
    (tmp_path / "impressions").mkdir()
    for path in sorted((small_log / "impressions").glob("*.parquet")):
        pl.read_parquet(path).drop("tokens").write_csv(tmp_path / "impressions" / f"{path.stem}.csv")
    for table in ("users.parquet", "videos.parquet"):
        (tmp_path / table).write_bytes((small_log / table).read_bytes())
    result = build_features_out_of_core(tmp_path, tmp_path / "features", n_partitions=2)
    assert result.pipeline.to_dict() == streamed.pipeline.to_dict()  # tokens are not a ranking feature


def test_a_log_without_training_days_is_refused(small_log: Path, tmp_path: Path) -> None:
    with pytest.raises(StreamingError, match="train_end=20220101"):
        build_features_out_of_core(small_log, tmp_path, split=DateSplit(train_end=20220101, test_start=20220102))


def test_vocabulary_counter_merges_shards_exactly() -> None:
    values = pl.Series("v", [5, 3, 5, 7, 3, 5, None, 9, 9, 9, 1])
    counter = VocabularyCounter("v")
    for start in range(0, len(values), 4):
        counter.add(values.slice(start, 4))
    for max_size, min_count in ((None, 1), (2, 1), (10, 2)):
        assert counter.vocabulary(max_size=max_size, min_count=min_count) == \
            Vocabulary.build(values, name="v", max_size=max_size, min_count=min_count)
    # 5 and 9 tie on 3 clicks: the smaller value ranks first
    assert counter.vocabulary().keys.to_list() == [5, 9, 3, 1, 7]


@pytest.mark.parametrize("kind", ["normal", "ties", "wide", "missing"])
def test_quantile_sketch_equals_the_exact_fit(kind: str) -> None:
    rng = np.random.default_rng(7)
    n = 3_001
    values = {"normal": rng.normal(size=n) * 1e-3,
              "ties": rng.poisson(0.4, size=n).astype(float),  # ~67% zeros: a tie over many knots
              "wide": np.concatenate([-rng.exponential(size=n // 2) * 1e6, rng.exponential(size=n - n // 2) * 1e-6]),
              "missing": np.where(rng.random(n) < 0.3, np.nan, rng.normal(size=n))}[kind]
    for n_quantiles in (1, 7, 100):
        sketch = QuantileSketch("x", n_quantiles=n_quantiles)
        shards = np.array_split(values, 4)
        for shard in shards:
            sketch.add(shard)
        for shard in shards:
            sketch.add_exact(shard)
        fitted, exact = sketch.normaliser(), QuantileNormaliser.fit(values, name="x", n_quantiles=n_quantiles)
        assert np.array_equal(fitted.knots, exact.knots)
        assert np.array_equal(fitted.cdf, exact.cdf)
        assert fitted.fill_cdf == exact.fill_cdf and fitted.n_train == exact.n_train


def test_quantile_sketch_notices_a_different_second_pass() -> None:
    sketch = QuantileSketch("x", n_quantiles=4)
    sketch.add(np.arange(10.0))
    sketch.add_exact(np.arange(5.0))
    with pytest.raises(Exception, match="second pass saw other values"):
        sketch.normaliser()
