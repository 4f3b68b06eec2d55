from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from ytdnn.data.schema import conform_impressions, read_dataset, write_dataset
from ytdnn.data.simulator import SimulatorConfig, _LogitHistogram, simulate, simulate_to_parquet

SMALL = dict(n_users=1500, n_videos=800, n_days=7, n_tokens=200, n_authors=100, n_music=100)


@pytest.fixture(scope="module")
def config() -> SimulatorConfig:
    return SimulatorConfig(**SMALL, seed=11)


@pytest.fixture(scope="module")
def data(config: SimulatorConfig):
    return simulate(config)


# ---- the click bias ---------------------------------------------------------------------------------------------

def test_bias_bisection_on_hand_worked_logits() -> None:
    # z = {-1, +1}: σ(b−1) + σ(b+1) = 1 at b = 0 because σ(−1) = 1 − σ(1); so target 0.5 gives b = 0.
    histogram = _LogitHistogram()
    histogram.add(np.array([-1.0, 1.0]))
    assert histogram.solve_bias(0.5) == pytest.approx(0.0, abs=1e-9)
    # z = {0}: σ(b) = σ(1) = 0.7310585786 at b = 1.
    histogram = _LogitHistogram()
    histogram.add(np.array([0.0]))
    assert histogram.solve_bias(1.0 / (1.0 + math.exp(-1.0))) == pytest.approx(1.0, abs=1e-9)
    with pytest.raises(ValueError, match="no impressions"):
        _LogitHistogram().solve_bias(0.5)


@pytest.mark.parametrize("target", [0.01, 0.05, 0.2, 0.44, 0.7])
def test_click_rate_hits_target(target: float) -> None:
    config = SimulatorConfig(n_users=2000, n_videos=1000, n_days=10, n_tokens=100, target_click_rate=target, seed=5)
    impressions = simulate(config).impressions
    assert impressions.height > 150_000
    # The bias makes the mean of p(x) equal the target (up to the 1/512-wide logit bins)...
    assert impressions["true_p_click"].mean() == pytest.approx(target, abs=1e-5)
    # ...and the realised rate differs by Bernoulli noise only: sd <= sqrt(0.25 / 150k) = 0.0013.
    assert abs(impressions["is_click"].mean() - target) <= 0.005


# ---- ground truth -----------------------------------------------------------------------------------------------

def test_truth_columns_are_consistent_with_sampled_outcomes(config: SimulatorConfig, data) -> None:
    imp = data.impressions
    p = imp["true_p_click"].to_numpy()
    expected = imp["true_expected_watch_s"].to_numpy()
    watch = imp["watch_time_s"].to_numpy()
    clicked = imp["is_click"].to_numpy() == 1
    assert ((p > 0) & (p < 1)).all() and (expected > 0).all()
    n = p.shape[0]

    # T = click·exp(μ + σε): with m = E[T|click,x] = E/p, E[T²|x] = p·m²·e^{σ²}.
    mean_given_click = expected / p
    spread = math.exp(config.watch_sigma ** 2)
    variance = p * mean_given_click ** 2 * spread - expected ** 2
    tolerance = 4.0 * math.sqrt(variance.sum()) / n
    assert abs(watch.mean() - expected.mean()) <= tolerance

    # Given a click, T has mean m and variance m²(e^{σ²} − 1).
    m = mean_given_click[clicked]
    tolerance = 4.0 * math.sqrt((m ** 2 * (spread - 1.0)).sum()) / m.shape[0]
    assert abs(watch[clicked].mean() - m.mean()) <= tolerance
    assert (watch[~clicked] == 0).all() and (watch[clicked] > 0).all()

    # Clicks are calibrated to p within every decile of p.
    deciles = np.quantile(p, np.linspace(0, 1, 11))
    bins = np.clip(np.searchsorted(deciles, p, side="right") - 1, 0, 9)
    for b in range(10):
        in_bin = bins == b
        sd = math.sqrt((p[in_bin] * (1 - p[in_bin])).sum()) / in_bin.sum()
        assert abs(clicked[in_bin].mean() - p[in_bin].mean()) <= 4.5 * sd


def test_p_varies_strongly_across_items(data) -> None:
    items = (data.impressions.group_by("video_id")
             .agg(pl.col("true_p_click").mean().alias("p"), pl.len().alias("n"))
             .filter(pl.col("n") >= 30))
    assert items.height > 100
    assert items["p"].std() > 0.08  # measured ≈ 0.15 at the default target 0.2
    assert items["p"].quantile(0.95) > 3 * items["p"].quantile(0.05)


