"""The in-process path: user → candidates → ranked videos, against the ranker's own batch scoring."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from ytdnn.data.schema import InteractionData
from ytdnn.serving.bundle import load_recommender
from ytdnn.serving.recommender import (
    HistoryEvent,
    Recommender,
    RequestContext,
    RequestError,
    UnknownVideosError,
)
from ytdnn.training.ranker import load_ranker

from .conftest import settings

UNKNOWN_USER = 10_000_000


def _known_user(recommender: Recommender, i: int = 0) -> int:
    return int(recommender.store.logged_user_ids[i])


def test_recommend_returns_top_k_by_the_odds_with_calibrated_watch_time(recommender: Recommender,
                                                                        runs: tuple[Path, Path]) -> None:
    user = _known_user(recommender, 4)
    answer = recommender.recommend(user, 7)
    assert answer.user_id == user and not answer.cold_start
    assert answer.candidate_source == "retrieval"
    assert answer.candidates_ranked == 40  # settings().candidate_count
    assert [item.rank for item in answer.items] == list(range(1, 8))
    # The default wlr-corrected ranks by the WLR odds and serves c · odds · (1 − p̂).
    odds = [item.odds for item in answer.items]
    assert odds == sorted(odds, reverse=True) and odds[-1] > 0
    scale = load_ranker(runs[0]).objective.watch_scale
    assert scale is not None and scale > 0
    for item in answer.items:
        assert item.odds is not None and item.p_click is not None and 0 < item.p_click < 1
        assert item.expected_watch_s == pytest.approx(scale * item.odds * (1 - item.p_click), rel=1e-5)
    assert len({item.video_id for item in answer.items}) == 7
    assert answer.model_version == recommender.version


def test_served_scores_equal_the_rankers_batch_scoring(recommender: Recommender, runs: tuple[Path, Path],
                                                       sim_data: InteractionData) -> None:
    """Split network (user half once) + ONNX + fast features = PyTorch full forward on pipeline features."""
    loaded = load_ranker(runs[0])
    user = _known_user(recommender, 10)
    now = recommender.store.end_time_ms + 1
    answer = recommender.recommend(user, 40)
    videos = np.array([item.video_id for item in answer.items])
    requests = pl.DataFrame({"user_id": np.full(videos.size, user), "video_id": videos,
                             "time_ms": np.full(videos.size, now), "tab": np.zeros(videos.size, dtype=np.int64)})
    # The whole log: user-side history reads the user's events, item-side history everyone's.
    batch = loaded.pipeline.transform_requests(sim_data.impressions, requests, sim_data.users, sim_data.videos)
    reference = loaded.score_batch(batch)["expected_watch_s"]
    np.testing.assert_allclose([item.expected_watch_s for item in answer.items], reference, rtol=1e-4)


def test_item_cache_serves_the_same_scores(recommender: Recommender, bundle_dir: Path) -> None:
    assert recommender.info["item_cache"] is True
    uncached = load_recommender(bundle_dir, settings(item_cache=False))
    assert uncached.info["item_cache"] is False
    for i in (0, 7, 20):
        user = _known_user(recommender, i)
        cached_answer = recommender.recommend(user, 20)
        plain_answer = uncached.recommend(user, 20)
        assert [x.video_id for x in cached_answer.items] == [x.video_id for x in plain_answer.items]
        np.testing.assert_allclose([x.expected_watch_s for x in cached_answer.items],
                                   [x.expected_watch_s for x in plain_answer.items], rtol=2e-5)
    # Also at an earlier request time and with request history on the candidates (the item-side
    # history the cross half computes per request).
    user = _known_user(recommender, 3)
    videos = recommender.store.popular_video_ids[:30].tolist()
    context = RequestContext(time_ms=recommender.store.end_time_ms - 20 * 3_600_000, tab=1)
    history = [HistoryEvent(videos[0], is_click=True, watch_time_s=40.0), HistoryEvent(videos[1], is_click=False)]
    cached_rank = recommender.rank(user, videos, context=context, history=history)
    plain_rank = uncached.rank(user, videos, context=context, history=history)
    assert [x.video_id for x in cached_rank.items] == [x.video_id for x in plain_rank.items]
    np.testing.assert_allclose([x.expected_watch_s for x in cached_rank.items],
                               [x.expected_watch_s for x in plain_rank.items], rtol=2e-5)


def test_onnx_user_tower_matches_the_retrieval_model(recommender: Recommender, runs: tuple[Path, Path],
                                                      bundle_dir: Path) -> None:
    import torch

    from ytdnn.serving.bundle import read_manifest
    from ytdnn.training.retrieval import load_retrieval_run

    parity = read_manifest(bundle_dir)["serving"]["retrieval"]["user_tower_onnx_parity"]
    assert parity["max_relative_diff"] <= 1e-4 and parity["rows"] > 50
    model = load_retrieval_run(runs[1]).model
    store, retriever = recommender.store, recommender.retriever
    now = store.end_time_ms + 1
    for user in [_known_user(recommender, 0), _known_user(recommender, 9), UNKNOWN_USER]:
        past = store.user_log(user, now)
        inputs = retriever.features.inputs(user, past, now)  # type: ignore[union-attr]
        with torch.no_grad():
            reference = model.serving_user_vectors(model.user_vectors(
                *(torch.from_numpy(inputs[k]) for k in ("history", "tokens", "profile", "dense")))).numpy()
        np.testing.assert_allclose(retriever.user_vector(user, past, now), reference, rtol=1e-4, atol=1e-5)  # type: ignore[union-attr]


def test_exclude_removes_videos_and_keeps_k(recommender: Recommender) -> None:
    user = _known_user(recommender, 2)
    first = recommender.recommend(user, 5)
    excluded = [item.video_id for item in first.items]
    again = recommender.recommend(user, 5, exclude=excluded)
    assert len(again.items) == 5
    assert not set(excluded) & {item.video_id for item in again.items}
    assert again.candidates_ranked == 40


def test_unknown_user_gets_the_cold_start_answer(recommender: Recommender) -> None:
    answer = recommender.recommend(UNKNOWN_USER, 5)
    assert answer.cold_start and answer.candidate_source == "popularity"
    popular = recommender.store.popular_video_ids[:40]
    assert {item.video_id for item in answer.items} <= set(popular.tolist())
    # With a request history the same user is retrieved for, though still unknown to the bundle.
    watched = [HistoryEvent(int(v), watch_time_s=30.0) for v in popular[:3]]
    personal = recommender.recommend(UNKNOWN_USER, 5, history=watched)
    assert personal.cold_start and personal.candidate_source == "retrieval"


def test_request_history_changes_the_scores(recommender: Recommender) -> None:
    user = _known_user(recommender, 1)
    video = int(recommender.store.popular_video_ids[0])
    plain = recommender.rank(user, [video])
    seen_often = recommender.rank(user, [video], history=[HistoryEvent(video, is_click=False)] * 3)
    assert plain.items[0].expected_watch_s != seen_often.items[0].expected_watch_s


def test_rank_scores_every_given_video(recommender: Recommender) -> None:
    user = _known_user(recommender, 3)
    videos = recommender.store.videos["video_id"].to_list()[:25]
    answer = recommender.rank(user, videos, context=RequestContext(tab=1))
    assert answer.candidate_source == "request" and answer.candidates_ranked == 25
    assert sorted(item.video_id for item in answer.items) == sorted(videos)
    odds = [item.odds for item in answer.items]  # the ranking key of the default objective
    assert odds == sorted(odds, reverse=True)


def test_rank_rejects_unknown_duplicate_or_no_videos(recommender: Recommender) -> None:
    user = _known_user(recommender)
    with pytest.raises(UnknownVideosError) as error:
        recommender.rank(user, [1, 9_999_998, 2, 9_999_999])
    assert error.value.video_ids == [9_999_998, 9_999_999] and error.value.positions == [1, 3]
    assert "9999998" in str(error.value)
    with pytest.raises(RequestError, match=r"id 2 appears more than once \(positions \[1, 2\]\)"):
        recommender.rank(user, [1, 2, 2])
    with pytest.raises(RequestError, match="at least one"):
        recommender.rank(user, [])


def test_unknown_videos_can_be_scored_out_of_vocabulary(bundle_dir: Path) -> None:
    model = load_recommender(bundle_dir, settings(unknown_videos="score_oov"))
    answer = model.rank(UNKNOWN_USER, [9_999_999, 1])
    assert {item.video_id for item in answer.items} == {9_999_999, 1}
    assert all(item.expected_watch_s > 0 for item in answer.items)


def test_history_after_the_request_time_is_refused(recommender: Recommender) -> None:
    now = recommender.store.end_time_ms + 1
    with pytest.raises(RequestError, match=r"history\[1\]\.time_ms .* is not before the request time") as error:
        recommender.recommend(1, 3, history=[HistoryEvent(1), HistoryEvent(2, time_ms=now)])
    assert error.value.field == ("history", 1, "time_ms")


def test_request_time_hides_later_events(recommender: Recommender) -> None:
    store = recommender.store
    user = _known_user(recommender, 5)
    log = store.user_log(user, store.end_time_ms + 1)
    middle = int(log["time_ms"][log.height // 2])
    assert store.user_log(user, middle)["time_ms"].max() < middle
    early = recommender.rank(user, [1, 2], context=RequestContext(time_ms=middle))
    late = recommender.rank(user, [1, 2])
    assert [i.expected_watch_s for i in early.items] != [i.expected_watch_s for i in late.items]


def test_warm_up_marks_the_model_ready(bundle_dir: Path) -> None:
    model = load_recommender(bundle_dir, settings())
    assert not model.warmed_up
    timings = model.warm_up(3)
    assert model.warmed_up and timings["requests"] == 3.0


def test_fast_path_scores_equal_the_reference_path(recommender: Recommender, runs: tuple[Path, Path]) -> None:
    """The served path (fast features, cached item rows with the item-history snapshot folded in,
    ONNX split graphs) against the pipeline's own serving features through the full PyTorch
    network, on the bundle's users: ≤ 1e-4 relative on every served quantity, with the snapshot
    taken where it applies and the exact per-request item history where it does not."""
    import torch

    from ytdnn.serving.features import PipelineRankingFeatures

    loaded = load_ranker(runs[0])
    store, ranker = recommender.store, recommender.ranker
    assert ranker.item_snapshot is not None and ranker.item_snapshot[0] == store.end_time_ms + 1
    # The snapshot really holds item history: its rows differ from the static item table's.
    assert not np.allclose(ranker.item_snapshot[1], ranker.item_hidden)
    reference = PipelineRankingFeatures(loaded.pipeline, store.users, store.videos, store.log)
    now = store.end_time_ms + 1
    earlier = now - 30 * 3_600_000
    used_snapshot = []
    for i, (user, at, with_event) in enumerate([(_known_user(recommender, 0), now, False),
                                                 (_known_user(recommender, 11), now, False),
                                                 (_known_user(recommender, 30), now, True),
                                                 (_known_user(recommender, 30), earlier, False),
                                                 (UNKNOWN_USER, now, False)]):
        past = store.user_log(user, at)
        retriever = recommender.retriever
        assert retriever is not None
        candidates = retriever.retrieve(user, past, at, 40) if past.height else store.popular_videos(40)
        if with_event:
            past = store.user_log(user, at, [HistoryEvent(int(candidates[3]), watch_time_s=12.0)])
        snapshot_ms = ranker.item_snapshot[0]
        used_snapshot.append(ranker.features.snapshot_applies(candidates, at, past, snapshot_ms))  # type: ignore[attr-defined]
        served = ranker.score(user, candidates, at, 0, past)
        with torch.inference_mode():
            expected = loaded.objective.predict(loaded.network.eval()(reference.batch(user, candidates, at, 0, past)))
        assert set(served) == {key for key in expected if key != "logit"}
        for key in served:
            np.testing.assert_allclose(served[key], expected[key].double().numpy(), rtol=1e-4,
                                       err_msg=f"request {i}: {key}")
    assert used_snapshot == [True, True, False, False, True]


def test_ranking_key_comes_from_the_ranker(recommender: Recommender) -> None:
    """The order is the ranker's ranking key, whatever it is, not a hard-coded expected_watch_s."""
    user = _known_user(recommender, 6)
    ranker = recommender.ranker
    original_predict, original_key = ranker.predict, ranker.ranking_key
    try:
        # An objective whose ranking key is the reverse of its expected watch time.
        def reversed_predict(logits):  # type: ignore[no-untyped-def]
            served = original_predict(logits)
            return {**served, "score": -served["expected_watch_s"]}

        ranker.predict = reversed_predict
        ranker.ranking_key = "score"
        answer = recommender.recommend(user, 10)
    finally:
        ranker.predict, ranker.ranking_key = original_predict, original_key
    served = [item.expected_watch_s for item in answer.items]
    assert served == sorted(served)  # ascending: ranked by "score"
