"""The held-out calibration constant (ytdnn.training.calibration) on hand-made cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from ytdnn.features.layout import RankingBatch
from ytdnn.training.calibration import MIN_VALIDATION_CLICKS, calibration_rows, mean_match_factor
from ytdnn.training.losses import ObjectiveError, make_objective
from ytdnn.training.ranker import fit_calibration


class FixedLogits(nn.Module):
    """A 'network' whose outputs are the batch's dense columns (the two heads' logits)."""

    n_heads = 2

    def forward(self, batch: RankingBatch) -> torch.Tensor:
        return batch.dense


def batch_of(logits: list[list[float]], is_click: list[int], watch: list[float]) -> RankingBatch:
    n = len(logits)
    return RankingBatch(torch.zeros((n, 0), dtype=torch.long), [], torch.tensor(logits, dtype=torch.float64),
                        torch.tensor(is_click, dtype=torch.float64), torch.tensor(watch, dtype=torch.float64))


# Odds 10, 20, 30, 40 and p̂ 0.5, 0.5, 0.75, 0.75: served odds·(1 − p̂) = 5, 10, 7.5, 10 (mean 8.125).
# The observed T has mean 16.25, so c = 2 exactly.
LOGITS = [[math.log(10.0), 0.0], [math.log(20.0), 0.0], [math.log(30.0), math.log(3.0)],
          [math.log(40.0), math.log(3.0)]]
VALIDATION = batch_of(LOGITS, [0, 1, 0, 0], [0.0, 65.0, 0.0, 0.0])
# Training rows: served 5 and 10 (mean 7.5) against mean T 30: c = 4 if the training rows are used.
TRAIN = batch_of(LOGITS[:2], [1, 0], [60.0, 0.0])


def test_mean_match_factor_by_hand() -> None:
    assert mean_match_factor([5.0, 10.0, 7.5, 10.0], [0.0, 65.0, 0.0, 0.0]) == 2.0
    assert mean_match_factor(np.array([1.0, 3.0]), torch.tensor([4.0, 4.0])) == 2.0
    with pytest.raises(ObjectiveError, match="not a finite positive constant"):
        mean_match_factor([0.0, 0.0], [1.0, 2.0])
    with pytest.raises(ObjectiveError, match="row 1 is inf"):
        mean_match_factor([1.0, math.inf], [1.0, 2.0])
    with pytest.raises(ObjectiveError, match="non-empty 1-D arrays of equal length"):
        mean_match_factor([1.0], [1.0, 2.0])


def test_rows_are_the_validation_days_when_they_have_enough_clicks() -> None:
    assert MIN_VALIDATION_CLICKS == 1000
    assert calibration_rows(VALIDATION, TRAIN, min_validation_clicks=1) == ("validation", VALIDATION)
    assert calibration_rows(VALIDATION, TRAIN, min_validation_clicks=2) == ("train", TRAIN)
    assert calibration_rows(None, TRAIN) == ("train", TRAIN)


def test_fit_calibration_sets_the_exact_constant_and_serves_c_odds_one_minus_p() -> None:
    objective = make_objective("wlr-corrected")
    objective.set_watch_scale(7.0)  # a stale constant is cleared before fitting, not compounded
    facts = fit_calibration(objective, FixedLogits(), TRAIN, VALIDATION, min_validation_clicks=1)
    assert facts["rows"] == "validation" and facts["n_rows"] == 4 and facts["n_clicks"] == 1
    assert objective.watch_scale == pytest.approx(2.0, rel=1e-12) and facts["mean_ratio_before"] == pytest.approx(0.5)
    served = objective.predict(VALIDATION.dense)["expected_watch_s"]
    assert served.tolist() == pytest.approx([10.0, 20.0, 15.0, 20.0], rel=1e-12)
    assert float(served.mean()) == pytest.approx(float(VALIDATION.watch_time_s.mean()), rel=1e-12)
    # Too few validation clicks: the training rows give c = 30 / 7.5 = 4.
    facts = fit_calibration(objective, FixedLogits(), TRAIN, VALIDATION, min_validation_clicks=2)
    assert facts["rows"] == "train" and objective.watch_scale == pytest.approx(4.0, rel=1e-12)
