"""Metrics the project is judged by, exactly as defined in ``docs/metrics.md``.

Notation: T is the watch time in seconds of an impression (0 when not clicked), s the score being
judged (whatever the model ranks by), ``expected_watch_s`` the model's E[T | x].

Every pairwise metric is exact and runs in O(n log n) (or O(n log^2 n)) with NumPy; none of them
materialises the O(n^2) pairs. A metric with no eligible pair returns ``nan`` (never raises, never
returns a made-up 0 or 0.5), so that an empty slice of an experiment shows as missing, not as a
value.

All functions validate their inputs and raise :class:`MetricInputError` (a ``ValueError``) naming
the argument when arrays are not 1-D, differ in length, hold non-finite values, or hold values
outside their domain (``is_click`` not 0/1, negative watch time).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "MetricInputError",
    "auc",
    "calibration",
    "coverage",
    "gauc",
    "grouped_xauc",
    "mae",
    "ndcg_at_k",
    "ranking_metrics",
    "recall_at_k",
    "retrieval_metrics",
    "rmse",
    "weighted_per_user_loss",
    "weighted_per_user_loss_details",
    "xauc",
    "xauc_clicked",
]


class MetricInputError(ValueError):
    """An argument of a metric has the wrong shape, length, dtype or values."""


# ----------------------------------------------------------------------------------------------
# Input validation
# ----------------------------------------------------------------------------------------------


def _as_1d(name: str, values: npt.ArrayLike) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise MetricInputError(f"{name} must be a 1-D array; got shape {array.shape}")
    return array


def _finite_float(name: str, values: npt.ArrayLike) -> np.ndarray:
    array = _as_1d(name, values)
    if array.dtype.kind not in "biuf":
        raise MetricInputError(f"{name} must be numeric; got dtype {array.dtype}")
    array = array.astype(np.float64, copy=False)
    bad = ~np.isfinite(array)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise MetricInputError(
            f"{name} must be finite; row {row} is {array[row].item()!r} "
            f"({int(bad.sum())} non-finite rows)"
        )
    return array


def _watch_time(name: str, values: npt.ArrayLike) -> np.ndarray:
    array = _finite_float(name, values)
    negative = array < 0
    if negative.any():
        row = int(np.flatnonzero(negative)[0])
        raise MetricInputError(f"{name} must be >= 0 seconds; row {row} is {array[row].item()!r}")
    return array


def _click(name: str, values: npt.ArrayLike) -> np.ndarray:
    array = _as_1d(name, values)
    if array.dtype.kind == "b":
        return array
    if array.dtype.kind not in "iuf":
        raise MetricInputError(f"{name} must be 0/1 or boolean; got dtype {array.dtype}")
    bad = (array != 0) & (array != 1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise MetricInputError(f"{name} must be 0 or 1; row {row} is {array[row].item()!r}")
    return array == 1


def _ids(name: str, values: npt.ArrayLike) -> np.ndarray:
    array = _as_1d(name, values)
    if array.size == 0:
        return array.astype(np.int64)  # np.asarray([]) is float64; an empty list is fine
    if array.dtype.kind not in "biu":
        raise MetricInputError(f"{name} must be an integer id array; got dtype {array.dtype}")
    return array


def _same_length(**arrays: np.ndarray) -> int:
    lengths = {name: len(array) for name, array in arrays.items()}
    if len(set(lengths.values())) > 1:
        described = ", ".join(f"{name}={length}" for name, length in lengths.items())
        raise MetricInputError(f"arrays must have the same length; got {described}")
    return next(iter(lengths.values()))


# ----------------------------------------------------------------------------------------------
# Counting helpers
# ----------------------------------------------------------------------------------------------


def _dense_rank(values: np.ndarray) -> tuple[np.ndarray, int]:
    """Ranks 0..m-1 with equal values sharing a rank, and m (the number of distinct values)."""
    distinct, inverse = np.unique(values, return_inverse=True)
    return inverse.astype(np.int64, copy=False).reshape(-1), len(distinct)


def _count_earlier_greater(keys: np.ndarray) -> np.ndarray:
    """For each position j, the number of positions i < j with ``keys[i] > keys[j]`` (strictly).

    Bottom-up merge sort: at the level of width w each block of 2w positions has two sorted halves;
    for every element of a right half, the elements of its left half that are greater are counted
    with one global ``searchsorted`` (keys offset by ``block * m`` keep blocks apart), then each
    block is sorted. ``log2 n`` levels of an O(n log n) sort: O(n log^2 n), all vectorised.
    ``keys`` must be integers.
    """
    n = len(keys)
    counts = np.zeros(n, dtype=np.int64)
    if n < 2:
        return counts
    values, m = _dense_rank(keys)  # m <= n keeps block * m + value below n^2
    positions = np.arange(n, dtype=np.int64)
    origin = positions.copy()  # origin[p]: the input position of the element now at p
    width = 1
    while width < n:
        block = positions // (2 * width)
        in_right = ((positions // width) & 1).astype(bool)
        left_keys = block[~in_right] * m + values[~in_right]  # sorted: sorted halves, block-major
        right_block = block[in_right]
        right_values = values[in_right]
        greater_end = np.searchsorted(left_keys, (right_block + 1) * m, side="left")
        greater_start = np.searchsorted(left_keys, right_block * m + right_values, side="right")
        counts[origin[in_right]] += greater_end - greater_start
        # Keys of block b lie in [b*m, (b+1)*m), so a global sort sorts each block in place.
        order = np.argsort(block * m + values, kind="stable")
        values = values[order]
        origin = origin[order]
        width *= 2
    return counts


def _tied_pairs_per_group(
    group_index: np.ndarray, n_groups: int, *ranks: tuple[np.ndarray, int]
) -> np.ndarray:
    """Per group, the number of unordered pairs equal on every given (rank, n_distinct) column."""
    cell = group_index.astype(np.int64, copy=True)
    for rank, n_distinct in ranks:
        # Re-densify after each column so the composite key stays below n^2 (no int64 overflow).
        cell, _ = _dense_rank(cell * n_distinct + rank)
    _, first_row, cell_sizes = np.unique(cell, return_index=True, return_counts=True)
    tied = cell_sizes.astype(np.int64) * (cell_sizes - 1) // 2
    return np.bincount(group_index[first_row], weights=tied, minlength=n_groups)


def _xauc_parts(
    group_index: np.ndarray, n_groups: int, target: np.ndarray, score: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per group: (pairs with different target P_g, concordance numerator, group size n_g).

    XAUC_g = (C_g + Ts_g / 2) / P_g where, over the pairs of group g with different target,
    C_g are ordered the same way by score and Ts_g are tied in score. With D_g the discordant
    pairs, C_g + D_g + Ts_g = P_g, so the numerator is P_g - D_g - Ts_g / 2. D_g is counted as the
    inversions of the score ranks once rows are sorted by (group, target, score): a pair in that
    order is an inversion exactly when its target rises and its score strictly falls.
    """
    target_rank, n_target = _dense_rank(target)
    score_rank, n_score = _dense_rank(score)
    order = np.lexsort((score_rank, target_rank, group_index))
    inversion_keys = group_index[order].astype(np.int64) * n_score + score_rank[order]
    discordant_per_row = _count_earlier_greater(inversion_keys)
    discordant = np.bincount(
        group_index[order], weights=discordant_per_row, minlength=n_groups
    )

    group_size = np.bincount(group_index, minlength=n_groups).astype(np.float64)
    all_pairs = group_size * (group_size - 1) / 2
    tied_target = _tied_pairs_per_group(group_index, n_groups, (target_rank, n_target))
    tied_score = _tied_pairs_per_group(group_index, n_groups, (score_rank, n_score))
    tied_both = _tied_pairs_per_group(
        group_index, n_groups, (target_rank, n_target), (score_rank, n_score)
    )
    different_target = all_pairs - tied_target
    tied_score_only = tied_score - tied_both
    numerator = different_target - discordant - tied_score_only / 2
    return different_target, numerator, group_size


