"""The feature-group ablation on a small simulated log: rows, and how a refitted run's rows are trained."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ytdnn.data.simulator import SimulatorConfig, simulate
from ytdnn.experiments.ablation import ABLATION_ROWS, run_feature_ablation
from ytdnn.training.ranker import RankerConfig, train_ranker

SIM = SimulatorConfig(n_users=100, n_videos=150, n_days=5, start_date=20220501, impressions_per_user_day=8,
                      n_authors=30, n_music=40, n_tokens=80, seed=5)
FAST = {"model.hidden": [8], "train.epochs": 2, "train.batch_size": 256, "train.progress": False,
        "train.num_threads": 1, "baselines.click": False, "seed": 2}


def test_rows_of_a_refitted_run_select_their_epochs_and_refit_on_every_training_day(tmp_path: Path) -> None:
    data = simulate(SIM)
    run_dir = tmp_path / "run"
    result = train_ranker(RankerConfig.load(overrides=FAST), run_dir, data=data)
    epochs = len(json.loads((run_dir / "training.json").read_text())["epochs"])
    assert epochs == result.history.best_epoch  # the refit ran the selected epoch count

    payload = run_feature_ablation(run_dir, data=data)
    assert [row["name"] for row in payload["rows"]] == [name for name, _ in ABLATION_ROWS]
    assert payload["rows"][-1]["model_dir"] == "."  # the run itself is the full-set row
    n_train_days = int((data.impressions["date"] <= 20220504).sum())
    for row in payload["rows"][:-1]:
        training = json.loads((run_dir / row["model_dir"] / "training.json").read_text())
        # Each row early-stops on the validation day by itself, then refits on every training day.
        assert training["refit"] is True and training["validation_dates"] == [20220504]
        assert training["n_train"] == n_train_days
        assert len(training["epochs"]) == training["selection"]["best_epoch"] == row["best_epoch"]
        config = RankerConfig.read(run_dir / row["model_dir"] / "config.json")
        assert sorted(config.features.groups) == sorted(dict(ABLATION_ROWS)[row["name"]])
        assert 0 <= row["weighted_per_user_loss"] <= 1 and 0 <= row["xauc"] <= 1