def test_wlr_odds_with_constant_p() -> None:
    # With every effect off p(x) is the constant 0.44, so the WLR optimum E[T|x]/(1 − p(x)) is
    # E[T|x]·1/(1 − 0.44) = E[T|x]·1.7857142857.
    config = SimulatorConfig(**SMALL, target_click_rate=0.44, taste_strength=0.0, item_effect_std=0.0,
                             trend_click_weight=0.0, tab_click_effect=0.0, hour_click_amplitude=0.0, seed=2)
    imp = simulate(config).impressions
    p = imp["true_p_click"].to_numpy()
    expected = imp["true_expected_watch_s"].to_numpy()
    assert np.abs(p - 0.44).max() < 1e-6
    ratio = np.mean(expected / (1 - p)) / np.mean(expected)
    assert ratio == pytest.approx(1 / (1 - 0.44), rel=1e-6)
    assert ratio == pytest.approx(1.7857142857, rel=1e-6)

    # The odds weighted LR learns from samples, ΣT / (N − k), estimate the same thing.
    watch = imp["watch_time_s"].to_numpy()
    n, k = watch.shape[0], int(imp["is_click"].sum())
    empirical_odds = watch.sum() / (n - k)
    mean_given_click = expected / p
    sd_mean_watch = math.sqrt((p * mean_given_click ** 2 * math.exp(config.watch_sigma ** 2)
                               - expected ** 2).sum()) / n
    sd_unclicked_share = math.sqrt(0.44 * 0.56 / n)
    relative_tolerance = 4 * (sd_mean_watch / expected.mean() + sd_unclicked_share / 0.56)
    assert empirical_odds / (expected.mean() / (1 - 0.44)) == pytest.approx(1.0, abs=relative_tolerance)


# ---- schema, reproducibility, storage -----------------------------------------------------------------------------

def test_output_conforms_to_schema_and_roundtrips(config: SimulatorConfig, data, tmp_path: Path) -> None:
    imp = data.impressions
    assert conform_impressions(imp).equals(imp)
    assert data.has_truth
    assert imp["row_id"].to_list() == list(range(imp.height))
    assert imp["time_ms"].is_sorted()  # one user block: the log is in time order
    assert imp["date"].min() == 20220425 and imp["date"].max() == 20220501  # 7 days
    hhmm = pl.from_epoch("time_ms", time_unit="ms")  # UTC
    assert imp.select((hhmm.dt.strftime("%Y%m%d").cast(pl.Int32) == pl.col("date")).all()).item()
    assert imp.select((hhmm.dt.hour().cast(pl.Int32) * 100 + hhmm.dt.minute() == pl.col("hourmin")).all()).item()
    assert set(imp["tab"].unique().to_list()) == {0, 1}
    assert imp["tokens"].list.len().mean() == pytest.approx(3.0, abs=0.05)
    assert imp["tokens"].explode().drop_nulls().is_between(0, config.n_tokens - 1).all()
    videos = data.videos
    assert videos.columns[:5] == ["video_id", "author_id", "music_id", "tags", "duration_s"]
    assert videos["duration_s"].min() > 0 and videos["tags"].list.len().min() >= 1
    assert data.users["user_id"].to_list() == list(range(config.n_users))

    write_dataset(data, tmp_path / "sim")
    back = read_dataset(tmp_path / "sim")
    assert back.impressions.equals(imp)
    assert back.users.equals(data.users) and back.videos.equals(data.videos)
    assert back.provenance["config"]["seed"] == 11
    assert back.provenance["click_bias"] == pytest.approx(data.provenance["click_bias"])


def test_same_seed_same_log_other_seed_other_log(config: SimulatorConfig, data) -> None:
    again = simulate(config)
    assert again.impressions.equals(data.impressions)
    assert again.users.equals(data.users) and again.videos.equals(data.videos)
    other = simulate(config.model_copy(update={"seed": 12}))
    assert not other.impressions.equals(data.impressions)
    assert not other.videos.equals(data.videos)