def _pooled_xauc(target: np.ndarray, score: np.ndarray) -> float:
    group_index = np.zeros(len(target), dtype=np.int64)
    different_target, numerator, _ = _xauc_parts(group_index, 1, target, score)
    if different_target[0] == 0:
        return math.nan
    return float(numerator[0] / different_target[0])


def _grouped_xauc(
    group_ids: np.ndarray, target: np.ndarray, score: np.ndarray
) -> tuple[float, int]:
    """Impression-weighted mean of per-group XAUC over groups with a pair; (value, n_groups)."""
    if len(target) == 0:
        return math.nan, 0
    distinct, group_index = np.unique(group_ids, return_inverse=True)
    group_index = group_index.reshape(-1).astype(np.int64, copy=False)
    different_target, numerator, group_size = _xauc_parts(
        group_index, len(distinct), target, score
    )
    eligible = different_target > 0
    if not eligible.any():
        return math.nan, 0
    per_group = numerator[eligible] / different_target[eligible]
    value = float(np.average(per_group, weights=group_size[eligible]))
    return value, int(eligible.sum())


# ----------------------------------------------------------------------------------------------
# Ranking metrics
# ----------------------------------------------------------------------------------------------


def weighted_per_user_loss_details(
    page_ids: npt.ArrayLike,
    is_click: npt.ArrayLike,
    watch_time_s: npt.ArrayLike,
    score: npt.ArrayLike,
) -> dict[str, Any]:
    """Weighted per-user loss (Covington et al. 2016, section 4.3) with its pair counts.

    A page is one group id (e.g. one user's impressions on one day). On each page every pair
    (a, b) with a clicked and b unclicked is mispredicted when s_b >= s_a (a tie counts as a
    mistake). With T_a the clicked impression's watch time::

        loss = sum_pairs T_a * [s_b >= s_a] / sum_pairs T_a

    Computed without materialising pairs: for each clicked a, the unclicked rows of its page with
    s_b >= s_a are counted by ``searchsorted`` over the unclicked rows sorted by (page, score).

    Returns ``{"loss", "n_pairs", "n_pages_with_pairs", "weight_sum"}``; ``loss`` is ``nan`` when
    there is no pair or every pair has T_a = 0 (``weight_sum == 0``).
    """
    pages = _ids("page_ids", page_ids)
    clicked = _click("is_click", is_click)
    watch = _watch_time("watch_time_s", watch_time_s)
    scores = _finite_float("score", score)
    _same_length(page_ids=pages, is_click=clicked, watch_time_s=watch, score=scores)

    empty = {"loss": math.nan, "n_pairs": 0, "n_pages_with_pairs": 0, "weight_sum": 0.0}
    if len(pages) == 0:
        return empty
    _, page_index = np.unique(pages, return_inverse=True)
    page_index = page_index.reshape(-1).astype(np.int64, copy=False)
    score_rank, n_score = _dense_rank(scores)

    unclicked_keys = np.sort(page_index[~clicked] * n_score + score_rank[~clicked])
    clicked_page = page_index[clicked]
    clicked_keys = clicked_page * n_score + score_rank[clicked]
    page_end = np.searchsorted(unclicked_keys, (clicked_page + 1) * n_score, side="left")
    page_start = np.searchsorted(unclicked_keys, clicked_page * n_score, side="left")
    at_or_above = np.searchsorted(unclicked_keys, clicked_keys, side="left")
    n_unclicked_on_page = page_end - page_start
    n_mispredicted = page_end - at_or_above  # unclicked b on the page with s_b >= s_a

    clicked_watch = watch[clicked]
    weight_sum = float(np.dot(clicked_watch, n_unclicked_on_page))
    n_pairs = int(n_unclicked_on_page.sum())
    n_pages_with_pairs = int(np.unique(clicked_page[n_unclicked_on_page > 0]).size)
    if n_pairs == 0 or weight_sum == 0:
        return {**empty, "n_pairs": n_pairs, "n_pages_with_pairs": n_pages_with_pairs}
    loss = float(np.dot(clicked_watch, n_mispredicted)) / weight_sum
    return {
        "loss": loss,
        "n_pairs": n_pairs,
        "n_pages_with_pairs": n_pages_with_pairs,
        "weight_sum": weight_sum,
    }


