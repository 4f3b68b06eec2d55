from __future__ import annotations

import time

import numpy as np
import polars as pl
import pytest
import torch

from ytdnn.data.split import DateSplit
from ytdnn.features.history import CLICKED_IDS, HISTORY_COLUMNS, HistoryConfig, history_for_requests
from ytdnn.features.layout import FeatureLayout, RankingBatch
from ytdnn.features.ranking import (
    FEATURE_GROUPS,
    FeaturePipelineError,
    RankingFeatureConfig,
    RankingFeaturePipeline,
    VideoStat,
)

DAY_MS = 86_400_000
T0 = 1_650_844_800_000  # 2022-04-25 00:00 UTC
DATES = [20220425, 20220426, 20220427, 20220428, 20220429, 20220430, 20220501, 20220502, 20220503, 20220504,
         20220505, 20220506, 20220507, 20220508]


def _world(seed: int = 0, n: int = 3000) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """A small KuaiRand-shaped data set: 14 days, train = first 10 (dates <= 20220504)."""
    rng = np.random.default_rng(seed)
    n_users, n_videos = 60, 80
    users = pl.DataFrame({
        "user_id": np.arange(n_users),
        "user_active_degree": rng.choice(["high", "middle", "low"], n_users),
        "follow_user_num": [str(v) for v in rng.integers(0, 500, n_users)],
        "follow_user_num_range": rng.choice(["0", "(0,10]", "(10,50]"], n_users),
        "onehot_feat0": [str(v) for v in rng.integers(0, 2, n_users)],
        "gender": rng.integers(0, 2, n_users),
    }).with_columns(pl.col("follow_user_num").cast(pl.Float64).alias("follow_user_num__num"),
                    pl.col("onehot_feat0").cast(pl.Float64).alias("onehot_feat0__num"))
    videos = pl.DataFrame({
        "video_id": np.arange(n_videos), "author_id": rng.integers(0, 20, n_videos),
        "music_id": rng.integers(0, 30, n_videos),
        "tags": [list(rng.choice(10, size=rng.integers(0, 3), replace=False)) for _ in range(n_videos)],
        "duration_s": rng.lognormal(3.5, 0.8, n_videos),
        "show_cnt": rng.integers(0, 1000, n_videos).astype(float),
        "play_cnt": rng.integers(0, 500, n_videos).astype(float),
        "like_cnt": rng.integers(0, 50, n_videos).astype(float),
    }).with_columns(pl.col("tags").cast(pl.List(pl.Int64)))
    time_ms = np.sort(T0 + rng.integers(0, 14 * DAY_MS, n))
    day = (time_ms - T0) // DAY_MS
    clicks = rng.integers(0, 2, n)
    impressions = pl.DataFrame({
        "row_id": np.arange(n), "user_id": rng.integers(0, n_users, n), "video_id": rng.integers(0, n_videos, n),
        "time_ms": time_ms, "date": np.array(DATES, dtype=np.int32)[day], "is_click": clicks.astype(np.int8),
        "watch_time_s": clicks * rng.exponential(40.0, n), "tab": rng.integers(0, 4, n).astype(np.int32),
    })
    return impressions, users, videos


@pytest.fixture(scope="module")
def world() -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    return _world()


def _fit(world, config: RankingFeatureConfig | None = None):
    impressions, users, videos = world
    pipeline = RankingFeaturePipeline(config or RankingFeatureConfig(n_quantiles=20))
    logged = pipeline.add_history(impressions, videos)
    train = logged.filter(DateSplit().train_mask())
    return pipeline.fit(train, users, videos), logged, train


def test_layout_groups_sides_and_shared_video_table(world) -> None:
    pipeline, logged, _ = _fit(world)
    layout = pipeline.layout
    by_name = {f.name: f for f in layout.features}
    assert {f.group for f in layout.features} == set(FEATURE_GROUPS)
    assert by_name["video_id"].table == by_name[CLICKED_IDS].table == "video_id"
    assert [t.name for t in layout.tables].count("video_id") == 1
    assert {n: by_name[n].side for n in ("video_id", "author_id", "tags", "video_duration_s", "user_id", "tab",
                                         "hour_of_day", "profile_user_active_degree", CLICKED_IDS,
                                         "hist_s_since_last_click", "hist_video_prev_impressions",
                                         "hist_author_clicks")} == {
        "video_id": "item", "author_id": "item", "tags": "item", "video_duration_s": "item", "user_id": "user",
        "tab": "user", "hour_of_day": "user", "profile_user_active_degree": "user", CLICKED_IDS: "user",
        "hist_s_since_last_click": "user", "hist_video_prev_impressions": "cross", "hist_author_clicks": "cross"}
    # Profile rule: a count with a *_range sibling is numeric via its __num twin; its raw string is
    # dropped; onehot_feat0 stays categorical (its __num twin unused); integer gender is categorical.
    assert pipeline.profile_numeric == ["follow_user_num__num"]
    assert pipeline.profile_categorical == ["user_active_degree", "follow_user_num_range", "onehot_feat0", "gender"]
    # Video stats whose columns are absent are skipped (no valid/complete/… columns here).
    assert [s.name for s in pipeline.video_stats] == ["duration_s", "show_cnt", "play_rate", "like_rate"]
    assert by_name["hist_s_since_last_click"].width == 4 and by_name["video_play_rate"].width == 3
    assert layout.dense_width == sum(f.width for f in layout.dense)
    for table in layout.tables:
        assert table.vocab_size == pipeline.vocabularies[table.name].size and table.dim >= 4


