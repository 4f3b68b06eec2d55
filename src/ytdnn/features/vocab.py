"""Vocabularies for categorical features, and the embedding width rule.

A :class:`Vocabulary` maps raw values (integer ids or strings) to dense table indices. It is built
from *training* data only, from the values of **clicked** impressions (the paper truncates its
vocabularies to the most frequent values by clicked impressions): the ``max_size`` most frequent
values with at least ``min_count`` clicks, ties broken by the value itself (ascending) so the
result never depends on input order. Index 0 is reserved for out-of-vocabulary values, nulls and
padding; it maps to the zero embedding. The value ranked r (0-based) gets index r + 1, so a table
has ``size == len(keys) + 1`` rows.

Embedding width grows with the log of the vocabulary (:func:`embedding_dim`)::

    dim(V) = clip(round(multiplier · log2(V)), min_dim, max_dim)        V = table rows incl. OOV

e.g. multiplier 4: V = 25 → 19, V = 1 000 → 40, V = 7 000 → 51; clipped to [4, 64] by default.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl

from ytdnn.utils.io import atomic_write_json, read_json

KeyKind = Literal["int", "str"]


class VocabularyError(ValueError):
    """A vocabulary was built, looked up or loaded with values of the wrong kind."""


def embedding_dim(vocab_size: int, *, multiplier: float = 4.0, min_dim: int = 4, max_dim: int = 64) -> int:
    """Embedding width for a table of ``vocab_size`` rows: clip(round(multiplier·log2 V), min_dim, max_dim)."""
    if vocab_size < 1:
        raise VocabularyError(f"vocab_size must be >= 1 (index 0 is the OOV row); got {vocab_size}")
    if multiplier <= 0:
        raise VocabularyError(f"multiplier must be > 0; got {multiplier}")
    if not 1 <= min_dim <= max_dim:
        raise VocabularyError(f"need 1 <= min_dim <= max_dim; got min_dim={min_dim}, max_dim={max_dim}")
    return int(min(max_dim, max(min_dim, round(multiplier * math.log2(vocab_size)))))


def _as_series(values: pl.Series | np.ndarray | Sequence[object], name: str) -> pl.Series:
    if isinstance(values, pl.Series):
        return values
    if isinstance(values, np.ndarray):
        return pl.Series(name, values)
    return pl.Series(name, list(values))


def _key_kind(dtype: pl.DataType, name: str) -> KeyKind:
    if dtype.is_integer():
        return "int"
    if dtype in (pl.String, pl.Categorical, pl.Enum) or isinstance(dtype, (pl.Categorical, pl.Enum)):
        return "str"
    raise VocabularyError(f"vocabulary {name!r}: values must be integers or strings; got dtype {dtype}")


def value_counts(values: pl.Series | np.ndarray | Sequence[object], name: str) -> tuple[pl.DataFrame, KeyKind]:
    """(``key``, ``count``) of the non-null values (lists exploded: each element counts once), and the key kind."""
    series = _as_series(values, name)
    if isinstance(series.dtype, (pl.List, pl.Array)):
        series = series.explode()
    if series.dtype == pl.Null:
        series = series.cast(pl.Int64)
    kind = _key_kind(series.dtype, name)
    series = series.cast(pl.Int64 if kind == "int" else pl.String).drop_nulls()
    return series.rename("key").to_frame().group_by("key").len(name="count").cast({"count": pl.Int64}), kind


class VocabularyCounter:
    """Value counts of one vocabulary accumulated over shards (mergeable: counts add up).

    ``Vocabulary.build(concat(shards))`` equals ``counter.vocabulary()`` after ``add(shard)`` for
    each shard, exactly: the counts are integers and the ranking rule only reads them.
    Memory: one row per distinct value seen.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.kind: KeyKind | None = None
        self._counts: pl.DataFrame | None = None

    def add(self, values: pl.Series | np.ndarray | Sequence[object]) -> None:
        counts, kind = value_counts(values, self.name)
        if counts.height == 0 and self._counts is not None:
            return
        if self.kind is not None and kind != self.kind and counts.height:
            raise VocabularyError(f"vocabulary {self.name!r}: a shard has {kind} values, earlier shards had "
                                  f"{self.kind} values")
        if self._counts is None or self._counts.height == 0:
            self._counts, self.kind = counts, kind
        else:
            self._counts = pl.concat([self._counts, counts]).group_by("key").agg(pl.col("count").sum())

    def vocabulary(self, *, max_size: int | None = None, min_count: int = 1) -> "Vocabulary":
        counts = self._counts if self._counts is not None else pl.DataFrame(schema={"key": pl.Int64,
                                                                                    "count": pl.Int64})
        return Vocabulary.from_counts(counts, self.kind or "int", name=self.name, max_size=max_size,
                                      min_count=min_count)


