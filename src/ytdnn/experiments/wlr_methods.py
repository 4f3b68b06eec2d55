r"""The weighted-LR methods study: when is e^(Wx+b) the expected watch time?

``ytdnn experiment wlr-methods`` answers two users' questions with measurements:

1. Training weighted logistic regression (WLR) by **resampling** positives in proportion to
   their watch time versus by **weighting the gradient**: do the results differ, and how?
2. How good is the paper's reading of the odds as expected watch time, and what to serve
   when it is poor?

**The theory the study makes visible.** With clicked impressions weighted by their watch time T
and unclicked ones by 1, the WLR optimum at x has odds

.. math:: e^{z^*(x)} = \frac{E[T\,|\,x]}{1 - p(x)},

E[T|x] counting unclicked impressions as 0 and p(x) the click probability. On a dataset with
ground truth (the simulator) a model that reaches that optimum therefore serves, on average,

.. math:: \text{theory ratio} = \frac{\operatorname{mean}_i\, E_i / (1 - p_i)}{\operatorname{mean}_i\, E_i}

times the true mean — a relative bias of theory ratio − 1, which is p/(1−p) when p is constant
and more when p varies, because the items with the highest click rate carry both the largest
E[T] and the largest factor. :func:`wlr_theory_ratio` computes it.

**Design.** A *world* is one dataset: a simulator log (one family × click rate × seed), or the
KuaiRand split. Two simulator families: ``learnable`` worlds, whose p(x) and E[T|click, x]
depend only on the video and the tab, with a small network — a model can reach the population
optimum there, so they test the theory — and ``simulator`` worlds, personalised (a user × video
affinity) and trained with the ranker's own network and features — what the product's training
gives. A world's features (the ranker's pipeline, leak-free history) are fitted once on the
training days minus the validation day, exactly as :func:`ytdnn.training.ranker.train_ranker`
does; then every method is trained on it with the network of ``RankerConfig()`` defaults plus
``config.ranker`` (and the family's) overrides, the same initialisation seed, and the **same
budget of examples seen**: ``epochs`` × training rows, counted after resampling's expansion (its
c = k/ΣT makes the expected expanded size equal the source size). Early stopping is off so every
method spends the whole budget; the best epoch by the ranker's early-stopping metric (the
validation weighted per-user loss) is restored, as the ranker job does. Simulator worlds differ
by seed (the simulator's and the training seed are the same number), KuaiRand runs by training
seed. Each model is scored as trained, after :func:`refit_output_bias` on the training rows (the
objective's optimum over the overall level: ``refit_`` metrics), and with its served value times
the held-out mean-matching constant (``recal_`` metrics).

**Measured on the test days** (date ≥ ``test_start``), per run:

- against the truth (simulator): ``mean_ratio_truth`` = mean served / mean E[T|x],
  ``relative_calibration_error_truth`` = Σ_b (n_b/N)·|mean served_b − mean E_b| / mean E over
  equal-count deciles of the served value, ``rmse_truth``, and ``ndcg_truth`` = NDCG@k of the
  ranking score with graded relevance E[T|x] on each (user, date) page
  (:func:`graded_ndcg_at_k`);
- against the observed labels (every dataset): weighted per-user loss, XAUC, XAUC among
  clicked, GAUC, XGAUC, RMSE, MAE, mean ratio and relative calibration error
  (:func:`ytdnn.evaluation.metrics.ranking_metrics`, definitions in ``docs/metrics.md``);
- the raw odds (e^z, divided by c for resampling) where the objective has them
  (``odds_mean_ratio*``), and, when the odds are not the ranking score (``wlr-corrected``),
  the ranking metrics of ranking by the odds (``by_odds_*``);
- learning curves: after every epoch, on the validation day, the weighted per-user loss, the
  mean ratio and relative calibration error of the served value (against the truth on the
  simulator, against T on real data) and, on the simulator, NDCG@k;
- training wall time (including the per-epoch validation).

Everything is written under ``out``: ``<stem>.md`` (the report), ``<stem>_results.json``
(every run, the per-world facts, the summaries and the checks), and the plots
``<stem>_bias_vs_ctr.png``, ``<stem>_learning_curves.png`` and
``<stem>_kuairand_calibration.png``; ``<stem>`` is ``wlr_methods`` (``wlr_methods_quick`` with
``--quick``). The results file is rewritten after every run; a rerun reuses every stored run whose
fingerprint (world, ranker config, method, seed, budget) matches, so changing part of the config
retrains only that part (``resume = false`` starts afresh).
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ytdnn.config import JobConfig
from ytdnn.data.schema import InteractionData
from ytdnn.data.simulator import SimulatorConfig, simulate
from ytdnn.data.sources import load_dataset
from ytdnn.data.split import DateSplit
from ytdnn.evaluation.metrics import (
    MetricInputError,
    calibration,
    gauc,
    ranking_metrics,
    rmse,
    weighted_per_user_loss,
    weighted_per_user_loss_details,
)
from ytdnn.features.layout import FeatureLayout, RankingBatch
from ytdnn.features.ranking import RankingFeaturePipeline
from ytdnn.models.ranking import RankingNet
from ytdnn.training.calibration import calibration_rows, mean_match_factor
from ytdnn.training.losses import RANKING_OBJECTIVES, RankingObjective, check_objective_name, make_objective
from ytdnn.training.ranker import WEIGHTED_PER_USER_LOSS, RankerConfig, page_ids
from ytdnn.training.trainer import VALIDATION_LOSS, MetricFn, Trainer, predict_outputs, torch_threads
from ytdnn.utils.io import atomic_write_text, atomic_write_with, read_json

__all__ = [
    "DEFAULT_METHODS",
    "DEFAULT_SIMULATOR_SETTINGS",
    "LEARNABLE_RANKER",
    "LEARNABLE_SIMULATOR_SETTINGS",
    "DEFAULT_CRITERIA",
    "KuaiRandStudy",
    "MethodSpec",
    "PreparedWorld",
    "SimulatorStudy",
    "WlrMethodsConfig",
    "WlrMethodsError",
    "choose_default",
    "graded_ndcg_at_k",
    "prepare_world",
    "recalibration_rows",
    "refit_output_bias",
    "requirement_checks",
    "default_candidates",
    "run_wlr_methods",
    "summarise_runs",
    "train_method",
    "wlr_theory_ratio",
    "with_label_noise_removed",
]

RESULTS_FORMAT = "ytdnn-wlr-methods-v1"
KUAIRAND = "kuairand"
SIMULATOR = "simulator"
"""The family of personalised simulator worlds, trained with the ranker's own network."""
LEARNABLE = "learnable"
"""The family of simulator worlds whose p(x) the network can learn (the theory at the optimum)."""
REFERENCE_METHOD = "wlr"
REFIT_PREFIX = "refit_"
"""Metrics of the model after :func:`refit_output_bias` carry this prefix."""
REFIT_SUFFIX = " + bias refit"
RECAL_PREFIX = "recal_"
"""Metrics of the served value times the held-out mean-matching constant carry this prefix."""
RECAL_SUFFIX = " × held-out mean match"
"""The paper's method: the default is judged against its weighted per-user loss."""

CITATION = ("Data: KuaiRand (Chongming Gao et al., \"KuaiRand: An Unbiased Sequential Recommendation Dataset "
            "with Randomly Exposed Videos\", CIKM 2022), CC BY-SA 4.0.")


class WlrMethodsError(ValueError):
    """The study cannot run as configured (bad method list, empty world, missing truth); says why."""


# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------


class MethodSpec(BaseModel):
    """One trained method: a ranking objective with its parameters, under a unique label."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    label: str = Field(min_length=1)
    objective: str
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("objective")
    @classmethod
    def _known(cls, name: str) -> str:
        return check_objective_name(name)

    @model_validator(mode="after")
    def _buildable(self) -> MethodSpec:
        make_objective(self.objective, **self.params)  # bad parameters fail at load time
        return self

    @property
    def is_wlr_family(self) -> bool:
        return self.objective.startswith("wlr")


DEFAULT_METHODS: tuple[MethodSpec, ...] = (
    MethodSpec(label="wlr", objective="wlr"),
    MethodSpec(label="wlr-resample", objective="wlr-resample"),  # Poisson(c·T) copies
    MethodSpec(label="wlr-resample-round", objective="wlr-resample", params={"copies": "round"}),
    MethodSpec(label="wlr-exact", objective="wlr-exact"),
    # The study's wlr-corrected ranks by its served value and is not calibrated by the objective
    # (its "× held-out mean match" and "ranked by odds" variants are computed from the same run);
    # the ranker's default wlr-corrected is rank_by="odds" with that calibration.
    MethodSpec(label="wlr-corrected", objective="wlr-corrected",
               params={"rank_by": "expected_watch_s", "calibrate": False}),
    MethodSpec(label="poisson", objective="poisson"),
    MethodSpec(label="mse", objective="mse"),
    MethodSpec(label="log-mse", objective="log-mse"),
    MethodSpec(label="click-only", objective="click-only"),  # `click` is the same objective
)

DEFAULT_SIMULATOR_SETTINGS: dict[str, Any] = {
    "n_users": 1000,
    "n_videos": 1000,
    # Click logit: most of its variance per video (item effect std 0.75, tab 0.5) and a weak user ×
    # video affinity (0.5 instead of 3), no drift of a video's click rate over the days. Why:
    # - the WLR theory factor mean(E/(1−p))/mean(E) counts p(x) at full resolution, but a model
    #   can only reach the factor for the part of p(x) it learns. With the simulator's default
    #   scale the factor at CTR 0.44 is ≈ 9×, carried by the ≈ 3% of impressions with p > 0.95,
    #   and a trained WLR reaches ≈ 2–3×: the study would measure the affinity's learnability,
    #   not the objectives. Here the factor is ≈ 2.15× at CTR 0.44 (≈ 2.06× with p known per
    #   video only), in the range KuaiRand shows (≈ 2.2× from per-video click rates alone).
    # - a drift of p over the days (trend_click_weight) moves the test days' truth away from
    #   anything learnt on the training days and biases every objective alike.
    "taste_strength": 0.5,
    "item_effect_std": 0.75,
    "tab_click_effect": 0.5,
    "hour_click_amplitude": 0.1,
    "trend_click_weight": 0.0,
}

LEARNABLE_SIMULATOR_SETTINGS: dict[str, Any] = {
    # p(x) and E[T | click, x] depend only on what the network sees — the video (its id and
    # duration) and the tab — and every video is shown often (uniform exposure, 100 videos, each
    # ~800 times in training), so a trained model can reach the population optimum and the theory
    # applies to what it learns.
    "n_users": 400, "n_videos": 100, "n_days": 14, "impressions_per_user_day": 20.0,
    "taste_strength": 0.0, "hour_click_amplitude": 0.0, "trend_click_weight": 0.0, "popularity_skew": 0.0,
    "popularity_drift": 0.0, "item_effect_std": 0.7, "tab_click_effect": 1.0, "watch_sigma": 0.5,
    "duration_sigma": 0.3, "tokens_per_impression": 0.0,
}
LEARNABLE_RANKER: dict[str, Any] = {"model.hidden": [32], "features.groups": ["ids", "context", "video_stats"]}
"""The learnable worlds' network: small, and only the features p(x) depends on (plus ids)."""

STUDY_TRAINING: dict[str, Any] = {"train.epochs": 3, "train.average_last_epochs": 1, "data.refit": False}
"""The study's training, pinned rather than taken from the ranker's defaults: a budget of 3 epochs,
the weights of the best epoch as they are (no epoch-end averaging) and no refit on the validation
days. The study compares the objectives' *optima* at an equal budget; averaging and refitting are
the ranker's tuning for KuaiRand's ranking metrics (README, "Ranker tuning") and would blur that."""

_NO_OP_SETTINGS: dict[str, dict[str, Any]] = {
    "train": {"weight_decay_by_prefix": {}, "lr_scale_by_prefix": {}, "decoupled_weight_decay": False,
              "average_last_epochs": 1, "lr_schedule": "constant"},
    "data": {"refit": False},
}
"""Ranker settings added after runs were stored, at the values that change nothing: left out of the
fingerprints, so stored runs stay valid while those settings stay off."""