def weighted_per_user_loss(
    page_ids: npt.ArrayLike,
    is_click: npt.ArrayLike,
    watch_time_s: npt.ArrayLike,
    score: npt.ArrayLike,
) -> float:
    """sum_pairs T_a [s_b >= s_a] / sum_pairs T_a over (clicked a, unclicked b) on one page.

    Lower is better; ``nan`` when there is no weighted pair. See
    :func:`weighted_per_user_loss_details`.
    """
    return float(weighted_per_user_loss_details(page_ids, is_click, watch_time_s, score)["loss"])


def xauc(watch_time_s: npt.ArrayLike, score: npt.ArrayLike) -> float:
    """Fraction of pairs with different T that the score orders the same way; score ties count 1/2.

    ``XAUC = (#{T_i > T_j, s_i > s_j} + 1/2 #{T_i > T_j, s_i = s_j}) / #{T_i > T_j}``, exact, in
    O(n log^2 n). ``nan`` when no two rows differ in T (including n < 2).
    """
    watch = _watch_time("watch_time_s", watch_time_s)
    scores = _finite_float("score", score)
    _same_length(watch_time_s=watch, score=scores)
    return _pooled_xauc(watch, scores)


def xauc_clicked(
    is_click: npt.ArrayLike, watch_time_s: npt.ArrayLike, score: npt.ArrayLike
) -> float:
    """:func:`xauc` restricted to clicked rows (plain XAUC is dominated by T = 0 vs T > 0)."""
    clicked = _click("is_click", is_click)
    watch = _watch_time("watch_time_s", watch_time_s)
    scores = _finite_float("score", score)
    _same_length(is_click=clicked, watch_time_s=watch, score=scores)
    return _pooled_xauc(watch[clicked], scores[clicked])


