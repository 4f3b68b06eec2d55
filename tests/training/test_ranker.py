"""End-to-end tests of the ranker job on a small simulated log: run folder, reload, scores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from ytdnn.data.schema import InteractionData, write_dataset
from ytdnn.data.simulator import SimulatorConfig, simulate
from ytdnn.evaluation.metrics import weighted_per_user_loss
from ytdnn.training.ranker import RankerConfig, RankerError, load_ranker, page_ids, train_ranker

# 5 days from 20220501: train 0501..0504 (0504 = validation), test 0505.
SIM = SimulatorConfig(n_users=120, n_videos=200, n_days=5, start_date=20220501, impressions_per_user_day=10,
                      n_authors=40, n_music=50, n_tokens=100, seed=3)
FAST = {"model.hidden": [16], "train.epochs": 3, "train.batch_size": 256, "train.progress": False,
        "train.num_threads": 1, "train.patience": 5}
# The module's main run skips the refit, so its saved model is the early-stopped one (the refit
# has its own test below).
SELECTION_ONLY = {"data.refit": False}


@pytest.fixture(scope="module")
def data() -> InteractionData:
    return simulate(SIM)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, data: InteractionData):
    dataset_dir = write_dataset(data, tmp_path_factory.mktemp("dataset"))
    config = RankerConfig.load(overrides=FAST | SELECTION_ONLY | {"data.dataset": str(dataset_dir), "seed": 11})
    out_dir = tmp_path_factory.mktemp("run")
    return config, train_ranker(config, out_dir), out_dir


def _validation_frame(result, data: InteractionData) -> pl.DataFrame:
    log = data.impressions.filter(pl.col("date") <= 20220504)
    return result.ranker.pipeline.add_history(log, data.videos).filter(pl.col("date") == 20220504)


def test_run_folder_is_complete(run) -> None:
    config, result, out_dir = run
    files = sorted(str(p.relative_to(out_dir)) for p in out_dir.rglob("*") if p.is_file())
    assert files == ["baselines/click/model.json", "baselines/click/model.safetensors",
                     "baselines/click/training.json", "config.json", "features/ranking_features.json",
                     "model.json", "model.safetensors", "training.json"]
    assert RankerConfig.read(out_dir / "config.json") == config
    model = json.loads((out_dir / "model.json").read_text())
    # The default objective: wlr-corrected ranked by its odds, with a fitted calibration constant.
    assert model["objective"]["name"] == "wlr-corrected" and model["objective"]["loss_scale"] > 1  # fitted, saved
    assert model["objective"]["rank_by"] == "odds" and model["objective"]["calibrate"] is True
    assert model["network"]["hidden"] == [16] and model["ranking_key"] == "odds"
    assert model["objective"]["watch_scale"] == result.ranker.objective.watch_scale > 0
    training = json.loads((out_dir / "training.json").read_text())
    assert training["validation_dates"] == [20220504] and result.validation_dates == [20220504]
    assert training["n_train"] == result.n_train > 0 and training["n_validation"] == result.n_validation > 0
    assert training["trainer"]["seed"] == 11  # the run's seed reaches the trainer
    assert training["early_stopping_metric"] == "weighted_per_user_loss" and training["refit"] is False
    assert len(training["epochs"]) == 3 and training["best_epoch"] in (1, 2, 3)
    click = json.loads((out_dir / "baselines/click/model.json").read_text())
    assert click["objective"]["name"] == "click" and click["features"] == "../../features"
    assert click["objective"]["mean_watch_given_click"] > 0


def test_train_and_validation_split_by_date(run, data: InteractionData) -> None:
    _, result, _ = run
    dates = data.impressions["date"]
    assert result.n_train == int(((dates >= 20220501) & (dates <= 20220503)).sum())
    assert result.n_validation == int((dates == 20220504).sum())


def test_loaded_ranker_gives_identical_scores_and_the_recorded_validation_loss(run, data: InteractionData) -> None:
    _, result, out_dir = run
    frame = _validation_frame(result, data)
    loaded = load_ranker(out_dir)
    in_memory = result.ranker.score_frame(frame, data.users, data.videos)
    reloaded = loaded.score_frame(frame, data.users, data.videos)
    assert set(reloaded) == {"logit", "odds", "p_click", "expected_watch_s"}
    for key in reloaded:
        np.testing.assert_array_equal(reloaded[key], in_memory[key])
    assert np.all(np.isfinite(reloaded["expected_watch_s"])) and np.all(reloaded["expected_watch_s"] > 0)
    # The saved weights are the best epoch's: they reproduce its recorded validation metric, which
    # scores the ranking key (the odds), not the served value.
    loss = weighted_per_user_loss(page_ids(frame), frame["is_click"].to_numpy(), frame["watch_time_s"].to_numpy(),
                                  reloaded["odds"])
    assert loss == pytest.approx(result.validation["weighted_per_user_loss"], abs=1e-12)
    best = result.history.best
    assert best is not None and best.validation == result.validation


def test_click_baseline_loads_with_shared_features(run, data: InteractionData) -> None:
    _, result, out_dir = run
    frame = _validation_frame(result, data)
    baseline = load_ranker(out_dir / "baselines" / "click")
    assert baseline.ranking_key == "p_click"
    scores = baseline.score_frame(frame, data.users, data.videos)
    assert set(scores) == {"logit", "p_click", "expected_watch_s"}
    assert np.all((scores["p_click"] > 0) & (scores["p_click"] < 1))
    np.testing.assert_array_equal(scores["p_click"],
                                  result.baselines["click"].score_frame(frame, data.users, data.videos)["p_click"])
    # Mean predicted click rate is near the validation click rate (the bias starts at the optimum).
    assert abs(float(scores["p_click"].mean()) - float(frame["is_click"].mean())) < 0.1


def test_bias_starts_at_the_objective_optimum(run, data: InteractionData) -> None:
    _, _, out_dir = run
    training = json.loads((out_dir / "training.json").read_text())
    train = data.impressions.filter(pl.col("date") <= 20220503)
    watch, clicks = float(train["watch_time_s"].sum()), int(train["is_click"].sum())
    # wlr-corrected's bias-only optimum: [log(ΣT / (N − k)), log(k / (N − k))].
    assert training["init_bias"][0] == pytest.approx(np.log(watch / (train.height - clicks)), rel=1e-5)
    assert training["init_bias"][1] == pytest.approx(np.log(clicks / (train.height - clicks)), rel=1e-5)


def test_served_value_is_the_calibrated_odds_times_one_minus_p(run, data: InteractionData) -> None:
    _, result, out_dir = run
    training = json.loads((out_dir / "training.json").read_text())
    calibration = training["calibration"]
    # The validation day has fewer than 1000 clicks, so the constant is fitted on the training rows.
    assert calibration["rows"] == "train" and calibration["n_rows"] == result.n_train
    loaded = load_ranker(out_dir)
    scale = loaded.objective.watch_scale
    assert scale == calibration["watch_scale"]
    train = data.impressions.filter(pl.col("date") <= 20220504)
    frame = result.ranker.pipeline.add_history(train, data.videos).filter(pl.col("date") <= 20220503)
    scores = loaded.score_frame(frame, data.users, data.videos)
    np.testing.assert_allclose(scores["expected_watch_s"], scale * scores["odds"] * (1.0 - scores["p_click"]),
                               rtol=1e-5)
    # c makes the served mean equal the observed mean on the rows it was fitted on.
    assert float(scores["expected_watch_s"].mean()) == pytest.approx(float(frame["watch_time_s"].mean()), rel=1e-5)
    assert calibration["mean_ratio_before"] == pytest.approx(1.0 / scale)


def test_plain_wlr_stays_selectable(tmp_path: Path, data: InteractionData) -> None:
    config = RankerConfig.load(overrides=FAST | {"baselines.click": False, "train.epochs": 1, "objective.name": "wlr"})
    result = train_ranker(config, tmp_path, data=data)
    model = json.loads((tmp_path / "model.json").read_text())
    assert model["objective"]["name"] == "wlr" and model["ranking_key"] == "expected_watch_s"
    assert "calibration" not in json.loads((tmp_path / "training.json").read_text())
    batch = result.ranker.pipeline.transform(
        result.ranker.pipeline.add_history(data.impressions, data.videos).head(50), data.users, data.videos)
    scores = load_ranker(tmp_path).score_batch(batch)
    np.testing.assert_array_equal(scores["expected_watch_s"], scores["odds"])  # the paper's e^(Wx+b)


def test_incomplete_folder_is_refused(run, tmp_path: Path) -> None:
    _, _, out_dir = run
    with pytest.raises(RankerError, match="no model.json"):
        load_ranker(tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.json").write_text((out_dir / "model.json").read_text())
    with pytest.raises(RankerError, match="weights file model.safetensors is missing"):
        load_ranker(broken)


def test_without_validation_days_trains_the_configured_epochs(tmp_path: Path, data: InteractionData) -> None:
    config = RankerConfig.load(overrides=FAST | {"data.validation_days": 0, "baselines.click": False,
                                                 "train.epochs": 1, "objective.name": "wlr-corrected"})
    result = train_ranker(config, tmp_path, data=data)
    assert result.validation == {} and result.history.best_epoch is None and len(result.history.epochs) == 1
    assert not (tmp_path / "baselines").exists()
    training = json.loads((tmp_path / "training.json").read_text())
    assert "no validation days" in training["note"]
    scores = load_ranker(tmp_path).score_batch(
        result.ranker.pipeline.transform(
            result.ranker.pipeline.add_history(data.impressions, data.videos).head(50), data.users, data.videos))
    assert set(scores) == {"logit", "odds", "p_click", "expected_watch_s"}  # two-headed objective


def test_every_day_a_validation_day_is_an_error(tmp_path: Path, data: InteractionData) -> None:
    config = RankerConfig.load(overrides=FAST | {"data.validation_days": 4})
    with pytest.raises(RankerError, match="every training day is a validation day"):
        train_ranker(config, tmp_path, data=data)


def test_partial_train_section_keeps_the_ranker_defaults() -> None:
    config = RankerConfig.load(overrides=["train.lr=0.01", "seed=5"])
    assert config.train.lr == 0.01 and config.train.early_stopping_metric == "weighted_per_user_loss"
    assert config.train.average_last_epochs == 5 and config.data.refit
    assert config.train.seed is None and config.seed == 5
    with pytest.raises(ValueError, match="train.bacth_size"):
        RankerConfig.load(overrides=["train.bacth_size=5"])


def test_validation_without_pairs_falls_back_to_the_validation_loss(tmp_path: Path, data: InteractionData) -> None:
    # No click on the validation day: the weighted per-user loss has no pair, so it cannot stop training.
    on_validation_day = pl.col("date") == 20220504
    impressions = data.impressions.with_columns(
        pl.when(on_validation_day).then(0).otherwise(pl.col("is_click")).cast(pl.Int8).alias("is_click"),
        pl.when(on_validation_day).then(0.0).otherwise(pl.col("watch_time_s")).alias("watch_time_s"))
    no_clicks = InteractionData(impressions, data.users, data.videos)
    config = RankerConfig.load(overrides=FAST | SELECTION_ONLY | {"baselines.click": False, "train.epochs": 2})
    result = train_ranker(config, tmp_path, data=no_clicks)
    training = json.loads((tmp_path / "training.json").read_text())
    assert training["early_stopping_metric"] == "val_loss" and "no (clicked, unclicked) pair" in training["note"]
    assert np.isnan(result.validation["weighted_per_user_loss"]) and result.history.best_epoch is not None


@pytest.mark.parametrize(("override", "message"), [
    ("objective.name=wlrr", "unknown objective 'wlrr'"),
    ('objective.params={"copies": "x"}', "copies must be 'poisson' or 'round'"),
    ("model.hidden=[64, 0]", r"model.hidden.1: Input should be greater than 0"),
])
def test_bad_config_fails_at_load_time(override: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RankerConfig.load(overrides=["objective.name=wlr-resample", override])


def test_empty_frame_scores_to_empty_arrays(run, data: InteractionData) -> None:
    _, result, _ = run
    frame = _validation_frame(result, data).head(0)
    scores = result.ranker.score_frame(frame, data.users, data.videos)
    assert set(scores) == {"logit", "odds", "p_click", "expected_watch_s"} and all(len(v) == 0 for v in scores.values())



def test_refit_retrains_on_every_training_day_for_the_selected_epochs(tmp_path: Path, data: InteractionData) -> None:
    config = RankerConfig.load(overrides=FAST | {"train.epochs": 3, "train.patience": 1, "seed": 4,
                                                 "train.average_last_epochs": 1})
    assert config.data.refit  # the default
    result = train_ranker(config, tmp_path, data=data)
    training = json.loads((tmp_path / "training.json").read_text())
    selection = training["selection"]
    chosen = selection["best_epoch"]
    assert training["refit"] is True and chosen in (1, 2, 3)
    # The selection pass early-stopped on the validation day's weighted per-user loss ...
    losses = [e["validation"]["weighted_per_user_loss"] for e in selection["epochs"]]
    assert losses[chosen - 1] == min(losses)
    assert result.history.best_epoch == chosen and result.validation["weighted_per_user_loss"] == min(losses)
    assert "xauc" in result.validation  # reported beside it
    # ... and the refit trained `chosen` epochs over every training day, validation day included.
    dates = data.impressions["date"]
    n_all = int((dates <= 20220504).sum())
    assert training["n_train"] == result.n_train == n_all
    assert len(training["epochs"]) == chosen and training["epochs"][-1]["examples_seen"] == chosen * n_all
    assert training["refit_trainer"]["epochs"] == chosen and training["best_epoch"] is None
    # Constants and features come from every training day: the WLR bias-only optimum over them.
    train = data.impressions.filter(dates <= 20220504)
    watch, clicks = float(train["watch_time_s"].sum()), int(train["is_click"].sum())
    assert training["init_bias"][0] == pytest.approx(np.log(watch / (train.height - clicks)), rel=1e-5)
    clicked_videos = set(train.filter(pl.col("is_click") == 1)["video_id"].to_list())
    assert result.ranker.pipeline.vocabularies["video_id"].size == len(clicked_videos) + 1  # + OOV row
    # The click baseline is refitted the same way and shares the refitted features.
    click_training = json.loads((tmp_path / "baselines/click/training.json").read_text())
    assert click_training["n_train"] == n_all and len(click_training["epochs"]) == \
        click_training["selection"]["best_epoch"]
    # The folder reloads to the in-memory model.
    frame = _validation_frame(result, data)
    np.testing.assert_array_equal(load_ranker(tmp_path).score_frame(frame, data.users, data.videos)["logit"],
                                  result.ranker.score_frame(frame, data.users, data.videos)["logit"])


def test_refit_calibration_carries_the_selection_pass_out_of_sample_gap(tmp_path: Path) -> None:
    # Enough validation clicks (>= MIN_VALIDATION_CLICKS) that the selection pass fits c on the
    # validation day; the refit has no held-out day left, so its c is its in-sample match times the
    # selection's held-out / in-sample ratio.
    data = simulate(SimulatorConfig(n_users=300, n_videos=200, n_days=5, start_date=20220501,
                                    impressions_per_user_day=10, n_authors=40, n_music=50, n_tokens=100, seed=5,
                                    target_click_rate=0.44))
    config = RankerConfig.load(overrides=FAST | {"train.epochs": 2, "train.average_last_epochs": 1,
                                                 "baselines.click": False, "seed": 2})
    result = train_ranker(config, tmp_path, data=data)
    training = json.loads((tmp_path / "training.json").read_text())
    selection = training["selection_facts"]["calibration"]
    assert selection["rows"] == "validation" and selection["n_clicks"] >= 1000
    calibration = training["calibration"]
    assert calibration["held_out_scale_selection"] == selection["watch_scale"]
    gap = calibration["held_out_scale_selection"] / calibration["in_sample_scale_selection"]
    assert calibration["out_of_sample_gap"] == pytest.approx(gap, rel=1e-12)
    assert calibration["watch_scale"] == pytest.approx(calibration["in_sample_scale_refit"] * gap, rel=1e-12)
    assert result.ranker.objective.watch_scale == calibration["watch_scale"]
    # The refit's in-sample factor, recomputed from the saved model on every training day.
    loaded = load_ranker(tmp_path)
    train = data.impressions.filter(pl.col("date") <= 20220504)
    frame = loaded.pipeline.add_history(train, data.videos)
    served = loaded.score_frame(frame, data.users, data.videos)["expected_watch_s"]
    in_sample = float(frame["watch_time_s"].mean()) / float(np.mean(served / loaded.objective.watch_scale))
    assert in_sample == pytest.approx(calibration["in_sample_scale_refit"], rel=1e-5)
