"""Reader for KuaiRand-Pure in its official layout (Gao et al., CIKM 2022; CC BY-SA 4.0).

``KuaiRand-Pure/data/log_standard_*.csv`` (every file present is read, so the same code runs on
the 14-day window and on the full dataset), ``user_features_pure.csv`` and
``video_features_basic_pure.csv`` (joined with the statistics file when present).

Mapping to the schema: T = ``play_time_ms`` / 1000 on clicked rows, 0 on unclicked ones
(unclicked rows often carry a few seconds of preview play, which is not a watch).
"""

from __future__ import annotations

import logging

from pathlib import Path

import polars as pl

from ytdnn.data.csv_reader import ColumnRule, OnBadRows, read_validated_csv
from ytdnn.data.errors import BadRowReport, DataError
from ytdnn.data.schema import InteractionData, conform_impressions, conform_videos

DATASET_DIRNAME = "KuaiRand-Pure"
CITATION = ("KuaiRand: Chongming Gao et al., \"KuaiRand: An Unbiased Sequential Recommendation Dataset "
            "with Randomly Exposed Videos\", CIKM 2022. Licence CC BY-SA 4.0.")

_nonneg = lambda c: c < 0  # noqa: E731 - tiny predicate table below reads better inline


LOG_RULES: dict[str, ColumnRule] = {
    "user_id": ColumnRule(pl.Int64(), "a non-negative integer id", _nonneg),
    "video_id": ColumnRule(pl.Int64(), "a non-negative integer id", _nonneg),
    "date": ColumnRule(pl.Int32(), "a date as YYYYMMDD",
                       lambda c: (c < 19700101) | (c > 29991231) | ~((c // 100) % 100).is_between(1, 12)
                       | ~(c % 100).is_between(1, 31)),
    "hourmin": ColumnRule(pl.Int32(), "an HHMM time bucket", lambda c: (c < 0) | (c > 2400), required=False),
    "time_ms": ColumnRule(pl.Int64(), "epoch milliseconds (a non-negative integer)", _nonneg),
    "is_click": ColumnRule(pl.Int8(), "0 or 1", lambda c: ~c.is_in([0, 1])),
    "play_time_ms": ColumnRule(pl.Float64(), "a finite play time >= 0 ms",
                               lambda c: (~c.is_finite()) | (c < 0)),
    "duration_ms": ColumnRule(pl.Float64(), "a finite duration >= 0 ms", lambda c: (~c.is_finite()) | (c < 0),
                              required=False),
    "tab": ColumnRule(pl.Int32(), "an integer tab id", None, required=False),
}

USER_RULES: dict[str, ColumnRule] = {"user_id": ColumnRule(pl.Int64(), "a non-negative integer id", _nonneg)}
VIDEO_RULES: dict[str, ColumnRule] = {
    "video_id": ColumnRule(pl.Int64(), "a non-negative integer id", _nonneg),
    "author_id": ColumnRule(pl.Int64(), "an integer id", None, required=False),
    "music_id": ColumnRule(pl.Int64(), "an integer id", None, required=False),
    "video_duration": ColumnRule(pl.Float64(), "a duration in ms", None, required=False),
}


log = logging.getLogger(__name__)

def find_kuairand_root(data_dir: str | Path) -> Path:
    """Return the ``KuaiRand-Pure`` folder under ``data_dir`` (or ``data_dir`` itself)."""
    data_dir = Path(data_dir)
    for candidate in (data_dir / DATASET_DIRNAME, data_dir):
        if (candidate / "data").is_dir() and list((candidate / "data").glob("log_standard_*.csv")):
            return candidate
    raise DataError(f"no KuaiRand-Pure data found: expected {DATASET_DIRNAME}/data/log_standard_*.csv under it "
                    f"(run `ytdnn data download kuairand-pure --data-dir {data_dir}`)", path=data_dir)


def read_log(paths: list[Path], *, on_bad_rows: OnBadRows = "error",
             report: BadRowReport | None = None) -> pl.DataFrame:
    """Read and concatenate the standard logs into the impression schema, in log order."""
    report = report if report is not None else BadRowReport()
    frames = []
    offset = 0
    for path in paths:
        frame = read_validated_csv(path, LOG_RULES, on_bad_rows=on_bad_rows, report=report)
        frame = frame.with_columns(
            (pl.col("_line") - 2 + offset).cast(pl.Int64).alias("row_id"),
            pl.when(pl.col("is_click") == 1).then(pl.col("play_time_ms") / 1000.0).otherwise(0.0)
            .alias("watch_time_s"),
        )
        offset += frame.height + 10_000_000  # row ids stay unique and ordered across files
        frames.append(frame.drop("_line"))
    log = pl.concat(frames, how="diagonal_relaxed")
    keep = ["row_id", "user_id", "video_id", "time_ms", "date", "hourmin", "is_click", "watch_time_s", "tab"]
    extra = [c for c in ("duration_ms", "play_time_ms") if c in log.columns]
    log = log.select([c for c in keep if c in log.columns] + extra)
    if "duration_ms" in log.columns:
        log = log.with_columns(pl.col("duration_ms").cast(pl.Float64))
    # Official files are in time order; sorting stably by time keeps that and orders several files.
    log = log.sort("time_ms", maintain_order=True)
    log = log.with_row_index("_order").with_columns(pl.col("_order").cast(pl.Int64).alias("row_id")).drop("_order")
    return conform_impressions(log, source=str(paths[0].parent))


def _check_unique_ids(frame: pl.DataFrame, id_column: str, path: Path, what: str) -> None:
    """One row per id: a repeated id is an error naming both lines (the frame still has ``_line``)."""
    repeated = frame.filter(pl.col(id_column).is_duplicated())
    if repeated.height:
        first_id = repeated[id_column][0]
        lines = repeated.filter(pl.col(id_column) == first_id)["_line"].sort().to_list()
        raise DataError(f"{id_column} {first_id} repeats line {lines[0]}; expected one row per {what}",
                        path=path, line=int(lines[1]), column=id_column)


def read_users(path: Path, *, on_bad_rows: OnBadRows = "error", report: BadRowReport | None = None) -> pl.DataFrame:
    users = read_validated_csv(path, USER_RULES, on_bad_rows=on_bad_rows, report=report)
    _check_unique_ids(users, "user_id", path, "user")
    lines = users["_line"]
    users = users.drop("_line")
    numeric_like = [c for c in users.columns if c != "user_id"]
    # Profile columns stay strings (categoricals: odd raw values such as -124 are categories);
    # count columns are also offered as numbers for features that want them.
    casts = []
    for column in numeric_like:
        as_float = users[column].str.strip_chars().cast(pl.Float64, strict=False)
        unparsed = as_float.is_null() & users[column].is_not_null()
        if not unparsed.any():
            casts.append(as_float.alias(f"{column}__num"))
        elif unparsed.mean() < 0.01:
            # A numeric column with a stray value: say so rather than drop the number silently.
            at = int(unparsed.arg_max())
            log.warning("%s, line %d, column '%s': %r is not a number; the column is used as a category "
                        "only (%d such rows)", path, lines[at], column, users[column][at], int(unparsed.sum()))
    return users.with_columns(casts)


def read_videos(root: Path, *, on_bad_rows: OnBadRows = "error", report: BadRowReport | None = None) -> pl.DataFrame:
    data = root / "data"
    basic_path = data / "video_features_basic_pure.csv"
    videos = read_validated_csv(basic_path, VIDEO_RULES, on_bad_rows=on_bad_rows, report=report)
    _check_unique_ids(videos, "video_id", basic_path, "video")
    videos = videos.drop("_line")
    videos = videos.with_columns(
        pl.col("tag").fill_null("").str.split(",").list.eval(
            pl.element().str.strip_chars().cast(pl.Int64, strict=False).drop_nulls()).alias("tags"),
        (pl.col("video_duration") / 1000.0).alias("duration_s"),
    )
    stats = None
    parquet = data / "video_features_basic_plus_statistic_pure.parquet"
    csv_stats = data / "video_features_statistic_pure.csv"
    if parquet.exists():
        stats = pl.read_parquet(parquet)
    elif csv_stats.exists():
        stats = read_validated_csv(csv_stats, {"video_id": VIDEO_RULES["video_id"]}, on_bad_rows=on_bad_rows,
                                   report=report).drop("_line")
    if stats is not None:
        numeric = [c for c, t in stats.schema.items() if t.is_numeric() and c not in videos.columns]
        if stats.schema["video_id"] != pl.Int64:
            stats = stats.with_columns(pl.col("video_id").cast(pl.Int64, strict=False))
        # Statistic columns arrive as numbers (parquet) or strings (CSV); keep what parses as numbers.
        string_cols = [c for c, t in stats.schema.items() if t == pl.String and c not in videos.columns
                       and c not in ("upload_dt_parsed", "upload_date")]
        stats = stats.with_columns([pl.col(c).cast(pl.Float64, strict=False) for c in string_cols])
        numeric = sorted(set(numeric) | {c for c in string_cols if stats[c].null_count() < stats.height})
        videos = videos.join(stats.select(["video_id", *numeric]).with_columns(
            [pl.col(c).cast(pl.Float64) for c in numeric]), on="video_id", how="left")
    return conform_videos(videos, source=str(basic_path))


def read_kuairand(data_dir: str | Path, *, on_bad_rows: OnBadRows = "error") -> InteractionData:
    """Read KuaiRand-Pure into :class:`InteractionData`; bad rows raise or are counted."""
    root = find_kuairand_root(data_dir)
    logs = sorted((root / "data").glob("log_standard_*.csv"))
    report = BadRowReport()
    impressions = read_log(logs, on_bad_rows=on_bad_rows, report=report)
    users = read_users(root / "data" / "user_features_pure.csv", on_bad_rows=on_bad_rows, report=report)
    videos = read_videos(root, on_bad_rows=on_bad_rows, report=report)
    return InteractionData(impressions, users, videos, name="kuairand-pure",
                           provenance={"root": str(root), "logs": [p.name for p in logs],
                                       "bad_rows": report.to_dict(), "citation": CITATION})