def grouped_xauc(
    group_ids: npt.ArrayLike, watch_time_s: npt.ArrayLike, score: npt.ArrayLike
) -> float:
    """Per-user XAUC (XGAUC): sum_u n_u XAUC_u / sum_u n_u over users with >= 2 distinct T.

    n_u is the user's number of impressions (all of them, not only the pairs). ``nan`` when no
    user has two distinct T.
    """
    groups = _ids("group_ids", group_ids)
    watch = _watch_time("watch_time_s", watch_time_s)
    scores = _finite_float("score", score)
    _same_length(group_ids=groups, watch_time_s=watch, score=scores)
    return _grouped_xauc(groups, watch, scores)[0]


def auc(is_click: npt.ArrayLike, score: npt.ArrayLike) -> float:
    """ROC AUC: P(s_clicked > s_unclicked) + 1/2 P(tie) over all (clicked, unclicked) pairs.

    ``nan`` when only one class is present.
    """
    clicked = _click("is_click", is_click)
    scores = _finite_float("score", score)
    _same_length(is_click=clicked, score=scores)
    # AUC is XAUC with a 0/1 target: pairs with different target are (clicked, unclicked) pairs.
    return _pooled_xauc(clicked.astype(np.float64), scores)


def gauc(group_ids: npt.ArrayLike, is_click: npt.ArrayLike, score: npt.ArrayLike) -> float:
    """Group AUC: sum_u n_u AUC_u / sum_u n_u over users with both clicked and unclicked rows.

    AUC_u counts score ties as 1/2; n_u is the user's number of impressions. ``nan`` when no user
    has both classes.
    """
    groups = _ids("group_ids", group_ids)
    clicked = _click("is_click", is_click)
    scores = _finite_float("score", score)
    _same_length(group_ids=groups, is_click=clicked, score=scores)
    return _grouped_xauc(groups, clicked.astype(np.float64), scores)[0]


