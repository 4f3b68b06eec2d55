"""End to end on a slice of the real KuaiRand-Pure window: train → evaluate → predict → CLI errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from tests.conftest import requires_real_data
from ytdnn.cli import app
from ytdnn.data.schema import InteractionData
from ytdnn.evaluation.metrics import weighted_per_user_loss, xauc
from ytdnn.evaluation.ranker_eval import evaluate_ranker_run, predict_split
from ytdnn.training.ranker import RankerConfig, train_ranker


@pytest.fixture(scope="module")
def kuairand_slice(kuairand) -> InteractionData:
    # One user in eight: every impression of those users, all 14 days.
    return kuairand.filter_impressions(pl.col("user_id") % 8 == 0, name="kuairand-slice")


@requires_real_data
def test_train_evaluate_predict_on_real_slice(tmp_path: Path, kuairand_slice: InteractionData) -> None:
    config = RankerConfig.load(overrides=["train.epochs=1", "model.hidden=[64]", "train.progress=false"])
    run = tmp_path / "run"
    train_ranker(config, run, data=kuairand_slice)
    for name in ("config.json", "model.safetensors", "model.json", "training.json", "features",
                 "baselines/click/model.json"):
        assert (run / name).exists(), name
    metrics = evaluate_ranker_run(run, data=kuairand_slice)
    assert set(metrics["methods"]) == {"ranker (wlr-corrected)", "click", "popularity"}
    ranker = metrics["methods"]["ranker (wlr-corrected)"]
    assert metrics["ranking_key"] == ranker["ranking_key"] == "odds"
    assert 0.0 < ranker["weighted_per_user_loss"] < 0.5 and 0.55 < ranker["xauc"] < 1.0
    # The paper's odds over-predict the mean watch time on this data (CTR ~0.44): odds = E[T]/(1-p);
    # the served value is calibrated on the validation day.
    assert ranker["odds_mean_ratio"] > 1.3 and 0.8 < ranker["mean_ratio"] < 1.25
    assert json.loads((run / "metrics.json").read_text())["test_rows"] == metrics["test_rows"]
    assert (run / "report.md").read_text().count("| popularity |") == 1
    assert (run / "calibration.png").stat().st_size > 10_000

    predictions = predict_split(run, split="test", out=tmp_path / "pred.parquet", data=kuairand_slice)
    test = kuairand_slice.impressions.filter(pl.col("date") >= 20220505)
    assert predictions.height == test.height  # duplicates kept
    assert predictions["time_ms"].to_list() == test["time_ms"].to_list()  # the log's order
    assert {"expected_watch_s", "logit", "odds", "p_click", "rank_score"} <= set(predictions.columns)
    scale = metrics["watch_scale"]
    np.testing.assert_allclose(predictions["odds"].to_numpy(), np.exp(predictions["logit"].to_numpy()), rtol=1e-6)
    np.testing.assert_allclose(predictions["expected_watch_s"].to_numpy(),
                               scale * predictions["odds"].to_numpy() * (1 - predictions["p_click"].to_numpy()),
                               rtol=1e-5)
    np.testing.assert_array_equal(predictions["rank_score"].to_numpy(), predictions["odds"].to_numpy())
    # The metrics recomputed from the predict output equal the evaluation's: ranking metrics on the
    # rank score, calibration on expected_watch_s, and the ranking by expected_watch_s reported beside.
    pages = (test["user_id"] * 100_000_000 + test["date"].cast(pl.Int64)).to_numpy()
    is_click, watch = test["is_click"].to_numpy(), test["watch_time_s"].to_numpy()
    score = predictions["rank_score"].to_numpy()
    served = predictions["expected_watch_s"].to_numpy()
    assert weighted_per_user_loss(pages, is_click, watch, score) == pytest.approx(ranker["weighted_per_user_loss"])
    assert xauc(watch, score) == pytest.approx(ranker["xauc"])
    assert weighted_per_user_loss(pages, is_click, watch, served) == pytest.approx(
        ranker["by_expected_watch_s_weighted_per_user_loss"])
    assert xauc(watch, served) == pytest.approx(ranker["by_expected_watch_s_xauc"])
    assert float(served.mean() / watch.mean()) == pytest.approx(ranker["mean_ratio"])


def test_cli_reports_bad_config_without_a_traceback(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["train", "ranker", "--out", str(tmp_path / "r"), "--set", "train.epochz=3"])
    assert result.exit_code == 2
    assert "train.epochz" in result.output and "Traceback" not in result.output


def test_cli_reports_bad_data_row_with_file_line_column(tmp_path: Path) -> None:
    data = tmp_path / "KuaiRand-Pure" / "data"
    data.mkdir(parents=True)
    (data / "log_standard_4_25_to_5_08_pure.csv").write_text(
        "user_id,video_id,date,hourmin,time_ms,is_click,play_time_ms,tab\n"
        "1,2,20220425,0,1650812741436,1,1000,1\n"
        "1,abc,20220425,0,1650812741437,1,1000,1\n")
    (data / "user_features_pure.csv").write_text("user_id\n1\n")
    (data / "video_features_basic_pure.csv").write_text("video_id,author_id,music_id,video_duration,tag\n2,1,1,1000,1\n")
    result = CliRunner().invoke(app, ["data", "info", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "log_standard_4_25_to_5_08_pure.csv, line 3, column 'video_id'" in result.output
    assert "Traceback" not in result.output
    skipped = CliRunner().invoke(app, ["data", "info", "--data-dir", str(tmp_path), "--on-bad-rows", "skip"])
    assert skipped.exit_code == 0 and '"skipped_rows": 1' in skipped.output


def test_cli_predict_refuses_a_run_that_is_not_a_ranker_run(tmp_path: Path) -> None:
    run = tmp_path / "retrieval-run"
    run.mkdir()
    (run / "config.json").write_text('{"job": "RetrievalConfig", "config": {}}')
    result = CliRunner().invoke(app, ["predict", str(run), "--out", str(tmp_path / "p.parquet")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "a RetrievalConfig run; `ytdnn predict` scores ranker runs" in result.output
    assert not (tmp_path / "p.parquet").exists()
