"""Sharded logs: stable hash partitions, shard keys in read order, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from ytdnn.data.errors import DataError
from ytdnn.data.schema import read_dataset
from ytdnn.data.shards import ShardedLog, partition_of, read_partition, write_partitioned
from ytdnn.data.simulator import SCALE_PRESETS, scale_config, simulate_to_parquet


def test_partition_hash_is_the_documented_fibonacci_hash() -> None:
    ids = np.array([0, 1, 2, 12345, -7, 2**62], dtype=np.int64)
    golden = 0x9E3779B97F4A7C15
    expected = [(((int(i) % 2**64) * golden % 2**64) >> 32) % 7 for i in ids]
    assert partition_of(ids, 7).tolist() == expected
    assert partition_of(pl.Series(ids), 1).tolist() == [0] * 6
    # consecutive ids spread evenly
    counts = np.bincount(partition_of(np.arange(100_000), 8), minlength=8)
    assert counts.min() > 12_000 and counts.max() < 13_000
    with pytest.raises(ValueError, match="n_partitions must be >= 1"):
        partition_of(ids, 0)


def test_sharded_log_keys_follow_read_dataset_order(tmp_path: Path) -> None:
    simulate_to_parquet(scale_config(6_000, seed=1), tmp_path, shard_rows=2_500)
    log = ShardedLog(tmp_path)
    assert [s.rows for s in log.shards] == [2_500, 2_500, log.rows - 5_000]
    assert [s.first_key for s in log.shards] == [0, 2_500, 5_000]
    frames = list(log.iter_frames())
    whole = read_dataset(tmp_path).impressions
    assert pl.concat(frames)["key"].to_list() == list(range(whole.height))
    assert pl.concat(frames).drop("key").equals(whole)


def test_partitions_hold_every_row_once(tmp_path: Path) -> None:
    frame = pl.DataFrame({"user_id": np.arange(1_000) % 37, "x": np.arange(1_000)})
    write_partitioned(frame.head(600), "user_id", 4, tmp_path, "a")
    write_partitioned(frame.tail(400), "user_id", 4, tmp_path, "b")
    parts = [read_partition(tmp_path, p) for p in range(4)]
    assert sorted(x for part in parts if part is not None for x in part["x"].to_list()) == list(range(1_000))
    for p, part in enumerate(parts):
        if part is not None:
            assert set(partition_of(part["user_id"], 4).tolist()) == {p}
    assert read_partition(tmp_path, 9) is None


def test_not_a_sharded_log(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="expected a folder impressions/"):
        ShardedLog(tmp_path)
    (tmp_path / "impressions").mkdir()
    with pytest.raises(DataError, match=r"no \*.parquet or \*.csv shard"):
        ShardedLog(tmp_path)
    pl.DataFrame({"user_id": [1], "video_id": [2]}).write_parquet(tmp_path / "impressions" / "part-0.parquet")
    log = ShardedLog(tmp_path)
    with pytest.raises(DataError, match="missing required column"):
        log.read(log.shards[0])


def test_scale_presets_keep_the_issue_shape() -> None:
    config = scale_config(SCALE_PRESETS["scale-50m"])
    assert (config.n_users, config.n_videos, config.n_days) == (5_000_000, 1_000_000, 14)
    assert config.n_users * config.impressions_per_user_day * config.n_days == pytest.approx(50_000_000)
    assert scale_config(1_000).n_videos == 64  # at least the simulator's tags/topics


def test_cli_simulates_a_preset_and_builds_features_out_of_core(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from ytdnn.cli import app
    from ytdnn.features.streaming import read_manifest

    runner = CliRunner()
    result = runner.invoke(app, ["simulate", "--impressions", "4000", "--out", str(tmp_path / "log"),
                                 "--shard-rows", "1500", "--seed", "2"])
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "log" / "impressions").glob("*.parquet"))) == 3
    assert pl.read_parquet(tmp_path / "log" / "users.parquet").height == 400  # 4000 / 10 users
    result = runner.invoke(app, ["data", "features", str(tmp_path / "log"), "--out", str(tmp_path / "features"),
                                 "--partitions", "2", "--shard-rows", "1000"])
    assert result.exit_code == 0, result.output
    manifest = read_manifest(tmp_path / "features")
    assert manifest["n_partitions"] == 2
    assert manifest["rows"]["train"] + manifest["rows"]["test"] == ShardedLog(tmp_path / "log").rows
    result = runner.invoke(app, ["simulate", "--preset", "scale-9m", "--out", str(tmp_path / "x")])
    assert result.exit_code != 0 and "unknown preset 'scale-9m'" in result.output
