"""Retrieval examples: leak-free histories, example age, caps, vocabularies."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from ytdnn.data.schema import conform_impressions
from ytdnn.features.retrieval import (
    MS_PER_DAY,
    RetrievalFeatureConfig,
    RetrievalFeatureError,
    RetrievalFeaturizer,
    last_events_before,
)

DAY0 = 1_650_000_000_000  # an arbitrary epoch-ms origin


def _log(rows: list[tuple[int, int, int, int]], tokens: list[list[int]] | None = None) -> pl.DataFrame:
    """Impressions from (user, video, time offset ms, is_click) rows."""
    frame = pl.DataFrame({
        "user_id": [r[0] for r in rows], "video_id": [r[1] for r in rows],
        "time_ms": [DAY0 + r[2] for r in rows], "date": [20220425 + r[2] // MS_PER_DAY for r in rows],
        "is_click": [r[3] for r in rows], "watch_time_s": [10.0 * r[3] for r in rows],
    })
    if tokens is not None:
        frame = frame.with_columns(pl.Series("tokens", tokens, dtype=pl.List(pl.Int64)))
    return conform_impressions(frame)


USERS = pl.DataFrame({"user_id": [1, 2, 3], "gender": ["f", "m", "f"], "age": ["18-23", "18-23", "50+"]})


def test_last_events_before_hand_case() -> None:
    # user 7 watched a@10, b@20, c@20, d@30 (values 1..4); user 8 watched e@5 (value 5).
    user = np.array([7, 7, 7, 7, 8])
    time = np.array([10, 20, 20, 30, 5])
    value = np.array([1, 2, 3, 4, 5])
    queries_user = np.array([7, 7, 7, 7, 8, 9])
    queries_time = np.array([10, 20, 21, 31, 100, 100])
    got = last_events_before(user, time, value, queries_user, queries_time, length=2)
    # t=10: nothing strictly before; t=20: only a (b, c share the instant); t=21: b, c (last 2);
    # t=31: c, d; user 8: e right-aligned; user 9 has no events at all.
    assert got.tolist() == [[0, 0], [0, 1], [2, 3], [3, 4], [0, 5], [0, 0]]


def test_last_events_before_ignores_input_order() -> None:
    rng = np.random.default_rng(0)
    user = rng.integers(0, 5, 200)
    time = rng.permutation(1000)[:200]  # distinct instants: the window is unambiguous
    value = np.arange(1, 201)
    shuffled = rng.permutation(200)
    a = last_events_before(user, time, value, user, time + 1, 7)
    b = last_events_before(user[shuffled], time[shuffled], value[shuffled], user, time + 1, 7)
    np.testing.assert_array_equal(a, b)
    # Query t + 1 sees the event at t: it is the most recent, in the last column.
    np.testing.assert_array_equal(a[:, -1], value)


def _random_log(seed: int = 0, n: int = 400) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    rows = [(int(rng.integers(1, 4)), int(rng.integers(100, 130)), int(rng.integers(0, 5 * MS_PER_DAY // 1000)) * 1000,
             int(rng.random() < 0.6)) for _ in range(n)]
    # Force same-timestamp watches by one user.
    rows += [(1, 200, 3_600_000, 1), (1, 201, 3_600_000, 1)]
    return _log(rows)


def test_history_holds_exactly_the_earlier_watches() -> None:
    log = _random_log()
    config = RetrievalFeatureConfig(history_length=500, max_examples_per_user=None, use_tokens=False,
                                    profile_fields=[])
    featurizer = RetrievalFeaturizer.fit(log, USERS, config)
    examples = featurizer.training_examples(log, USERS)
    watches = log.filter(pl.col("is_click") == 1)
    assert len(examples) == watches.height  # one example per watch, every corpus video kept
    by_user = {u: g for (u,), g in watches.group_by("user_id")}
    for row in range(len(examples)):
        user, t = int(examples.user_id[row]), int(examples.time_ms[row])
        earlier = by_user[user].filter(pl.col("time_ms") < t)
        # The history as a multiset of video ids, brute force: every watch strictly before t.
        expected = sorted(earlier.unique(["video_id", "time_ms"])["video_id"].to_list())
        got = featurizer.video_ids[examples.history[row][examples.history[row] > 0] - 1]
        assert sorted(got.tolist()) == expected
        # ... and never the watch itself or anything at or after its instant.
        assert int(examples.video_id[row]) not in set(
            earlier.filter(pl.col("time_ms") >= t)["video_id"].to_list())


def test_same_timestamp_watches_do_not_see_each_other() -> None:
    log = _log([(1, 10, 0, 1), (1, 11, 5000, 1), (1, 12, 5000, 1), (1, 13, 9000, 1)])
    featurizer = RetrievalFeaturizer.fit(log, USERS, RetrievalFeatureConfig(profile_fields=[]))
    examples = featurizer.training_examples(log, USERS)
    history = {int(v): sorted(featurizer.video_ids[h[h > 0] - 1].tolist())
               for v, h in zip(examples.video_id, examples.history, strict=True)}
    assert history == {10: [], 11: [10], 12: [10], 13: [10, 11, 12]}


def test_history_keeps_only_the_last_n_watches() -> None:
    log = _log([(1, 10 + i, i * 1000, 1) for i in range(6)])
    featurizer = RetrievalFeaturizer.fit(log, USERS, RetrievalFeatureConfig(history_length=2, profile_fields=[]))
    last = featurizer.training_examples(log, USERS).take(slice(-1, None))
    # The watch of video 15 at t=5 s sees the two watches before it: 13 and 14, most recent last.
    assert featurizer.video_ids[last.history[0] - 1].tolist() == [13, 14]


def test_example_age_during_training_and_zero_at_serving() -> None:
    log = _log([(1, 10, 0, 1), (1, 11, MS_PER_DAY, 1), (2, 10, 2 * MS_PER_DAY, 1), (2, 12, 4 * MS_PER_DAY, 1)])
    featurizer = RetrievalFeaturizer.fit(log, USERS, RetrievalFeatureConfig(profile_fields=[]))
    train = featurizer.training_examples(log, USERS)
    # Window end = the last event (day 4): ages 4, 3, 2, 0 days; scale = window length = 4 days.
    assert train.example_age_days.tolist() == [4.0, 3.0, 2.0, 0.0]
    assert train.dense[:, 0].tolist() == [1.0, 0.75, 0.5, 0.0]
    np.testing.assert_allclose(train.dense[:, 1], [1.0, 0.5625, 0.25, 0.0])
    np.testing.assert_allclose(train.dense[:, 2], np.sqrt([1.0, 0.75, 0.5, 0.0]), rtol=1e-6)

    replay = featurizer.replay_examples(log, USERS, pl.col("date") >= 20220427)
    serving = featurizer.serving_examples(log, USERS, [1, 2])
    for examples in (replay, serving):
        assert len(examples) > 0
        assert np.all(examples.example_age_days == 0.0)
        assert np.all(examples.dense == 0.0)


def test_serving_example_age_is_configurable() -> None:
    log = _log([(1, 10, 0, 1), (1, 11, 4 * MS_PER_DAY, 1)])
    config = RetrievalFeatureConfig(profile_fields=[], serving_example_age_days=-1.0)
    featurizer = RetrievalFeaturizer.fit(log, USERS, config)
    serving = featurizer.serving_examples(log, USERS, [1])
    # a = -1 day / 4 days; a^2 = 1/16; sqrt of a negative age is clamped to 0.
    assert serving.dense.tolist() == [[-0.25, 0.0625, 0.0]]


def test_example_age_can_be_switched_off() -> None:
    log = _log([(1, 10, 0, 1), (1, 11, MS_PER_DAY, 1)])
    featurizer = RetrievalFeaturizer.fit(log, USERS, RetrievalFeatureConfig(use_example_age=False, profile_fields=[]))
    assert featurizer.dense_width == 0
    assert featurizer.training_examples(log, USERS).dense.shape == (2, 0)


def test_cap_on_examples_per_user() -> None:
    rows = [(1, 100 + i % 5, i * 1000, 1) for i in range(20)] + [(2, 100, 5, 1), (2, 101, 7, 1)]
    log = _log(rows)
    featurizer = RetrievalFeaturizer.fit(log, USERS, RetrievalFeatureConfig(max_examples_per_user=3,
                                                                            profile_fields=[]))
    examples = featurizer.training_examples(log, USERS, seed=1)
    users, counts = np.unique(examples.user_id, return_counts=True)
    assert dict(zip(users.tolist(), counts.tolist(), strict=True)) == {1: 3, 2: 2}
    # The sample is seeded: the same seed picks the same watches, another seed may not.
    again = featurizer.training_examples(log, USERS, seed=1)
    assert again.time_ms.tolist() == examples.time_ms.tolist()
    # A capped example still sees every earlier watch, not only the sampled ones.
    row = int(np.argmax(np.where(examples.user_id == 1, examples.time_ms, -1)))
    assert (examples.history[row] > 0).sum() == min(50, (examples.time_ms[row] - DAY0) // 1000)


def test_targets_are_corpus_indices_and_outside_videos_are_misses() -> None:
    train = _log([(1, 10, 0, 1), (2, 10, 1000, 1), (2, 11, 2000, 1), (3, 12, 3000, 0)])
    featurizer = RetrievalFeaturizer.fit(train, USERS, RetrievalFeatureConfig(profile_fields=[]))
    # Corpus = watched videos by train watches, most first: 10 (2 watches), 11 (1). 12 was never watched.
    assert featurizer.video_ids.tolist() == [10, 11]
    assert featurizer.item_train_clicks.tolist() == [2, 1]
    later = pl.concat([train, _log([(1, 11, 2 * MS_PER_DAY, 1), (1, 12, 2 * MS_PER_DAY + 1, 1)])])
    replay = featurizer.replay_examples(later, USERS, pl.col("date") >= 20220427)
    assert replay.video_id.tolist() == [11, 12]
    assert replay.target.tolist() == [1, -1]
    # The out-of-corpus watch of 12 enters no history (index 0 = padding): only 10 and 11 show.
    assert sorted(featurizer.video_ids[replay.history[1][replay.history[1] > 0] - 1].tolist()) == [10, 11]


def test_min_item_clicks_trims_the_corpus() -> None:
    train = _log([(1, 10, 0, 1), (2, 10, 1000, 1), (2, 11, 2000, 1)])
    featurizer = RetrievalFeaturizer.fit(train, USERS, RetrievalFeatureConfig(min_item_clicks=2, profile_fields=[]))
    assert featurizer.video_ids.tolist() == [10]
    assert featurizer.training_examples(train, USERS).video_id.tolist() == [10, 10]


def test_token_bag_uses_only_earlier_events() -> None:
    log = _log([(1, 10, 0, 0), (1, 11, 1000, 1), (1, 12, 2000, 1), (2, 13, 500, 1)],
               tokens=[[5, 6], [7], [8], [9]])
    featurizer = RetrievalFeaturizer.fit(log, USERS, RetrievalFeatureConfig(profile_fields=[]))
    examples = featurizer.training_examples(log, USERS)
    by_video = {int(v): sorted(featurizer.token_ids[t[t > 0] - 1].tolist())
                for v, t in zip(examples.video_id, examples.tokens, strict=True)}
    # Tokens of every earlier impression (clicked or not) of the same user, never its own.
    assert by_video == {11: [5, 6], 12: [5, 6, 7], 13: []}
    watches_only = RetrievalFeaturizer.fit(log, USERS, RetrievalFeatureConfig(profile_fields=[],
                                                                            token_source="watches"))
    ex = watches_only.training_examples(log, USERS)
    by_video = {int(v): sorted(watches_only.token_ids[t[t > 0] - 1].tolist())
                for v, t in zip(ex.video_id, ex.tokens, strict=True)}
    assert by_video == {11: [], 12: [7], 13: []}  # the unclicked impression's tokens are left out


def test_profile_fields_vocabulary_and_unknowns() -> None:
    log = _log([(1, 10, 0, 1), (2, 10, 1000, 1), (3, 11, 2000, 1)])
    config = RetrievalFeatureConfig(min_profile_value_users=2)
    featurizer = RetrievalFeaturizer.fit(log, USERS, config)
    assert featurizer.profile_fields == ["gender", "age"]  # 'auto': both have 2 values
    # gender f has 2 users, m only 1 (< 2, unknown); age 18-23 has 2 users, 50+ only 1.
    assert featurizer.profile_values == [["f"], ["18-23"]]
    matrix = featurizer.profile_matrix(USERS, np.array([1, 2, 3, 99]))
    assert matrix.tolist() == [[1, 1], [0, 1], [1, 0], [0, 0]]


def test_errors_name_the_problem() -> None:
    log = _log([(1, 10, 0, 1)])
    with pytest.raises(RetrievalFeatureError, match="is_click"):
        RetrievalFeaturizer.fit(log.drop("is_click"), USERS, RetrievalFeatureConfig())
    with pytest.raises(RetrievalFeatureError, match="profile_fields.*height"):
        RetrievalFeaturizer.fit(log, USERS, RetrievalFeatureConfig(profile_fields=["height"]))
    with pytest.raises(RetrievalFeatureError, match="no clicked rows"):
        RetrievalFeaturizer.fit(log.with_columns(pl.lit(0, dtype=pl.Int8).alias("is_click")), USERS,
                                RetrievalFeatureConfig())
    featurizer = RetrievalFeaturizer.fit(log, USERS, RetrievalFeatureConfig(profile_fields=["gender"]))
    with pytest.raises(RetrievalFeatureError, match="gender"):
        featurizer.profile_matrix(USERS.drop("gender"), np.array([1]))


def test_featurizer_round_trips_through_json() -> None:
    log = _random_log(3)
    featurizer = RetrievalFeaturizer.fit(log, USERS, RetrievalFeatureConfig())
    restored = RetrievalFeaturizer.from_dict(featurizer.to_dict())
    a, b = featurizer.training_examples(log, USERS), restored.training_examples(log, USERS)
    for name in ("history", "tokens", "profile", "dense", "target"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