def _fingerprint_view(ranker_config: RankerConfig) -> dict[str, Any]:
    """The ranker config as fingerprints see it: :data:`_NO_OP_SETTINGS` at their no-op values dropped."""
    tree = ranker_config.model_dump(mode="json")
    for section, settings in _NO_OP_SETTINGS.items():
        for key, value in settings.items():
            if tree.get(section, {}).get(key, value) == value:
                tree.get(section, {}).pop(key, None)
    return tree


_QUICK_DEFAULTS: dict[str, Any] = {
    "seeds": [0, 1],
    "epochs": 3,
    # min_expected_clicks off: the 1% world stays at ~1,100 clicks (noisier, 4.5× less to train) so
    # the quick run keeps its few minutes.
    "learnable": {"click_rates": [0.01, 0.44], "learning_curve_click_rates": [0.44], "min_expected_clicks": None},
    "simulator": {
        "click_rates": [0.44],
        "learning_curve_click_rates": [0.44],
        "settings": DEFAULT_SIMULATOR_SETTINGS | {"n_users": 300, "n_videos": 300},
    },
    "kuairand": {"seeds": [0], "methods": ["wlr", "wlr-resample", "wlr-exact", "wlr-corrected", "poisson"]},
}


DEFAULT_MIN_EXPECTED_CLICKS = 5000
"""Clicked impressions a simulator world expects at least (≈ the 5% worlds'); lower click rates get
more impressions (:meth:`SimulatorStudy.settings_for`)."""


def _merge_under(defaults: Mapping[str, Any], tree: Mapping[str, Any]) -> dict[str, Any]:
    """``tree`` with ``defaults`` filled in where it has no value (recursively for sections)."""
    out = dict(defaults)
    for key, value in tree.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping) and key not in ("settings", "ranker"):
            out[key] = _merge_under(out[key], value)
        else:
            out[key] = value
    return out


class SimulatorStudy(BaseModel):
    """One family of simulator worlds: one world per (click rate, seed), all with ``settings``."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    click_rates: list[float] = Field(default_factory=lambda: [0.01, 0.05, 0.2, 0.44, 0.7],
                                     description="target average click rates, one world each per seed")
    settings: dict[str, Any] = Field(default_factory=lambda: dict(DEFAULT_SIMULATOR_SETTINGS),
                                     description="SimulatorConfig fields (all but target_click_rate and seed)")
    learning_curve_click_rates: list[float] = Field(default_factory=lambda: [0.05, 0.44],
                                                    description="click rates whose learning curves are plotted")
    ranker: dict[str, Any] = Field(default_factory=dict,
                                   description="dotted RankerConfig overrides for these worlds, over the study's")
    min_expected_clicks: int | None = Field(
        DEFAULT_MIN_EXPECTED_CLICKS, ge=1,
        description="a world whose settings expect fewer clicked impressions (n_users · n_days · "
                    "impressions_per_user_day · click rate) gets impressions_per_user_day scaled up to expect "
                    "this many; None = the settings as given at every click rate")

    def settings_for(self, click_rate: float) -> dict[str, Any]:
        """The simulator settings of the worlds at ``click_rate``: ``settings``, with
        ``impressions_per_user_day`` raised so the log expects at least ``min_expected_clicks`` clicks.

        Why: the mean watch time's sampling noise is ≈ 1/sqrt(clicks) (heavy-tailed T, more), so at
        CTR 1% the settings that give the 5% world ≈ 5,600 clicks give ≈ 1,100 and every model
        inherits a ±5–8% deviation of its training labels from the truth — the size of the effect
        judged. Scaling the impressions with 1/CTR up to a click target makes the worlds comparable.
        Worlds that already expect enough clicks keep ``settings`` unchanged (and their fingerprints).
        """
        settings = dict(self.settings)
        if self.min_expected_clicks is None:
            return settings
        defaults = SimulatorConfig.model_fields
        per_user_day = float(settings.get("impressions_per_user_day",
                                          defaults["impressions_per_user_day"].default))
        n_users = int(settings.get("n_users", defaults["n_users"].default))
        n_days = int(settings.get("n_days", defaults["n_days"].default))
        expected = n_users * n_days * per_user_day * click_rate
        if expected < self.min_expected_clicks:
            # Rounded up to 3 significant digits so the settings read well in the report.
            needed = per_user_day * self.min_expected_clicks / expected
            digits = 2 - int(math.floor(math.log10(needed)))
            settings["impressions_per_user_day"] = math.ceil(needed * 10 ** digits) / 10 ** digits
        return settings

    @field_validator("click_rates")
    @classmethod
    def _rates(cls, rates: list[float]) -> list[float]:
        if not rates:
            raise ValueError("click_rates: give at least one click rate")
        if len(set(rates)) != len(rates):
            raise ValueError(f"click_rates repeat a value: {rates}")
        for rate in rates:
            if not 0.0 < rate < 1.0:
                raise ValueError(f"click_rates: every rate must be in (0, 1), got {rate}")
        return sorted(rates)

    @model_validator(mode="after")
    def _buildable(self) -> SimulatorStudy:
        for key in ("target_click_rate", "seed"):
            if key in self.settings:
                raise ValueError(f"settings.{key}: set by the study (click_rates, seeds), not in settings")
        for rate in self.click_rates:
            SimulatorConfig(**self.settings_for(rate), target_click_rate=rate)  # unknown or bad fields fail here
        return self


class KuaiRandStudy(BaseModel):
    """The real-data part: the fixed KuaiRand split of the ranker config."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    dataset: str = Field("kuairand-pure", description="'kuairand-pure' or a dataset folder")
    data_dir: str | None = Field(None, description="data directory (default: $YTDNN_DATA_DIR, ../shared/data)")
    seeds: list[int] | None = Field(None, description="training seeds; None = the study's seeds")
    methods: list[str] | None = Field(None, description="labels of the methods to run here; None = all")


class WlrMethodsConfig(JobConfig):
    """Config of ``ytdnn experiment wlr-methods``. ``quick = true`` fills every value not given with
    a small setting (2 seeds, 3 epochs; learnable worlds at click rates 0.01 and 0.44, personalised
    worlds at 0.44 with 300 users and videos; KuaiRand with 1 seed and 5 methods) that finishes in
    minutes on two cores."""

    quick: bool = False
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2, 3, 4], description="seeds (worlds and training)")
    methods: list[MethodSpec] = Field(default_factory=lambda: list(DEFAULT_METHODS))
    epochs: int | None = Field(None, ge=1, description="budget in epochs of the training rows; None = the ranker's")
    ranker: dict[str, Any] = Field(default_factory=dict,
                                   description="dotted overrides of RankerConfig() (e.g. 'train.lr': 0.002)")
    learnable: SimulatorStudy = Field(
        default_factory=lambda: SimulatorStudy(settings=dict(LEARNABLE_SIMULATOR_SETTINGS),
                                               ranker=dict(LEARNABLE_RANKER)),
        description="worlds whose p(x) the network can learn: the theory at the optimum")
    simulator: SimulatorStudy = Field(default_factory=SimulatorStudy,
                                      description="personalised worlds and the ranker's own network")
    kuairand: KuaiRandStudy = Field(default_factory=KuaiRandStudy)
    ndcg_k: int = Field(10, ge=1)
    recalibration_min_validation_clicks: int = Field(1000, ge=1, description="clicks the validation day needs to "
                                                     "be the rows of the mean matching (else the training rows)")
    resume: bool = Field(True, description="reuse finished runs from a results file written with the same config")
    progress: bool = Field(True, description="one line per run on stderr")

    @model_validator(mode="before")
    @classmethod
    def _fill_defaults(cls, tree: Any) -> Any:
        if not isinstance(tree, dict):
            return tree
        if tree.get("quick") in (True, "true", "True", 1):
            defaults = _QUICK_DEFAULTS
            if "methods" in tree:  # the quick KuaiRand subset names default labels; keep the user's list whole
                defaults = defaults | {"kuairand": {k: v for k, v in defaults["kuairand"].items() if k != "methods"}}
            tree = _merge_under(defaults, tree)
        if isinstance(tree.get("learnable"), Mapping):
            # A partial learnable section keeps the learnable world and network, not SimulatorStudy's defaults.
            tree = tree | {"learnable": _merge_under({"settings": dict(LEARNABLE_SIMULATOR_SETTINGS),
                                                      "ranker": dict(LEARNABLE_RANKER)}, tree["learnable"])}
        return tree

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, seeds: list[int]) -> list[int]:
        if not seeds:
            raise ValueError("seeds: give at least one seed")
        if len(set(seeds)) != len(seeds) or min(seeds) < 0:
            raise ValueError(f"seeds must be distinct integers >= 0, got {seeds}")
        return seeds

    @model_validator(mode="after")
    def _consistent(self) -> WlrMethodsConfig:
        labels = [m.label for m in self.methods]
        if not labels:
            raise ValueError("methods: give at least one method")
        if len(set(labels)) != len(labels):
            raise ValueError(f"methods: labels repeat: {labels}")
        if self.kuairand.methods is not None:
            unknown = sorted(set(self.kuairand.methods) - set(labels))
            if unknown:
                raise ValueError(f"kuairand.methods: {unknown} are not labels of methods {labels}")
        for _, study in self.families():  # bad ranker overrides fail at load time
            self.family_ranker_config(study)
        return self

    def ranker_config(self) -> RankerConfig:
        """``RankerConfig()`` — the ranker's current defaults with :data:`STUDY_TRAINING` — and the
        ``ranker`` overrides applied.

        The objective section is pinned to the reference method (``wlr``): the study trains every
        method itself and never reads it, so the worlds' fingerprints must not depend on the
        ranker's default objective."""
        base = RankerConfig(objective={"name": REFERENCE_METHOD}).merged(STUDY_TRAINING)  # type: ignore[arg-type]
        return base.merged(self.ranker) if self.ranker else base

    def families(self) -> list[tuple[str, SimulatorStudy]]:
        """The enabled simulator families, by name (the ``dataset`` of their worlds)."""
        return [(name, study) for name, study in ((LEARNABLE, self.learnable), (SIMULATOR, self.simulator))
                if study.enabled]

    def family_ranker_config(self, study: SimulatorStudy) -> RankerConfig:
        """The study's ranker config with the family's own overrides on top."""
        base = self.ranker_config()
        return base.merged(study.ranker) if study.ranker else base

    def budget_epochs(self) -> int:
        return self.epochs if self.epochs is not None else self.ranker_config().train.epochs

    def kuairand_seeds(self) -> list[int]:
        return list(self.kuairand.seeds) if self.kuairand.seeds is not None else list(self.seeds)

    def kuairand_methods(self) -> list[MethodSpec]:
        wanted = self.kuairand.methods
        return [m for m in self.methods if wanted is None or m.label in wanted]

    def file_stem(self) -> str:
        return "wlr_methods_quick" if self.quick else "wlr_methods"


# ---------------------------------------------------------------------------------------------
# Metrics of the study
# ---------------------------------------------------------------------------------------------


def _as_1d(name: str, values: npt.ArrayLike, dtype: Any) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise MetricInputError(f"{name} must be 1-D; got shape {array.shape}")
    try:
        return array.astype(dtype, copy=False)
    except (TypeError, ValueError) as exc:
        raise MetricInputError(f"{name}: cannot be read as {np.dtype(dtype).name}: {exc}") from None