# ----------------------------------------------------------------------------------------------
# Regression and calibration of expected watch time
# ----------------------------------------------------------------------------------------------


def rmse(pred: npt.ArrayLike, target: npt.ArrayLike) -> float:
    """sqrt(mean((pred - target)^2)); ``nan`` on empty input."""
    predicted = _finite_float("pred", pred)
    actual = _finite_float("target", target)
    if _same_length(pred=predicted, target=actual) == 0:
        return math.nan
    return float(np.sqrt(np.mean((predicted - actual) ** 2)))


def mae(pred: npt.ArrayLike, target: npt.ArrayLike) -> float:
    """mean(|pred - target|); ``nan`` on empty input. Misleading for T, whose median is 0."""
    predicted = _finite_float("pred", pred)
    actual = _finite_float("target", target)
    if _same_length(pred=predicted, target=actual) == 0:
        return math.nan
    return float(np.mean(np.abs(predicted - actual)))


def calibration(
    expected_watch_s: npt.ArrayLike, watch_time_s: npt.ArrayLike, n_bins: int = 10
) -> dict[str, Any]:
    """Calibration of E[T|x] against T over equal-count bins of the prediction.

    Rows are sorted by prediction (stable, so ties keep row order) and split into ``n_bins``
    chunks with ``np.array_split`` (sizes within 1 of N / n_bins). With mean T over all rows::

        mean_ratio = mean(expected_watch_s) / mean(T)
        relative_calibration_error = sum_b (n_b / N) |mean pred_b - mean T_b| / mean(T)

    Returns ``{"mean_ratio", "relative_calibration_error", "bins"}`` with ``bins`` a list of
    ``{"mean_prediction", "mean_watch_s", "n"}`` in increasing prediction. Both ratios are ``nan``
    when mean(T) = 0. Raises when there are fewer rows than bins.
    """
    predicted = _finite_float("expected_watch_s", expected_watch_s)
    watch = _watch_time("watch_time_s", watch_time_s)
    n_rows = _same_length(expected_watch_s=predicted, watch_time_s=watch)
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise MetricInputError(f"n_bins must be a positive integer; got {n_bins!r}")
    if n_rows < n_bins:
        raise MetricInputError(
            f"calibration needs at least n_bins={n_bins} rows; got {n_rows}"
        )

    order = np.argsort(predicted, kind="stable")
    bins: list[dict[str, Any]] = []
    weighted_gap = 0.0
    for chunk in np.array_split(order, int(n_bins)):
        mean_prediction = float(predicted[chunk].mean())
        mean_watch = float(watch[chunk].mean())
        weighted_gap += len(chunk) / n_rows * abs(mean_prediction - mean_watch)
        bins.append(
            {"mean_prediction": mean_prediction, "mean_watch_s": mean_watch, "n": len(chunk)}
        )
    mean_watch_all = float(watch.mean())
    if mean_watch_all == 0:
        mean_ratio = relative_error = math.nan
    else:
        mean_ratio = float(predicted.mean()) / mean_watch_all
        relative_error = weighted_gap / mean_watch_all
    return {"mean_ratio": mean_ratio, "relative_calibration_error": relative_error, "bins": bins}


