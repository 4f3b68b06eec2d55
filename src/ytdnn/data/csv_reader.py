"""Validated CSV reading: every bad value is reported with its file, line and column.

Rows that cannot be parsed at all (wrong number of fields) are caught by PyArrow's
``invalid_row_handler``; values that do not fit their column (non-numeric id, negative or
non-finite watch time, …) are found after casting. ``on_bad_rows="error"`` raises a
:class:`DataError` at the first problem; ``"skip"`` drops the row and counts it in a
:class:`BadRowReport`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.csv as pacsv

from ytdnn.data.errors import BadRowReport, DataError

OnBadRows = Literal["error", "skip"]


@dataclass(frozen=True)
class ColumnRule:
    """How one column is parsed and checked. ``check`` returns a boolean expr: True = bad value."""

    dtype: pl.DataType
    expected: str
    check: Callable[[pl.Expr], pl.Expr] | None = None
    required: bool = True


def read_validated_csv(path: str | Path, rules: dict[str, ColumnRule], *, on_bad_rows: OnBadRows = "error",
                       report: BadRowReport | None = None, keep_other_columns: bool = True) -> pl.DataFrame:
    """Read ``path`` as strings, then cast and check each column in ``rules``.

    Returns the frame with a ``_line`` column (1-based line number in the file, header = 1).
    """
    path = Path(path)
    if on_bad_rows not in ("error", "skip"):
        raise ValueError(f"on_bad_rows must be 'error' or 'skip', got {on_bad_rows!r}")
    report = report if report is not None else BadRowReport()
    if not path.exists():
        raise DataError("file not found", path=path)
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as handle:  # -sig: tolerate a BOM
            names = [c.strip().strip('"') for c in handle.readline().rstrip("\r\n").split(",")]
    except OSError as exc:
        raise DataError(f"cannot read the header: {exc}", path=path, line=1) from exc
    missing = [c for c, rule in rules.items() if rule.required and c not in names]
    if missing:
        raise DataError(f"missing required column(s) {missing}; the header has {names}", path=path, line=1)

    invalid_lines: list[int] = []
    first_invalid: list[DataError] = []

    def on_invalid(row: pacsv.InvalidRow) -> str:
        # Line numbers are only known when PyArrow parses on one thread (use_threads=False below).
        line = int(row.number) if row.number is not None and row.number >= 0 else -1
        if on_bad_rows == "error":
            # Raising inside the handler is swallowed by PyArrow: remember it and raise after.
            if not first_invalid:
                first_invalid.append(DataError(
                    f"unparsable row: expected {row.expected_columns} fields, found {row.actual_columns}: "
                    f"{row.text[:120]!r}", path=path, line=line))
            return "skip"
        invalid_lines.append(line)
        report.add("unparsable row", f"{path.name}:{line}: {row.text[:80]!r}")
        report.skipped_rows += 1
        return "skip"

    try:
        table = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(use_threads=False),
            parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid),
            convert_options=pacsv.ConvertOptions(column_types={n: pa.string() for n in names},
                                                 strings_can_be_null=False),
        )
    except DataError:
        raise
    except pa.ArrowInvalid as exc:
        raise DataError(f"cannot parse CSV: {exc}", path=path) from exc
    if first_invalid:
        raise first_invalid[0]

    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    # Map each surviving row to its line in the file: the header is line 1 and skipped
    # (unparsable) lines are removed from the sequence.
    n_rows = frame.height
    all_lines = np.arange(2, n_rows + len(invalid_lines) + 2, dtype=np.int64)
    if invalid_lines:
        all_lines = np.setdiff1d(all_lines, np.asarray(invalid_lines, dtype=np.int64), assume_unique=True)
    frame = frame.with_columns(pl.Series("_line", all_lines[:n_rows]))

    casts = []
    for column, rule in rules.items():
        if column not in frame.columns:
            continue
        raw = pl.col(column).str.strip_chars()
        parsed = (raw.cast(pl.Float64, strict=False).cast(rule.dtype, strict=False)
                  if rule.dtype.is_integer() else raw.cast(rule.dtype, strict=False))
        casts.append(parsed.alias(column))
    parsed_frame = frame.with_columns(casts)
    bad_masks = []
    for column, rule in rules.items():
        if column not in frame.columns:
            continue
        raw = frame[column].str.strip_chars()
        value = parsed_frame[column]
        unparsed = value.is_null() & raw.is_not_null() & (raw != "")
        empty = raw.is_null() | (raw == "")
        bad = unparsed | (empty & rule.required)
        if rule.dtype.is_integer():
            # "3.5" must not silently become 3.
            as_float = raw.cast(pl.Float64, strict=False)
            bad = bad | (as_float.is_not_null() & (as_float != as_float.floor()))
        if rule.check is not None:
            checked = parsed_frame.select(rule.check(pl.col(column)).fill_null(False).alias("bad")).to_series()
            bad = bad | checked
        if bad.any():
            if on_bad_rows == "error":
                index = int(bad.arg_max())
                raise DataError(f"value {raw[index]!r} is not valid; expected {rule.expected}",
                                path=path, line=int(frame["_line"][index]), column=column)
            for index in np.flatnonzero(bad.to_numpy())[:3]:
                report.add(f"{column}: expected {rule.expected}", f"{path.name}:{int(frame['_line'][int(index)])}: "
                           f"{column}={raw[int(index)]!r}", n=0)
            report.counts[f"{column}: expected {rule.expected}"] = (
                report.counts.get(f"{column}: expected {rule.expected}", 0) + int(bad.sum()))
            bad_masks.append(bad)
    if bad_masks:
        any_bad = bad_masks[0]
        for mask in bad_masks[1:]:
            any_bad = any_bad | mask
        report.skipped_rows += int(any_bad.sum())
        parsed_frame = parsed_frame.filter(~any_bad)
    if not keep_other_columns:
        parsed_frame = parsed_frame.select([c for c in rules if c in parsed_frame.columns] + ["_line"])
    return parsed_frame