def graded_ndcg_at_k(page_ids: npt.ArrayLike, relevance: npt.ArrayLike, score: npt.ArrayLike, k: int = 10,
                     *, min_page_size: int = 2) -> float:
    r"""Mean over pages of NDCG@k with graded relevance (linear gains), ties in the score averaged.

    On each page (e.g. one user's impressions on one day) the rows are ranked by descending
    score; with r the 0-based rank,

    .. math:: \mathrm{DCG@k} = \sum_{r < k} \frac{\mathrm{rel}_{(r)}}{\log_2(r + 2)}, \qquad
              \mathrm{NDCG@k} = \mathrm{DCG@k} / \mathrm{IDCG@k},

    IDCG@k being the DCG@k of the rows sorted by relevance. Gains are linear in the relevance
    (here E[T|x] in seconds, for which 2^rel − 1 would be meaningless). Rows tied in score
    each get the mean discount of the positions their tie group occupies — the expected DCG
    under a uniformly random order of the ties, so a constant score is not rewarded for the
    row order. Pages with fewer than ``min_page_size`` rows (no ranking decision) or with
    IDCG = 0 are skipped; ``nan`` when no page is left. Pages are weighted equally.
    """
    pages = _as_1d("page_ids", page_ids, np.int64)
    gains = _as_1d("relevance", relevance, np.float64)
    scores = _as_1d("score", score, np.float64)
    if not (len(pages) == len(gains) == len(scores)):
        raise MetricInputError(f"page_ids, relevance and score differ in length: "
                               f"{len(pages)}, {len(gains)}, {len(scores)}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise MetricInputError(f"k must be a positive integer; got {k!r}")
    for name, array in (("relevance", gains), ("score", scores)):
        bad = ~np.isfinite(array)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise MetricInputError(f"{name} row {row}: expected a finite number, got {array[row]}")
    if (gains < 0).any():
        row = int(np.flatnonzero(gains < 0)[0])
        raise MetricInputError(f"relevance row {row}: expected >= 0, got {gains[row]}")
    if len(pages) == 0:
        return math.nan

    order = np.lexsort((-scores, pages))  # by page, then descending score
    page_sorted = pages[order]
    page_start = np.r_[True, page_sorted[1:] != page_sorted[:-1]]
    page_index = np.cumsum(page_start) - 1
    position = np.arange(len(pages)) - np.flatnonzero(page_start)[page_index]
    discount = np.where(position < k, 1.0 / np.log2(position + 2.0), 0.0)

    score_sorted = scores[order]
    group_start = page_start | np.r_[True, score_sorted[1:] != score_sorted[:-1]]
    group = np.cumsum(group_start) - 1
    group_discount = np.bincount(group, weights=discount) / np.bincount(group)
    dcg = np.bincount(page_index, weights=gains[order] * group_discount[group])

    # Sorting by (page, descending relevance) keeps the same page blocks, so positions carry over.
    ideal_order = np.lexsort((-gains, pages))
    idcg = np.bincount(page_index, weights=gains[ideal_order] * discount)
    sizes = np.bincount(page_index)
    valid = (sizes >= min_page_size) & (idcg > 0)
    if not valid.any():
        return math.nan
    return float(np.mean(dcg[valid] / idcg[valid]))


def wlr_theory_ratio(p_click: npt.ArrayLike, expected_watch_s: npt.ArrayLike) -> float:
    r"""mean(E[T|x] / (1 − p(x))) / mean(E[T|x]): the factor by which WLR's optimal odds over-predict.

    1/(1 − p) when p is constant. Raises when a p is not in [0, 1) or the mean of E is 0.
    """
    p = _as_1d("p_click", p_click, np.float64)
    expected = _as_1d("expected_watch_s", expected_watch_s, np.float64)
    if len(p) != len(expected) or len(p) == 0:
        raise MetricInputError(f"p_click and expected_watch_s must be non-empty and of equal length; "
                               f"got {len(p)} and {len(expected)}")
    if not ((p >= 0) & (p < 1)).all():
        row = int(np.flatnonzero(~((p >= 0) & (p < 1)))[0])
        raise MetricInputError(f"p_click row {row}: expected a probability in [0, 1), got {p[row]}")
    if not (np.isfinite(expected).all() and (expected >= 0).all()) or expected.sum() <= 0:
        raise MetricInputError("expected_watch_s must be finite, >= 0 and not all 0")
    return float(np.mean(expected / (1.0 - p)) / np.mean(expected))


# ---------------------------------------------------------------------------------------------
# A prepared world: features fitted once, shared by every method
# ---------------------------------------------------------------------------------------------


@dataclass
class _Labels:
    """What the metrics need of a set of rows (NumPy, row order of the batch)."""

    pages: np.ndarray
    users: np.ndarray
    is_click: np.ndarray
    watch_time_s: np.ndarray
    true_p_click: np.ndarray | None
    true_expected_watch_s: np.ndarray | None

    @classmethod
    def of(cls, frame: pl.DataFrame, truth: bool) -> _Labels:
        return cls(page_ids(frame), frame["user_id"].to_numpy(), frame["is_click"].to_numpy().astype(np.int8),
                   frame["watch_time_s"].to_numpy().astype(np.float64),
                   frame["true_p_click"].to_numpy().astype(np.float64) if truth else None,
                   frame["true_expected_watch_s"].to_numpy().astype(np.float64) if truth else None)

    @property
    def has_truth(self) -> bool:
        return self.true_expected_watch_s is not None

    def has_weighted_pairs(self) -> bool:
        details = weighted_per_user_loss_details(self.pages, self.is_click, self.watch_time_s,
                                                 np.zeros(len(self.pages)))
        return details["n_pairs"] > 0 and details["weight_sum"] > 0


@dataclass
class PreparedWorld:
    """One dataset turned into tensors once: training, validation and test rows with their labels."""

    key: str
    dataset: str
    click_rate: float | None  # the simulator's target click rate; None on real data
    seed: int | None  # the simulator's seed; None on real data
    layout: FeatureLayout
    train: RankingBatch
    validation: RankingBatch | None
    test: RankingBatch
    validation_labels: _Labels | None
    test_labels: _Labels
    info: dict[str, Any]

    @property
    def has_truth(self) -> bool:
        return self.test_labels.has_truth


def prepare_world(data: InteractionData, ranker_config: RankerConfig, *, key: str, dataset: str,
                  click_rate: float | None = None, seed: int | None = None) -> PreparedWorld:
    """Split by date, add the causal history, fit the feature pipeline on the training days minus the
    validation days (as ``train_ranker`` does) and transform train, validation and test."""
    split = DateSplit(train_end=ranker_config.data.train_end, test_start=ranker_config.data.test_start,
                      validation_days=ranker_config.data.validation_days)
    pipeline = RankingFeaturePipeline(ranker_config.features)
    needed = data.impressions.filter(split.train_mask() | split.test_mask())
    # History is causal (strictly earlier events), so one pass over train + test gives every row
    # the value it gets in train_ranker (train part only) and in evaluation (whole log).
    # (Skipped when the history group is off: nothing reads the columns, and it is the slow step.)
    with_history = pipeline.add_history(needed, data.videos) if "history" in ranker_config.features.groups else needed
    train_part = with_history.filter(split.train_mask())
    test_frame = with_history.filter(split.test_mask()).sort("row_id")
    if train_part.height == 0:
        raise WlrMethodsError(f"{key}: no impression on or before train_end={ranker_config.data.train_end}")
    if test_frame.height == 0:
        raise WlrMethodsError(f"{key}: no impression on or after test_start={ranker_config.data.test_start}")
    validation_dates = split.validation_dates(train_part)
    is_validation = pl.col("date").is_in(validation_dates)
    fit_frame = train_part.filter(~is_validation)
    validation_frame = train_part.filter(is_validation) if validation_dates else None
    if fit_frame.height == 0:
        raise WlrMethodsError(f"{key}: every training day is a validation day; lower data.validation_days")
    pipeline.fit(fit_frame, data.users, data.videos)
    truth = data.has_truth
    train = pipeline.transform(fit_frame, data.users, data.videos)
    validation = pipeline.transform(validation_frame, data.users, data.videos) if validation_frame is not None else None
    test = pipeline.transform(test_frame, data.users, data.videos)
    test_labels = _Labels.of(test_frame, truth)
    info: dict[str, Any] = {
        "key": key, "dataset": dataset, "click_rate": click_rate, "seed": seed,
        "n_train": len(train), "n_validation": 0 if validation is None else len(validation), "n_test": len(test),
        "validation_dates": validation_dates,
        "train_click_rate": float(fit_frame["is_click"].mean()),
        "test_click_rate": float(test_frame["is_click"].mean()),
        "test_mean_watch_s": float(test_frame["watch_time_s"].mean()),
    }
    if truth:
        assert test_labels.true_p_click is not None and test_labels.true_expected_watch_s is not None
        # Label noise: how far the training labels' own mean is from the truth's. A model calibrated
        # in the large on its training rows inherits this (it dominates at low click rates).
        info["train_label_ratio"] = float(fit_frame["watch_time_s"].sum() / fit_frame["true_expected_watch_s"].sum())
        info["test_mean_true_expected_watch_s"] = float(test_labels.true_expected_watch_s.mean())
        info["theory_ratio"] = wlr_theory_ratio(test_labels.true_p_click, test_labels.true_expected_watch_s)
        # The same factor if p(x) were known only per video (what a model that learns each video's
        # click rate but nothing finer would reach): Σ_v n_v Ē_v/(1 − p̄_v) / Σ_v n_v Ē_v.
        per_video = test_frame.group_by("video_id").agg(
            pl.len().alias("n"), pl.col("true_expected_watch_s").mean().alias("e"),
            pl.col("true_p_click").mean().alias("p"))
        n, e, p = (per_video[c].to_numpy().astype(np.float64) for c in ("n", "e", "p"))
        info["per_video_theory_ratio"] = float(np.sum(n * e / (1.0 - p)) / np.sum(n * e))
        info["constant_p_ratio"] = 1.0 / (1.0 - float(test_labels.true_p_click.mean()))
    else:
        # Per-video click rates (shrunk to the overall rate) in place of the unknown p(x).
        per_video = test_frame.group_by("video_id").agg(
            pl.len().alias("n"), pl.col("watch_time_s").mean().alias("mean_t"), pl.col("is_click").sum().alias("k"))
        ctr = info["test_click_rate"]
        p_hat = (per_video["k"].to_numpy() + 5.0 * ctr) / (per_video["n"].to_numpy() + 5.0)
        n = per_video["n"].to_numpy().astype(np.float64)
        mean_t = per_video["mean_t"].to_numpy()
        info["per_video_theory_ratio"] = float(np.sum(n * mean_t / (1.0 - p_hat)) / np.sum(n * mean_t))
        info["constant_p_ratio"] = 1.0 / (1.0 - ctr)
    return PreparedWorld(key, dataset, click_rate, seed, pipeline.layout, train, validation, test,
                         _Labels.of(validation_frame, truth) if validation_frame is not None else None,
                         test_labels, info)


# ---------------------------------------------------------------------------------------------
# One method on one world
# ---------------------------------------------------------------------------------------------


def _validation_metric_fn(labels: _Labels, ranking_key: str, ndcg_k: int, with_gauc: bool) -> MetricFn:
    """Per-epoch validation metrics: the ranker's early-stopping metric plus the learning curves."""
    target = labels.true_expected_watch_s if labels.has_truth else labels.watch_time_s
    assert target is not None

    def metric_fn(predictions: dict[str, np.ndarray]) -> dict[str, float]:
        score = np.asarray(predictions[ranking_key], dtype=np.float64)
        served = np.asarray(predictions["expected_watch_s"], dtype=np.float64)
        out = {WEIGHTED_PER_USER_LOSS: weighted_per_user_loss(labels.pages, labels.is_click, labels.watch_time_s,
                                                              score)}
        if with_gauc:
            out["gauc"] = gauc(labels.users, labels.is_click, score)
        if len(served) >= 10:
            cal = calibration(served, target)
            out["mean_ratio"] = cal["mean_ratio"]
            out["relative_calibration_error"] = cal["relative_calibration_error"]
        if labels.has_truth:
            out["ndcg_truth"] = graded_ndcg_at_k(labels.pages, target, score, ndcg_k)
        return out

    return metric_fn


def evaluate_predictions(labels: _Labels, predictions: Mapping[str, np.ndarray], ranking_key: str,
                         ndcg_k: int = 10, *, served_scale: float = 1.0
                         ) -> tuple[dict[str, float], dict[str, list[dict[str, Any]]]]:
    """Flat metrics of one model's test predictions, and its decile calibration bins.

    ``served_scale`` multiplies the served ``expected_watch_s`` (a recalibration constant); the
    ranking score is left as predicted.
    """
    score = np.asarray(predictions[ranking_key], dtype=np.float64)
    served = np.asarray(predictions["expected_watch_s"], dtype=np.float64) * served_scale
    observed = ranking_metrics(labels.pages, labels.users, labels.is_click, labels.watch_time_s, score, served)
    bins = {"observed": observed.pop("calibration_bins")}
    metrics: dict[str, float] = {key: float(value) for key, value in observed.items()}
    metrics["mean_served_s"] = float(served.mean())
    if labels.has_truth:
        truth = labels.true_expected_watch_s
        assert truth is not None
        calibrated = calibration(served, truth)
        bins["truth"] = calibrated["bins"]
        metrics["mean_ratio_truth"] = calibrated["mean_ratio"]
        metrics["relative_calibration_error_truth"] = calibrated["relative_calibration_error"]
        metrics["rmse_truth"] = rmse(served, truth)
        metrics["ndcg_truth"] = graded_ndcg_at_k(labels.pages, truth, score, ndcg_k)
    if "odds" in predictions:
        odds = np.asarray(predictions["odds"], dtype=np.float64)
        metrics["odds_mean_ratio"] = float(odds.mean() / labels.watch_time_s.mean())
        if labels.has_truth:
            assert labels.true_expected_watch_s is not None
            metrics["odds_mean_ratio_truth"] = float(odds.mean() / labels.true_expected_watch_s.mean())
        if not np.array_equal(odds, score):
            by_odds = ranking_metrics(labels.pages, labels.users, labels.is_click, labels.watch_time_s, odds)
            for key in ("weighted_per_user_loss", "xauc", "xauc_clicked", "gauc"):
                metrics[f"by_odds_{key}"] = float(by_odds[key])
            if labels.has_truth:
                assert labels.true_expected_watch_s is not None
                metrics["by_odds_ndcg_truth"] = graded_ndcg_at_k(labels.pages, labels.true_expected_watch_s, odds,
                                                                 ndcg_k)
    return metrics, bins


def reference_scores(labels: _Labels, ndcg_k: int = 10) -> dict[str, dict[str, float]]:
    """Metrics of two oracles on a simulator world: the truth E[T|x], and WLR's exact optimum
    E[T|x]/(1 − p(x)) (what a perfect plain WLR model serves and ranks by)."""
    if not labels.has_truth:
        return {}
    truth, p = labels.true_expected_watch_s, labels.true_p_click
    assert truth is not None and p is not None
    out: dict[str, dict[str, float]] = {}
    for name, value in (("oracle E[T|x]", truth), ("oracle WLR optimum E[T|x]/(1-p)", truth / (1.0 - p))):
        metrics, _ = evaluate_predictions(labels, {"expected_watch_s": value}, "expected_watch_s", ndcg_k)
        out[name] = metrics
    return out


def refit_output_bias(network: RankingNet, objective: RankingObjective, batch: RankingBatch,
                      eval_batch_size: int = 16384) -> list[float]:
    r"""Re-optimise only the output bias of every head on ``batch`` (all other weights frozen).

    Minimises the objective's ``validation_loss`` (for resampling: its expectation) on ``batch``
    over one shift δ per head, :math:`\min_\delta L(z + \delta)`, with L-BFGS in float64 on the
    network's outputs computed once; then adds δ to the network's output bias and returns δ.
    Every objective's loss is convex in δ. At the solution the bias-only optimality conditions
    hold *given the learned features*: e.g. Σ e^{z+δ} = ΣT for Poisson; for WLR,
    Σ_clicked T σ(−z−δ) = Σ_unclicked σ(z+δ). On the training rows this finishes the
    optimisation of the parameter whose noise Adam leaves largest — the overall level drifts
    ±10–15% between epochs at lr 1e-3 — so the model is at its objective's optimum over the
    bias, which is what the theory speaks about. It changes no ranking of a one-head model.
    """
    outputs = predict_outputs(network, batch, eval_batch_size).detach().double()
    is_click = batch.is_click.double()
    watch = batch.watch_time_s.double()
    shift = torch.zeros(outputs.shape[1], dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([shift], lr=1.0, max_iter=100, tolerance_grad=1e-10, tolerance_change=1e-12,
                                  line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        value = objective.validation_loss(outputs + shift, is_click, watch)
        value.backward()
        return value

    for _ in range(3):
        optimiser.step(closure)
    delta = shift.detach()
    if not bool(torch.isfinite(delta).all()):
        raise WlrMethodsError(f"{objective.name}: the output-bias refit diverged (shift {delta.tolist()})")
    with torch.no_grad():
        network.output_bias.add_(delta.to(network.output_bias.dtype))
    return [float(v) for v in delta]


def recalibration_rows(world: PreparedWorld, min_validation_clicks: int) -> tuple[str, RankingBatch]:
    """Where the served mean is matched: :func:`ytdnn.training.calibration.calibration_rows` of the
    world's validation and training rows (the ranker job's rule, so the study's "× held-out mean
    match" is what the ranker's calibrated default serves)."""
    return calibration_rows(world.validation, world.train, min_validation_clicks)


def train_method(world: PreparedWorld, method: MethodSpec, ranker_config: RankerConfig, *, seed: int,
                 epochs: int, ndcg_k: int = 10, min_recalibration_validation_clicks: int = 1000) -> dict[str, Any]:
    """Train ``method`` on ``world`` at a budget of ``epochs`` × training rows; evaluate on the test rows.

    The network, initialisation and optimiser are the ranker's (``ranker_config``); the output bias
    starts at the objective's bias-only optimum; early stopping is off (the whole budget is spent)
    and the best epoch by the ranker's early-stopping metric is restored. The test rows are scored
    three ways:

    - as trained (plain metric names);
    - ``recal_``: the served value times one constant, mean(T) / mean(served) on the rows
      :func:`recalibration_rows` picks (calibration in the large on held-out data; no ranking
      changes);
    - ``refit_``: after :func:`refit_output_bias` on the training rows (the objective's optimum
      over the bias).
    """
    objective: RankingObjective = make_objective(method.objective, **method.params)
    train = world.train
    objective.fit(train.is_click, train.watch_time_s)
    init_bias = objective.init_bias(train.is_click, train.watch_time_s)
    torch.manual_seed(seed)  # the network init: the same for every method of a world
    network = RankingNet(world.layout, hidden=ranker_config.model.hidden, n_heads=objective.n_heads,
                         dropout=ranker_config.model.dropout)
    network.set_output_bias(init_bias)

    metric = ranker_config.train.early_stopping_metric
    mode = ranker_config.train.mode
    labels = world.validation_labels
    if labels is None or (metric in (WEIGHTED_PER_USER_LOSS, "gauc") and not labels.has_weighted_pairs()):
        metric, mode = VALIDATION_LOSS, "min"  # as train_ranker does when the metric is undefined
    if metric not in (VALIDATION_LOSS, WEIGHTED_PER_USER_LOSS, "gauc"):
        raise WlrMethodsError(f"ranker train.early_stopping_metric={metric!r}: the study supports "
                              f"{VALIDATION_LOSS!r}, {WEIGHTED_PER_USER_LOSS!r} and 'gauc'")
    # No tail averaging: the study compares the objectives' optima, and an average over the
    # trajectory (the ranker's default, a regulariser) sits off them.
    trainer_config = ranker_config.train.model_copy(update={
        "seed": seed, "epochs": epochs, "patience": 0, "max_examples": epochs * len(train),
        "early_stopping_metric": metric, "mode": mode, "progress": False, "num_threads": 1,
        "average_last_epochs": 1})
    metric_fn = (_validation_metric_fn(labels, objective.ranking_key, ndcg_k, with_gauc=metric == "gauc")
                 if labels is not None else None)
    trainer = Trainer(network, objective, train, world.validation, trainer_config, metric_fn)
    # The learning curves start at the bias-only optimum, before any step (0 examples seen).
    initial = {"epoch": 0, "train_loss": None, "examples_seen": 0, "seconds": 0.0,
               "validation": trainer.evaluate() if world.validation is not None else {}}
    started = time.perf_counter()
    history = trainer.fit()
    seconds = time.perf_counter() - started

    def predictions_of(outputs: torch.Tensor) -> dict[str, np.ndarray]:
        with torch.no_grad():
            return {key: value.detach().cpu().numpy().astype(np.float64)
                    for key, value in objective.predict(outputs).items()}

    eval_batch = trainer_config.eval_batch_size
    test_outputs = predict_outputs(network, world.test, eval_batch)
    as_trained = predictions_of(test_outputs)
    metrics, bins = evaluate_predictions(world.test_labels, as_trained, objective.ranking_key, ndcg_k)

    # Calibration in the large on held-out rows: one multiplicative constant on the served value.
    recal_on, recal_batch = recalibration_rows(world, min_recalibration_validation_clicks)
    recal_served = predictions_of(predict_outputs(network, recal_batch, eval_batch))["expected_watch_s"]
    recal_factor = mean_match_factor(recal_served, recal_batch.watch_time_s)
    recal_metrics, recal_bins = evaluate_predictions(world.test_labels, as_trained, objective.ranking_key, ndcg_k,
                                                     served_scale=recal_factor)

    # The objective's optimum over the output bias on the training rows (see refit_output_bias).
    refit_started = time.perf_counter()
    shift = refit_output_bias(network, objective, train, eval_batch)
    refit_seconds = time.perf_counter() - refit_started
    # The output layer is linear: a shift of its bias shifts the outputs by the same amount.
    refit_outputs = test_outputs + torch.tensor(shift, dtype=test_outputs.dtype)
    refit_metrics, refit_bins = evaluate_predictions(world.test_labels, predictions_of(refit_outputs),
                                                     objective.ranking_key, ndcg_k)
    metrics |= {f"{RECAL_PREFIX}{key}": value for key, value in recal_metrics.items()}
    metrics |= {f"{REFIT_PREFIX}{key}": value for key, value in refit_metrics.items()}
    return {
        "world": world.key, "dataset": world.dataset, "click_rate": world.click_rate, "seed": seed,
        "method": method.label, "objective": objective.to_config(), "ranking_key": objective.ranking_key,
        "init_bias": init_bias, "refit_bias_shift": shift, "recalibration_factor": recal_factor,
        "recalibration_rows": recal_on, "metrics": metrics,
        "calibration_bins": bins | {f"{RECAL_PREFIX}{key}": value for key, value in recal_bins.items()}
        | {f"{REFIT_PREFIX}{key}": value for key, value in refit_bins.items()},
        "training": {"seconds": seconds, "epochs_run": len(history.epochs), "best_epoch": history.best_epoch,
                     "examples_seen": history.examples_seen, "early_stopping_metric": metric,
                     "seconds_per_epoch": seconds / max(1, len(history.epochs)), "refit_seconds": refit_seconds},
        "history": [initial] + [record.to_dict() for record in history.epochs],
    }


# ---------------------------------------------------------------------------------------------
# Summaries, checks and the default
# ---------------------------------------------------------------------------------------------


def with_label_noise_removed(runs: Iterable[dict[str, Any]], worlds: Mapping[str, Mapping[str, Any]]
                             ) -> list[dict[str, Any]]:
    """Runs whose metrics gain ``*mean_ratio_truth_net``: the served/true ratio divided by the world's
    ``train_label_ratio`` (training labels' mean over the truth's) — the objective's own bias, net
    of the sampling noise of the world's draw that every model inherits (±5% per seed at CTR 1%)."""
    out = []
    for run in runs:
        label_ratio = worlds.get(run["world"], {}).get("train_label_ratio")
        metrics = dict(run["metrics"])
        if label_ratio:
            for prefix in ("", REFIT_PREFIX):
                value = metrics.get(f"{prefix}mean_ratio_truth")
                if value is not None and math.isfinite(value):
                    metrics[f"{prefix}mean_ratio_truth_net"] = value / label_ratio
        out.append(dict(run) | {"metrics": metrics})
    return out


def group_key(record: Mapping[str, Any]) -> str:
    """The world without its seed: ``simulator@0.44``, ``learnable@0.01`` or ``kuairand``."""
    if record.get("click_rate") is not None:
        return f"{record['dataset']}@{record['click_rate']:g}"
    return str(record["dataset"])


def _stats(values: Sequence[float]) -> dict[str, Any]:
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        return {"mean": None, "sd": None, "min": None, "max": None, "n": 0, "values": list(values)}
    array = np.asarray(finite)
    return {"mean": float(array.mean()), "sd": float(array.std(ddof=1)) if len(array) > 1 else 0.0,
            "min": float(array.min()), "max": float(array.max()), "n": len(array), "values": list(values)}


def summarise_runs(runs: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """``{group: {method: {metric: {mean, sd, min, max, n, values}}}}`` across seeds.

    Metrics are every entry of a run's ``metrics`` plus ``seconds``, ``seconds_per_epoch`` and
    ``best_epoch`` of its training; ``values`` keeps the per-seed numbers in seed order.
    """
    grouped: dict[str, dict[str, list[Mapping[str, Any]]]] = {}
    for run in runs:
        grouped.setdefault(group_key(run), {}).setdefault(run["method"], []).append(run)
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for group, methods in grouped.items():
        summary[group] = {}
        for method, method_runs in methods.items():
            method_runs = sorted(method_runs, key=lambda r: r["seed"])
            names = sorted({name for r in method_runs for name in r["metrics"]})
            stats = {name: _stats([r["metrics"].get(name, math.nan) for r in method_runs]) for name in names}
            for name in ("seconds", "seconds_per_epoch", "best_epoch"):
                stats[name] = _stats([r["training"].get(name) if r["training"].get(name) is not None else math.nan
                                      for r in method_runs])
            stats["seeds"] = {"values": [r["seed"] for r in method_runs], "n": len(method_runs)}
            summary[group][method] = stats
    return summary


def summarise_worlds(worlds: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per group: the theory ratio, the realised click rate and the oracles' metrics across seeds."""
    grouped: dict[str, list[Mapping[str, Any]]] = {}
    for world in worlds:
        grouped.setdefault(group_key(world), []).append(world)
    out: dict[str, dict[str, Any]] = {}
    for group, items in grouped.items():
        keys = ("theory_ratio", "constant_p_ratio", "per_video_theory_ratio", "test_click_rate", "train_click_rate",
                "train_label_ratio",
                "test_mean_watch_s", "test_mean_true_expected_watch_s", "n_train", "n_test")
        entry = {key: _stats([w[key] for w in items]) for key in keys if key in items[0]}
        references: dict[str, dict[str, Any]] = {}
        for name in items[0].get("reference", {}):
            metric_names = items[0]["reference"][name].keys()
            references[name] = {m: _stats([w["reference"][name][m] for w in items]) for m in metric_names}
        entry["reference"] = references
        out[group] = entry
    return out


def learning_curves(runs: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """``{group: {method: {"examples_seen": [...], metric: {"mean": [...], "sd": [...]}}}}`` per epoch."""
    grouped: dict[str, dict[str, list[Mapping[str, Any]]]] = {}
    for run in runs:
        grouped.setdefault(group_key(run), {}).setdefault(run["method"], []).append(run)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for group, methods in grouped.items():
        out[group] = {}
        for method, method_runs in methods.items():
            n_epochs = min(len(r["history"]) for r in method_runs)
            if n_epochs == 0:
                continue
            curve: dict[str, Any] = {"examples_seen": [float(np.mean([r["history"][e]["examples_seen"]
                                                                     for r in method_runs]))
                                                       for e in range(n_epochs)]}
            names = sorted({name for r in method_runs for name in r["history"][0]["validation"]})
            for name in names:
                per_epoch = [_stats([r["history"][e]["validation"].get(name, math.nan) for r in method_runs])
                             for e in range(n_epochs)]
                curve[name] = {"mean": [s["mean"] for s in per_epoch], "sd": [s["sd"] for s in per_epoch]}
            curve["train_loss"] = {"mean": [_stats([math.nan if r["history"][e]["train_loss"] is None
                                                    else r["history"][e]["train_loss"] for r in method_runs])["mean"]
                                            for e in range(n_epochs)]}
            out[group][method] = curve
    return out


DEFAULT_CRITERIA: dict[str, float] = {"mean_ratio_low": 0.95, "mean_ratio_high": 1.05,
                                      "relative_calibration_error_max": 0.10, "wpu_loss_margin": 0.005}
"""What the default served ``expected_watch_s`` must meet on KuaiRand (means across seeds)."""


def _mean(summary: Mapping[str, Any], metric: str) -> float:
    entry = summary.get(metric)
    return math.nan if entry is None or entry["mean"] is None else float(entry["mean"])


def choose_default(group_summary: Mapping[str, Mapping[str, Any]], reference: str = REFERENCE_METHOD,
                   criteria: Mapping[str, float] = DEFAULT_CRITERIA) -> dict[str, Any]:
    """Judge every method of one group (KuaiRand) against the default's requirements.

    A method passes when its mean (across seeds) ratio of served to observed mean watch time is
    within [``mean_ratio_low``, ``mean_ratio_high``], its mean relative calibration error is at most
    ``relative_calibration_error_max``, and its mean weighted per-user loss exceeds the reference
    method's by at most ``wpu_loss_margin``. ``chosen`` is the passing method with the lowest
    weighted per-user loss (None if none passes); ``closest`` minimises the summed violations,
    each in units of its tolerance (0 for a passing method).
    """
    if reference not in group_summary:
        raise WlrMethodsError(f"choose_default: the reference method {reference!r} was not run "
                              f"(have {sorted(group_summary)})")
    reference_loss = _mean(group_summary[reference], "weighted_per_user_loss")
    low, high = criteria["mean_ratio_low"], criteria["mean_ratio_high"]
    rce_max, margin = criteria["relative_calibration_error_max"], criteria["wpu_loss_margin"]
    half_width = (high - low) / 2.0
    rows: dict[str, dict[str, Any]] = {}
    for method, stats in group_summary.items():
        ratio = _mean(stats, "mean_ratio")
        rce = _mean(stats, "relative_calibration_error")
        loss = _mean(stats, "weighted_per_user_loss")
        gap = loss - reference_loss
        checks = {"mean_ratio": low <= ratio <= high, "relative_calibration_error": rce <= rce_max,
                  "weighted_per_user_loss": gap <= margin}
        violation = (max(0.0, abs(ratio - (low + high) / 2.0) - half_width) / half_width
                     + max(0.0, rce - rce_max) / rce_max + max(0.0, gap - margin) / margin)
        if not all(math.isfinite(v) for v in (ratio, rce, loss)):
            violation = math.inf
        rows[method] = {"mean_ratio": ratio, "relative_calibration_error": rce, "weighted_per_user_loss": loss,
                        "wpu_loss_gap": gap, "checks": checks, "passes": all(checks.values()),
                        "violation": violation}
    passing = [m for m, row in rows.items() if row["passes"]]
    chosen = min(passing, key=lambda m: rows[m]["weighted_per_user_loss"]) if passing else None
    closest = min(rows, key=lambda m: (rows[m]["violation"], rows[m]["weighted_per_user_loss"]))
    return {"criteria": dict(criteria), "reference": reference, "reference_wpu_loss": reference_loss,
            "methods": rows, "passing": passing, "chosen": chosen, "closest": closest}


def requirement_checks(summary: Mapping[str, Mapping[str, Any]], worlds: Mapping[str, Mapping[str, Any]],
                       methods: Sequence[MethodSpec], *, prefix: str = "",
                       family: str = SIMULATOR) -> list[dict[str, Any]]:
    """The issue's simulator requirements, judged on the study's own numbers (means across seeds).

    - CTR 0.44: plain WLR's relative over-prediction of the mean is within 10% of the theory's
      (theory ratio − 1, from the world's own truth);
    - CTR 0.44: ``wlr-exact`` and ``wlr-corrected`` serve a mean within ±5% of the true mean;
    - CTR 0.01: every WLR-family method serves a mean within ±5% of the true mean; also net of
      the labels' own sampling noise (``*_net``, see :func:`with_label_noise_removed`).

    ``prefix`` = :data:`REFIT_PREFIX` judges the models after the output-bias refit; ``family``
    names the simulator family. A check whose click rate or method was not run is left out.
    """
    checks: list[dict[str, Any]] = []
    variant = "after bias refit" if prefix else "as trained"
    metric = f"{prefix}mean_ratio_truth"

    def add(name: str, measured: float, target: float, tolerance: float) -> None:
        checks.append({"name": f"{family}, {name}", "family": family, "variant": variant, "measured": measured,
                       "target": target,
                       "tolerance": tolerance, "passes": abs(measured - target) <= tolerance})

    high = f"{family}@0.44"
    if high in summary and high in worlds:
        amount = float(worlds[high]["theory_ratio"]["mean"]) - 1.0
        for method in methods:
            if method.label not in summary[high]:
                continue
            ratio = _mean(summary[high][method.label], metric)
            if method.objective == "wlr":
                add(f"CTR 0.44: {method.label} over-predicts by the theory amount (within 10%)", ratio - 1.0,
                    amount, 0.1 * amount)
            elif method.objective in ("wlr-exact", "wlr-corrected"):
                add(f"CTR 0.44: {method.label} mean within ±5% of the truth", ratio, 1.0, 0.05)
    low = f"{family}@0.01"
    if low in summary:
        for method in methods:
            if method.is_wlr_family and method.label in summary[low]:
                add(f"CTR 0.01: {method.label} mean within ±5% of the truth",
                    _mean(summary[low][method.label], metric), 1.0, 0.05)
                net = _mean(summary[low][method.label], f"{metric}_net")
                if math.isfinite(net):
                    add(f"CTR 0.01: {method.label} mean within ±5% of the truth, net of the labels' own noise",
                        net, 1.0, 0.05)
    return checks


RANKED_BY_ODDS_SUFFIX = ", ranked by odds"


def default_candidates(group_summary: Mapping[str, Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """The candidates for the default: each method as trained, ``"<method> × held-out mean match"``
    (its :data:`RECAL_PREFIX` metrics), ``"<method> + bias refit"`` (its :data:`REFIT_PREFIX`
    metrics), and for a method whose odds are not its ranking score
    (``wlr-corrected``) both of those ranked by the odds e^z while serving the same value: the
    calibration metrics stay the served value's, the ranking metrics become the ``by_odds_`` ones.
    """
    out: dict[str, Mapping[str, Any]] = {}
    ranking_keys = ("weighted_per_user_loss", "xauc", "xauc_clicked", "gauc", "ndcg_truth")
    for label, stats in group_summary.items():
        variants = {label: dict(stats)}
        for prefix, suffix in ((RECAL_PREFIX, RECAL_SUFFIX), (REFIT_PREFIX, REFIT_SUFFIX)):
            variant = {key[len(prefix):]: value for key, value in stats.items() if key.startswith(prefix)}
            if variant:
                variants[f"{label}{suffix}"] = variant
        for name, variant in list(variants.items()):
            if "by_odds_weighted_per_user_loss" in variant:
                by_odds = dict(variant)
                for key in ranking_keys:
                    if f"by_odds_{key}" in variant:
                        by_odds[key] = variant[f"by_odds_{key}"]
                variants[f"{name}{RANKED_BY_ODDS_SUFFIX}"] = by_odds
        out.update(variants)
    return out


# ---------------------------------------------------------------------------------------------
# The run store: results rewritten after every run, resumable
# ---------------------------------------------------------------------------------------------


def _run_key(world_key: str, seed: int, label: str) -> str:
    return f"{world_key}|seed={seed}|{label}"


def _digest(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


class _RunStore:
    """Finished runs and prepared-world facts, written to the results file after every run.

    Every run and world carries a fingerprint (a hash of everything that determines it: the
    world's data settings, the resolved ranker config, the method, the seed, the budget); a rerun
    reuses a stored run only when its fingerprint matches, so changing one part of the config
    (another family, another method) retrains only what it changes.
    """

    def __init__(self, path: Path, config: dict[str, Any], resume: bool) -> None:
        self.path = path
        self.config = config
        self.runs: dict[str, dict[str, Any]] = {}
        self.worlds: dict[str, dict[str, Any]] = {}
        self.wanted_runs: set[str] = set()
        self.wanted_worlds: set[str] = set()
        if resume and path.is_file():
            try:
                payload = read_json(path)
            except (OSError, json.JSONDecodeError):
                payload = {}
            if payload.get("format") == RESULTS_FORMAT:
                self.runs = {_run_key(r["world"], r["seed"], r["method"]): r for r in payload.get("runs", [])
                             if "fingerprint" in r}
                self.worlds = {w["key"]: w for w in payload.get("worlds", []) if "fingerprint" in w}

    def want(self, world_key: str, world_fingerprint: str, seed: int, label: str, fingerprint: str) -> bool:
        """Mark the run as part of this study; True when a matching run is already stored."""
        key = _run_key(world_key, seed, label)
        self.wanted_runs.add(key)
        self.wanted_worlds.add(world_key)
        world = self.worlds.get(world_key)
        run = self.runs.get(key)
        return (run is not None and run.get("fingerprint") == fingerprint and world is not None
                and world.get("fingerprint") == world_fingerprint)

    def add(self, record: dict[str, Any]) -> None:
        self.runs[_run_key(record["world"], record["seed"], record["method"])] = record

    def current_runs(self) -> list[dict[str, Any]]:
        return [run for key, run in self.runs.items() if key in self.wanted_runs]

    def current_worlds(self) -> list[dict[str, Any]]:
        return [world for key, world in self.worlds.items() if key in self.wanted_worlds]

    def payload(self, complete: bool, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        runs = self.current_runs() if complete else list(self.runs.values())
        worlds = self.current_worlds() if complete else list(self.worlds.values())
        return {"format": RESULTS_FORMAT, "complete": complete, "config": self.config, "worlds": worlds,
                "runs": runs, **(extra or {})}

    def save(self, complete: bool = False, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Write the results file; return what was written (slimmed, rounded: see :func:`_compact`)."""
        payload = self.payload(complete, extra)
        payload["runs"] = [_slim_run(run) for run in payload["runs"]]
        if "summary" in payload:
            payload["summary"] = _file_summary(payload["summary"])
        # Compact and rounded to 6 significant digits: ~500 runs stay a few MB, not tens.
        written = _compact(payload)
        atomic_write_text(self.path, json.dumps(written, separators=(",", ":")) + "\n")
        return written


KEPT_BINS = ("observed", f"{RECAL_PREFIX}observed")
"""Calibration bins kept in the results file (the KuaiRand reliability plot's)."""
SUMMARY_METRICS = frozenset({
    "mean_ratio_truth", "relative_calibration_error_truth", "refit_mean_ratio_truth",
    "refit_relative_calibration_error_truth", "mean_ratio_truth_net", "refit_mean_ratio_truth_net",
    "recal_mean_ratio_truth", "ndcg_truth", "odds_mean_ratio_truth", "mean_ratio", "relative_calibration_error",
    "recal_mean_ratio", "recal_relative_calibration_error", "refit_mean_ratio", "refit_relative_calibration_error",
    "odds_mean_ratio", "weighted_per_user_loss", "xauc", "xauc_clicked", "xgauc", "gauc", "rmse", "rmse_truth",
    "seconds", "seconds_per_epoch", "best_epoch"})
"""Metrics whose across-seed summary goes into the results file (every run keeps all of its metrics)."""


def _slim_run(run: Mapping[str, Any]) -> dict[str, Any]:
    bins = run.get("calibration_bins", {})
    return dict(run) | {"calibration_bins": {key: value for key, value in bins.items() if key in KEPT_BINS}}


def _file_summary(summary: Mapping[str, Any]) -> dict[str, Any]:
    def keep(name: str) -> bool:
        return name in SUMMARY_METRICS or name == "seeds" or "by_odds_" in name

    return {group: {method: {name: stats for name, stats in metrics.items() if keep(name)}
                    for method, metrics in methods.items()} for group, methods in summary.items()}


def _compact(value: Any) -> Any:
    """JSON-ready copy: floats to 6 significant digits, NaN/inf to null, NumPy values to Python ones."""
    if isinstance(value, Mapping):
        return {str(key): _compact(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_compact(item) for item in value]
    if isinstance(value, (np.generic, np.ndarray)):
        return _compact(value.tolist())
    if isinstance(value, float):
        return float(f"{value:.6g}") if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    return value


# ---------------------------------------------------------------------------------------------
# The study
# ---------------------------------------------------------------------------------------------


def _say(config: WlrMethodsConfig, message: str) -> None:
    if config.progress:
        print(f"[wlr-methods {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _run_world(config: WlrMethodsConfig, store: _RunStore, ranker_config: RankerConfig, methods: list[MethodSpec],
               key: str, seeds: list[int], load: Callable[[], InteractionData], *, dataset: str,
               data_settings: Mapping[str, Any], click_rate: float | None = None,
               world_seed: int | None = None) -> None:
    """Prepare one world (unless every run of it is stored) and train every missing (seed, method) on it."""
    world_fingerprint = _digest({"dataset": dataset, "data": data_settings, "click_rate": click_rate,
                                 "world_seed": world_seed, "ranker": _fingerprint_view(ranker_config),
                                 "ndcg_k": config.ndcg_k})
    budget = {"epochs": config.budget_epochs(), "recalibration_min_validation_clicks":
              config.recalibration_min_validation_clicks}
    fingerprints = {(seed, m.label): _digest({"world": world_fingerprint, "method": m.model_dump(mode="json"),
                                              "seed": seed, "budget": budget})
                    for seed in seeds for m in methods}
    missing = [(seed, m) for seed in seeds for m in methods
               if not store.want(key, world_fingerprint, seed, m.label, fingerprints[(seed, m.label)])]
    if not missing:
        return
    started = time.perf_counter()
    world = prepare_world(load(), ranker_config, key=key, dataset=dataset, click_rate=click_rate, seed=world_seed)
    world_info = dict(world.info) | {"reference": reference_scores(world.test_labels, config.ndcg_k),
                                     "prepare_seconds": time.perf_counter() - started,
                                     "fingerprint": world_fingerprint}
    store.worlds[key] = world_info
    _say(config, f"{key}: {world.info['n_train']} train / {world.info['n_test']} test rows, prepared in "
                 f"{world_info['prepare_seconds']:.1f}s")
    for seed, method in missing:
        record = train_method(world, method, ranker_config, seed=seed, epochs=config.budget_epochs(),
                              ndcg_k=config.ndcg_k,
                              min_recalibration_validation_clicks=config.recalibration_min_validation_clicks)
        record["fingerprint"] = fingerprints[(seed, method.label)]
        store.add(record)
        store.save()
        m = record["metrics"]
        truth = f", ratio to truth {m['mean_ratio_truth']:.3f}" if "mean_ratio_truth" in m else ""
        _say(config, f"{key} seed {seed} {method.label}: ratio {m['mean_ratio']:.3f} (bias refit "
                     f"{m['refit_mean_ratio']:.3f}){truth}, wpu loss "
                     f"{m['weighted_per_user_loss']:.4f}, {record['training']['seconds']:.1f}s")


def run_wlr_methods(config: WlrMethodsConfig, out: str | Path) -> dict[str, Any]:
    """Run the study; write the report, the plots and the results JSON under ``out``; return the
    results as written to the JSON file."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stem = config.file_stem()
    ranker_config = config.ranker_config()
    store = _RunStore(out / f"{stem}_results.json",
                      {"study": config.model_dump(mode="json", exclude={"resume", "progress"}),
                       "ranker": ranker_config.model_dump(mode="json"), "budget_epochs": config.budget_epochs()},
                      config.resume)
    if store.runs:
        _say(config, f"{len(store.runs)} stored runs in {store.path}; those of this config are reused")
    started = time.perf_counter()
    trained_before = set(store.runs)

    with torch_threads(1):  # one thread per process: the machine is shared (see Trainer's docstring)
        # KuaiRand first: the choice of the default rests on it.
        if config.kuairand.enabled:
            _run_world(config, store, ranker_config, config.kuairand_methods(), KUAIRAND, config.kuairand_seeds(),
                       lambda: load_dataset(config.kuairand.dataset, config.kuairand.data_dir,
                                            on_bad_rows=ranker_config.data.on_bad_rows),
                       dataset=KUAIRAND, data_settings={"dataset": config.kuairand.dataset,
                                                        "data_dir": config.kuairand.data_dir})
        for family, study in config.families():
            family_ranker = config.family_ranker_config(study)
            for click_rate in study.click_rates:
                settings = study.settings_for(click_rate)
                for seed in config.seeds:
                    sim_config = SimulatorConfig(**settings, target_click_rate=click_rate, seed=seed)
                    _run_world(config, store, family_ranker, list(config.methods),
                               f"{family}@{click_rate:g}/seed={seed}", [seed], lambda c=sim_config: simulate(c),
                               dataset=family, data_settings=settings, click_rate=click_rate,
                               world_seed=seed)
    runs = with_label_noise_removed(store.current_runs(), {w["key"]: w for w in store.current_worlds()})
    summary = summarise_runs(runs)
    worlds = summarise_worlds(store.current_worlds())
    curves = learning_curves(runs)
    checks = [check for family, _ in config.families() for prefix in ("", REFIT_PREFIX)
              for check in requirement_checks(summary, worlds, config.methods, prefix=prefix, family=family)]
    default = (choose_default(default_candidates(summary[KUAIRAND]))
               if KUAIRAND in summary and REFERENCE_METHOD in summary[KUAIRAND] else None)
    wall_s = time.perf_counter() - started
    extra = {"summary": summary, "world_summary": worlds, "learning_curves": curves, "checks": checks,
             "default": default, "wall_seconds_this_invocation": wall_s,
             "training_seconds_total": float(sum(r["training"]["seconds"] for r in runs)),
             "runs_reused": sum(1 for key in store.wanted_runs if key in trained_before),
             "environment": {"python": platform.python_version(), "torch": torch.__version__,
                             "machine": platform.machine(), "threads": 1}}
    figures = write_plots(out, stem, config, summary, worlds, curves, runs)
    report = render_report(config, ranker_config, summary, worlds, checks, default, figures, wall_s, runs,
                           extra["runs_reused"])
    atomic_write_text(out / f"{stem}.md", report)
    written = store.save(complete=True, extra=extra | {"figures": figures})
    _say(config, f"wrote {out / (stem + '.md')} and {store.path} in {wall_s:.0f}s")
    return written


# ---------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png"), suffix=".png")


_STYLE = {"wlr": ("C0", "o", "-"), "wlr-resample": ("C1", "s", "-"), "wlr-resample-round": ("C1", "^", ":"),
          "wlr-exact": ("C2", "D", "-"), "wlr-corrected": ("C3", "v", "-"), "poisson": ("C4", "P", "--"),
          "mse": ("C5", "X", "--"), "log-mse": ("C6", "<", "--"), "click-only": ("C7", ">", "--")}


def _style(label: str, index: int) -> tuple[str, str, str]:
    return _STYLE.get(label, (f"C{index % 10}", "o", "-."))


FAMILY_TITLES = {LEARNABLE: "learnable worlds (p(x) learnable; small network)",
                 SIMULATOR: "personalised worlds (the ranker's network)"}


def _sim_groups(summary: Mapping[str, Any], family: str = SIMULATOR) -> list[tuple[float, str]]:
    groups = [(float(g.split("@", 1)[1]), g) for g in summary if g.startswith(f"{family}@")]
    return sorted(groups)


def plot_bias_vs_ctr(path: Path, summary: Mapping[str, Any], worlds: Mapping[str, Any],
                     methods: Sequence[MethodSpec], families: Sequence[str] = (LEARNABLE, SIMULATOR)) -> bool:
    """Served mean / true mean against the click rate per method (mean ± sd over seeds), as trained and
    after the output-bias refit, with the theory curves; one row per simulator family."""
    rows = [(family, _sim_groups(summary, family)) for family in families]
    rows = [(family, groups) for family, groups in rows if groups]
    if not rows:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(len(rows), 2, figsize=(14, 4.6 * len(rows)), dpi=100, sharey=True, squeeze=False)
    offsets = np.linspace(-0.008, 0.008, max(1, len(methods)))
    for row, (family, groups) in enumerate(rows):
        rates = [float(worlds[g]["test_click_rate"]["mean"]) for _, g in groups]
        for ax, prefix, title in ((axes[row][0], "", "as trained"),
                                  (axes[row][1], REFIT_PREFIX, "bias refitted on the training rows")):
            for index, method in enumerate(methods):
                xs, ys, errs = [], [], []
                for (_, group), rate in zip(groups, rates):
                    stats = summary[group].get(method.label, {}).get(f"{prefix}mean_ratio_truth")
                    if stats and stats["mean"] is not None:
                        xs.append(rate + offsets[index])
                        ys.append(stats["mean"])
                        errs.append(stats["sd"] or 0.0)
                if xs:
                    color, marker, line = _style(method.label, index)
                    ax.errorbar(xs, ys, yerr=errs, color=color, marker=marker, linestyle=line, capsize=3,
                                markersize=5, label=method.label, linewidth=1.2)
            ax.plot(rates, [float(worlds[g]["theory_ratio"]["mean"]) for _, g in groups], color="black",
                    linewidth=2.4, marker="*", markersize=11, label="theory mean(E/(1-p))/mean(E), exact p(x)")
            if all("per_video_theory_ratio" in worlds[g] for _, g in groups):
                ax.plot(rates, [float(worlds[g]["per_video_theory_ratio"]["mean"]) for _, g in groups],
                        color="black", linewidth=1.2, linestyle=":", label="theory with p known per video only")
            grid = np.linspace(0.0, max(0.75, max(rates) + 0.05), 200)
            ax.plot(grid, 1.0 / (1.0 - grid), color="grey", linestyle="--", label="1/(1-p): constant p")
            ax.axhline(1.0, color="grey", linewidth=0.8)
            ax.set_yscale("log")
            ax.set_xlabel("click rate of the test days")
            ax.set_title(f"{family} worlds: {title}", fontsize=10)
            ax.grid(True, which="both", alpha=0.25)
        axes[row][0].set_ylabel("mean served / mean true E[T|x]")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=8)
    fig.suptitle("Bias of the served expected watch time vs click rate (simulator, test days; mean ± sd over seeds)",
                 fontsize=11)
    fig.tight_layout(rect=(0, 0, 0.76, 0.97))
    _save(fig, path)
    plt.close(fig)
    return True


def plot_learning_curves(path: Path, curves: Mapping[str, Any], groups: Sequence[str],
                         methods: Sequence[MethodSpec]) -> bool:
    """Validation weighted per-user loss, mean ratio and (simulator) NDCG per epoch: resample vs weight."""
    labels = [m.label for m in methods if m.objective in ("wlr", "wlr-resample")]
    groups = [g for g in groups if g in curves and any(label in curves[g] for label in labels)]
    if not groups or not labels:
        return False
    plt = _pyplot()
    columns = [(WEIGHTED_PER_USER_LOSS, "validation weighted per-user loss ↓"),
               ("mean_ratio", "validation mean served / mean target"),
               ("ndcg_truth", "validation NDCG@k vs E[T|x] ↑")]
    fig, axes = plt.subplots(len(groups), len(columns), figsize=(13, 3.3 * len(groups)), dpi=100, squeeze=False)
    for row, group in enumerate(groups):
        for col, (metric, title) in enumerate(columns):
            ax = axes[row][col]
            drawn = False
            for index, label in enumerate(labels):
                curve = curves[group].get(label)
                if curve is None or metric not in curve:
                    continue
                xs = np.asarray(curve["examples_seen"]) / 1e6
                mean = np.asarray([np.nan if v is None else v for v in curve[metric]["mean"]], dtype=float)
                sd = np.asarray([0.0 if v is None else v for v in curve[metric]["sd"]], dtype=float)
                color, marker, line = _style(label, index)
                ax.plot(xs, mean, color=color, marker=marker, linestyle=line, label=label, markersize=4)
                ax.fill_between(xs, mean - sd, mean + sd, color=color, alpha=0.15)
                drawn = True
            if not drawn:
                ax.set_visible(False)
                continue
            if metric == "mean_ratio":
                ax.axhline(1.0, color="grey", linewidth=0.8)
            ax.set_title(f"{group}: {title}", fontsize=9)
            ax.set_xlabel("examples seen (millions)", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(True, alpha=0.25)
            ax.legend(fontsize=7)
    fig.suptitle("Learning curves: WLR by weighted gradient vs by resampling (mean ± sd over seeds)", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 1.0 - 0.35 / (3.3 * len(groups))))
    _save(fig, path)
    plt.close(fig)
    return True


def plot_kuairand_calibration(path: Path, runs: Sequence[Mapping[str, Any]]) -> bool:
    """Mean served vs mean observed T per decile on KuaiRand's test days, one line per method (first
    seed), as trained and times the held-out mean-matching constant."""
    kuairand = [r for r in runs if r["dataset"] == KUAIRAND]
    if not kuairand:
        return False
    first_seed = min(r["seed"] for r in kuairand)
    chosen = sorted((r for r in kuairand if r["seed"] == first_seed), key=lambda r: r["method"])
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.2), dpi=105, sharex=True, sharey=True)
    for ax, key, title in ((axes[0], "observed", "as trained"),
                           (axes[1], f"{RECAL_PREFIX}observed", "× the held-out mean-matching constant")):
        upper = 0.0
        for index, run in enumerate(chosen):
            bins = run["calibration_bins"].get(key)
            if not bins:
                continue
            xs = [b["mean_prediction"] for b in bins]
            ys = [b["mean_watch_s"] for b in bins]
            upper = max(upper, max(xs), max(ys))
            color, marker, line = _style(run["method"], index)
            ax.plot(xs, ys, color=color, marker=marker, linestyle=line, label=run["method"], markersize=4)
        ax.plot([0, upper], [0, upper], color="grey", linestyle="--", label="perfect calibration")
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_yscale("symlog", linthresh=1.0)
        ax.set_xlabel("mean served expected_watch_s in decile (s)")
        ax.set_title(f"{title} (seed {first_seed})", fontsize=10)
        ax.grid(True, alpha=0.25)
    axes[0].set_ylabel("mean observed watch time T (s)")
    axes[1].legend(fontsize=7, loc="upper left")
    fig.suptitle("KuaiRand test days: reliability by decile of the prediction", fontsize=11)
    fig.text(0.01, 0.005, "Data: KuaiRand (Gao et al., CIKM 2022), CC BY-SA 4.0", fontsize=6, color="grey")
    fig.tight_layout(rect=(0, 0.02, 1, 0.95))
    _save(fig, path)
    plt.close(fig)
    return True


def write_plots(out: Path, stem: str, config: WlrMethodsConfig, summary: Mapping[str, Any],
                worlds: Mapping[str, Any], curves: Mapping[str, Any],
                runs: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Write every plot the data allows; return ``{name: file name}`` of those written."""
    figures: dict[str, str] = {}
    bias = f"{stem}_bias_vs_ctr.png"
    if plot_bias_vs_ctr(out / bias, summary, worlds, config.methods, [family for family, _ in config.families()]):
        figures["bias_vs_ctr"] = bias
    curve_groups = [f"{family}@{rate:g}" for family, study in config.families()
                    for rate in study.learning_curve_click_rates] + [KUAIRAND]
    learning = f"{stem}_learning_curves.png"
    if plot_learning_curves(out / learning, curves, curve_groups, config.methods):
        figures["learning_curves"] = learning
    reliability = f"{stem}_kuairand_calibration.png"
    if plot_kuairand_calibration(out / reliability, runs):
        figures["kuairand_calibration"] = reliability
    return figures


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------


def _fmt(stats: Mapping[str, Any] | None, digits: int = 3) -> str:
    if not stats or stats.get("mean") is None:
        return "n/a"
    if stats.get("n", 0) > 1:
        return f"{stats['mean']:.{digits}f} ± {stats['sd']:.{digits}f}"
    return f"{stats['mean']:.{digits}f}"


def _num(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}"


SIM_COLUMNS = [("mean_ratio_truth", "served/true mean", 3),
               ("relative_calibration_error_truth", "rel. cal. err vs E", 3),
               ("refit_mean_ratio_truth", "served/true, bias refit", 3),
               ("refit_relative_calibration_error_truth", "rel. cal. err, bias refit", 3),
               ("ndcg_truth", "NDCG@k vs E", 4), ("odds_mean_ratio_truth", "odds/true mean", 3),
               ("weighted_per_user_loss", "wpu loss ↓", 4), ("xauc_clicked", "XAUC clicked", 4),
               ("seconds", "train s", 1)]
REAL_COLUMNS = [("mean_ratio", "served/observed mean", 3), ("relative_calibration_error", "rel. cal. err", 3),
                ("recal_mean_ratio", "served/observed, held-out mean match", 3),
                ("recal_relative_calibration_error", "rel. cal. err, held-out mean match", 3),
                ("weighted_per_user_loss", "wpu loss ↓", 4), ("xauc", "XAUC", 4), ("xauc_clicked", "XAUC clicked", 4),
                ("gauc", "GAUC", 4), ("rmse", "RMSE s", 2), ("odds_mean_ratio", "odds/observed mean", 3),
                ("seconds", "train s", 1)]


def _table(group_summary: Mapping[str, Any], columns: Sequence[tuple[str, str, int]],
           methods: Sequence[MethodSpec]) -> list[str]:
    lines = ["| method | " + " | ".join(label for _, label, _ in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for method in methods:
        stats = group_summary.get(method.label)
        if stats is None:
            continue
        lines.append(f"| {method.label} | " + " | ".join(_fmt(stats.get(key), digits) for key, _, digits in columns)
                     + " |")
    return lines


def _paired_difference(runs: Sequence[Mapping[str, Any]], group: str, left: str, right: str,
                       metric: str) -> dict[str, Any]:
    """Per-seed differences left − right of one metric in one group (same world, same seed)."""
    by_seed: dict[int, dict[str, float]] = {}
    for run in runs:
        if group_key(run) == group and run["method"] in (left, right):
            by_seed.setdefault(run["seed"], {})[run["method"]] = run["metrics"].get(metric, math.nan)
    diffs = [v[left] - v[right] for v in by_seed.values() if left in v and right in v]
    return _stats(diffs)


def _findings(config: WlrMethodsConfig, summary: Mapping[str, Any], worlds: Mapping[str, Any],
              default: Mapping[str, Any] | None) -> list[str]:
    """The headline numbers, computed from the results (so they stay true when the report is regenerated)."""
    lines = ["## Findings", ""]
    for family, prefix, how in ((LEARNABLE, REFIT_PREFIX, "learnable worlds, bias at the objective's optimum"),
                                (SIMULATOR, "", "personalised worlds, the ranker's network as trained")):
        rows = []
        for rate, group in _sim_groups(summary, family):
            wlr = summary[group].get(REFERENCE_METHOD, {})
            theory = worlds.get(group, {}).get("theory_ratio")
            if wlr and theory:
                rows.append(f"{rate:g}: {_fmt(wlr.get(f'{prefix}mean_ratio_truth'), 2)}× (theory {_fmt(theory, 2)}×)")
        if rows:
            lines.append(f"- **Plain WLR's e^(Wx+b) / true E[T]** ({how}), by click rate: " + "; ".join(rows) + ".")
        rows = []
        for rate, group in _sim_groups(summary, family):
            cells = [f"{label} {_fmt(summary[group][label].get(f'{prefix}mean_ratio_truth'), 3)}"
                     for label in ("wlr-exact", "wlr-corrected", "poisson") if label in summary[group]]
            if cells:
                rows.append(f"{rate:g}: " + ", ".join(cells))
        if rows:
            lines.append(f"- **Served / true mean of the objectives whose optimum is E[T|x]** ({how}): "
                         + "; ".join(rows) + ".")
    resample = [m.label for m in config.methods if m.objective == "wlr-resample"]
    groups = [g for family, _ in config.families() for _, g in _sim_groups(summary, family)]
    if resample and groups:
        deltas, ndcg, seconds = [], [], []
        for group in groups:
            for label in resample:
                if label in summary[group] and REFERENCE_METHOD in summary[group]:
                    deltas.append(_mean(summary[group][label], "refit_mean_ratio_truth")
                                  / _mean(summary[group][REFERENCE_METHOD], "refit_mean_ratio_truth") - 1.0)
                    ndcg.append(_mean(summary[group][label], "ndcg_truth")
                                - _mean(summary[group][REFERENCE_METHOD], "ndcg_truth"))
                    seconds.append(_mean(summary[group][label], "seconds")
                                   / _mean(summary[group][REFERENCE_METHOD], "seconds"))
        finite = [d for d in deltas if math.isfinite(d)]
        if finite:
            lines.append(f"- **Resampling vs weighting** (every simulator world, {', '.join(resample)} vs wlr, means "
                         f"across seeds): served mean with the bias at the optimum differs by "
                         f"{100 * min(finite):+.1f}% "
                         f"to {100 * max(finite):+.1f}%, NDCG@{config.ndcg_k} by {min(ndcg):+.4f} to {max(ndcg):+.4f}, "
                         f"training time ×{min(seconds):.2f} to ×{max(seconds):.2f}.")
    if default is not None:
        if default["chosen"]:
            row = default["methods"][default["chosen"]]
            lines.append(f"- **KuaiRand default**: `{default['chosen']}` meets every requirement: served/observed "
                         f"mean {_num(row['mean_ratio'])}, relative calibration error "
                         f"{_num(row['relative_calibration_error'])}, weighted per-user loss "
                         f"{_num(row['wpu_loss_gap'], 4)} from plain WLR's. Passing: "
                         + ", ".join(f"`{m}`" for m in default["passing"]) + ".")
        else:
            lines.append(f"- **KuaiRand default**: no candidate meets every requirement; the closest is "
                         f"`{default['closest']}`.")
    return lines + [""]


def _ranker_default_note() -> str:
    """What ``ytdnn train ranker`` trains by default, in words (the study's choice made the product's)."""
    objective = make_objective(RankerConfig().objective.name, **RankerConfig().objective.params)
    calibrated = getattr(objective, "calibrate", False)
    return (f"The ranker's default objective (`ytdnn train ranker` without `--objective`) is `{objective.name}` ranked by "
            f"`{objective.ranking_key}`" + (", its served value times the held-out mean-matching constant fitted after "
                                            "training (`ytdnn.training.calibration`)" if calibrated else "")
            + "; README (\"The default\") measures it trained by the ranker job itself.")


def render_report(config: WlrMethodsConfig, ranker_config: RankerConfig, summary: Mapping[str, Any],
                  worlds: Mapping[str, Any], checks: Sequence[Mapping[str, Any]], default: Mapping[str, Any] | None,
                  figures: Mapping[str, str], wall_s: float, runs: Sequence[Mapping[str, Any]],
                  runs_reused: int = 0) -> str:
    methods = list(config.methods)
    command = "ytdnn experiment wlr-methods --out reports" + (" --quick" if config.quick else "")
    train = ranker_config.train
    lines = [
        "# When is e^(Wx+b) the expected watch time? Weighted-LR training methods, measured", "",
        f"Regenerate with `{command}` (resumes from `{config.file_stem()}_results.json` when the config is "
        "unchanged; `--set resume=false` starts afresh). Every number below is a mean ± sd across seeds "
        f"({len(config.seeds)} on the simulator, {len(config.kuairand_seeds())} on KuaiRand).", "",
        "**Setup.** The ranker's own network and features (`RankerConfig()` defaults"
        + (f" with overrides {config.ranker}" if config.ranker else "") + f"): hidden {ranker_config.model.hidden}, "
        f"Adam lr {train.lr}, batch {train.batch_size}, weight decay {train.weight_decay}, dropout "
        f"{ranker_config.model.dropout}. Every method gets the same budget of examples seen — "
        f"{config.budget_epochs()} epochs of the training rows (resampling's expanded rows count) — the same "
        "initialisation seed and its output bias at its bias-only optimum; the best epoch by the validation "
        "weighted per-user loss is kept. Metrics are on the test days; 'truth' is the simulator's exact "
        "E[T|x] (unclicked impressions count 0).", "",
        "Each trained model is scored three ways: **as trained**; **+ bias refit** — only the output bias "
        "re-optimised on the training rows with the objective's own loss, i.e. the objective's optimum over "
        "the overall level (Adam leaves that level drifting by ±10–15% from epoch to epoch); and **× held-out "
        "mean match** — the served value times one constant, mean T / mean served on the validation day "
        f"(on the training rows when that day has fewer than {config.recalibration_min_validation_clicks} "
        "clicks). Neither changes the ranking of a one-head model.", "",
        f"{len(runs)} runs; training time summed over them: {sum(r['training']['seconds'] for r in runs) / 3600:.2f} h "
        f"on one thread (per run in the tables); wall time of the invocation that wrote this report: "
        f"{wall_s / 60:.1f} min ({runs_reused} runs reused from the results file).", "",
        "**The theory.** WLR's optimum odds are E[T|x]/(1 − p(x)), so a perfect plain-WLR model serves "
        "mean(E/(1−p))/mean(E) times the true mean: 1/(1 − p) if p were constant, more when p varies. "
        "The same odds are what the paper's *weighted per-user loss* rewards: for two impressions i, j on a "
        "page with independent clicks, putting i above j loses E_j·(1 − p_i) in expectation (j clicked, i "
        "not), the other order E_i·(1 − p_j), so the metric is minimised by ranking by E/(1 − p) — WLR's "
        "odds — not by E[T]; NDCG against the true E[T|x] rewards ranking by E[T].", "",
    ]
    lines += _findings(config, summary, worlds, default)
    if "bias_vs_ctr" in figures:
        lines += [f"![bias vs click rate]({figures['bias_vs_ctr']})", ""]

    for family, study in config.families():
        sim_groups = _sim_groups(summary, family)
        if not sim_groups:
            continue
        family_ranker = config.family_ranker_config(study)
        lines += [f"## Simulator: {FAMILY_TITLES.get(family, family)}", "",
                  f"Settings `{json.dumps(study.settings)}`; network hidden {family_ranker.model.hidden}, feature "
                  f"groups {family_ranker.features.groups}.", ""]
        for rate, group in sim_groups:
            world = worlds.get(group, {})
            refs = world.get("reference", {})
            oracle_odds = refs.get("oracle WLR optimum E[T|x]/(1-p)", {})
            lines += [f"### {family}, target click rate {rate:g}", "",
                      f"Realised test click rate {_fmt(world.get('test_click_rate'))}; the training labels' mean "
                      f"over the truth's (label noise every model inherits): {_fmt(world.get('train_label_ratio'))}; "
                      f"theory ratio {_fmt(world.get('theory_ratio'))} (with p known per video only "
                      f"{_fmt(world.get('per_video_theory_ratio'))}; constant-p value "
                      f"{_fmt(world.get('constant_p_ratio'))}); ranking by the exact WLR optimum E/(1−p) instead "
                      f"of E gives NDCG@{config.ndcg_k} {_fmt(oracle_odds.get('ndcg_truth'), 4)} and wpu loss "
                      f"{_fmt(oracle_odds.get('weighted_per_user_loss'), 4)} (ranking by the truth: wpu loss "
                      f"{_fmt(refs.get('oracle E[T|x]', {}).get('weighted_per_user_loss'), 4)}).", ""]
            lines += _table(summary[group], SIM_COLUMNS, methods) + [""]
    if checks:
        lines += ["## The issue's requirements on the simulator (means across seeds)", "",
                  "| check | model | measured | target | tolerance | |", "|---|---|---|---|---|---|"]
        for check in checks:
            lines.append(f"| {check['name']} | {check['variant']} | {_num(check['measured'])} | "
                         f"{_num(check['target'])} | ±{_num(check['tolerance'])} | "
                         f"{'pass' if check['passes'] else '**fail**'} |")
        lines.append("")

    resample_labels = [m.label for m in methods if m.objective == "wlr-resample"]
    if REFERENCE_METHOD in [m.label for m in methods] and resample_labels:
        lines += ["## Resampling vs weighting", "",
                  "Paired differences (same world, same seed) of resampled minus weighted WLR, mean ± sd across "
                  "seeds.",
                  ""]
        metrics = [("mean_ratio_truth", "Δ served/true mean"), ("refit_mean_ratio_truth", "Δ same, bias refit"),
                   ("ndcg_truth", "Δ NDCG@k vs E"), ("mean_ratio", "Δ served/observed mean"),
                   ("refit_mean_ratio", "Δ same, bias refit"), ("weighted_per_user_loss", "Δ wpu loss"),
                   ("xauc_clicked", "Δ XAUC clicked"), ("seconds", "Δ train s")]
        lines += ["| world | method | " + " | ".join(label for _, label in metrics) + " |",
                  "|---|---|" + "---|" * len(metrics)]
        groups = [g for family, _ in config.families() for _, g in _sim_groups(summary, family)]
        for group in groups + ([KUAIRAND] if KUAIRAND in summary else []):
            for label in resample_labels:
                if label not in summary[group] or REFERENCE_METHOD not in summary[group]:
                    continue
                cells = []
                for metric, _ in metrics:
                    if metric == "seconds":
                        left = summary[group].get(label, {}).get("seconds", {}).get("values", [])
                        right = summary[group].get(REFERENCE_METHOD, {}).get("seconds", {}).get("values", [])
                        stats = _stats([a - b for a, b in zip(left, right)])
                    else:
                        stats = _paired_difference(runs, group, label, REFERENCE_METHOD, metric)
                    cells.append(_fmt(stats, 4 if metric != "seconds" else 1))
                lines.append(f"| {group} | {label} | " + " | ".join(cells) + " |")
        lines.append("")
        if "learning_curves" in figures:
            lines += [f"![learning curves]({figures['learning_curves']})", ""]

    if KUAIRAND in summary:
        world = worlds.get(KUAIRAND, {})
        lines += ["## KuaiRand (fixed split, test days 20220505–20220508)", "",
                  f"Test click rate {_fmt(world.get('test_click_rate'))}; plain WLR's expected over-prediction "
                  f"1/(1 − CTR) = {_fmt(world.get('constant_p_ratio'))}, or "
                  f"{_fmt(world.get('per_video_theory_ratio'))} from per-video click rates (a lower bound: "
                  "p also varies within a video).", ""]
        lines += _table(summary[KUAIRAND], REAL_COLUMNS, methods) + [""]
        by_odds = [(m.label, summary[KUAIRAND][m.label]) for m in methods
                   if m.label in summary[KUAIRAND] and "by_odds_weighted_per_user_loss" in summary[KUAIRAND][m.label]]
        if by_odds:
            lines += ["Ranking by the raw odds e^z instead of the served value (same models; the weighted per-user "
                      "loss is minimised by ranking by E/(1 − p), see the theory above):", "",
                      "| method | wpu loss by served ↓ | wpu loss by odds ↓ | XAUC clicked by served | "
                      "XAUC clicked by odds |", "|---|---|---|---|---|"]
            for label, stats in by_odds:
                lines.append(f"| {label} | {_fmt(stats.get('weighted_per_user_loss'), 4)} | "
                             f"{_fmt(stats.get('by_odds_weighted_per_user_loss'), 4)} | "
                             f"{_fmt(stats.get('xauc_clicked'), 4)} | {_fmt(stats.get('by_odds_xauc_clicked'), 4)} |")
            lines.append("")
        if "kuairand_calibration" in figures:
            lines += [f"![KuaiRand reliability]({figures['kuairand_calibration']})", ""]
        if default is not None:
            crit = default["criteria"]
            lines += ["### The default served `expected_watch_s`", "",
                      f"Requirement (means across seeds): served/observed mean in [{crit['mean_ratio_low']}, "
                      f"{crit['mean_ratio_high']}], relative calibration error ≤ "
                      f"{crit['relative_calibration_error_max']}, weighted per-user loss at most "
                      f"{crit['wpu_loss_margin']} above plain WLR's ({_num(default['reference_wpu_loss'], 4)}).", "",
                      "| method | mean ratio | rel. cal. err | wpu loss − WLR's | passes |", "|---|---|---|---|---|"]
            for label, row in default["methods"].items():
                lines.append(f"| {label} | {_num(row['mean_ratio'])} | {_num(row['relative_calibration_error'])} | "
                             f"{_num(row['wpu_loss_gap'], 4)} | {'yes' if row['passes'] else 'no'} |")
            lines += ["", (f"**Chosen: `{default['chosen']}`** (lowest weighted per-user loss among those that pass)."
                           if default["chosen"] else
                           f"**No method meets every requirement**; closest: `{default['closest']}`."), ""]
            lines += [_ranker_default_note(), ""]
        lines += [CITATION, ""]
    return "\n".join(lines)