def ranking_metrics(
    page_ids: npt.ArrayLike,
    user_ids: npt.ArrayLike,
    is_click: npt.ArrayLike,
    watch_time_s: npt.ArrayLike,
    score: npt.ArrayLike,
    expected_watch_s: npt.ArrayLike | None = None,
) -> dict[str, Any]:
    """All ranking metrics of ``docs/metrics.md`` for one set of test impressions.

    Keys: ``weighted_per_user_loss``, ``n_pairs`` (pages from ``page_ids``), ``xauc``,
    ``xauc_clicked``, ``xgauc`` and ``gauc`` (groups from ``user_ids``); with ``expected_watch_s``
    also ``rmse``, ``mae``, ``mean_ratio``, ``relative_calibration_error`` and
    ``calibration_bins`` (decile bins, see :func:`calibration`).
    """
    pages = _ids("page_ids", page_ids)
    users = _ids("user_ids", user_ids)
    clicked = _click("is_click", is_click)
    watch = _watch_time("watch_time_s", watch_time_s)
    scores = _finite_float("score", score)
    _same_length(
        page_ids=pages, user_ids=users, is_click=clicked, watch_time_s=watch, score=scores
    )
    loss = weighted_per_user_loss_details(pages, clicked, watch, scores)
    result: dict[str, Any] = {
        "weighted_per_user_loss": loss["loss"],
        "n_pairs": loss["n_pairs"],
        "xauc": _pooled_xauc(watch, scores),
        "xauc_clicked": _pooled_xauc(watch[clicked], scores[clicked]),
        "xgauc": _grouped_xauc(users, watch, scores)[0],
        "gauc": _grouped_xauc(users, clicked.astype(np.float64), scores)[0],
    }
    if expected_watch_s is not None:
        predicted = _finite_float("expected_watch_s", expected_watch_s)
        _same_length(expected_watch_s=predicted, watch_time_s=watch)
        calibrated = calibration(predicted, watch)
        result.update(
            rmse=rmse(predicted, watch),
            mae=mae(predicted, watch),
            mean_ratio=calibrated["mean_ratio"],
            relative_calibration_error=calibrated["relative_calibration_error"],
            calibration_bins=calibrated["bins"],
        )
    return result


# ----------------------------------------------------------------------------------------------
# Retrieval metrics (one relevant item per query: the watched video)
# ----------------------------------------------------------------------------------------------


def _retrieval_inputs(
    retrieved: npt.ArrayLike, target: npt.ArrayLike
) -> tuple[np.ndarray, np.ndarray]:
    retrieved_ids = np.asarray(retrieved)
    if retrieved_ids.ndim != 2:
        raise MetricInputError(
            f"retrieved must be a 2-D array [n_queries, K]; got shape {retrieved_ids.shape}"
        )
    if retrieved_ids.dtype.kind not in "iu":
        raise MetricInputError(f"retrieved must hold integer ids; got dtype {retrieved_ids.dtype}")
    target_ids = _ids("target", target)
    if len(target_ids) != len(retrieved_ids):
        raise MetricInputError(
            f"retrieved has {len(retrieved_ids)} rows but target has {len(target_ids)}"
        )
    negative = target_ids < 0
    if negative.any():
        row = int(np.flatnonzero(negative)[0])
        # Negative ids are reserved for padding (FAISS returns -1 for missing neighbours).
        raise MetricInputError(f"target ids must be >= 0; row {row} is {target_ids[row]}")
    return retrieved_ids, target_ids