def test_transform_shapes_ranges_and_labels(world) -> None:
    pipeline, logged, _ = _fit(world)
    batch = pipeline.transform(logged, *world[1:])
    layout = pipeline.layout
    assert isinstance(batch, RankingBatch) and len(batch) == logged.height
    assert batch.categorical.dtype == torch.int64 and batch.categorical.shape == (logged.height, len(layout.categorical))
    assert [m.shape[1] for m in batch.multivalent] == [4, 30]  # max_tags, history max_clicked
    assert batch.dense.dtype == torch.float32 and batch.dense.shape == (logged.height, layout.dense_width)
    assert not torch.isnan(batch.dense).any() and batch.dense.min() >= 0 and batch.dense.max() <= 1
    for j, spec in enumerate(layout.categorical):
        assert int(batch.categorical[:, j].max()) < layout.table(spec.table).vocab_size
    assert torch.equal(batch.is_click, torch.tensor(logged["is_click"].to_numpy(), dtype=torch.float32))
    assert torch.allclose(batch.watch_time_s, torch.tensor(logged["watch_time_s"].to_numpy(), dtype=torch.float32))
    unlabeled = pipeline.transform(logged.drop("is_click", "watch_time_s"), *world[1:])
    assert not unlabeled.is_click.any() and not unlabeled.watch_time_s.any()
    assert torch.equal(unlabeled.dense, batch.dense)


def test_vocabularies_come_from_training_clicks_only(world) -> None:
    impressions, users, videos = world
    # Video 79 is clicked only on test days, video 78 only impressed (never clicked) in training.
    impressions = impressions.with_columns(
        pl.when(pl.col("video_id").is_in([78, 79])).then(0).otherwise(pl.col("video_id")).alias("video_id"))
    train_days = pl.col("date") <= 20220504
    impressions = pl.concat([
        impressions,
        pl.DataFrame({"row_id": [10_000, 10_001], "user_id": [1, 2], "video_id": [79, 78],
                      "time_ms": [T0 + 12 * DAY_MS, T0 + 2 * DAY_MS], "date": [20220507, 20220427],
                      "is_click": [1, 0], "watch_time_s": [30.0, 0.0], "tab": [1, 1]}, schema=impressions.schema),
    ]).sort("time_ms")
    pipeline, logged, train = _fit((impressions, users, videos))
    vocab = pipeline.vocabularies["video_id"]
    clicked_train = set(impressions.filter(train_days & (pl.col("is_click") == 1))["video_id"].to_list())
    assert set(vocab.keys.to_list()) == clicked_train
    batch = pipeline.transform(logged.filter(pl.col("video_id").is_in([78, 79])), users, videos)
    video_column = [f.name for f in pipeline.layout.categorical].index("video_id")
    assert batch.categorical[:, video_column].tolist() == [0, 0]
    # Quantiles are fitted on training rows only: the training maximum of the play rate maps below 1.
    assert pipeline.normalisers["video_play_rate"].n_train == train.height


def test_ablation_groups(world) -> None:
    impressions, users, videos = world
    only_ids = _fit(world, RankingFeatureConfig(groups=["ids"], n_quantiles=20))[0]
    # layout.features: categoricals, then multivalent, then dense features.
    assert [f.name for f in only_ids.layout.features] == ["video_id", "author_id", "music_id", "user_id", "tags"]
    assert only_ids.layout.dense_width == 0
    batch = only_ids.transform(impressions, users, videos)  # no history columns needed
    assert batch.dense.shape == (impressions.height, 0)
    only_history = _fit(world, RankingFeatureConfig(groups=["history"], n_quantiles=20))[0]
    assert [t.name for t in only_history.layout.tables] == ["video_id"]  # still needed by the clicked ids
    assert {f.group for f in only_history.layout.features} == {"history"}


