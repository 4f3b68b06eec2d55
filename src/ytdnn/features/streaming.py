"""Out-of-core ranking features: a sharded impression log → fitted pipeline + feature shards, in bounded memory.

The in-memory path (:func:`ytdnn.features.ranking.build_ranking_features`) holds the whole log;
this one holds one *partition* at a time and gives the same numbers (tested row for row):

1. **Route** (one pass over the log shards, one shard in memory): every row gets its log key
   (:mod:`ytdnn.data.shards`) and is written twice: all columns to its *user* partition, the
   event columns (user, video, author, time, click, watch) to its *video* partition.
2. **Item-side history** per video partition: a video partition holds *every* event of its
   videos, so the strictly-earlier sums over each video's events
   (:func:`~ytdnn.features.history.item_side_history`) are exact: this is the streaming pass
   by time that the global "so far" statistics need, cut by video instead of by day. The
   results are routed on to the rows' user partitions.
3. **User-side history** per user partition (all events of its users:
   :func:`~ytdnn.features.history.user_side_history`), joined with the item side on the log
   key. Duplicated (user, video, time) rows fall in one partition on both sides, so
   duplicate handling is the same as on the whole log.
4. **Fit** over the training rows of the user partitions: vocabularies from summed value
   counts of clicked rows (:class:`~ytdnn.features.vocab.VocabularyCounter`, exact) and quantile
   knots in two passes (:class:`~ytdnn.features.quantile.QuantileSketch`, exact): the fitted
   state equals ``RankingFeaturePipeline.fit`` on the concatenated training rows.
5. **Transform** each user partition (train and test rows apart) into feature shards of at
   most ``shard_rows`` rows: safetensors files of the :class:`~ytdnn.features.layout.RankingBatch`
   tensors (ids as int32, dense as float32) plus ``user_id`` and ``key``, listed in
   ``manifest.json``.

Peak memory is one partition's history frame (≈ 1–2 kB per row during the history step), so
``n_partitions`` ≈ rows / 2M keeps it at a few GB whatever the log size; the users table and the
videos table are held whole (the dimension tables: one row per user and per video).

Within a partition rows keep log-key order; feature shards hold the users of one partition, so a
training reader shuffles across shards (see :mod:`ytdnn.training.sharded`).
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from safetensors.torch import load_file, save_file

from ytdnn.data.shards import ShardedLog, partition_of, read_partition, write_partitioned
from ytdnn.data.split import DateSplit
from ytdnn.features.history import (
    HISTORY_COLUMNS,
    KEY,
    HistoryError,
    item_side_history,
    user_side_history,
)
from ytdnn.features.layout import RankingBatch
from ytdnn.features.quantile import QuantileSketch
from ytdnn.features.ranking import RankingFeatureConfig, RankingFeaturePipeline
from ytdnn.features.vocab import VocabularyCounter
from ytdnn.utils.io import atomic_path, atomic_write_json, read_json

__all__ = ["FEATURE_MANIFEST", "FeatureShardInfo", "StreamingResult", "build_features_out_of_core",
           "read_feature_shard", "read_manifest", "write_feature_shard"]

FEATURE_MANIFEST = "manifest.json"
MANIFEST_FORMAT = "ytdnn-feature-shards-v1"
FEATURES_STATE_DIR = "pipeline"
_EVENT_COLUMNS = ["user_id", "video_id", "time_ms", "is_click", "watch_time_s"]
_ROWS_PER_PARTITION = 2_000_000


class StreamingError(ValueError):
    """The out-of-core pipeline was given inputs it cannot use, or found its own files inconsistent."""


# ---- feature shards --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FeatureShardInfo:
    path: str  # relative to the manifest's folder
    split: str  # "train" | "test"
    rows: int
    partition: int


def write_feature_shard(path: Path, batch: RankingBatch, user_id: np.ndarray, key: np.ndarray) -> None:
    """One feature shard, atomically: the batch's tensors (ids narrowed to int32) + user_id + key."""
    tensors = {"categorical": batch.categorical.to(torch.int32).contiguous(), "dense": batch.dense.contiguous(),
               "is_click": batch.is_click.contiguous(), "watch_time_s": batch.watch_time_s.contiguous(),
               "user_id": torch.from_numpy(np.array(user_id, dtype=np.int64)),
               "key": torch.from_numpy(np.array(key, dtype=np.int64))}
    for j, ids in enumerate(batch.multivalent):
        tensors[f"multivalent_{j}"] = ids.to(torch.int32).contiguous()
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"format": MANIFEST_FORMAT, "rows": str(len(batch))})


