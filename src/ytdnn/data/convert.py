"""``ytdnn data convert``: CSV impression logs → partitioned Parquet in the ytdnn layout, streaming.

Two kinds of source:

* a KuaiRand folder in the official layout (``data/log_standard_*.csv`` plus the user and video
  files): the logs are mapped as :mod:`ytdnn.data.kuairand` maps them (T = ``play_time_ms``/1000
  on clicked rows, 0 otherwise; the same column rules);
* a CSV file, or a folder of ``*.csv`` files, already in the impression schema (columns named as
  in docs/ARCHITECTURE.md; ``row_id``, ``hourmin``, ``tab`` and ``tokens`` optional, ``tokens``
  as space-separated integers), with optional ``users``/``videos`` CSV or Parquet files.

The logs are read with PyArrow's streaming CSV reader, one block at a time; each block is cast,
validated with the same rules and messages as the in-memory readers (file, line, column, what
was expected) and appended to the current shard; a shard of ``shard_rows`` rows is written as
``impressions/part-NNNNN.parquet``. Memory holds one CSV block plus one shard, whatever the size
of the log. Files are read in name order and ``row_id`` numbers the kept rows in that order
(the in-memory KuaiRand reader also sorts by ``time_ms``; the official files are already in
time order, so both give the same log).

Output (``read_dataset(out)`` reads it): ``impressions/part-*.parquet``, ``users.parquet`` and
``videos.parquet`` when the source has them, ``dataset.json`` with the provenance. The shards
are written into a temporary folder that replaces ``impressions/`` only when complete.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.csv as pacsv

from ytdnn.data.csv_reader import ColumnRule, OnBadRows
from ytdnn.data.errors import BadRowReport, DataError
from ytdnn.data.kuairand import LOG_RULES, find_kuairand_root, read_users, read_videos
from ytdnn.data.schema import IMPRESSION_SCHEMA, ImpressionShardWriter, conform_impressions, conform_videos
from ytdnn.utils.io import atomic_write_json, atomic_write_with

__all__ = ["IMPRESSION_RULES", "ConvertResult", "convert_csv_logs"]

_nonneg = lambda c: c < 0  # noqa: E731

IMPRESSION_RULES: dict[str, ColumnRule] = {
    "row_id": ColumnRule(pl.Int64(), "a non-negative integer", _nonneg, required=False),
    "user_id": ColumnRule(pl.Int64(), "a non-negative integer id", _nonneg),
    "video_id": ColumnRule(pl.Int64(), "a non-negative integer id", _nonneg),
    "time_ms": ColumnRule(pl.Int64(), "epoch milliseconds (a non-negative integer)", _nonneg),
    "date": ColumnRule(pl.Int32(), "a date as YYYYMMDD", lambda c: (c < 19700101) | (c > 29991231)),
    "hourmin": ColumnRule(pl.Int32(), "an HHMM time bucket", lambda c: (c < 0) | (c > 2400), required=False),
    "is_click": ColumnRule(pl.Int8(), "0 or 1", lambda c: ~c.is_in([0, 1])),
    "watch_time_s": ColumnRule(pl.Float64(), "a finite watch time >= 0 seconds", lambda c: (~c.is_finite()) | (c < 0)),
    "tab": ColumnRule(pl.Int32(), "an integer tab id", None, required=False),
}
"""Rules for a CSV already in the impression schema (``tokens`` is parsed separately)."""


@dataclass
class ConvertResult:
    """What :func:`convert_csv_logs` wrote."""

    out_dir: Path
    rows: int
    shards: int
    source_files: list[str]
    bad_rows: dict[str, object] = field(default_factory=dict)


@dataclass
class _Lines:
    """Maps the rows of each streamed block to their line in the file (header = line 1).

    Unparsable rows are skipped by PyArrow and reported with their line number (single-threaded
    parsing), so they are left out of the count.
    """

    next_line: int = 2
    skipped: set[int] = field(default_factory=set)

    def take(self, n_rows: int) -> np.ndarray:
        lines = []
        line = self.next_line
        while len(lines) < n_rows:
            if line not in self.skipped:
                lines.append(line)
            line += 1
        self.next_line = line
        return np.asarray(lines, dtype=np.int64)


def _header(path: Path) -> list[str]:
    with open(path, encoding="utf-8", errors="replace") as handle:
        return [c.strip().strip('"') for c in handle.readline().rstrip("\r\n").split(",")]


def _blocks(path: Path, rules: dict[str, ColumnRule], on_bad_rows: OnBadRows, report: BadRowReport,
            block_bytes: int) -> Iterator[tuple[pl.DataFrame, np.ndarray]]:
    """Yield (string frame, line numbers) block by block; unparsable rows raise or are counted."""
    if not path.is_file():
        raise DataError("file not found", path=path)
    names = _header(path)
    missing = [c for c, rule in rules.items() if rule.required and c not in names]
    if missing:
        raise DataError(f"missing required column(s) {missing}; the header has {names}", path=path, line=1)
    lines = _Lines()
    first_invalid: list[DataError] = []

    def on_invalid(row: pacsv.InvalidRow) -> str:
        line = int(row.number) if row.number is not None and row.number >= 0 else -1
        lines.skipped.add(line)
        if on_bad_rows == "error":
            if not first_invalid:  # raising inside the handler is swallowed by PyArrow
                first_invalid.append(DataError(f"unparsable row: expected {row.expected_columns} fields, found "
                                               f"{row.actual_columns}: {row.text[:120]!r}", path=path, line=line))
            return "skip"
        report.add("unparsable row", f"{path.name}:{line}: {row.text[:80]!r}")
        report.skipped_rows += 1
        return "skip"

    try:
        reader = pacsv.open_csv(
            path, read_options=pacsv.ReadOptions(use_threads=False, block_size=block_bytes),
            parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid),
            convert_options=pacsv.ConvertOptions(column_types={n: pa.string() for n in names},
                                                 strings_can_be_null=False))
        for record_batch in reader:
            if first_invalid:
                raise first_invalid[0]
            frame = pl.from_arrow(record_batch)
            assert isinstance(frame, pl.DataFrame)
            yield frame, lines.take(frame.height)
    except pa.ArrowInvalid as exc:
        raise DataError(f"cannot parse CSV: {exc}", path=path) from exc
    if first_invalid:
        raise first_invalid[0]


def _validate(frame: pl.DataFrame, lines: np.ndarray, rules: dict[str, ColumnRule], path: Path,
              on_bad_rows: OnBadRows, report: BadRowReport) -> pl.DataFrame:
    """Cast the ruled columns and check them (the same semantics as ``read_validated_csv``)."""
    casts = []
    for column, rule in rules.items():
        if column in frame.columns:
            raw = pl.col(column).str.strip_chars()
            casts.append((raw.cast(pl.Float64, strict=False).cast(rule.dtype, strict=False) if rule.dtype.is_integer()
                          else raw.cast(rule.dtype, strict=False)).alias(column))
    parsed = frame.with_columns(casts)
    any_bad = np.zeros(frame.height, dtype=bool)
    for column, rule in rules.items():
        if column not in frame.columns:
            continue
        raw = frame[column].str.strip_chars()
        empty = raw.is_null() | (raw == "")
        bad = (parsed[column].is_null() & ~empty) | (empty & rule.required)
        if rule.dtype.is_integer():  # "3.5" must not silently become 3
            as_float = raw.cast(pl.Float64, strict=False)
            bad = bad | (as_float.is_not_null() & (as_float != as_float.floor()))
        if rule.check is not None:
            bad = bad | parsed.select(rule.check(pl.col(column)).fill_null(False)).to_series()
        bad_rows = bad.fill_null(False).to_numpy()
        if bad_rows.any():
            index = int(np.argmax(bad_rows))
            reason = f"{column}: expected {rule.expected}"
            if on_bad_rows == "error":
                raise DataError(f"value {raw[index]!r} is not valid; expected {rule.expected}", path=path,
                                line=int(lines[index]), column=column)
            report.add(reason, f"{path.name}:{int(lines[index])}: {column}={raw[index]!r}", n=int(bad_rows.sum()))
            any_bad |= bad_rows
    if any_bad.any():
        report.skipped_rows += int(any_bad.sum())
        parsed = parsed.filter(pl.Series(~any_bad))
    return parsed


def _kuairand_block(frame: pl.DataFrame) -> pl.DataFrame:
    out = frame.with_columns(pl.when(pl.col("is_click") == 1).then(pl.col("play_time_ms") / 1000.0)
                             .otherwise(0.0).alias("watch_time_s"))
    keep = ["user_id", "video_id", "time_ms", "date", "hourmin", "is_click", "watch_time_s", "tab"]
    extra = [pl.col(c).cast(pl.Float64) for c in ("duration_ms", "play_time_ms") if c in out.columns]
    return out.select([c for c in keep if c in out.columns] + extra)


def _schema_block(frame: pl.DataFrame) -> pl.DataFrame:
    keep = [c for c in IMPRESSION_SCHEMA if c in frame.columns and c != "tokens"]
    out = frame.select(keep)
    if "tokens" in frame.columns:
        out = out.with_columns(frame["tokens"].str.strip_chars().str.split(" ").list.eval(
            pl.element().filter(pl.element() != "").cast(pl.Int64, strict=False)).alias("tokens"))
    return out


def _read_table(path: Path, *, source: str) -> pl.DataFrame:
    if path.suffix == ".parquet":
        return pl.read_parquet(path)
    if path.suffix == ".csv":
        return pl.read_csv(path)
    raise DataError("expected a .csv or .parquet file", path=source)


def convert_csv_logs(source: str | Path, out_dir: str | Path, *, shard_rows: int = 1_000_000,
                     on_bad_rows: OnBadRows = "error", users: str | Path | None = None,
                     videos: str | Path | None = None, block_bytes: int = 16 << 20) -> ConvertResult:
    """Convert the CSV log(s) at ``source`` into the ytdnn layout in ``out_dir`` (see the module doc).

    ``users``/``videos`` (CSV or Parquet) are for schema CSVs; a KuaiRand folder brings its own.
    Bad rows raise a :class:`DataError` naming file, line and column, or with
    ``on_bad_rows="skip"`` are dropped and counted in ``dataset.json``.
    """
    if shard_rows <= 0:
        raise ValueError(f"shard_rows must be > 0, got {shard_rows}")
    if on_bad_rows not in ("error", "skip"):
        raise ValueError(f"on_bad_rows must be 'error' or 'skip', got {on_bad_rows!r}")
    source, out_dir = Path(source), Path(out_dir)
    if (out_dir / "impressions.parquet").exists():
        raise DataError("impressions.parquet exists and would shadow impressions/; write to an empty folder",
                        path=out_dir)
    kuairand_root: Path | None = None
    if source.is_dir() and ((source / "data").is_dir() or (source / "KuaiRand-Pure").is_dir()):
        kuairand_root = find_kuairand_root(source)
        files = sorted((kuairand_root / "data").glob("log_standard_*.csv"))
        rules, to_schema = LOG_RULES, _kuairand_block
    elif source.is_dir():
        files = sorted(source.glob("*.csv"))
        rules, to_schema = IMPRESSION_RULES, _schema_block
    elif source.is_file():
        files = [source]
        rules, to_schema = IMPRESSION_RULES, _schema_block
    else:
        raise DataError("no such file or folder", path=source)
    if not files:
        raise DataError("no CSV log found (expected *.csv, or data/log_standard_*.csv for KuaiRand)", path=source)

    report = BadRowReport()
    out_dir.mkdir(parents=True, exist_ok=True)
    def empty() -> pl.DataFrame:
        return conform_impressions(pl.DataFrame(schema={c: t for c, t in IMPRESSION_SCHEMA.items() if c != "tokens"}),
                                   source=str(source))

    with ImpressionShardWriter(out_dir, shard_rows, empty) as writer:
        for path in files:
            for raw, lines in _blocks(path, rules, on_bad_rows, report, block_bytes):
                block = to_schema(_validate(raw, lines, rules, path, on_bad_rows, report))
                if "row_id" not in block.columns:
                    block = block.with_columns(pl.int_range(writer.rows, writer.rows + block.height,
                                                            dtype=pl.Int64).alias("row_id"))
                writer.add(conform_impressions(block, source=f"{path} (lines {int(lines[0])}..{int(lines[-1])})"
                                               if len(lines) else str(path)))
    rows, shards = writer.rows, writer.shards

    tables: dict[str, pl.DataFrame] = {}
    if kuairand_root is not None:
        tables["users"] = read_users(kuairand_root / "data" / "user_features_pure.csv", on_bad_rows=on_bad_rows,
                                     report=report)
        tables["videos"] = read_videos(kuairand_root, on_bad_rows=on_bad_rows, report=report)
    if users is not None:
        tables["users"] = _read_table(Path(users), source=str(users))
        if "user_id" not in tables["users"].columns:
            raise DataError("missing required column 'user_id'", path=users)
    if videos is not None:
        tables["videos"] = conform_videos(_read_table(Path(videos), source=str(videos)), source=str(videos))
    for name, frame in tables.items():
        atomic_write_with(out_dir / f"{name}.parquet", lambda tmp, f=frame: f.write_parquet(tmp), suffix=".parquet")
    name = "kuairand-pure" if kuairand_root is not None else source.stem
    provenance = {"converted_from": str(source), "files": [p.name for p in files], "rows": rows, "shards": shards,
                  "bad_rows": report.to_dict()}
    atomic_write_json(out_dir / "dataset.json", {"name": name, "provenance": provenance, "format": "ytdnn-v1"})
    return ConvertResult(out_dir, rows, shards, [str(p) for p in files], report.to_dict())