def test_missing_history_is_a_clear_error(world) -> None:
    pipeline, logged, _ = _fit(world)
    with pytest.raises(FeaturePipelineError, match="hist_.*add_history"):
        pipeline.transform(world[0], *world[1:])
    with pytest.raises(FeaturePipelineError, match="not fitted"):
        RankingFeaturePipeline().transform(logged, *world[1:])
    with pytest.raises(FeaturePipelineError, match="lacks column 'like_cnt'"):
        pipeline.transform(logged, world[1], world[2].drop("like_cnt"))


def test_save_load_roundtrip_gives_identical_tensors(world, tmp_path) -> None:
    pipeline, logged, _ = _fit(world)
    path = pipeline.save(tmp_path / "features")
    assert path.name == "ranking_features.json"
    loaded = RankingFeaturePipeline.load(tmp_path / "features")
    assert loaded.layout.to_dict() == pipeline.layout.to_dict()
    assert FeatureLayout.from_dict(loaded.layout.to_dict()).dense_width == pipeline.layout.dense_width
    a = pipeline.transform(logged, *world[1:])
    b = loaded.transform(logged, *world[1:])
    assert torch.equal(a.categorical, b.categorical) and torch.equal(a.dense, b.dense)
    assert all(torch.equal(x, y) for x, y in zip(a.multivalent, b.multivalent, strict=True))
    with pytest.raises(FeaturePipelineError, match="no saved ranking feature pipeline"):
        RankingFeaturePipeline.load(tmp_path / "elsewhere")


def test_serving_requests_equal_logged_rows(world) -> None:
    impressions, users, videos = world
    pipeline, logged, _ = _fit(world)
    rows = logged.filter(pl.col("date") >= 20220505).slice(0, 50)
    assert rows.height == 50
    past = impressions.filter(pl.col("time_ms") < rows["time_ms"].max())
    requests = rows.select("user_id", "video_id", "time_ms", "tab")
    served = pipeline.transform_requests(past, requests, users, videos)
    batch = pipeline.transform(rows, users, videos)
    assert torch.equal(served.categorical, batch.categorical) and torch.equal(served.dense, batch.dense)
    assert all(torch.equal(x, y) for x, y in zip(served.multivalent, batch.multivalent, strict=True))


def test_config_rejects_unknown_groups_and_keys() -> None:
    with pytest.raises(ValueError):
        RankingFeatureConfig(groups=["ids", "nonsense"])  # type: ignore[list-item]
    with pytest.raises(ValueError):
        RankingFeatureConfig(groups=["ids", "ids"])
    with pytest.raises(ValueError):
        RankingFeatureConfig(vocab_size=3)  # type: ignore[call-arg]
    config = RankingFeatureConfig(video_stats=[VideoStat(name="x", numerator="a")], history=HistoryConfig(max_clicked=5))
    assert RankingFeatureConfig.model_validate(config.model_dump(mode="json")) == config


def test_smoke_on_real_kuairand_slice(kuairand) -> None:
    # ~3 000 users' whole logs: history over the slice, fit on train days, transform the test days.
    data = kuairand
    impressions = data.impressions.filter(pl.col("user_id") % 8 == 0)
    pipeline = RankingFeaturePipeline()
    start = time.perf_counter()
    logged = pipeline.add_history(impressions, data.videos)
    split = DateSplit()
    pipeline.fit(logged.filter(split.train_mask()), data.users, data.videos)
    test = logged.filter(split.test_mask())
    batch = pipeline.transform(test, data.users, data.videos)
    assert time.perf_counter() - start < 30.0
    layout = pipeline.layout
    assert batch.categorical.shape == (test.height, len(layout.categorical))
    assert batch.dense.shape == (test.height, layout.dense_width)
    assert not torch.isnan(batch.dense).any()
    assert float(batch.dense.min()) >= 0.0 and float(batch.dense.max()) <= 1.0
    assert [m.shape for m in batch.multivalent] == [(test.height, 4), (test.height, 30)]
    assert set(HISTORY_COLUMNS) <= set(logged.columns)
    # The serving path over the same log gives the test rows the same history as the batch path.
    served = history_for_requests(impressions, test.select("user_id", "video_id", "time_ms"), data.videos,
                                  pipeline.config.history)
    assert served.select(HISTORY_COLUMNS).equals(test.select(HISTORY_COLUMNS))
    assert "profile_register_days" in {f.name for f in layout.dense}
    # Known users and videos mostly hit the vocabulary (OOV only for what had no training click).
    video_column = [f.name for f in layout.categorical].index("video_id")
    assert float((batch.categorical[:, video_column] > 0).float().mean()) > 0.8