def read_feature_shard(path: str | Path, n_multivalent: int) -> tuple[RankingBatch, torch.Tensor, torch.Tensor]:
    """(batch with int64 ids, user_id, key) of one feature shard."""
    try:
        tensors = load_file(str(path))
    except (OSError, ValueError) as exc:  # safetensors raises SafetensorError (a ValueError subclass) or OSError
        raise StreamingError(f"{path}: not a readable feature shard ({exc})") from exc
    missing = [name for name in ("categorical", "dense", "is_click", "watch_time_s", "user_id", "key",
                                 *(f"multivalent_{j}" for j in range(n_multivalent))) if name not in tensors]
    if missing:
        raise StreamingError(f"{path}: feature shard lacks tensor(s) {missing}")
    batch = RankingBatch(tensors["categorical"].long(), [tensors[f"multivalent_{j}"].long()
                                                          for j in range(n_multivalent)],
                         tensors["dense"], tensors["is_click"], tensors["watch_time_s"])
    return batch, tensors["user_id"], tensors["key"]


def read_manifest(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / FEATURE_MANIFEST
    if not path.exists():
        raise StreamingError(f"{path}: no feature manifest here (run `ytdnn data features` first)")
    manifest = read_json(path)
    if manifest.get("format") != MANIFEST_FORMAT:
        raise StreamingError(f"{path}: format {manifest.get('format')!r}, expected {MANIFEST_FORMAT!r}")
    return manifest


# ---- the pipeline ------------------------------------------------------------------------------------------------

@dataclass
class StreamingResult:
    directory: Path
    pipeline: RankingFeaturePipeline
    shards: list[FeatureShardInfo]
    n_partitions: int
    seconds: dict[str, float] = field(default_factory=dict)

    def rows(self, split: str) -> int:
        return sum(s.rows for s in self.shards if s.split == split)


def _author_map(videos: pl.DataFrame) -> pl.DataFrame:
    if "author_id" not in videos.columns:
        return videos.select(pl.col("video_id").cast(pl.Int64), pl.lit(None, dtype=pl.Int64).alias("author_id"))
    authors = videos.select(pl.col("video_id").cast(pl.Int64), pl.col("author_id").cast(pl.Int64))
    if authors["video_id"].is_duplicated().any():
        dup = authors.filter(pl.col("video_id").is_duplicated())["video_id"][0]
        raise HistoryError(f"videos: video_id {dup} appears more than once; expected one row per video")
    return authors


def _users_of(users: pl.DataFrame, partition: int, n_partitions: int) -> pl.DataFrame:
    return users.filter(pl.Series(partition_of(users["user_id"].cast(pl.Int64), n_partitions) == partition))


def build_features_out_of_core(source: str | Path, out_dir: str | Path, *,
                               config: RankingFeatureConfig | None = None, split: DateSplit | None = None,
                               n_partitions: int | None = None, shard_rows: int = 262_144,
                               keep_work: bool = False, log: Callable[[str], None] | None = None
                               ) -> StreamingResult:
    """Route, add history, fit and transform the sharded log ``source`` into ``out_dir`` (module docstring).

    ``out_dir`` receives ``pipeline/ranking_features.json`` (the fitted state, loadable with
    ``RankingFeaturePipeline.load``), ``train/`` and ``test/`` feature shards and
    ``manifest.json`` (written last: a folder without it is incomplete). ``split`` says which
    dates are fitted on and trained on (``date <= train_end``) and which are test rows
    (``date >= test_start``); rows in between are dropped, as in the in-memory path.
    """
    say = log or (lambda _message: None)
    started = time.perf_counter()
    source_log = ShardedLog(source)
    out_dir = Path(out_dir)
    split = split or DateSplit()
    pipeline = RankingFeaturePipeline(config)
    history_config = pipeline.config.history
    total_rows = source_log.rows
    if total_rows == 0:
        raise StreamingError(f"{source}: the log has no impression")
    n_partitions = n_partitions or max(1, math.ceil(total_rows / _ROWS_PER_PARTITION))
    if shard_rows < 1:
        raise StreamingError(f"shard_rows must be >= 1, got {shard_rows}")
    users, videos = source_log.users(), source_log.videos()
    authors = _author_map(videos)
    work = out_dir / ".work"
    shutil.rmtree(work, ignore_errors=True)
    for stale in ("train", "test"):
        shutil.rmtree(out_dir / stale, ignore_errors=True)
    (out_dir / FEATURE_MANIFEST).unlink(missing_ok=True)
    seconds: dict[str, float] = {}

    def lap(stage: str, since: float) -> float:
        seconds[stage] = time.perf_counter() - since
        say(f"{stage}: {seconds[stage]:.1f}s")
        return time.perf_counter()

    # 1. route every shard to its user and video partitions.
    clock = time.perf_counter()
    for index, frame in enumerate(source_log.iter_frames()):
        frame = frame.rename({"key": KEY})
        piece = f"s-{index:06d}"
        write_partitioned(frame, "user_id", n_partitions, work / "user", piece)
        events = (frame.select(KEY, *_EVENT_COLUMNS)
                  .join(authors, on="video_id", how="left", maintain_order="left")
                  .with_columns(pl.lit(1, dtype=pl.Int8).alias("_weight")))
        write_partitioned(events, "video_id", n_partitions, work / "video", piece)
    clock = lap("route", clock)

    # 2. item-side history per video partition, routed on to the rows' user partitions.
    for p in range(n_partitions):
        events = read_partition(work / "video", p)
        if events is None:
            continue
        item = item_side_history(events, history_config).join(events.select(KEY, "user_id"), on=KEY)
        write_partitioned(item, "user_id", n_partitions, work / "item", f"v-{p:05d}")
    clock = lap("item_history", clock)

    # 3. user-side history per user partition, joined with the item side on the log key.
    for p in range(n_partitions):
        frame = read_partition(work / "user", p)
        if frame is None:
            continue
        frame = frame.sort(KEY)
        events = (frame.select(KEY, *_EVENT_COLUMNS).join(authors, on="video_id", how="left", maintain_order="left")
                  .with_columns(pl.lit(1, dtype=pl.Int8).alias("_weight")))
        item = read_partition(work / "item", p)
        if item is None or item.height != frame.height:
            raise StreamingError(f"partition {p}: {0 if item is None else item.height} item-side rows for "
                                 f"{frame.height} impressions")
        history = user_side_history(events, history_config).join(item.drop("user_id"), on=KEY, how="left")
        history = history.sort(KEY).select(KEY, *HISTORY_COLUMNS)
        with_history = frame.join(history, on=KEY, how="left", maintain_order="left")
        path = work / "history" / f"part-{p:05d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path, suffix=".parquet") as tmp:
            with_history.write_parquet(tmp)
    shutil.rmtree(work / "user", ignore_errors=True)
    shutil.rmtree(work / "video", ignore_errors=True)
    shutil.rmtree(work / "item", ignore_errors=True)
    clock = lap("user_history", clock)

    history_parts = sorted((work / "history").glob("part-*.parquet"))
    partitions = [int(path.stem.split("-")[1]) for path in history_parts]

    def train_rows(path: Path, p: int) -> tuple[pl.DataFrame, pl.DataFrame]:
        frame = pl.read_parquet(path).filter(split.train_mask())
        return frame, _users_of(users, p, n_partitions)

    # 4. fit: vocabularies (value counts of clicked rows) and quantiles (two passes).
    pipeline.resolve_inputs(users, videos)
    vocab_sources = pipeline.vocabulary_sources()
    quantile_sources = pipeline.quantile_sources()
    counters = {table: VocabularyCounter(table) for table, _, _ in vocab_sources}
    sketches = {name: QuantileSketch(name, n_quantiles=pipeline.config.n_quantiles, missing=missing)
                for name, _, missing in quantile_sources}
    n_train = 0
    for second_pass in (False, True):
        for path, p in zip(history_parts, partitions, strict=True):
            frame, part_users = train_rows(path, p)
            n_train += 0 if second_pass else frame.height
            raw = pipeline.raw_features(frame, part_users, videos)
            if not second_pass:
                clicked = raw.filter(pl.col("is_click") == 1)
                for table, column, _ in vocab_sources:
                    counters[table].add(clicked[column])
            for name, column, _ in quantile_sources:
                (sketches[name].add_exact if second_pass else sketches[name].add)(raw[column])
    if n_train == 0:
        raise StreamingError(f"{source}: no impression on or before train_end={split.train_end}")
    pipeline.set_fitted(
        {table: counters[table].vocabulary(max_size=max_size, min_count=pipeline.config.min_count)
         for table, _, max_size in vocab_sources},
        {name: sketches[name].normaliser() for name, _, _ in quantile_sources})
    pipeline.save(out_dir / FEATURES_STATE_DIR)
    clock = lap("fit", clock)

    # 5. transform into feature shards.
    shards: list[FeatureShardInfo] = []
    for path, p in zip(history_parts, partitions, strict=True):
        frame = pl.read_parquet(path)
        part_users = _users_of(users, p, n_partitions)
        for name, mask in (("train", split.train_mask()), ("test", split.test_mask())):
            rows = frame.filter(mask)
            for chunk, start in enumerate(range(0, rows.height, shard_rows)):
                piece = rows.slice(start, shard_rows)
                batch = pipeline.transform(piece, part_users, videos)
                relative = f"{name}/part-{p:05d}-{chunk:04d}.safetensors"
                (out_dir / name).mkdir(parents=True, exist_ok=True)
                write_feature_shard(out_dir / relative, batch, piece["user_id"].to_numpy(), piece[KEY].to_numpy())
                shards.append(FeatureShardInfo(relative, name, piece.height, p))
    lap("transform", clock)
    if not keep_work:
        shutil.rmtree(work, ignore_errors=True)
    seconds["total"] = time.perf_counter() - started
    layout = pipeline.layout
    atomic_write_json(out_dir / FEATURE_MANIFEST, {
        "format": MANIFEST_FORMAT, "source": str(source), "pipeline": FEATURES_STATE_DIR,
        "n_partitions": n_partitions, "split": {"train_end": split.train_end, "test_start": split.test_start},
        "n_multivalent": len(layout.multivalent), "dense_width": layout.dense_width,
        "rows": {"train": sum(s.rows for s in shards if s.split == "train"),
                 "test": sum(s.rows for s in shards if s.split == "test")},
        "seconds": seconds,
        "shards": [s.__dict__ for s in shards],
    })
    return StreamingResult(out_dir, pipeline, shards, n_partitions, seconds)


def with_history_out_of_core(work_dir: Path) -> pl.DataFrame:
    """The history frames of a kept work folder (``keep_work=True``), concatenated in log-key order (tests)."""
    parts = sorted((Path(work_dir) / ".work" / "history").glob("part-*.parquet"))
    if not parts:
        raise StreamingError(f"{work_dir}: no history partitions kept (pass keep_work=True)")
    return pl.concat([pl.read_parquet(p) for p in parts]).sort(KEY)