class Vocabulary:
    """Frequency-ranked value → index map with index 0 = out-of-vocabulary (see module docstring)."""

    def __init__(self, name: str, keys: Sequence[int] | Sequence[str], counts: Sequence[int], kind: KeyKind) -> None:
        if kind not in ("int", "str"):
            raise VocabularyError(f"vocabulary {name!r}: kind must be 'int' or 'str'; got {kind!r}")
        if len(keys) != len(counts):
            raise VocabularyError(f"vocabulary {name!r}: {len(keys)} keys but {len(counts)} counts")
        dtype = pl.Int64 if kind == "int" else pl.String
        self.name = name
        self.kind: KeyKind = kind
        self.keys = pl.Series("key", list(keys), dtype=dtype)
        self.counts = np.asarray(counts, dtype=np.int64)
        if self.keys.null_count():
            raise VocabularyError(f"vocabulary {name!r}: null is not a valid key (nulls are always OOV)")
        if self.keys.n_unique() != len(self.keys):
            raise VocabularyError(f"vocabulary {name!r}: keys are not unique")
        self._indices = pl.Series("index", np.arange(1, len(self.keys) + 1, dtype=np.int64))

    # ---- building ---------------------------------------------------------------------------------------------

    @classmethod
    def build(cls, values: pl.Series | np.ndarray | Sequence[object], *, name: str, max_size: int | None = None,
              min_count: int = 1) -> "Vocabulary":
        """Keep the ``max_size`` most frequent ``values`` seen at least ``min_count`` times.

        Pass one value per clicked training impression (lists are exploded, so a multivalent
        column counts each element). Ties in frequency are broken by the value, ascending.
        """
        if max_size is not None and max_size < 0:
            raise VocabularyError(f"vocabulary {name!r}: max_size must be >= 0; got {max_size}")
        if min_count < 1:
            raise VocabularyError(f"vocabulary {name!r}: min_count must be >= 1; got {min_count}")
        counts, kind = value_counts(values, name)
        return cls.from_counts(counts, kind, name=name, max_size=max_size, min_count=min_count)

    @classmethod
    def from_counts(cls, counts: pl.DataFrame, kind: KeyKind, *, name: str, max_size: int | None = None,
                    min_count: int = 1) -> "Vocabulary":
        """Keep the ``max_size`` most frequent keys of a (``key``, ``count``) frame with count >= ``min_count``.

        The frame may repeat a key (partial counts of several shards, see :class:`VocabularyCounter`):
        repeated keys are summed first, so the result equals :meth:`build` over all the values.
        """
        if max_size is not None and max_size < 0:
            raise VocabularyError(f"vocabulary {name!r}: max_size must be >= 0; got {max_size}")
        if min_count < 1:
            raise VocabularyError(f"vocabulary {name!r}: min_count must be >= 1; got {min_count}")
        counted = (counts.group_by("key").agg(pl.col("count").sum())
                   .filter(pl.col("count") >= min_count)
                   .sort(["count", "key"], descending=[True, False]))
        if max_size is not None:
            counted = counted.head(max_size)
        return cls(name, counted["key"].to_list(), counted["count"].to_list(), kind)

    @classmethod
    def from_clicked(cls, impressions: pl.DataFrame, column: str, *, name: str | None = None,
                     max_size: int | None = None, min_count: int = 1) -> "Vocabulary":
        """Build from ``column`` of the clicked rows (``is_click == 1``) of training ``impressions``."""
        for required in (column, "is_click"):
            if required not in impressions.columns:
                raise VocabularyError(f"vocabulary {name or column!r}: impressions have no column {required!r}")
        clicked = impressions.filter(pl.col("is_click") == 1)[column]
        return cls.build(clicked, name=name or column, max_size=max_size, min_count=min_count)

    # ---- lookup -----------------------------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Rows of the embedding table: the kept values plus index 0 (OOV)."""
        return len(self.keys) + 1

    def __len__(self) -> int:
        return self.size

    def _conform(self, series: pl.Series) -> pl.Series:
        if series.dtype == pl.Null:
            return series.cast(self.keys.dtype)
        if self.kind == "int":
            if not series.dtype.is_integer():
                raise VocabularyError(f"vocabulary {self.name!r} has integer keys; got values of dtype {series.dtype}")
            return series.cast(pl.Int64)
        # String keys: integers are accepted and compared as their decimal text.
        if not (series.dtype.is_integer() or _key_kind(series.dtype, self.name) == "str"):
            raise VocabularyError(f"vocabulary {self.name!r} has string keys; got values of dtype {series.dtype}")
        return series.cast(pl.String)

    def lookup(self, values: pl.Series | np.ndarray | Sequence[object]) -> np.ndarray:
        """Indices (int64) of ``values``; unknown values and nulls map to 0."""
        series = self._conform(_as_series(values, self.name))
        if len(self.keys) == 0:
            return np.zeros(len(series), dtype=np.int64)
        out = series.replace_strict(self.keys, self._indices, default=0, return_dtype=pl.Int64)
        return out.fill_null(0).to_numpy().astype(np.int64, copy=False)

    def lookup_lists(self, values: pl.Series, max_len: int) -> np.ndarray:
        """[B, max_len] int64 indices of a list column, padded with 0; lists keep their first ``max_len`` items.

        Out-of-vocabulary items are dropped (not kept as 0) so that averaging over the non-zero
        slots is an average over known items only.
        """
        if not isinstance(values.dtype, (pl.List, pl.Array)):
            raise VocabularyError(f"vocabulary {self.name!r}: lookup_lists needs a list column; got {values.dtype}")
        if max_len < 1:
            raise VocabularyError(f"vocabulary {self.name!r}: max_len must be >= 1; got {max_len}")
        exploded = (pl.DataFrame({"row": np.arange(len(values), dtype=np.int64), "item": values})
                    .explode("item").drop_nulls("item"))  # an empty list explodes to one null row
        flat = self.lookup(exploded["item"])
        row = exploded["row"].to_numpy()
        known = flat > 0
        row, flat = row[known], flat[known]
        starts = np.concatenate([[0], np.cumsum(np.bincount(row, minlength=len(values)))[:-1]])
        position = np.arange(len(row)) - starts[row]
        keep = position < max_len
        out = np.zeros((len(values), max_len), dtype=np.int64)
        out[row[keep], position[keep]] = flat[keep]
        return out

    def index_of(self, value: int | str) -> int:
        """Index of one value (0 when out of vocabulary)."""
        return int(self.lookup(pl.Series([value]))[0])

    # ---- persistence ------------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "kind": self.kind, "keys": self.keys.to_list(), "counts": self.counts.tolist()}

    @classmethod
    def from_dict(cls, payload: dict[str, object]) -> "Vocabulary":
        try:
            return cls(str(payload["name"]), list(payload["keys"]), list(payload["counts"]),  # type: ignore[arg-type]
                       payload["kind"])  # type: ignore[arg-type]
        except KeyError as exc:
            raise VocabularyError(f"vocabulary payload misses field {exc.args[0]!r}") from exc

    def save(self, path: str | Path) -> None:
        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "Vocabulary":
        return cls.from_dict(read_json(path))

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Vocabulary) and self.name == other.name and self.kind == other.kind
                and self.keys.to_list() == other.keys.to_list() and np.array_equal(self.counts, other.counts))

    def __repr__(self) -> str:
        return f"Vocabulary({self.name!r}, kind={self.kind}, size={self.size})"
