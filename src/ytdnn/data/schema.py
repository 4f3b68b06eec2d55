"""The impression-log schema every source is turned into (see docs/ARCHITECTURE.md).

``impressions``: one row per impression in log order::

    row_id Int64 | user_id Int64 | video_id Int64 | time_ms Int64 | date Int32 (YYYYMMDD)
    hourmin Int32 | is_click Int8 (0/1) | watch_time_s Float64 (T; 0 when not clicked)
    tab Int32 (context, 0 when absent) | tokens List(Int64) (search/topic tokens, may be empty)

``users``: ``user_id`` plus profile columns. ``videos``: ``video_id``, ``author_id``,
``music_id``, ``tags`` (List(Int64)), ``duration_s`` plus numeric statistics.

Simulated data carries ground truth in ``true_p_click`` and ``true_expected_watch_s``.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from ytdnn.data.errors import DataError
from ytdnn.utils.io import atomic_write_json, atomic_write_with, read_json

IMPRESSION_SCHEMA: dict[str, pl.DataType] = {
    "row_id": pl.Int64(),
    "user_id": pl.Int64(),
    "video_id": pl.Int64(),
    "time_ms": pl.Int64(),
    "date": pl.Int32(),
    "hourmin": pl.Int32(),
    "is_click": pl.Int8(),
    "watch_time_s": pl.Float64(),
    "tab": pl.Int32(),
    "tokens": pl.List(pl.Int64()),
}
REQUIRED_IMPRESSION_COLUMNS = ("user_id", "video_id", "time_ms", "date", "is_click", "watch_time_s")
TRUTH_COLUMNS = ("true_p_click", "true_expected_watch_s")
VIDEO_CORE_SCHEMA: dict[str, pl.DataType] = {
    "video_id": pl.Int64(),
    "author_id": pl.Int64(),
    "music_id": pl.Int64(),
    "tags": pl.List(pl.Int64()),
    "duration_s": pl.Float64(),
}


def date_from_time_ms(time_ms: pl.Expr, tz: str = "UTC") -> pl.Expr:
    """YYYYMMDD (Int32) of an epoch-ms column in time zone ``tz``."""
    dt = pl.from_epoch(time_ms, time_unit="ms").dt.replace_time_zone("UTC").dt.convert_time_zone(tz)
    # Polars returns month/day as 8-bit integers: widen before multiplying.
    return (dt.dt.year().cast(pl.Int32) * 10000 + dt.dt.month().cast(pl.Int32) * 100
            + dt.dt.day().cast(pl.Int32))


def conform_impressions(frame: pl.DataFrame, *, source: str = "impressions") -> pl.DataFrame:
    """Cast to the schema, add defaults for optional columns, and check the invariants.

    Raises DataError naming the column and the first offending row when a required column is
    missing or a value breaks the schema (negative/non-finite watch time, click not 0/1, …).
    """
    missing = [c for c in REQUIRED_IMPRESSION_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"missing required column(s) {missing}; expected {list(REQUIRED_IMPRESSION_COLUMNS)}",
                        path=source)
    out = frame
    if "row_id" not in out.columns:
        out = out.with_row_index("row_id").with_columns(pl.col("row_id").cast(pl.Int64))
    if "hourmin" not in out.columns:
        out = out.with_columns(pl.lit(0, dtype=pl.Int32).alias("hourmin"))
    if "tab" not in out.columns:
        out = out.with_columns(pl.lit(0, dtype=pl.Int32).alias("tab"))
    if "tokens" not in out.columns:
        out = out.with_columns(pl.lit([], dtype=pl.List(pl.Int64)).alias("tokens"))
    try:
        out = out.with_columns([pl.col(c).cast(t, strict=True) for c, t in IMPRESSION_SCHEMA.items()])
    except pl.exceptions.PolarsError as exc:  # pragma: no cover - message depends on Polars
        raise DataError(f"cannot cast to the impression schema {IMPRESSION_SCHEMA}: {exc}", path=source) from exc
    checks = [
        ("watch_time_s", (~pl.col("watch_time_s").is_finite()) | (pl.col("watch_time_s") < 0),
         "a finite watch time >= 0 seconds"),
        ("is_click", ~pl.col("is_click").is_in([0, 1]), "0 or 1"),
        ("watch_time_s", (pl.col("is_click") == 0) & (pl.col("watch_time_s") != 0),
         "watch time 0 on unclicked impressions (the schema counts them as 0)"),
    ]
    for column, bad_expr, expected in checks:
        is_null = out[column].is_null()
        if is_null.any():
            raise DataError(f"null value at row {int(is_null.arg_max())}; expected {expected}",
                            path=source, column=column)
        bad = out.select(bad_expr.alias("bad")).to_series()
        if bad.any():
            index = int(bad.arg_max())
            raise DataError(f"row {index} has value {out[column][index]!r}; expected {expected}",
                            path=source, column=column)
    truth = [c for c in TRUTH_COLUMNS if c in out.columns]
    keep = list(IMPRESSION_SCHEMA) + truth + [c for c in out.columns if c not in IMPRESSION_SCHEMA and c not in truth]
    return out.select(keep)


@dataclass
class InteractionData:
    """An impression log with its user and video tables, in the project's schema."""

    impressions: pl.DataFrame
    users: pl.DataFrame
    videos: pl.DataFrame
    name: str = "data"
    provenance: dict[str, object] = field(default_factory=dict)

    @property
    def has_truth(self) -> bool:
        return all(c in self.impressions.columns for c in TRUTH_COLUMNS)

    def filter_impressions(self, predicate: pl.Expr, name: str | None = None) -> "InteractionData":
        return InteractionData(self.impressions.filter(predicate), self.users, self.videos,
                               name or self.name, dict(self.provenance))

    def summary(self) -> dict[str, object]:
        imp = self.impressions
        clicked = imp.filter(pl.col("is_click") == 1)
        return {
            "name": self.name,
            "impressions": imp.height,
            "users": imp["user_id"].n_unique(),
            "videos": imp["video_id"].n_unique(),
            "click_rate": float(imp["is_click"].mean()) if imp.height else float("nan"),
            "mean_watch_s_given_click": float(clicked["watch_time_s"].mean()) if clicked.height else float("nan"),
            "dates": [int(imp["date"].min()), int(imp["date"].max())] if imp.height else [],
        }


