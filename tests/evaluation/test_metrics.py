"""Tests for ytdnn.evaluation.metrics: hand-worked cases, brute-force cross-checks, edge cases."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ytdnn.evaluation import metrics as M
from ytdnn.evaluation.metrics import MetricInputError

# ----------------------------------------------------------------------------------------------
# Brute-force O(n^2) references, written straight from docs/metrics.md
# ----------------------------------------------------------------------------------------------


def brute_xauc(watch: np.ndarray, score: np.ndarray) -> float:
    numerator = denominator = 0.0
    for i, j in itertools.permutations(range(len(watch)), 2):
        if watch[i] > watch[j]:
            denominator += 1
            numerator += 1.0 if score[i] > score[j] else 0.5 if score[i] == score[j] else 0.0
    return numerator / denominator if denominator else math.nan


def brute_grouped(groups: np.ndarray, watch: np.ndarray, score: np.ndarray) -> float:
    values, weights = [], []
    for group in np.unique(groups):
        rows = groups == group
        if len(np.unique(watch[rows])) >= 2:
            values.append(brute_xauc(watch[rows], score[rows]))
            weights.append(rows.sum())
    return float(np.average(values, weights=weights)) if values else math.nan


def brute_weighted_loss(
    pages: np.ndarray, clicked: np.ndarray, watch: np.ndarray, score: np.ndarray
) -> tuple[float, int, int]:
    mistakes = weights = 0.0
    n_pairs = 0
    pages_with_pairs = set()
    for a, b in itertools.product(range(len(pages)), repeat=2):
        if pages[a] == pages[b] and clicked[a] and not clicked[b]:
            n_pairs += 1
            pages_with_pairs.add(pages[a])
            weights += watch[a]
            mistakes += watch[a] * (score[b] >= score[a])
    loss = mistakes / weights if weights else math.nan
    return loss, n_pairs, len(pages_with_pairs)


def assert_same(actual: float, expected: float) -> None:
    if math.isnan(expected):
        assert math.isnan(actual)
    else:
        assert actual == pytest.approx(expected, abs=1e-12)


# Small arrays drawn from few distinct values so that ties in T, in s and in both are common.
small_rows = st.integers(min_value=0, max_value=24).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(0, 3), min_size=n, max_size=n),  # group / page
        st.lists(st.integers(0, 3), min_size=n, max_size=n),  # watch time level (0 = unclicked)
        st.lists(st.integers(0, 4), min_size=n, max_size=n),  # score level
    )
)


def to_arrays(rows: tuple[list[int], list[int], list[int]]) -> tuple[np.ndarray, ...]:
    groups, watch_level, score_level = (np.asarray(column, dtype=np.int64) for column in rows)
    watch = watch_level.astype(np.float64) * 7.5
    score = score_level.astype(np.float64) / 4 - 0.3
    return groups, watch, score, watch > 0


# ----------------------------------------------------------------------------------------------
# Weighted per-user loss
# ----------------------------------------------------------------------------------------------


def test_weighted_per_user_loss_hand_worked() -> None:
    # page 1: a1 (T=10, s=.9), a2 (T=20, s=.3) clicked; b1 (s=.5), b2 (s=.3) unclicked
    #   (a1,b1) .5>=.9 no; (a1,b2) .3>=.9 no; (a2,b1) .5>=.3 yes; (a2,b2) .3>=.3 tie -> yes
    # page 2: a3 (T=5, s=.1) clicked; b3 (s=.2) unclicked -> yes
    # page 3: one clicked row only -> no pair
    # weights: a1 10*2 + a2 20*2 + a3 5*1 = 65; mistakes: a2 20*2 + a3 5 = 45 -> 45/65 = 9/13
    pages = np.array([1, 1, 1, 1, 2, 2, 3])
    clicked = np.array([1, 1, 0, 0, 1, 0, 1])
    watch = np.array([10.0, 20.0, 0.0, 0.0, 5.0, 0.0, 100.0])
    score = np.array([0.9, 0.3, 0.5, 0.3, 0.1, 0.2, 0.0])
    details = M.weighted_per_user_loss_details(pages, clicked, watch, score)
    assert details["loss"] == pytest.approx(9 / 13)
    assert details["n_pairs"] == 5
    assert details["n_pages_with_pairs"] == 2
    assert details["weight_sum"] == pytest.approx(65.0)
    assert M.weighted_per_user_loss(pages, clicked, watch, score) == pytest.approx(9 / 13)


@settings(max_examples=200, deadline=None)
@given(small_rows)
def test_weighted_per_user_loss_matches_brute_force(rows) -> None:
    pages, watch, score, clicked = to_arrays(rows)
    details = M.weighted_per_user_loss_details(pages, clicked, watch, score)
    loss, n_pairs, n_pages = brute_weighted_loss(pages, clicked, watch, score)
    assert_same(details["loss"], loss)
    assert details["n_pairs"] == n_pairs
    assert details["n_pages_with_pairs"] == n_pages


def test_weighted_per_user_loss_without_pairs_is_nan() -> None:
    # Pages hold only clicked or only unclicked rows: no (clicked, unclicked) pair anywhere.
    details = M.weighted_per_user_loss_details([1, 1, 2], [1, 1, 0], [3.0, 4.0, 0.0], [1, 2, 3])
    assert math.isnan(details["loss"])
    assert details["n_pairs"] == 0 and details["n_pages_with_pairs"] == 0
    # Pairs exist but every clicked row has T = 0: the weighted loss is undefined.
    details = M.weighted_per_user_loss_details([1, 1], [1, 0], [0.0, 0.0], [0.5, 0.1])
    assert math.isnan(details["loss"]) and details["n_pairs"] == 1
    assert math.isnan(M.weighted_per_user_loss([], [], [], []))


# ----------------------------------------------------------------------------------------------
# XAUC, XAUC among clicked, per-user XAUC
# ----------------------------------------------------------------------------------------------


def test_xauc_hand_worked() -> None:
    # T = [0, 0, 10, 30], s = [.1, .5, .5, .6]; the pair of T=0 rows is tied in T and excluded.
    # T=10 (.5) vs T=0 (.1): 1, vs T=0 (.5): tie 1/2
    # T=30 (.6) vs T=0 (.1): 1, vs T=0 (.5): 1, vs T=10 (.5): 1  -> 4.5 / 5 pairs = 0.9
    assert M.xauc([0.0, 0.0, 10.0, 30.0], [0.1, 0.5, 0.5, 0.6]) == pytest.approx(0.9)


def test_xauc_clicked_restricts_to_clicked_rows() -> None:
    # Clicked rows T = [10, 10, 30], s = [.5, .7, .8]: the T-tied pair is excluded and both
    # (30, 10) pairs are concordant -> 1.0. The unclicked row (T=0, s=.9) outranks all three, so
    # plain XAUC = (3 discordant * 0 + 2 concordant) / 5 = 0.4.
    clicked = np.array([0, 1, 1, 1])
    watch = np.array([0.0, 10.0, 10.0, 30.0])
    score = np.array([0.9, 0.5, 0.7, 0.8])
    assert M.xauc_clicked(clicked, watch, score) == pytest.approx(1.0)
    assert M.xauc(watch, score) == pytest.approx(0.4)


def test_grouped_xauc_hand_worked() -> None:
    # user 1: T = [0, 5, 5], s = [.2, .2, .3] -> (5,.2) vs (0,.2) tie 1/2, (5,.3) vs (0,.2) 1
    #         -> 1.5 / 2 = 0.75, weight 3
    # user 2: T = [2, 4], s = [.9, .1] -> discordant -> 0, weight 2
    # user 3: all T = 0 -> no pair, left out (its 5 rows do not count in the weights)
    # XGAUC = (3 * 0.75 + 2 * 0) / 5 = 0.45
    groups = np.array([1, 1, 1, 2, 2, 3, 3, 3, 3, 3])
    watch = np.array([0.0, 5.0, 5.0, 2.0, 4.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    score = np.array([0.2, 0.2, 0.3, 0.9, 0.1, 0.5, 0.4, 0.3, 0.2, 0.1])
    assert M.grouped_xauc(groups, watch, score) == pytest.approx(0.45)


@settings(max_examples=200, deadline=None)
@given(small_rows)
def test_xauc_matches_brute_force(rows) -> None:
    groups, watch, score, clicked = to_arrays(rows)
    assert_same(M.xauc(watch, score), brute_xauc(watch, score))
    assert_same(M.xauc_clicked(clicked, watch, score), brute_xauc(watch[clicked], score[clicked]))
    assert_same(M.grouped_xauc(groups, watch, score), brute_grouped(groups, watch, score))


def test_xauc_exact_on_a_few_thousand_rows() -> None:
    # Several merge levels with a non-power-of-two length, against an O(n^2) pairwise count.
    rng = np.random.default_rng(7)
    n = 2_345
    watch = np.where(rng.random(n) < 0.5, 0.0, rng.integers(1, 60, n).astype(np.float64))
    score = np.round(rng.normal(size=n) + watch / 30, 1)  # rounding makes many score ties
    higher = watch[:, None] > watch[None, :]
    credit = np.where(score[:, None] > score[None, :], 1.0, 0.0)
    credit += np.where(score[:, None] == score[None, :], 0.5, 0.0)
    expected = credit[higher].sum() / higher.sum()
    assert M.xauc(watch, score) == pytest.approx(expected, abs=1e-12)


def test_xauc_is_invariant_to_monotone_score_transforms() -> None:
    rng = np.random.default_rng(3)
    watch = rng.integers(0, 5, 500).astype(np.float64)
    score = rng.integers(0, 20, 500).astype(np.float64)
    assert M.xauc(watch, np.exp(score / 4)) == pytest.approx(M.xauc(watch, score), abs=1e-12)
    # Reversing the score turns every concordant pair discordant; ties stay at 1/2.
    assert M.xauc(watch, -score) == pytest.approx(1 - M.xauc(watch, score), abs=1e-12)


def test_xauc_without_pairs_is_nan() -> None:
    assert math.isnan(M.xauc([], []))
    assert math.isnan(M.xauc([4.0], [1.0]))
    assert math.isnan(M.xauc([3.0, 3.0, 3.0], [1.0, 2.0, 3.0]))  # all T tied
    assert math.isnan(M.xauc_clicked([0, 0], [0.0, 0.0], [1.0, 2.0]))  # nothing clicked
    assert math.isnan(M.grouped_xauc([1, 2], [0.0, 5.0], [1.0, 2.0]))  # one row per user


def test_all_scores_tied_gives_one_half() -> None:
    assert M.xauc([0.0, 1.0, 2.0, 2.0], [0.3] * 4) == pytest.approx(0.5)
    assert M.auc([0, 1, 0, 1], [7] * 4) == pytest.approx(0.5)


def test_count_earlier_greater_matches_brute_force() -> None:
    rng = np.random.default_rng(11)
    for n in [0, 1, 2, 3, 5, 8, 13, 64, 100]:
        keys = rng.integers(-3, 6, n)
        expected = [int(np.sum(keys[:j] > keys[j])) for j in range(n)]
        assert M._count_earlier_greater(keys).tolist() == expected


# ----------------------------------------------------------------------------------------------
# AUC and GAUC
# ----------------------------------------------------------------------------------------------


def test_auc_hand_worked() -> None:
    # clicked s = [.8, .3], unclicked s = [.8, .5, .1]
    # .8: vs .8 tie 1/2, vs .5 1, vs .1 1 -> 2.5;  .3: vs .8 0, vs .5 0, vs .1 1 -> 1
    # AUC = 3.5 / 6 = 7/12
    assert M.auc([1, 0, 1, 0, 0], [0.8, 0.8, 0.3, 0.5, 0.1]) == pytest.approx(7 / 12)
    assert math.isnan(M.auc([1, 1], [0.1, 0.2]))  # one class only


def test_gauc_hand_worked() -> None:
    # user 1: clicked .5 vs unclicked .5 (tie 1/2) and .1 (1) -> 0.75, weight 3
    # user 2: clicked .2 loses to .4 and .3 (0, 0); clicked .9 beats both (1, 1) -> 0.5, weight 4
    # user 3: never clicks -> left out
    # GAUC = (3 * 0.75 + 4 * 0.5) / 7 = 17/28
    groups = np.array([1, 1, 1, 2, 2, 2, 2, 3, 3])
    clicked = np.array([1, 0, 0, 1, 1, 0, 0, 0, 0])
    score = np.array([0.5, 0.5, 0.1, 0.2, 0.9, 0.4, 0.3, 0.8, 0.1])
    assert M.gauc(groups, clicked, score) == pytest.approx(17 / 28)
    assert math.isnan(M.gauc([1, 2], [1, 0], [0.1, 0.2]))  # no user has both classes


@settings(max_examples=200, deadline=None)
@given(small_rows)
def test_auc_and_gauc_match_brute_force(rows) -> None:
    groups, _, score, clicked = to_arrays(rows)
    as_target = clicked.astype(np.float64)  # AUC is the pair count with a 0/1 target
    assert_same(M.auc(clicked, score), brute_xauc(as_target, score))
    assert_same(M.gauc(groups, clicked, score), brute_grouped(groups, as_target, score))


# ----------------------------------------------------------------------------------------------
# Regression and calibration
# ----------------------------------------------------------------------------------------------


def test_rmse_and_mae_hand_worked() -> None:
    # errors [0, -2, 3]: RMSE = sqrt((0 + 4 + 9) / 3), MAE = (0 + 2 + 3) / 3
    assert M.rmse([1.0, 2.0, 3.0], [1.0, 4.0, 0.0]) == pytest.approx(math.sqrt(13 / 3))
    assert M.mae([1.0, 2.0, 3.0], [1.0, 4.0, 0.0]) == pytest.approx(5 / 3)
    assert math.isnan(M.rmse([], [])) and math.isnan(M.mae([], []))


def test_calibration_hand_worked_equal_bins() -> None:
    # pred [1, 2, 3, 4], T [0, 4, 2, 6], two bins of 2:
    # bin 1: mean pred 1.5, mean T 2 (gap .5); bin 2: mean pred 3.5, mean T 4 (gap .5)
    # mean T = 3, mean pred = 2.5 -> ratio 5/6; RCE = (.5 * .5 + .5 * .5) / 3 = 1/6
    result = M.calibration([1.0, 2.0, 3.0, 4.0], [0.0, 4.0, 2.0, 6.0], n_bins=2)
    assert result["mean_ratio"] == pytest.approx(5 / 6)
    assert result["relative_calibration_error"] == pytest.approx(1 / 6)
    assert result["bins"] == [
        {"mean_prediction": 1.5, "mean_watch_s": 2.0, "n": 2},
        {"mean_prediction": 3.5, "mean_watch_s": 4.0, "n": 2},
    ]


def test_calibration_hand_worked_unequal_bins() -> None:
    # 5 rows, 2 bins -> np.array_split sizes [3, 2] after sorting by prediction.
    # sorted pred [1, 2, 3, 4, 5] with T [0, 3, 3, 0, 10]
    # bin 1: mean pred 2, mean T 2 (gap 0); bin 2: mean pred 4.5, mean T 5 (gap .5)
    # mean T = 16/5 = 3.2, mean pred = 3 -> ratio 0.9375; RCE = (2/5 * .5) / 3.2 = 0.0625
    result = M.calibration([5.0, 1.0, 4.0, 2.0, 3.0], [10.0, 0.0, 0.0, 3.0, 3.0], n_bins=2)
    assert result["mean_ratio"] == pytest.approx(0.9375)
    assert result["relative_calibration_error"] == pytest.approx(0.0625)
    assert [b["n"] for b in result["bins"]] == [3, 2]


def test_calibration_deciles_are_equal_count() -> None:
    rng = np.random.default_rng(5)
    predicted = rng.exponential(10, 1_003)
    result = M.calibration(predicted, rng.exponential(10, 1_003))
    sizes = [b["n"] for b in result["bins"]]
    assert len(sizes) == 10 and sum(sizes) == 1_003 and max(sizes) - min(sizes) <= 1
    means = [b["mean_prediction"] for b in result["bins"]]
    assert means == sorted(means)
    # A perfectly calibrated constant prediction: ratio 1, no per-bin gap.
    flat = M.calibration(np.full(20, 2.0), np.full(20, 2.0))
    assert flat["mean_ratio"] == 1.0 and flat["relative_calibration_error"] == 0.0


def test_calibration_edge_cases() -> None:
    zero_watch = M.calibration([1.0, 2.0], [0.0, 0.0], n_bins=2)
    assert math.isnan(zero_watch["mean_ratio"])
    assert math.isnan(zero_watch["relative_calibration_error"])
    with pytest.raises(MetricInputError, match="n_bins=10"):
        M.calibration([1.0, 2.0], [1.0, 2.0])
    with pytest.raises(MetricInputError, match="n_bins"):
        M.calibration([1.0, 2.0], [1.0, 2.0], n_bins=0)


# ----------------------------------------------------------------------------------------------
# ranking_metrics
# ----------------------------------------------------------------------------------------------


def test_ranking_metrics_agrees_with_the_individual_metrics() -> None:
    rng = np.random.default_rng(9)
    n = 600
    users = rng.integers(0, 40, n)
    pages = users * 10 + rng.integers(0, 3, n)
    clicked = rng.random(n) < 0.4
    watch = np.where(clicked, rng.exponential(20, n), 0.0)
    score = rng.normal(size=n) + watch / 20
    expected_watch = np.exp(score)

    result = M.ranking_metrics(pages, users, clicked, watch, score, expected_watch)
    assert set(result) == {
        "weighted_per_user_loss", "n_pairs", "xauc", "xauc_clicked", "xgauc", "gauc",
        "rmse", "mae", "mean_ratio", "relative_calibration_error", "calibration_bins",
    }  # fmt: skip
    details = M.weighted_per_user_loss_details(pages, clicked, watch, score)
    assert result["weighted_per_user_loss"] == details["loss"]
    assert result["n_pairs"] == details["n_pairs"] > 0
    assert result["xauc"] == M.xauc(watch, score)
    assert result["xauc_clicked"] == M.xauc_clicked(clicked, watch, score)
    assert result["xgauc"] == M.grouped_xauc(users, watch, score)
    assert result["gauc"] == M.gauc(users, clicked, score)
    assert result["rmse"] == M.rmse(expected_watch, watch)
    assert result["mae"] == M.mae(expected_watch, watch)
    calibrated = M.calibration(expected_watch, watch)
    assert result["mean_ratio"] == calibrated["mean_ratio"]
    assert result["calibration_bins"] == calibrated["bins"]

    without_prediction = M.ranking_metrics(pages, users, clicked, watch, score)
    assert set(without_prediction) == {
        "weighted_per_user_loss", "n_pairs", "xauc", "xauc_clicked", "xgauc", "gauc",
    }  # fmt: skip


# ----------------------------------------------------------------------------------------------
# Retrieval
# ----------------------------------------------------------------------------------------------

RETRIEVED = np.array([[5, 3, 9], [1, 2, 3], [7, 8, -1]])  # -1: FAISS padding
TARGET = np.array([3, 4, 8])  # hit at rank 1, miss, hit at rank 1


def test_recall_at_k_hand_worked() -> None:
    # 0-based hit ranks [1, absent, 1]: nothing in the top 1, two of three in the top 2 and 3.
    assert M.recall_at_k(RETRIEVED, TARGET, [1, 2, 3]) == pytest.approx(
        {"recall@1": 0.0, "recall@2": 2 / 3, "recall@3": 2 / 3}
    )
    assert M.recall_at_k(RETRIEVED, TARGET, 2) == pytest.approx({"recall@2": 2 / 3})


def test_ndcg_at_k_hand_worked() -> None:
    # gains 1/log2(1 + 2) for the two rank-1 hits, 0 for the miss; k = 1 cuts both hits.
    assert M.ndcg_at_k(RETRIEVED, TARGET, k=2) == pytest.approx(2 / (3 * math.log2(3)))
    assert M.ndcg_at_k(RETRIEVED, TARGET, k=1) == 0.0
    assert M.ndcg_at_k(np.array([[4, 1]]), np.array([4]), k=2) == 1.0


def test_coverage_hand_worked() -> None:
    # top 3: {5, 3, 9, 1, 2, 7, 8} (padding -1 excluded) = 7 of 10; top 1: {5, 1, 7} = 3 of 10
    assert M.coverage(RETRIEVED, corpus_size=10, k=3) == pytest.approx(0.7)
    assert M.coverage(RETRIEVED, corpus_size=10, k=1) == pytest.approx(0.3)
    # Sparse, large ids take the sorting path and must agree (the padding stays negative).
    assert M.coverage(RETRIEVED * 10**9, corpus_size=10, k=3) == pytest.approx(0.7)


def test_retrieval_metrics_uses_the_ks_that_fit() -> None:
    # 2 queries, K = 12 columns: ids 0..11 and 100..111; targets at rank 0 and rank 11.
    retrieved = np.stack([np.arange(12), np.arange(100, 112)])
    target = np.array([0, 111])
    result = M.retrieval_metrics(retrieved, target, corpus_size=48)
    # Only k = 10 of (10, 50, 100, 200) fits; rank 11 is outside the top 10.
    # coverage over the top 10: 20 distinct ids of 48.
    assert result == pytest.approx({"recall@10": 0.5, "ndcg@10": 0.5, "coverage": 20 / 48})
    with pytest.raises(MetricInputError, match="none of ks"):
        M.retrieval_metrics(retrieved, target, corpus_size=48, ks=(50,))
    with pytest.raises(MetricInputError, match="k=10 exceeds"):
        M.retrieval_metrics(RETRIEVED, TARGET, corpus_size=10, ks=(1, 2))


def test_retrieval_with_no_queries_is_nan() -> None:
    empty = np.zeros((0, 10), dtype=np.int64)
    result = M.retrieval_metrics(empty, np.zeros(0, dtype=np.int64), corpus_size=5, ks=(10,))
    assert math.isnan(result["recall@10"]) and math.isnan(result["ndcg@10"])
    assert result["coverage"] == 0.0


# ----------------------------------------------------------------------------------------------
# Input validation
# ----------------------------------------------------------------------------------------------


def test_length_mismatch_names_the_arguments() -> None:
    with pytest.raises(MetricInputError, match=r"watch_time_s=3, score=2"):
        M.xauc([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(MetricInputError, match="retrieved has 3 rows but target has 2"):
        M.recall_at_k(RETRIEVED, TARGET[:2], [1])


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: M.xauc([1.0, 2.0], [0.1, math.nan]), r"score must be finite; row 1"),
        (lambda: M.xauc([1.0, math.inf], [0.1, 0.2]), r"watch_time_s must be finite; row 1"),
        (lambda: M.xauc([1.0, -2.0], [0.1, 0.2]), r"watch_time_s must be >= 0 seconds; row 1"),
        (lambda: M.xauc([[1.0, 2.0]], [[0.1, 0.2]]), r"watch_time_s must be a 1-D array"),
        (lambda: M.auc([0, 2, 1], [0.1, 0.2, 0.3]), r"is_click must be 0 or 1; row 1 is 2"),
        (lambda: M.gauc([0.5, 1.5], [0, 1], [0.1, 0.2]), r"group_ids must be an integer id"),
        (lambda: M.xauc(["a", "b"], [0.1, 0.2]), r"watch_time_s must be numeric"),
        (
            lambda: M.weighted_per_user_loss([1, 1], [1, 0], [1.0], [0.1, 0.2]),
            r"arrays must have the same length",
        ),
        (lambda: M.recall_at_k(RETRIEVED, TARGET, [4]), r"k=4 exceeds the 3 retrieved columns"),
        (lambda: M.recall_at_k(RETRIEVED, TARGET, [0]), r"k must be a positive integer"),
        (lambda: M.recall_at_k(RETRIEVED, np.array([3, -1, 8]), [1]), r"target ids must be >= 0"),
        (lambda: M.ndcg_at_k(RETRIEVED[0], TARGET, 1), r"retrieved must be a 2-D array"),
        (lambda: M.coverage(RETRIEVED, corpus_size=0, k=1), r"corpus_size must be a positive"),
        (
            lambda: M.ranking_metrics([1, 1], [1, 1], [1, 0], [3.0, 0.0], [0.2, 0.1], [1.0]),
            r"expected_watch_s=1, watch_time_s=2",
        ),
    ],
)
def test_bad_input_raises_a_clear_error(call, message: str) -> None:
    with pytest.raises(MetricInputError, match=message):
        call()


def test_metric_input_error_is_a_value_error() -> None:
    assert issubclass(MetricInputError, ValueError)
