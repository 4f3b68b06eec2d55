"""The fast serving features equal the batch feature code on real (simulated) logs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from ytdnn.data.schema import InteractionData
from ytdnn.features.history import (
    AUTHOR_CLICK_SHARE,
    AUTHOR_CLICKS,
    CLICKED_IDS,
    S_SINCE_LAST_AUTHOR_CLICK,
    S_SINCE_LAST_CLICK,
    USER_CLICK_RATE,
    USER_CLICKS_WINDOW,
    USER_IMPRESSIONS_WINDOW,
    USER_MEAN_WATCH_S,
    VIDEO_PREV_IMPRESSIONS,
)
from ytdnn.serving.features import FastRankingFeatures, FastRetrievalFeatures, PipelineRankingFeatures
from ytdnn.serving.recommender import HistoryEvent, HistoryStore, Recommender
from ytdnn.training.ranker import load_ranker
from ytdnn.training.retrieval import load_retrieval_run

HOUR_MS = 3_600_000


@pytest.fixture(scope="module")
def ranking_paths(runs: tuple[Path, Path], sim_data: InteractionData, recommender: Recommender):
    pipeline = load_ranker(runs[0]).pipeline
    log = recommender.store.log
    return (FastRankingFeatures(pipeline, sim_data.users, sim_data.videos, log),
            PipelineRankingFeatures(pipeline, sim_data.users, sim_data.videos, log))


def _assert_same_batch(fast, reference, where: str) -> None:
    assert torch.equal(fast.categorical, reference.categorical), where
    for a, b in zip(fast.multivalent, reference.multivalent, strict=True):
        assert torch.equal(a, b), where
    assert torch.allclose(fast.dense, reference.dense, atol=1e-6, rtol=0), where


def test_fast_ranking_features_equal_the_pipeline(ranking_paths, recommender: Recommender) -> None:
    fast, reference = ranking_paths
    store = recommender.store
    rng = np.random.default_rng(0)
    video_ids = store.videos["video_id"].to_numpy()
    users = [*store.logged_user_ids[::6].tolist(), 10_000_000]  # every sixth user, and one nobody knows
    for user in users:
        for now in (store.end_time_ms + 1, store.end_time_ms - 30 * HOUR_MS, store.end_time_ms - 70 * HOUR_MS):
            past = store.user_log(user, now)
            candidates = rng.choice(video_ids, 40, replace=False)
            if past.height:  # videos the user has seen and authors the user has clicked
                candidates = np.unique(np.concatenate([candidates, past["video_id"].to_numpy()[-8:]]))
            candidates = np.concatenate([candidates, [9_999_999]])  # a video outside the table
            tab = int(rng.integers(0, 3))
            _assert_same_batch(fast.batch(user, candidates, now, tab, past),
                               reference.batch(user, candidates, now, tab, past), f"user {user} at {now}")


def test_request_history_counts_like_logged_history(ranking_paths, recommender: Recommender) -> None:
    fast, reference = ranking_paths
    store = recommender.store
    user = int(store.logged_user_ids[3])
    now = store.end_time_ms + 1
    seen = store.user_log(user, now)["video_id"].to_numpy()
    logged = store.user_log(user, now)
    first_time = int(logged["time_ms"][0])
    extra = [HistoryEvent(int(seen[0]), time_ms=now - 5000, is_click=True, watch_time_s=12.5),
             HistoryEvent(int(seen[0]), time_ms=now - 5000, is_click=True, watch_time_s=12.5),  # a duplicate
             HistoryEvent(13, time_ms=first_time - 1, is_click=True, watch_time_s=3.0),  # older than the log
             HistoryEvent(7, is_click=False)]
    past = store.user_log(user, now, extra)
    assert past.height == logged.height + 4
    assert past["time_ms"].is_sorted()
    candidates = np.array([int(seen[0]), 7, 11, 12, 13])
    _assert_same_batch(fast.batch(user, candidates, now, 1, past), reference.batch(user, candidates, now, 1, past),
                       "with request history")


def test_history_values_on_a_hand_worked_case(ranking_paths, sim_data: InteractionData) -> None:
    fast, _ = ranking_paths
    videos = sim_data.videos.sort("video_id")
    v1, v2 = int(videos["video_id"][0]), int(videos["video_id"][1])
    author1 = int(videos["author_id"][0])
    same_author = videos.filter(pl.col("author_id") == author1)["video_id"].to_list()
    # One user: a click on v1 (10 s) at t=1 h, v2 shown twice at t=2 h (a logged duplicate),
    # a click on v1 (20 s) at t=3 h; the request comes at t=30 h.
    log = pl.DataFrame({"row_id": [0, 1, 2, 3], "user_id": [5] * 4, "video_id": [v1, v2, v2, v1],
                        "time_ms": [1 * HOUR_MS, 2 * HOUR_MS, 2 * HOUR_MS, 3 * HOUR_MS],
                        "is_click": [1, 0, 0, 1], "watch_time_s": [10.0, 0.0, 0.0, 20.0]})
    now = 30 * HOUR_MS
    candidates = np.array([v1, v2, 9_999_999])
    video_pos = np.searchsorted(fast._video_ids, candidates)
    found = np.isin(candidates, fast._video_ids)
    values = fast._history(log, candidates, np.minimum(video_pos, fast._video_ids.size - 1), found, now)
    config = fast.history_config
    k, p0 = config.click_rate_prior_strength, config.click_rate_prior
    # 3 impressions (the duplicate counts once), 2 clicks, 30 s watched.
    assert values[USER_CLICK_RATE][0] == pytest.approx((2 + k * p0) / (3 + k))
    assert values[S_SINCE_LAST_CLICK][0] == pytest.approx((30 - 3) * 3600.0)  # seconds since the 3 h click
    assert values[USER_MEAN_WATCH_S][0] == pytest.approx(15.0)  # (10 + 20) / 2
    # The 24 h window before t=30 h is [6 h, 30 h): nothing of the log falls in it.
    assert values[USER_IMPRESSIONS_WINDOW][0] == 0 and values[USER_CLICKS_WINDOW][0] == 0
    # Newest click first; v1 twice; padded with 0.
    v1_index = fast._lookups["video_id"](np.array([v1]))[0]
    expected_ids = [v1_index, v1_index] if v1_index else []
    assert values[CLICKED_IDS][0].tolist() == expected_ids + [0] * (config.max_clicked - len(expected_ids))
    assert values[VIDEO_PREV_IMPRESSIONS].tolist() == [2.0, 1.0, 0.0]
    author_clicks_v2 = 2.0 if v2 in same_author else 0.0
    assert values[AUTHOR_CLICKS].tolist() == [2.0, author_clicks_v2, 0.0]  # unknown video: no author
    assert values[AUTHOR_CLICK_SHARE].tolist() == [1.0, author_clicks_v2 / 2, 0.0]
    since = values[S_SINCE_LAST_AUTHOR_CLICK]
    assert since[0] == pytest.approx(27 * 3600.0) and np.isnan(since[2])


def test_fast_retrieval_inputs_equal_the_featurizer(runs: tuple[Path, Path], sim_data: InteractionData,
                                                    recommender: Recommender) -> None:
    featurizer = load_retrieval_run(runs[1]).featurizer
    fast = FastRetrievalFeatures(featurizer, sim_data.users)
    store: HistoryStore = recommender.store
    assert featurizer.config.use_tokens and len(featurizer.token_ids)  # the simulator's tokens are exercised
    for user in [*store.logged_user_ids[::5].tolist(), 10_000_000]:
        for now in (store.end_time_ms + 1, store.end_time_ms - 40 * HOUR_MS):
            inputs = fast.inputs(user, store.user_log(user, now), now)
            reference = featurizer.serving_examples(sim_data.impressions, sim_data.users, [user], at_time_ms=now)
            np.testing.assert_array_equal(inputs["history"], reference.history, err_msg=f"user {user}")
            np.testing.assert_array_equal(inputs["profile"], reference.profile, err_msg=f"user {user}")
            np.testing.assert_allclose(inputs["dense"], reference.dense)
            width = reference.tokens.shape[1]
            np.testing.assert_array_equal(inputs["tokens"][:, -width:], reference.tokens, err_msg=f"user {user}")


def test_item_history_snapshot_equals_the_per_request_history(ranking_paths, recommender: Recommender) -> None:
    """item_table_batch(t) holds, per video, the item-side history columns the request path
    computes at t; snapshot_applies says when a request may use it instead."""
    fast, _ = ranking_paths
    store = recommender.store
    now = store.end_time_ms + 1
    table = fast.item_table_batch(now)
    static = fast.item_table_batch()
    videos = store.videos["video_id"].to_numpy()[:60]
    rows, found = fast.item_rows(videos)
    assert found.all()
    user = int(store.logged_user_ids[0])
    past = store.user_log(user, now)
    request = fast.batch(user, videos, now, 0, past)
    history_columns = [c for slot in fast._dense_slots if slot.side == "item" and slot.group == "history"
                       for c in range(slot.start, slot.start + slot.width)]
    assert history_columns, "the test layout has item-side history features"
    np.testing.assert_allclose(table.dense[rows][:, history_columns], request.dense[:, history_columns], atol=1e-6)
    assert torch.equal(static.dense[:, history_columns], torch.zeros_like(static.dense[:, history_columns]))
    other = [c for c in range(table.dense.shape[1]) if c not in history_columns]
    assert torch.equal(table.dense[:, other], static.dense[:, other])
    # Without item_history the request leaves those columns zero (the snapshot table has them).
    lean = fast.batch(user, videos, now, 0, past, item_columns=False, user_rows="first", item_history=False)
    assert float(lean.dense[:, history_columns].abs().max()) == 0.0

    assert fast.snapshot_applies(videos, now, past, now)
    assert fast.snapshot_applies(videos, now + HOUR_MS, past, now) is False  # the 24 h window moved past events
    assert fast.snapshot_applies(videos, store.end_time_ms - HOUR_MS, past, now) is False  # events in between
    on_candidate = store.user_log(user, now, [HistoryEvent(int(videos[5]), watch_time_s=3.0)])
    elsewhere = store.user_log(user, now, [HistoryEvent(int(store.videos["video_id"][150]), watch_time_s=3.0)])
    assert fast.snapshot_applies(videos, now, on_candidate, now) is False
    assert fast.snapshot_applies(videos, now, elsewhere, now)
