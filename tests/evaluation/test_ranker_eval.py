"""The ranker evaluation scores ranking metrics on the ranking key, calibration on expected_watch_s."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from ytdnn.evaluation.ranker_eval import scored_metrics
from ytdnn.training.ranker import page_ids

# Page 1 (user 1, one day): A clicked (T = 10), B unclicked, C clicked (T = 30). Page 2 (user 2):
# seven unclicked impressions F scored lowest by both scores (no pair; calibration needs 10 rows).
TEST = pl.DataFrame({"user_id": [1, 1, 1] + [2] * 7, "date": [20220505] * 10, "is_click": [1, 0, 1] + [0] * 7,
                     "watch_time_s": [10.0, 0.0, 30.0] + [0.0] * 7})
# The two orders differ on page 1: by odds A > B > C, by the served value C > B > A.
ODDS = np.array([5.0, 2.0, 1.0] + [0.5] * 7)
SERVED = np.array([1.0, 3.0, 4.0] + [0.5] * 7)
SCORES = {"odds": ODDS, "expected_watch_s": SERVED, "p_click": np.full(10, 0.5), "logit": np.log(ODDS)}


def test_ranking_metrics_score_the_ranking_key_and_calibration_the_served_value() -> None:
    metrics = scored_metrics(TEST, page_ids(TEST), SCORES, "odds")
    # Pairs (clicked, unclicked): (A, B) weight 10, (C, B) weight 30. By odds only (C, B) is
    # mispredicted (s_B = 2 >= s_C = 1): loss 30 / 40. By the served value only (A, B): 10 / 40.
    assert metrics["ranking_key"] == "odds"
    assert metrics["weighted_per_user_loss"] == pytest.approx(0.75)
    assert metrics["by_expected_watch_s_weighted_per_user_loss"] == pytest.approx(0.25)
    # XAUC over the 17 pairs with different T: (A, C) and A, C each against the 8 rows with T = 0.
    # By odds: (A, C) wrong, A beats all 8, C beats the 7 F but not B: 15/17. By served: 16/17.
    assert metrics["xauc"] == pytest.approx(15 / 17)
    assert metrics["by_expected_watch_s_xauc"] == pytest.approx(16 / 17)
    # Calibration is the served value's: mean 1.15 over mean T 4 (the odds' own mean is 1.15 too).
    assert metrics["mean_ratio"] == pytest.approx(1.15 / 4)
    assert metrics["odds_mean_ratio"] == pytest.approx(1.15 / 4)
    assert metrics["rmse"] == pytest.approx(np.sqrt((9 ** 2 + 3 ** 2 + 26 ** 2 + 7 * 0.5 ** 2) / 10))


def test_a_model_ranked_by_its_served_value_has_no_by_served_figures() -> None:
    served_only = {"expected_watch_s": SCORES["expected_watch_s"], "odds": SCORES["expected_watch_s"],
                   "logit": np.log(SCORES["expected_watch_s"])}  # plain WLR: odds = served
    metrics = scored_metrics(TEST, page_ids(TEST), served_only, "expected_watch_s")
    assert metrics["weighted_per_user_loss"] == pytest.approx(0.25)
    assert not any(key.startswith("by_expected_watch_s_") for key in metrics) and "odds_mean_ratio" not in metrics


def test_a_data_dir_given_at_evaluation_replaces_the_one_the_run_recorded(tmp_path) -> None:
    from ytdnn.data.errors import DataError
    from ytdnn.evaluation.ranker_eval import read_run_config
    from ytdnn.training.ranker import RankerConfig

    recorded, moved = tmp_path / "recorded", tmp_path / "moved"
    recorded.mkdir(), moved.mkdir()
    run = tmp_path / "run"
    run.mkdir()
    RankerConfig.load(overrides={"data.data_dir": str(recorded)}).save(run / "config.json")
    assert read_run_config(run).data.data_dir == str(recorded)
    assert read_run_config(run, moved).data.data_dir == str(moved)
    with pytest.raises(DataError, match="does not exist"):
        read_run_config(run, tmp_path / "nowhere")


def test_label_predictions_attaches_the_logs_labels_row_for_row_and_refuses_other_rows() -> None:
    from ytdnn.evaluation.ranker_eval import label_predictions
    from ytdnn.training.ranker import RankerError

    # The log out of row order, one day before the predicted ones, and a duplicated impression.
    log = pl.DataFrame({"row_id": [3, 0, 2, 1], "user_id": [1, 9, 1, 1], "video_id": [5, 4, 5, 6],
                        "time_ms": [20, 0, 20, 10], "date": [20220505, 20220504, 20220505, 20220505],
                        "hourmin": [100, 0, 0, 0], "is_click": [0, 1, 1, 1], "watch_time_s": [0.0, 9.0, 3.5, 2.0]})
    predictions = pl.DataFrame({"user_id": [1, 1, 1], "video_id": [6, 5, 5], "time_ms": [10, 20, 20],
                                "date": [20220505] * 3, "hourmin": [0, 0, 100], "expected_watch_s": [1.0, 2.0, 3.0]})
    labelled = label_predictions(predictions, log)
    assert labelled["is_click"].to_list() == [1, 1, 0] and labelled["watch_time_s"].to_list() == [2.0, 3.5, 0.0]
    with pytest.raises(RankerError, match=r"p.parquet: rows do not match the log's rows for dates 20220505"):
        label_predictions(predictions.reverse(), log, source="p.parquet")
