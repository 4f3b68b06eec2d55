"""Quantile (empirical-CDF) normalisation of continuous features, as in the paper's ranker.

Fitting on the training values x_1..x_n stores at most q + 1 knots u_0 < … < u_m: the
``inverted_cdf`` quantiles of the sample at probabilities 0, 1/q, …, 1 (always sample values),
with ties removed. At each knot it stores the empirical CDF *strictly below* it::

    c_j = #{i : x_i < u_j} / n

and maps a value by linear interpolation between knots::

    x̃ = c_j + (c_{j+1} − c_j) · (x − u_j) / (u_{j+1} − u_j)      for u_j <= x <= u_{j+1}

So the training minimum maps to exactly 0 and the training maximum to 1 − P(X = max) < 1: x̃ is
in [0, 1). Values beyond the training range clip to the ends (x < u_0 → 0, x > u_m → c_m), which
is the point of the transform: a test value never lands outside what the network saw. A heavy tie
(e.g. 60 % zeros) keeps its whole mass at one point: 0 → 0, and the next knot starts at 0.6.

Missing values (null / NaN) are imputed with the training median (x̃ = F̂(median) ≈ 0.5). With
``missing="indicator"`` an extra 0/1 column says the value was missing (use it where missingness
means something, e.g. "no previous click"). :meth:`QuantileNormaliser.expand` gives the paper's
[x̃, x̃², √x̃] super- and sub-linear terms; every column stays in [0, 1].

A feature with no training values at all gets a single knot at 0 (everything maps to 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl

from ytdnn.utils.io import atomic_write_json, read_json

MissingPolicy = Literal["median", "indicator"]


class QuantileError(ValueError):
    """A quantile normaliser was fitted or applied to values it cannot handle."""


def _to_float(values: pl.Series | np.ndarray | Sequence[float | None], name: str) -> np.ndarray:
    """float64 array with nulls as NaN; ±inf is rejected (it has no place on a CDF)."""
    if isinstance(values, pl.Series):
        if not (values.dtype.is_numeric() or values.dtype in (pl.Boolean, pl.Null)):
            raise QuantileError(f"feature {name!r}: expected numbers; got dtype {values.dtype}")
        array = values.cast(pl.Float64).fill_null(float("nan")).to_numpy()
    else:
        try:
            array = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise QuantileError(f"feature {name!r}: expected numbers ({exc})") from exc
    array = np.asarray(array, dtype=np.float64).reshape(-1)
    infinite = np.isinf(array)
    if infinite.any():
        raise QuantileError(f"feature {name!r}: value {array[infinite.argmax()]} at position "
                            f"{int(infinite.argmax())} is infinite; expected a finite number or null")
    return array


def knot_ranks(n: int, n_quantiles: int) -> np.ndarray:
    """0-based ranks of the inverted-CDF quantiles j/q, j = 0..q, of n sorted values.

    Quantile j/q is the ceil(j·n/q)-th smallest value; integer arithmetic keeps j/q exact (a float
    0.6 is 0.6000000000000001 and would move a knot).
    """
    j = np.arange(n_quantiles + 1, dtype=np.int64)
    return np.clip((j * n + n_quantiles - 1) // n_quantiles - 1, 0, n - 1)


def median_ranks(n: int) -> np.ndarray:
    """0-based ranks whose mean is the median of n values (one rank for odd n, two for even n)."""
    return np.array([(n - 1) // 2] if n % 2 else [n // 2 - 1, n // 2], dtype=np.int64)


class QuantileNormaliser:
    """x ↦ x̃ = F̂_train(x) in [0, 1) by interpolated quantile knots (see module docstring)."""

    def __init__(self, name: str, knots: Sequence[float] | np.ndarray, cdf: Sequence[float] | np.ndarray,
                 fill_cdf: float, missing: MissingPolicy = "median", n_train: int = 0) -> None:
        knots_array = np.asarray(knots, dtype=np.float64)
        cdf_array = np.asarray(cdf, dtype=np.float64)
        if knots_array.ndim != 1 or knots_array.shape != cdf_array.shape or knots_array.size == 0:
            raise QuantileError(f"feature {name!r}: need equal, non-empty knots and cdf arrays")
        if np.any(np.diff(knots_array) <= 0):
            raise QuantileError(f"feature {name!r}: knots must be strictly increasing")
        if np.any(np.diff(cdf_array) < 0) or cdf_array[0] < 0 or cdf_array[-1] >= 1:
            raise QuantileError(f"feature {name!r}: cdf must be non-decreasing within [0, 1)")
        if missing not in ("median", "indicator"):
            raise QuantileError(f"feature {name!r}: missing must be 'median' or 'indicator'; got {missing!r}")
        self.name = name
        self.knots = knots_array
        self.cdf = cdf_array
        self.fill_cdf = float(fill_cdf)
        self.missing: MissingPolicy = missing
        self.n_train = int(n_train)

    @classmethod
    def fit(cls, values: pl.Series | np.ndarray | Sequence[float | None], *, name: str, n_quantiles: int = 100,
            missing: MissingPolicy = "median") -> "QuantileNormaliser":
        """Fit on training values (nulls/NaN are ignored for the knots and the median)."""
        if n_quantiles < 1:
            raise QuantileError(f"feature {name!r}: n_quantiles must be >= 1; got {n_quantiles}")
        array = _to_float(values, name)
        finite = np.sort(array[~np.isnan(array)])
        if finite.size == 0:
            return cls(name, [0.0], [0.0], 0.0, missing, 0)
        rank = knot_ranks(finite.size, n_quantiles)
        knots = np.unique(finite[rank])
        cdf = np.searchsorted(finite, knots, side="left") / finite.size
        return cls.from_order_statistics(name, knots, cdf, float(np.median(finite)), missing, finite.size)

    @classmethod
    def from_order_statistics(cls, name: str, knots: np.ndarray, cdf: np.ndarray, median: float,
                              missing: MissingPolicy, n_train: int) -> "QuantileNormaliser":
        """The normaliser of knots (values at :func:`knot_ranks`, ties removed), their CDFs and the median."""
        normaliser = cls(name, knots, cdf, 0.0, missing, n_train)
        normaliser.fill_cdf = float(normaliser._interp(np.array([median]))[0])
        return normaliser

    def _interp(self, array: np.ndarray) -> np.ndarray:
        # np.interp clips outside [u_0, u_m] to cdf[0] and cdf[-1], exactly the documented behaviour.
        return np.interp(array, self.knots, self.cdf)

    @property
    def width(self) -> int:
        """Dense columns produced by :meth:`transform_expand`: [x̃, x̃², √x̃] (+ a missing flag)."""
        return 4 if self.missing == "indicator" else 3

    def transform(self, values: pl.Series | np.ndarray | Sequence[float | None]) -> np.ndarray:
        """x̃ in [0, 1) (float64); missing values get the training median's x̃."""
        array = _to_float(values, self.name)
        missing = np.isnan(array)
        out = self._interp(np.where(missing, self.knots[0], array))
        out[missing] = self.fill_cdf
        return out

    @staticmethod
    def expand(normalised: np.ndarray) -> np.ndarray:
        """[B] x̃ → [B, 3] columns [x̃, x̃², √x̃]."""
        normalised = np.asarray(normalised, dtype=np.float64)
        return np.stack([normalised, normalised * normalised, np.sqrt(normalised)], axis=-1)

    def transform_expand(self, values: pl.Series | np.ndarray | Sequence[float | None]) -> np.ndarray:
        """[B, width]: :meth:`expand` of :meth:`transform`, plus the 0/1 missing flag under ``indicator``."""
        array = _to_float(values, self.name)
        expanded = self.expand(self.transform(array))
        if self.missing == "indicator":
            expanded = np.concatenate([expanded, np.isnan(array).astype(np.float64)[:, None]], axis=1)
        return expanded

    # ---- persistence ------------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "knots": self.knots.tolist(), "cdf": self.cdf.tolist(),
                "fill_cdf": self.fill_cdf, "missing": self.missing, "n_train": self.n_train}

    @classmethod
    def from_dict(cls, payload: dict[str, object]) -> "QuantileNormaliser":
        try:
            return cls(str(payload["name"]), payload["knots"], payload["cdf"],  # type: ignore[arg-type]
                       float(payload["fill_cdf"]), payload.get("missing", "median"),  # type: ignore[arg-type]
                       int(payload.get("n_train", 0)))  # type: ignore[arg-type]
        except KeyError as exc:
            raise QuantileError(f"quantile payload misses field {exc.args[0]!r}") from exc

    def save(self, path: str | Path) -> None:
        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "QuantileNormaliser":
        return cls.from_dict(read_json(path))

    def __repr__(self) -> str:
        return f"QuantileNormaliser({self.name!r}, knots={self.knots.size}, missing={self.missing})"


