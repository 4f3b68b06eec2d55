"""The fixed evaluation split by date: train = date <= 20220504, test = date >= 20220505.

A validation slice for early stopping is taken from the *last* training days (time order, no
peeking at test), never from a random shuffle.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from ytdnn.data.schema import InteractionData

DEFAULT_TRAIN_END = 20220504
DEFAULT_TEST_START = 20220505


@dataclass(frozen=True)
class DateSplit:
    train_end: int = DEFAULT_TRAIN_END
    test_start: int = DEFAULT_TEST_START
    test_end: int | None = None
    train_start: int | None = None
    validation_days: int = 1

    def __post_init__(self) -> None:
        if self.test_start <= self.train_end:
            raise ValueError(f"test_start ({self.test_start}) must come after train_end ({self.train_end})")
        if self.validation_days < 0:
            raise ValueError("validation_days must be >= 0")

    def train_mask(self) -> pl.Expr:
        expr = pl.col("date") <= self.train_end
        return expr & (pl.col("date") >= self.train_start) if self.train_start is not None else expr

    def test_mask(self) -> pl.Expr:
        expr = pl.col("date") >= self.test_start
        return expr & (pl.col("date") <= self.test_end) if self.test_end is not None else expr

    def validation_dates(self, impressions: pl.DataFrame) -> list[int]:
        """The last ``validation_days`` distinct dates of the training part."""
        dates = impressions.filter(self.train_mask())["date"].unique().sort().to_list()
        return dates[-self.validation_days:] if self.validation_days else []

    def split(self, data: InteractionData) -> tuple[pl.DataFrame, pl.DataFrame]:
        """(train, test) impression frames, each in log order."""
        train = data.impressions.filter(self.train_mask())
        test = data.impressions.filter(self.test_mask())
        if train.height == 0:
            raise ValueError(f"the train split (date <= {self.train_end}) is empty")
        if test.height == 0:
            raise ValueError(f"the test split (date >= {self.test_start}) is empty")
        return train, test
