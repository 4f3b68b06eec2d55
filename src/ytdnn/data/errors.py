"""Errors raised for bad input data: each names the file, line and column, and what was expected."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


class DataError(ValueError):
    """Bad input data. The message names the file, line (1-based, header = line 1) and column."""

    def __init__(self, message: str, *, path: str | Path | None = None, line: int | None = None,
                 column: str | None = None) -> None:
        self.path = str(path) if path is not None else None
        self.line = line
        self.column = column
        where = []
        if self.path is not None:
            where.append(self.path)
        if line is not None:
            where.append(f"line {line}")
        if column is not None:
            where.append(f"column '{column}'")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)


@dataclass
class BadRowReport:
    """Rows dropped under ``on_bad_rows='skip'``: a count per reason and the first few examples."""

    counts: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)
    max_examples: int = 10
    skipped_rows: int = 0

    def add(self, reason: str, example: str, n: int = 1) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + n
        if len(self.examples) < self.max_examples:
            self.examples.append(example)

    @property
    def total(self) -> int:
        """Rows dropped (a row bad in two columns counts once here, once under each reason)."""
        return self.skipped_rows

    def to_dict(self) -> dict[str, object]:
        return {"skipped_rows": self.skipped_rows, "by_reason": dict(self.counts), "examples": list(self.examples)}
