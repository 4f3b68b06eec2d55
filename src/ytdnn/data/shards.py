"""Impression logs as a directory of shards (Parquet or CSV), read one shard at a time, and hash partitions.

A sharded log is a folder ``impressions/`` of ``*.parquet`` (or ``*.csv``) files in the ytdnn
impression schema, the layout that :func:`ytdnn.data.simulator.simulate_to_parquet` and
``ytdnn data convert`` write, beside ``users.parquet`` and ``videos.parquet``. Shards are
read in file-name order; the position of a row in that order (``offset of its shard + row in the
shard``) is its **log key**, the same order :func:`ytdnn.data.schema.read_dataset` concatenates
in, so the out-of-core features agree row for row with the in-memory ones.

Partitions route every row by a stable hash of one id column (``user_id`` or ``video_id``)::

    partition(id) = ((id · 0x9E3779B97F4A7C15 mod 2⁶⁴) >> 32) mod P

(Fibonacci hashing: consecutive ids spread evenly; the same id always lands in the same partition,
on every machine and Polars version). All events of one user are then in one partition, which
makes per-user history self-contained.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from ytdnn.data.errors import DataError
from ytdnn.data.schema import conform_impressions, conform_videos
from ytdnn.utils.io import atomic_write_with

__all__ = ["LogShard", "ShardedLog", "partition_of", "write_partitioned"]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def partition_of(ids: np.ndarray | pl.Series, n_partitions: int) -> np.ndarray:
    """Partition (int64 in [0, P)) of each id, by the module docstring's hash."""
    if n_partitions < 1:
        raise ValueError(f"n_partitions must be >= 1, got {n_partitions}")
    values = ids.to_numpy() if isinstance(ids, pl.Series) else np.asarray(ids)
    with np.errstate(over="ignore"):
        mixed = values.astype(np.int64).view(np.uint64) * _GOLDEN
    return ((mixed >> np.uint64(32)) % np.uint64(n_partitions)).astype(np.int64)


@dataclass(frozen=True)
class LogShard:
    """One file of a sharded log, and the log key of its first row."""

    path: Path
    first_key: int
    rows: int


class ShardedLog:
    """A dataset folder whose impressions are ``impressions/*.parquet`` or ``impressions/*.csv`` shards."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        folder = self.directory / "impressions"
        if not folder.is_dir():
            raise DataError("not a sharded log: expected a folder impressions/ of *.parquet or *.csv shards",
                            path=self.directory)
        files = sorted(folder.glob("*.parquet")) or sorted(folder.glob("*.csv"))
        if not files:
            raise DataError("no *.parquet or *.csv shard in impressions/", path=folder)
        self.files = files
        self._shards: list[LogShard] | None = None

    @property
    def shards(self) -> list[LogShard]:
        """The shards with their row counts (Parquet: from the footers; CSV: one counting pass)."""
        if self._shards is None:
            shards, key = [], 0
            for path in self.files:
                if path.suffix == ".parquet":
                    rows = pl.scan_parquet(path).select(pl.len()).collect().item()
                else:
                    rows = pl.scan_csv(path).select(pl.len()).collect().item()
                shards.append(LogShard(path, key, int(rows)))
                key += int(rows)
            self._shards = shards
        return self._shards

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards)

    def read(self, shard: LogShard, columns: list[str] | None = None) -> pl.DataFrame:
        """One shard, validated against the impression schema, with its log key in column ``key``."""
        if shard.path.suffix == ".parquet":
            frame = pl.read_parquet(shard.path)
        else:
            frame = pl.read_csv(shard.path)
        frame = conform_impressions(frame, source=str(shard.path))
        if frame.height != shard.rows:
            raise DataError(f"shard changed while reading: {frame.height} rows, {shard.rows} counted before",
                            path=shard.path)
        if columns is not None:
            frame = frame.select(columns)
        return frame.with_columns(pl.int_range(shard.first_key, shard.first_key + frame.height,
                                               dtype=pl.Int64).alias("key"))

    def iter_frames(self, columns: list[str] | None = None) -> Iterator[pl.DataFrame]:
        for shard in self.shards:
            yield self.read(shard, columns)

    def users(self) -> pl.DataFrame:
        path = self.directory / "users.parquet"
        if path.exists():
            return pl.read_parquet(path)
        ids = pl.concat([f.select("user_id") for f in self.iter_frames(["user_id"])])["user_id"].unique().sort()
        return pl.DataFrame({"user_id": ids})

    def videos(self) -> pl.DataFrame:
        path = self.directory / "videos.parquet"
        if path.exists():
            videos = pl.read_parquet(path)
        else:
            ids = pl.concat([f.select("video_id") for f in self.iter_frames(["video_id"])])["video_id"].unique()
            videos = pl.DataFrame({"video_id": ids.sort()})
        return conform_videos(videos, source=str(path))


def write_partitioned(frame: pl.DataFrame, by: str, n_partitions: int, directory: Path, piece: str) -> None:
    """Append ``frame``'s rows to ``directory/p-XXXXX/<piece>.parquet`` by the partition of column ``by``.

    Each piece is written atomically; a partition is the set of its pieces (read together).
    """
    part = pl.Series("_partition", partition_of(frame[by], n_partitions))
    with_part = frame.with_columns(part)
    for (p,), rows in with_part.partition_by("_partition", as_dict=True, maintain_order=True).items():
        folder = directory / f"p-{int(p):05d}"  # type: ignore[call-overload]
        folder.mkdir(parents=True, exist_ok=True)
        out = rows.drop("_partition")
        atomic_write_with(folder / f"{piece}.parquet", out.write_parquet, suffix=".parquet")


def read_partition(directory: Path, partition: int) -> pl.DataFrame | None:
    """All pieces of one partition written by :func:`write_partitioned` (None when it got no row)."""
    folder = directory / f"p-{partition:05d}"
    pieces = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
    if not pieces:
        return None
    return pl.concat([pl.read_parquet(p) for p in pieces])
