r"""Calibration in the large on held-out rows: one multiplicative constant on the served value.

A model whose served value has the right *shape* (its optimum is E[T|x]) can still be off in
its overall level: Adam leaves the output bias drifting by several percent from epoch to
epoch, and a two-headed product such as ``wlr-corrected``'s odds · (1 − p̂) compounds both
heads' level errors. One constant fixes the level without touching any ranking:

.. math:: c = \frac{\operatorname{mean}_{i \in H} T_i}{\operatorname{mean}_{i \in H} \hat s_i}

with :math:`\hat s_i` the served ``expected_watch_s`` before scaling and *H* the held-out rows:
the validation day(s) when they hold at least ``min_validation_clicks`` clicked impressions,
else the training rows. Held out because a network's outputs on its own training rows are
optimistic (id embeddings memorise labels); the training rows only when the validation days
are too small to pin the level (its relative noise is about 1/sqrt(clicks), e.g. CTR 1% on
the simulator). After scaling, mean c·ŝ = mean T on *H* exactly.

Used by the ranker job (:func:`ytdnn.training.ranker.train_ranker`, for objectives whose
``calibrates`` is true) and by the weighted-LR study (its "× held-out mean match" variants).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import torch

from ytdnn.features.layout import RankingBatch
from ytdnn.training.losses import ObjectiveError

__all__ = ["MIN_VALIDATION_CLICKS", "calibration_rows", "fit_watch_scale", "mean_match_factor"]

MIN_VALIDATION_CLICKS: int = 1000
"""Clicked validation impressions needed to fit the constant there (±3% level noise); else train rows."""


def calibration_rows(validation: RankingBatch | None, train: RankingBatch,
                     min_validation_clicks: int = MIN_VALIDATION_CLICKS) -> tuple[str, RankingBatch]:
    """``("validation", validation)`` when it has at least ``min_validation_clicks`` clicks, else
    ``("train", train)``: where the served mean is matched (see the module docstring)."""
    if min_validation_clicks < 1:
        raise ValueError(f"min_validation_clicks must be >= 1, got {min_validation_clicks}")
    if validation is not None and len(validation) > 0 and int(validation.is_click.sum()) >= min_validation_clicks:
        return "validation", validation
    return "train", train


def mean_match_factor(served: npt.ArrayLike | torch.Tensor, watch_time_s: npt.ArrayLike | torch.Tensor) -> float:
    """mean(watch_time_s) / mean(served), both over the same rows; raises when it is not a finite
    positive number (no rows, no watch time, a served value that is 0, negative or not finite)."""
    served_np = np.asarray(served.detach().cpu().numpy() if isinstance(served, torch.Tensor) else served,
                           dtype=np.float64)
    watch_np = np.asarray(watch_time_s.detach().cpu().numpy() if isinstance(watch_time_s, torch.Tensor)
                          else watch_time_s, dtype=np.float64)
    if served_np.ndim != 1 or watch_np.ndim != 1 or len(served_np) != len(watch_np) or len(served_np) == 0:
        raise ObjectiveError(f"calibration: served and watch_time_s must be non-empty 1-D arrays of equal length; "
                             f"got shapes {served_np.shape} and {watch_np.shape}")
    if not np.isfinite(served_np).all():
        row = int(np.flatnonzero(~np.isfinite(served_np))[0])
        raise ObjectiveError(f"calibration: served expected_watch_s row {row} is {served_np[row]}; expected finite")
    mean_served = float(served_np.mean())
    mean_watch = float(watch_np.mean())
    factor = mean_watch / mean_served if mean_served > 0 else math.nan
    if not (math.isfinite(factor) and factor > 0):
        raise ObjectiveError(f"calibration: mean watch_time_s {mean_watch:g} over mean served {mean_served:g} "
                             f"is not a finite positive constant")
    return factor


def fit_watch_scale(served_on_rows: npt.ArrayLike | torch.Tensor, rows: RankingBatch) -> float:
    """The calibration constant c for the served values ``served_on_rows`` of ``rows`` (unscaled)."""
    return mean_match_factor(served_on_rows, rows.watch_time_s)