# ---- out of core: exact quantiles in two passes over shards --------------------------------------------------

_BUCKET_SHIFT = 40  # keep sign, exponent and the top 12 mantissa bits: buckets 2^-12 wide relative to |x|


def _buckets(finite: np.ndarray) -> np.ndarray:
    """Monotone int64 bucket of each float: x <= y implies bucket(x) <= bucket(y).

    The IEEE-754 bits of a float, with the 63 low bits flipped for negative numbers, order like
    the floats as signed integers; dropping the low 40 bits keeps the order. -0.0 is 0.0 first.
    """
    bits = (finite + 0.0).view(np.int64)
    ordered = np.where(bits < 0, bits ^ np.int64(0x7FFF_FFFF_FFFF_FFFF), bits)
    return ordered >> _BUCKET_SHIFT


def _merge_counts(keys: np.ndarray, counts: np.ndarray, more_keys: np.ndarray, more_counts: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    merged, inverse = np.unique(np.concatenate([keys, more_keys]), return_inverse=True)
    return merged, np.bincount(inverse, weights=np.concatenate([counts, more_counts]),
                               minlength=merged.size).astype(np.int64)


class QuantileSketch:
    """:meth:`QuantileNormaliser.fit` over data seen shard by shard: the same knots, exactly, in two passes.

    Pass 1 (:meth:`add` on every shard) counts values per bucket of :func:`_buckets` (relative
    width 2⁻¹², mergeable: counts add). That locates the bucket of every order statistic the fit
    needs: the q + 1 knot ranks and the median ranks. Pass 2 (:meth:`add_exact`, the same shards
    again) keeps exact value counts only inside those ≤ q + 3 buckets. The r-th smallest value
    is then (cumulative bucket counts) + (cumulative counts inside its bucket), and the CDF below
    a knot u is #{buckets below u's} + #{values of u's bucket below u}: no approximation, so the
    result equals ``QuantileNormaliser.fit`` on the concatenated values (error bound 0).

    Memory: pass 1 holds one count per distinct bucket (at most ~4,000 per power of two the data
    spans, in practice thousands); pass 2 one count per distinct value inside the chosen buckets.
    """

    def __init__(self, name: str, *, n_quantiles: int = 100, missing: MissingPolicy = "median") -> None:
        if n_quantiles < 1:
            raise QuantileError(f"feature {name!r}: n_quantiles must be >= 1; got {n_quantiles}")
        self.name, self.n_quantiles, self.missing = name, n_quantiles, missing
        self._bucket_keys = np.zeros(0, dtype=np.int64)
        self._bucket_counts = np.zeros(0, dtype=np.int64)
        self._chosen: np.ndarray | None = None
        self._values = np.zeros(0, dtype=np.float64)
        self._value_counts = np.zeros(0, dtype=np.int64)

    @property
    def n(self) -> int:
        return int(self._bucket_counts.sum())

    def _finite(self, values: pl.Series | np.ndarray | Sequence[float | None]) -> np.ndarray:
        array = _to_float(values, self.name)
        return array[~np.isnan(array)] + 0.0

    def add(self, values: pl.Series | np.ndarray | Sequence[float | None]) -> None:
        """Pass 1: count the shard's values per bucket."""
        if self._chosen is not None:
            raise QuantileError(f"feature {self.name!r}: add() after the second pass started")
        keys, counts = np.unique(_buckets(self._finite(values)), return_counts=True)
        self._bucket_keys, self._bucket_counts = _merge_counts(self._bucket_keys, self._bucket_counts, keys, counts)

    def _needed_ranks(self) -> np.ndarray:
        return np.concatenate([knot_ranks(self.n, self.n_quantiles), median_ranks(self.n)])

    def _bucket_of_rank(self, ranks: np.ndarray) -> np.ndarray:
        ends = np.cumsum(self._bucket_counts)
        return np.searchsorted(ends, ranks, side="right")  # index of the bucket holding each rank

    def add_exact(self, values: pl.Series | np.ndarray | Sequence[float | None]) -> None:
        """Pass 2: exact value counts of the shard inside the buckets that hold a needed rank."""
        if self._chosen is None:
            self._chosen = (self._bucket_keys[np.unique(self._bucket_of_rank(self._needed_ranks()))]
                            if self.n else np.zeros(0, dtype=np.int64))
        finite = self._finite(values)
        inside = finite[np.isin(_buckets(finite), self._chosen)]
        values_u, counts = np.unique(inside, return_counts=True)
        self._values, self._value_counts = _merge_counts(self._values, self._value_counts, values_u, counts)

    def _value_at(self, ranks: np.ndarray) -> np.ndarray:
        bucket = self._bucket_of_rank(ranks)
        before_bucket = np.concatenate([[0], np.cumsum(self._bucket_counts)])[bucket]
        value_buckets = _buckets(self._values)
        out = np.empty(ranks.size, dtype=np.float64)
        for i, (rank, b) in enumerate(zip(ranks, bucket, strict=True)):
            mine = value_buckets == self._bucket_keys[b]
            ends = before_bucket[i] + np.cumsum(self._value_counts[mine])
            if not mine.any() or ends[-1] != before_bucket[i] + self._bucket_counts[b]:
                raise QuantileError(f"feature {self.name!r}: the second pass saw other values than the first "
                                    "(pass the same shards to add() and add_exact())")
            out[i] = self._values[mine][np.searchsorted(ends, rank, side="right")]
        return out

    def normaliser(self) -> QuantileNormaliser:
        """The fitted normaliser (after both passes)."""
        n = self.n
        if n == 0:
            return QuantileNormaliser(self.name, [0.0], [0.0], 0.0, self.missing, 0)
        if self._chosen is None:
            raise QuantileError(f"feature {self.name!r}: run the second pass (add_exact) before normaliser()")
        knots = np.unique(self._value_at(knot_ranks(n, self.n_quantiles)))
        median = float(np.mean(self._value_at(median_ranks(n))))
        # #{x < u}: every bucket below u's, plus the values of u's bucket below u.
        below_bucket = np.concatenate([[0], np.cumsum(self._bucket_counts)])[
            np.searchsorted(self._bucket_keys, _buckets(knots), side="left")]
        value_buckets = _buckets(self._values)
        inside = np.array([self._value_counts[(value_buckets == b) & (self._values < u)].sum()
                           for u, b in zip(knots, _buckets(knots), strict=True)], dtype=np.int64)
        cdf = (below_bucket + inside) / n
        return QuantileNormaliser.from_order_statistics(self.name, knots, cdf, median, self.missing, n)