def _check_k(k: Any, n_columns: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise MetricInputError(f"k must be a positive integer; got {k!r}")
    if k > n_columns:
        raise MetricInputError(f"k={k} exceeds the {n_columns} retrieved columns")
    return int(k)


def _hit_rank(retrieved_ids: np.ndarray, target_ids: np.ndarray) -> np.ndarray:
    """0-based position of each query's target among its retrieved ids; K when absent."""
    matches = retrieved_ids == target_ids[:, None]
    first = np.argmax(matches, axis=1)
    return np.where(matches.any(axis=1), first, retrieved_ids.shape[1])


def _ndcg_from_rank(rank: np.ndarray, k: int) -> float:
    gain = np.where(rank < k, 1.0 / np.log2(rank + 2.0), 0.0)
    return float(gain.mean())


def recall_at_k(
    retrieved: npt.ArrayLike, target: npt.ArrayLike, ks: int | Iterable[int]
) -> dict[str, float]:
    """``{"recall@k": fraction of queries whose target is among retrieved[:, :k]}`` per k.

    ``retrieved`` is [n_queries, K] item ids, best first; negative ids are padding. ``nan`` for
    zero queries.
    """
    retrieved_ids, target_ids = _retrieval_inputs(retrieved, target)
    k_values = [ks] if isinstance(ks, (int, np.integer)) else list(ks)
    checked = [_check_k(k, retrieved_ids.shape[1]) for k in k_values]
    if len(target_ids) == 0:
        return {f"recall@{k}": math.nan for k in checked}
    rank = _hit_rank(retrieved_ids, target_ids)
    return {f"recall@{k}": float(np.mean(rank < k)) for k in checked}


def ndcg_at_k(retrieved: npt.ArrayLike, target: npt.ArrayLike, k: int = 10) -> float:
    """Mean NDCG@k with one relevant item: 1 / log2(rank + 2) for 0-based rank < k, else 0.

    (The ideal DCG is 1, so DCG is NDCG.) ``nan`` for zero queries.
    """
    retrieved_ids, target_ids = _retrieval_inputs(retrieved, target)
    k = _check_k(k, retrieved_ids.shape[1])
    if len(target_ids) == 0:
        return math.nan
    return _ndcg_from_rank(_hit_rank(retrieved_ids, target_ids), k)


def coverage(retrieved: npt.ArrayLike, corpus_size: int, k: int) -> float:
    """Distinct item ids in retrieved[:, :k] (padding ids < 0 excluded) / corpus_size."""
    retrieved_ids = np.asarray(retrieved)
    if retrieved_ids.ndim != 2 or retrieved_ids.dtype.kind not in "iu":
        raise MetricInputError(
            "retrieved must be a 2-D integer array [n_queries, K]; "
            f"got shape {retrieved_ids.shape}, dtype {retrieved_ids.dtype}"
        )
    if isinstance(corpus_size, bool) or not isinstance(corpus_size, (int, np.integer)) or (
        corpus_size < 1
    ):
        raise MetricInputError(f"corpus_size must be a positive integer; got {corpus_size!r}")
    k = _check_k(k, retrieved_ids.shape[1])
    top = retrieved_ids[:, :k]
    valid = top[top >= 0]
    if valid.size == 0:
        return 0.0
    largest_id = int(valid.max())
    if largest_id < 8 * valid.size + 1_000_000:
        # Compact ids (the usual case): a presence mask is O(n), ~20x faster than sorting.
        seen = np.zeros(largest_id + 1, dtype=bool)
        seen[valid] = True
        n_distinct = int(np.count_nonzero(seen))
    else:
        n_distinct = int(np.unique(valid).size)
    return n_distinct / int(corpus_size)


def retrieval_metrics(
    retrieved: npt.ArrayLike,
    target: npt.ArrayLike,
    corpus_size: int,
    ks: Iterable[int] = (10, 50, 100, 200),
) -> dict[str, float]:
    """recall@k for each k of ``ks`` no larger than K, ``ndcg@10`` and ``coverage``.

    ``coverage`` is taken over the largest such k. Keys: ``recall@<k>`` (only the k that K
    allows), ``ndcg@10``, ``coverage``. Raises when K < 10 or no k of ``ks`` fits in K.
    """
    retrieved_ids, target_ids = _retrieval_inputs(retrieved, target)
    n_columns = retrieved_ids.shape[1]
    requested = [_check_k(k, np.iinfo(np.int64).max) for k in ks]
    available = sorted({k for k in requested if k <= n_columns})
    if not available:
        raise MetricInputError(f"none of ks={requested} fits in the {n_columns} retrieved columns")
    ndcg_k = _check_k(10, n_columns)
    if len(target_ids) == 0:
        result = {f"recall@{k}": math.nan for k in available}
        result["ndcg@10"] = math.nan
    else:
        rank = _hit_rank(retrieved_ids, target_ids)  # shared by recall and NDCG
        result = {f"recall@{k}": float(np.mean(rank < k)) for k in available}
        result["ndcg@10"] = _ndcg_from_rank(rank, ndcg_k)
    result["coverage"] = coverage(retrieved_ids, corpus_size, available[-1])
    return result