def test_simulate_to_parquet_matches_simulate(tmp_path: Path) -> None:
    # Several user blocks per day and several shards per run.
    config = SimulatorConfig(n_users=300, n_videos=500, n_days=3, n_tokens=100, users_per_block=128, seed=3)
    expected = simulate(config)
    simulate_to_parquet(config, tmp_path, shard_rows=1000)
    assert len(list((tmp_path / "impressions").glob("part-*.parquet"))) == math.ceil(expected.impressions.height / 1000)
    # A rewrite with bigger shards leaves no stale shard behind.
    simulate_to_parquet(config, tmp_path, shard_rows=5000)
    shards = sorted(p.name for p in (tmp_path / "impressions").iterdir())
    assert shards == [f"part-{i:05d}.parquet" for i in range(math.ceil(expected.impressions.height / 5000))]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    back = read_dataset(tmp_path)
    assert back.impressions.equals(expected.impressions)
    assert back.users.equals(expected.users) and back.videos.equals(expected.videos)
    assert back.provenance == expected.provenance


def test_simulate_to_parquet_refuses_a_shadowing_file_and_bad_shards(tmp_path: Path) -> None:
    config = SimulatorConfig(n_users=50, n_videos=100, n_days=1, n_tokens=50)
    with pytest.raises(ValueError, match="shard_rows"):
        simulate_to_parquet(config, tmp_path, shard_rows=0)
    (tmp_path / "impressions.parquet").write_bytes(b"")
    with pytest.raises(ValueError, match="shadow"):
        simulate_to_parquet(config, tmp_path)


# ---- signal the models are meant to find ---------------------------------------------------------------------------

def test_tokens_and_profile_predict_the_clicked_topic(config: SimulatorConfig, data) -> None:
    # A video's first tag is its topic; token j belongs to topic j mod K. Chance agreement is 1/K = 1/32.
    imp = data.impressions
    token_topic = (imp.select("user_id", "tokens").explode("tokens").drop_nulls("tokens")
                   .group_by("user_id").agg((pl.col("tokens") % config.n_topics).mode().min().alias("token_topic")))
    click_topic = (imp.filter(pl.col("is_click") == 1)
                   .join(data.videos.select("video_id", pl.col("tags").list.first().alias("topic")), on="video_id")
                   .group_by("user_id").agg(pl.col("topic").mode().min().alias("click_topic")))
    joined = token_topic.join(click_topic, on="user_id").join(data.users, on="user_id")
    assert joined.height > 1000
    assert (joined["token_topic"] == joined["click_topic"]).mean() > 0.25
    assert (joined["interest_group"] == joined["click_topic"]).mean() > 0.15


def test_popularity_drifts_only_when_asked() -> None:
    def log_ratio_std(drift: float) -> float:
        config = SimulatorConfig(**SMALL | {"n_days": 10}, popularity_drift=drift, personal_exposure_share=0.0, seed=4)
        imp = simulate(config).impressions
        counts = (imp.group_by("video_id")
                  .agg((pl.col("date") <= 20220427).sum().alias("early"), (pl.col("date") >= 20220502).sum().alias("late"))
                  .filter((pl.col("early") >= 40) & (pl.col("late") >= 40)))
        return float(np.log(counts["late"] / counts["early"]).std())

    # Without drift the spread is Poisson noise only (≈ sqrt(2/40) ≈ 0.2 at the lowest counts);
    # with 0.3 per day over ~7 days apart it is ≈ 0.3·7 = 2 before selection.
    assert log_ratio_std(0.3) > 2 * log_ratio_std(0.0)


def test_taste_strength_zero_removes_personalisation() -> None:
    base = dict(SMALL, item_effect_std=0.0, trend_click_weight=0.0, tab_click_effect=0.0, hour_click_amplitude=0.0)
    flat = simulate(SimulatorConfig(**base, taste_strength=0.0)).impressions
    personal = simulate(SimulatorConfig(**base, taste_strength=3.0)).impressions
    assert flat["true_p_click"].std() < 1e-6
    assert personal["true_p_click"].std() > 0.05


# ---- bad input -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("overrides", "message"), [
    ({"target_click_rate": 1.0}, "target_click_rate"),
    ({"target_click_rate": 0.0}, "target_click_rate"),
    ({"start_date": 20221345}, "start_date must be a calendar date"),
    ({"n_tokens": 10, "n_topics": 32}, "n_tokens must be >= n_topics"),
    ({"n_users": 0}, "n_users"),
    ({"unknown_knob": 1}, "unknown_knob"),
])
def test_bad_config_is_rejected_naming_the_field(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SimulatorConfig(**overrides)