# ---- the ytdnn on-disk layout: impressions.parquet (or impressions/*.parquet|csv), users.parquet, videos.parquet

def write_dataset(data: InteractionData, directory: str | Path) -> Path:
    """Write ``data`` in the ytdnn layout; each file is written atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, frame in (("impressions", data.impressions), ("users", data.users), ("videos", data.videos)):
        atomic_write_with(directory / f"{name}.parquet", lambda tmp, f=frame: f.write_parquet(tmp), suffix=".parquet")
    atomic_write_json(directory / "dataset.json", {"name": data.name, "provenance": data.provenance,
                                                    "format": "ytdnn-v1"})
    return directory


def is_ytdnn_layout(directory: str | Path) -> bool:
    directory = Path(directory)
    return (directory / "impressions.parquet").exists() or (directory / "impressions").is_dir()


def read_dataset(directory: str | Path) -> InteractionData:
    """Read a dataset written by :func:`write_dataset` (or laid out the same way by a user)."""
    directory = Path(directory)
    if not is_ytdnn_layout(directory):
        raise DataError("not a ytdnn dataset folder: expected impressions.parquet or impressions/", path=directory)
    source = directory / "impressions.parquet"
    if source.exists():
        impressions = pl.read_parquet(source)
    else:
        parts = sorted((directory / "impressions").glob("*.parquet"))
        impressions = (pl.concat([pl.read_parquet(p) for p in parts]) if parts else
                       pl.concat([pl.read_csv(p) for p in sorted((directory / "impressions").glob("*.csv"))]))
        source = directory / "impressions"
    impressions = conform_impressions(impressions, source=str(source))
    users = pl.read_parquet(directory / "users.parquet") if (directory / "users.parquet").exists() else \
        pl.DataFrame({"user_id": impressions["user_id"].unique().sort()})
    videos = pl.read_parquet(directory / "videos.parquet") if (directory / "videos.parquet").exists() else \
        pl.DataFrame({"video_id": impressions["video_id"].unique().sort()})
    videos = conform_videos(videos, source=str(directory / "videos.parquet"))
    meta = read_json(directory / "dataset.json") if (directory / "dataset.json").exists() else {}
    return InteractionData(impressions, users, videos, name=str(meta.get("name", directory.name)),
                           provenance=dict(meta.get("provenance", {})))


def conform_videos(videos: pl.DataFrame, *, source: str = "videos") -> pl.DataFrame:
    """Add missing core video columns (nulls / empty tags) and cast them to the schema."""
    if "video_id" not in videos.columns:
        raise DataError("missing required column 'video_id'", path=source)
    out = videos
    for column, dtype in VIDEO_CORE_SCHEMA.items():
        if column not in out.columns:
            default = pl.lit([], dtype=dtype) if isinstance(dtype, pl.List) else pl.lit(None, dtype=dtype)
            out = out.with_columns(default.alias(column))
    return out.with_columns([pl.col(c).cast(t) for c, t in VIDEO_CORE_SCHEMA.items()])


class ImpressionShardWriter:
    """Stream impression frames into ``directory/impressions/part-NNNNN.parquet`` shards.

    Frames are buffered and cut into shards of exactly ``shard_rows`` rows (the last one
    shorter), each written atomically into a staging folder beside ``impressions/``. Leaving the
    ``with`` block normally writes what is left (an empty shard from ``empty()`` when nothing was
    added) and swaps the staging folder in for ``impressions/``; an exception removes it, so an
    existing ``impressions/`` is never mixed with a half-written one. Memory: one shard.
    """

    def __init__(self, directory: str | Path, shard_rows: int, empty: Callable[[], pl.DataFrame]) -> None:
        if shard_rows <= 0:
            raise ValueError(f"shard_rows must be > 0, got {shard_rows}")
        self.directory = Path(directory)
        self.shard_rows = shard_rows
        self.empty = empty
        self.shards = 0
        self.rows = 0
        self._pending: list[pl.DataFrame] = []
        self._pending_rows = 0
        self._staging: Path | None = None

    def __enter__(self) -> "ImpressionShardWriter":
        self.directory.mkdir(parents=True, exist_ok=True)
        self._staging = Path(tempfile.mkdtemp(prefix=".impressions.", dir=self.directory))
        return self

    def _write(self, frame: pl.DataFrame) -> None:
        assert self._staging is not None
        atomic_write_with(self._staging / f"part-{self.shards:05d}.parquet", frame.write_parquet, suffix=".parquet")
        self.shards += 1

    def add(self, frame: pl.DataFrame) -> None:
        self.rows += frame.height
        self._pending.append(frame)
        self._pending_rows += frame.height
        while self._pending_rows >= self.shard_rows:
            buffered = pl.concat(self._pending)
            self._write(buffered.head(self.shard_rows))
            rest = buffered.slice(self.shard_rows)
            self._pending, self._pending_rows = ([rest], rest.height) if rest.height else ([], 0)

    def __exit__(self, exc_type: object, exc: object, traceback: object) -> None:
        staging = self._staging
        assert staging is not None
        if exc_type is not None:
            shutil.rmtree(staging, ignore_errors=True)
            return
        try:
            if self._pending_rows or self.shards == 0:
                self._write(pl.concat(self._pending) if self._pending else self.empty())
            target = self.directory / "impressions"
            retired = self.directory / f".impressions.old-{staging.name.rsplit('.', 1)[-1]}"
            if target.exists():
                target.rename(retired)
            staging.rename(target)
            shutil.rmtree(retired, ignore_errors=True)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
