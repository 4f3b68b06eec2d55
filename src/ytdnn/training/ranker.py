"""The ranker training job: data → split → features → ranking tower → run folder.

``train_ranker(config, out_dir)``:

1. loads the dataset (:func:`ytdnn.data.sources.load_dataset`) and splits it by date
   (:class:`~ytdnn.data.split.DateSplit`): train = date <= ``train_end``; the last
   ``validation_days`` training days are the validation slice for early stopping; the test days
   are never read;
2. computes the leak-free history features on the training part of the log (history is causal —
   each row only sees strictly earlier events — so rows get the same values as when the history
   is computed over the whole log);
3. fits the feature pipeline (vocabularies, quantiles) on the training days *minus* the
   validation days, i.e. on exactly the rows the network is trained on. Validation then behaves
   like the test: a video first seen on a validation day is out of vocabulary, as a video first
   seen on a test day is. (Nothing is retrained on the validation days afterwards.)
4. fits the objective's constants and its bias-only optimum on the training rows, builds
   :class:`~ytdnn.models.ranking.RankingNet` with the output bias at that optimum, trains with
   :class:`~ytdnn.training.trainer.Trainer`, early-stopping on the validation weighted per-user
   loss (pages = (user_id, date)) of the objective's ranking key — or on the validation loss
   when the validation days hold no (clicked, unclicked) pair with watch time;
   then, for an objective that ``calibrates`` (the default ``wlr-corrected``), fits its one
   calibration constant c = mean T / mean served on the validation days (the training rows when
   they hold fewer than :data:`~ytdnn.training.calibration.MIN_VALIDATION_CLICKS` clicks), see
   :mod:`ytdnn.training.calibration`; c is stored with the objective in ``model.json``;
5. with ``baselines.click`` does the same for the unweighted click model (objective ``click``)
   with the same network, features and seed;
6. with ``data.refit`` (the default) and validation days: refits the feature pipeline on *every*
   training day and retrains each model from the same seed on all of them, validation days
   included, for the epoch count that early stopping chose in steps 4–5 (no validation, no early
   stopping). The validation days are the days nearest the test days, and on KuaiRand training on
   them moves the whole (weighted per-user loss, XAUC) frontier (README, "Ranker tuning"). The run
   keeps the refitted models; ``training.json`` holds the refit's history plus the selection
   pass's under ``selection``.

The run folder, every file written atomically (``model.json`` last, so a folder without it is
an incomplete run)::

    config.json            resolved RankerConfig (JobConfig.save)
    features/              the fitted feature pipeline (pipeline.save)
    model.safetensors      network weights
    model.json             network config, objective config (name, params, fitted constants)
    training.json          per-epoch history, best epoch, validation metrics (refit: + "selection")
    baselines/click/       model.safetensors, model.json, training.json (features shared)

:func:`load_ranker` reads a model folder (the run folder or ``baselines/click``) back, without
pickle, into a :class:`LoadedRanker` that scores impression frames.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator, model_validator

from ytdnn.config import JobConfig
from ytdnn.data.csv_reader import OnBadRows
from ytdnn.data.schema import InteractionData
from ytdnn.data.sources import load_dataset
from ytdnn.data.split import DEFAULT_TEST_START, DEFAULT_TRAIN_END, DateSplit
from ytdnn.evaluation.metrics import gauc, weighted_per_user_loss, weighted_per_user_loss_details, xauc
from ytdnn.features.layout import FeatureLayout, RankingBatch
from ytdnn.features.ranking import RankingFeatureConfig, RankingFeaturePipeline
from ytdnn.models.ranking import RankingNet, load_weights, save_weights
from ytdnn.training.calibration import MIN_VALIDATION_CLICKS, calibration_rows, mean_match_factor
from ytdnn.training.losses import (RANKING_OBJECTIVES, RankingObjective, check_objective_name, make_objective,
                                   objective_from_config)
from ytdnn.training.trainer import (VALIDATION_LOSS, MetricFn, Trainer, TrainerConfig, TrainingHistory,
                                    predict_outputs)
from ytdnn.utils.io import atomic_write_json, read_json
from ytdnn.utils.seed import seed_everything


__all__ = ["BaselinesSection", "DataSection", "LoadedRanker", "ModelSection", "ObjectiveSection", "RankerConfig",
           "RankerError", "RunResult", "load_ranker", "train_ranker"]

log = logging.getLogger(__name__)

MODEL_FORMAT = "ytdnn-ranker-v1"
WEIGHTS_FILE = "model.safetensors"
MODEL_FILE = "model.json"
TRAINING_FILE = "training.json"
CONFIG_FILE = "config.json"
FEATURES_DIR = "features"
CLICK_BASELINE = "click"
WEIGHTED_PER_USER_LOSS = "weighted_per_user_loss"
VALIDATION_XAUC = "xauc"


class RankerError(ValueError):
    """The ranker job cannot run on this data/config, or a run folder is incomplete; says what."""


# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataSection(_Section):
    dataset: str = Field("kuairand-pure", description="'kuairand-pure' or a dataset folder")
    data_dir: str | None = Field(None, description="where kuairand-pure lives (default: $YTDNN_DATA_DIR, ../shared/data)")
    train_end: int = DEFAULT_TRAIN_END
    test_start: int = DEFAULT_TEST_START
    validation_days: int = Field(1, ge=0, description="last training days held out for early stopping")
    refit: bool = Field(True, description="after early stopping has chosen the epoch count on the validation days, "
                                          "retrain from scratch on every training day (validation days included) "
                                          "for that many epochs; the run keeps the refitted model")
    on_bad_rows: OnBadRows = "error"


class ModelSection(_Section):
    hidden: list[PositiveInt] = Field(default_factory=lambda: [256, 128],
                                      description="ReLU layer widths; [] = logistic regression")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)


DEFAULT_OBJECTIVE = "wlr-corrected"
"""The served default (issue 3, ``reports/wlr_methods.md``): WLR odds for ranking — the order that
minimises the weighted per-user loss — and c · odds · (1 − p̂) as the calibrated expected watch time."""


RANKER_OBJECTIVE_PARAMS: dict[str, dict[str, Any]] = {"wlr-corrected": {"click_loss_weight": 0.1}}
r"""The ranker job's defaults for an objective's parameters (the objective classes keep theirs,
which the weighted-LR study uses). ``wlr-corrected``'s click term weighs 0.1: with Adam the click
head's own parameters learn nearly the same at any weight (Adam's steps barely depend on a gradient's
scale), so the weight only sets how much the click task shapes the shared tower. At 1.0 the tower
learns each user's click level, which does not carry to later days and costs global XAUC
(README, "Ranker tuning"); at 0.1 the tower is WLR's and p̂ is read off it."""


class ObjectiveSection(_Section):
    name: str = Field(DEFAULT_OBJECTIVE, description="ranking objective; wlr-corrected ranks by the WLR odds and "
                                                     "serves calibrated odds·(1−p̂); 'wlr' is the paper's plain e^z")
    params: dict[str, Any] = Field(default_factory=dict, description="keyword parameters of the objective")

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        return check_objective_name(name)

    @model_validator(mode="before")
    @classmethod
    def _ranker_defaults(cls, tree: Any) -> Any:
        # The ranker's tuned parameters of an objective, under any the config gives itself.
        if not isinstance(tree, dict):
            return tree
        name = tree.get("name", DEFAULT_OBJECTIVE)
        defaults = RANKER_OBJECTIVE_PARAMS.get(name) if isinstance(name, str) else None
        if not defaults:
            return tree
        return tree | {"params": defaults | dict(tree.get("params") or {})}

    @model_validator(mode="after")
    def _buildable(self) -> ObjectiveSection:
        make_objective(self.name, **self.params)  # bad parameters fail at load time, not after feature fitting
        return self


class BaselinesSection(_Section):
    click: bool = Field(True, description="also train the unweighted click model with the same network")


def _default_train() -> TrainerConfig:
    # Chosen on KuaiRand by a backtest (the split moved 4 days back: train to 2022-04-29, validate
    # on 04-30, score 05-01..04; no test day read) and the validation days (README, "Ranker
    # tuning"). More epochs lower the weighted per-user loss but cost XAUC: the user-id embedding
    # memorises each user's level (the page mean of the logit), which does not carry over to later
    # days, while its within-page ranking does. Averaging the epoch-end weights (tail averaging
    # over all epochs) reaches the later epochs' within-page ranking at a smaller XAUC cost, and
    # the refit on every training day (data.refit) adds the most recent day. Early stopping on the
    # validation day's weighted per-user loss is a guard; on KuaiRand it keeps improving to the
    # cap, so the cap (5) is the choice that matters. L2 1e-5 (Adam's coupled decay, which shrinks
    # rarely seen embedding rows between visits) keeps the odds from running away.
    return TrainerConfig(batch_size=1024, lr=1e-3, epochs=5, patience=1, weight_decay=1e-5, average_last_epochs=5,
                         early_stopping_metric=WEIGHTED_PER_USER_LOSS)


class RankerConfig(JobConfig):
    """Config of ``ytdnn train ranker``. ``seed`` seeds the network init and, unless ``train.seed``
    is set, the trainer's shuffling and dropout."""

    data: DataSection = Field(default_factory=DataSection)
    features: RankingFeatureConfig = Field(default_factory=RankingFeatureConfig)
    model: ModelSection = Field(default_factory=ModelSection)
    objective: ObjectiveSection = Field(default_factory=ObjectiveSection)
    train: TrainerConfig = Field(default_factory=_default_train)
    baselines: BaselinesSection = Field(default_factory=BaselinesSection)
    seed: int = 0

    @model_validator(mode="before")
    @classmethod
    def _train_defaults(cls, tree: Any) -> Any:
        # A partial train section is completed with the ranker's defaults, not TrainerConfig's
        # (e.g. early stopping on the weighted per-user loss).
        if not isinstance(tree, dict) or not isinstance(tree.get("train"), dict):
            return tree
        return tree | {"train": _default_train().model_dump() | tree["train"]}


# ---------------------------------------------------------------------------------------------
# Results and loading
# ---------------------------------------------------------------------------------------------


@dataclass
class LoadedRanker:
    """A trained ranker read back from its folder: network, objective and feature pipeline."""

    network: RankingNet
    objective: RankingObjective
    pipeline: RankingFeaturePipeline
    model_dir: Path
    metadata: dict[str, Any]

    @property
    def ranking_key(self) -> str:
        """The score entry that orders items for this objective (``odds`` for the default
        ``wlr-corrected``, ``expected_watch_s`` for most others, ``p_click`` for the click models)."""
        return str(self.objective.ranking_key)

    def score_batch(self, batch: RankingBatch, batch_size: int = 16384) -> dict[str, np.ndarray]:
        """The objective's served quantities for every row of ``batch`` (float64 arrays)."""
        if len(batch) == 0:
            outputs = torch.zeros((0, self.network.n_heads))
        else:
            outputs = predict_outputs(self.network, batch, batch_size)
        with torch.no_grad():
            predictions = self.objective.predict(outputs)
        return {key: value.detach().cpu().numpy().astype(np.float64) for key, value in predictions.items()}

    def score_frame(self, impressions_with_history: pl.DataFrame, users: pl.DataFrame,
                    videos: pl.DataFrame) -> dict[str, np.ndarray]:
        """Scores for every row (in order): ``expected_watch_s``, ``logit``, and ``odds``/``p_click``
        where the objective has them. The frame must carry the history columns."""
        batch = self.pipeline.transform(impressions_with_history, users, videos)
        return self.score_batch(batch)


@dataclass
class RunResult:
    """What :func:`train_ranker` wrote and learned; ``ranker``/``baselines`` are the in-memory models."""

    run_dir: Path
    ranker: LoadedRanker
    history: TrainingHistory
    validation: dict[str, float]  # the restored (best) epoch's validation metrics; {} without validation
    baselines: dict[str, LoadedRanker] = field(default_factory=dict)
    baseline_histories: dict[str, TrainingHistory] = field(default_factory=dict)
    n_train: int = 0
    n_validation: int = 0
    validation_dates: list[int] = field(default_factory=list)
    seconds: float = 0.0


def load_ranker(model_dir: str | Path) -> LoadedRanker:
    """Read a model folder written by :func:`train_ranker` (the run folder or ``baselines/click``)."""
    model_dir = Path(model_dir)
    model_file = model_dir / MODEL_FILE
    if not model_file.is_file():
        raise RankerError(f"{model_dir}: no {MODEL_FILE}; not a ranker run folder, or an incomplete run")
    metadata = read_json(model_file)
    if metadata.get("format") != MODEL_FORMAT:
        raise RankerError(f"{model_file}: format must be {MODEL_FORMAT!r}, got {metadata.get('format')!r}")
    network = RankingNet.from_config(metadata["network"])
    weights = model_dir / metadata.get("weights", WEIGHTS_FILE)
    if not weights.is_file():
        raise RankerError(f"{model_dir}: weights file {weights.name} is missing")
    load_weights(network, weights)
    network.eval()
    objective = objective_from_config(metadata["objective"])
    features_dir = (model_dir / metadata.get("features", FEATURES_DIR)).resolve()
    if not features_dir.is_dir():
        raise RankerError(f"{model_dir}: feature pipeline folder {features_dir} is missing")
    pipeline = RankingFeaturePipeline.load(features_dir)
    if pipeline.layout.to_dict() != network.layout.to_dict():
        raise RankerError(f"{model_dir}: the feature pipeline's layout in {features_dir} differs from the network's")
    return LoadedRanker(network, objective, pipeline, model_dir, metadata)


# ---------------------------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------------------------


def page_ids(frame: pl.DataFrame) -> np.ndarray:
    """One id per (user_id, date) page, as the weighted per-user loss defines pages."""
    keys = np.stack([frame["user_id"].to_numpy(), frame["date"].to_numpy().astype(np.int64)], axis=1)
    _, inverse = np.unique(keys, axis=0, return_inverse=True)
    return inverse.reshape(-1).astype(np.int64)


def _validation_metric_fn(frame: pl.DataFrame, ranking_key: str) -> MetricFn:
    """Weighted per-user loss (pages = (user_id, date)) and GAUC of the objective's ranking score."""
    pages = page_ids(frame)
    users = frame["user_id"].to_numpy()
    is_click = frame["is_click"].to_numpy()
    watch = frame["watch_time_s"].to_numpy()

    def metric_fn(predictions: dict[str, np.ndarray]) -> dict[str, float]:
        score = np.asarray(predictions[ranking_key], dtype=np.float64)
        return {WEIGHTED_PER_USER_LOSS: weighted_per_user_loss(pages, is_click, watch, score),
                "gauc": gauc(users, is_click, score), VALIDATION_XAUC: xauc(watch, score)}

    return metric_fn


def _has_weighted_pairs(frame: pl.DataFrame) -> bool:
    details = weighted_per_user_loss_details(page_ids(frame), frame["is_click"].to_numpy(),
                                             frame["watch_time_s"].to_numpy(), np.zeros(frame.height))
    return details["n_pairs"] > 0 and details["weight_sum"] > 0


def _unscaled_mean_factor(objective: RankingObjective, network: RankingNet, rows: RankingBatch,
                          eval_batch_size: int) -> float:
    """mean T / mean served on ``rows``, the served value computed with the objective's constant cleared."""
    objective.set_watch_scale(None)
    with torch.no_grad():
        served = objective.predict(predict_outputs(network, rows, eval_batch_size))["expected_watch_s"]
    return mean_match_factor(served, rows.watch_time_s)


def fit_calibration(objective: RankingObjective, network: RankingNet, train_batch: RankingBatch,
                    validation_batch: RankingBatch | None, eval_batch_size: int = 16384,
                    min_validation_clicks: int = MIN_VALIDATION_CLICKS) -> dict[str, Any]:
    """Fit the objective's calibration constant c on held-out rows (see :mod:`ytdnn.training.calibration`);
    return what was done, for ``training.json``. The served value is computed unscaled (c cleared)."""
    where, rows = calibration_rows(validation_batch, train_batch, min_validation_clicks)
    scale = _unscaled_mean_factor(objective, network, rows, eval_batch_size)
    objective.set_watch_scale(scale)
    return {"rows": where, "n_rows": len(rows), "n_clicks": int(rows.is_click.sum()),
            "min_validation_clicks": min_validation_clicks, "watch_scale": scale,
            "mean_ratio_before": 1.0 / scale}


def _transfer_calibration(objective: RankingObjective, selection_network: RankingNet, selection_rows: RankingBatch,
                          held_out_scale: float, refit_network: RankingNet, refit_rows: RankingBatch,
                          eval_batch_size: int) -> dict[str, Any]:
    r"""The refitted model's calibration constant when the refit has no held-out rows left.

    The selection pass measured how far the level moves out of sample: its held-out constant
    c_val against its in-sample one c_in (on its own training rows), g = c_val / c_in (a network
    is optimistic on rows it memorised). The refitted model, trained on every day, can only be
    matched in sample, so it serves with

    .. math:: c = c_{in}^{refit} \cdot \frac{c_{val}^{sel}}{c_{in}^{sel}},

    i.e. its in-sample match corrected by the out-of-sample gap the selection pass saw. The
    objective ends with ``watch_scale`` = c."""
    in_sample_selection = _unscaled_mean_factor(objective, selection_network, selection_rows, eval_batch_size)
    in_sample_refit = _unscaled_mean_factor(objective, refit_network, refit_rows, eval_batch_size)
    gap = held_out_scale / in_sample_selection
    scale = in_sample_refit * gap
    objective.set_watch_scale(scale)
    return {"rows": "train (refit) x validation gap (selection)", "n_rows": len(refit_rows),
            "n_clicks": int(refit_rows.is_click.sum()), "watch_scale": scale,
            "in_sample_scale_refit": in_sample_refit, "in_sample_scale_selection": in_sample_selection,
            "held_out_scale_selection": held_out_scale, "out_of_sample_gap": gap, "mean_ratio_before": 1.0 / scale}


def _train_one(objective: RankingObjective, config: RankerConfig, layout: FeatureLayout, train_batch: RankingBatch,
               validation_batch: RankingBatch | None, validation_frame: pl.DataFrame | None,
               trainer_config: TrainerConfig, checkpoint_name: str | None = None
               ) -> tuple[RankingNet, TrainingHistory, dict[str, Any]]:
    """Fit the objective's constants, start at its bias-only optimum, train (the best epoch is kept), then
    fit its calibration constant when it ``calibrates``; returns (network, history, facts for training.json)."""
    objective.fit(train_batch.is_click, train_batch.watch_time_s)
    init_bias = objective.init_bias(train_batch.is_click, train_batch.watch_time_s)
    torch.manual_seed(config.seed)  # the network init: the same for the main model and the baseline
    network = RankingNet(layout, hidden=config.model.hidden, n_heads=objective.n_heads, dropout=config.model.dropout)
    network.set_output_bias(init_bias)
    metric_fn = None
    if validation_frame is not None:
        metric_fn = _validation_metric_fn(validation_frame, objective.ranking_key)
    history = Trainer(network, objective, train_batch, validation_batch, trainer_config, metric_fn,
                      checkpoint_name=checkpoint_name).fit()
    facts: dict[str, Any] = {"init_bias": init_bias, "ranking_key": objective.ranking_key}
    if objective.calibrates:
        facts["calibration"] = fit_calibration(objective, network, train_batch, validation_batch,
                                               trainer_config.eval_batch_size)
        log.info("ranker: %s calibration constant %.4f fitted on the %s rows", objective.name,
                 facts["calibration"]["watch_scale"], facts["calibration"]["rows"])
    return network, history, facts


def _refit_trainer_config(trainer_config: TrainerConfig, selection: TrainingHistory) -> TrainerConfig:
    """The refit's settings: the selection's best epoch count, no validation, no early stopping."""
    epochs = selection.best_epoch or len(selection.epochs)
    return trainer_config.model_copy(update={"epochs": epochs, "patience": 0,
                                             "early_stopping_metric": VALIDATION_LOSS, "mode": "min"})


def _write_model(model_dir: Path, network: RankingNet, objective: RankingObjective, history: TrainingHistory,
                 pipeline: RankingFeaturePipeline, features_rel: str, training_extra: dict[str, Any]) -> LoadedRanker:
    # model.json last: a folder without it is an incomplete run that load_ranker refuses.
    save_weights(network, model_dir / WEIGHTS_FILE)
    atomic_write_json(model_dir / TRAINING_FILE, history.to_dict() | training_extra)
    metadata = {"format": MODEL_FORMAT, "network": network.to_config(), "objective": objective.to_config(),
                "ranking_key": objective.ranking_key, "weights": WEIGHTS_FILE, "features": features_rel}
    atomic_write_json(model_dir / MODEL_FILE, metadata)
    return LoadedRanker(network.eval(), objective, pipeline, model_dir, metadata)


def _trainer_config(config: RankerConfig, has_validation: bool, has_pairs: bool) -> tuple[TrainerConfig, str | None]:
    """The trainer settings actually used, and why they differ from the config (None if they do not)."""
    train = config.train
    if train.seed is None:
        train = train.model_copy(update={"seed": config.seed})
    metric = train.early_stopping_metric
    if not has_validation and metric != VALIDATION_LOSS:
        return train.model_copy(update={"early_stopping_metric": VALIDATION_LOSS}), \
            "no validation days: trained for the configured epochs without early stopping"
    if has_validation and metric in (WEIGHTED_PER_USER_LOSS, "gauc", VALIDATION_XAUC) and not has_pairs:
        return train.model_copy(update={"early_stopping_metric": VALIDATION_LOSS, "mode": "min"}), \
            (f"early stopping on {VALIDATION_LOSS} instead of {metric}: the validation days have no "
             "(clicked, unclicked) pair with watch time on a page")
    return train, None


def train_ranker(config: RankerConfig, out_dir: str | Path, *, data: InteractionData | None = None) -> RunResult:
    """Train the ranker (and the click baseline) described by ``config``; write the run folder ``out_dir``.

    ``data`` skips loading (tests, notebooks); otherwise ``config.data`` says what to load.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    seed_everything(config.seed)
    if data is None:
        data = load_dataset(config.data.dataset, config.data.data_dir, on_bad_rows=config.data.on_bad_rows)
    split = DateSplit(train_end=config.data.train_end, test_start=config.data.test_start,
                      validation_days=config.data.validation_days)
    pipeline = RankingFeaturePipeline(config.features)
    train_part = data.impressions.filter(split.train_mask())
    if train_part.height == 0:
        raise RankerError(f"data: no impression on or before train_end={config.data.train_end}")
    validation_dates = split.validation_dates(train_part)
    # History is causal (strictly earlier events only), so computing it on the training part of
    # the log gives the training rows the same values as computing it on the whole log.
    with_history = pipeline.add_history(train_part, data.videos)
    is_validation = pl.col("date").is_in(validation_dates)
    fit_frame = with_history.filter(~is_validation)
    validation_frame = with_history.filter(is_validation) if validation_dates else None
    if fit_frame.height == 0:
        raise RankerError(f"data: every training day is a validation day (validation_days="
                          f"{config.data.validation_days}, training dates {validation_dates}); lower validation_days")
    log.info("ranker: %d training rows, %d validation rows (dates %s)", fit_frame.height,
             0 if validation_frame is None else validation_frame.height, validation_dates)

    pipeline.fit(fit_frame, data.users, data.videos)
    layout = pipeline.layout
    train_batch = pipeline.transform(fit_frame, data.users, data.videos)
    validation_batch = (pipeline.transform(validation_frame, data.users, data.videos)
                        if validation_frame is not None else None)
    has_pairs = validation_frame is not None and _has_weighted_pairs(validation_frame)
    trainer_config, note = _trainer_config(config, validation_frame is not None, has_pairs)
    if note:
        log.warning("ranker: %s", note)

    out_dir.mkdir(parents=True, exist_ok=True)
    config.save(out_dir / CONFIG_FILE)
    extra = {"validation_dates": validation_dates, "n_train": len(train_batch),
             "n_validation": 0 if validation_batch is None else len(validation_batch),
             "trainer": trainer_config.model_dump(mode="json"), "note": note}

    objective = make_objective(config.objective.name, **config.objective.params)
    names = [objective.name]
    if config.baselines.click and objective.name not in ("click", "click-only"):
        names.append(CLICK_BASELINE)
    # Pass 1 (selection): train on the training days minus the validation days, early-stop on
    # the validation days.
    selected: dict[str, tuple[RankingObjective, RankingNet, TrainingHistory, dict[str, Any]]] = {}
    for name in names:
        current = objective if name == objective.name else make_objective(CLICK_BASELINE)
        selected[name] = (current, *_train_one(current, config, layout, train_batch, validation_batch,
                                                validation_frame, trainer_config))
    refit = config.data.refit and validation_frame is not None
    final_pipeline, final_batch = pipeline, train_batch
    if refit:
        # Pass 2 (refit): the validation days are the days nearest the test days and carry the
        # most current user and video behaviour, so they are trained on too: features refitted
        # on every training day, each model retrained from the same init for the chosen epochs.
        final_pipeline = RankingFeaturePipeline(config.features).fit(with_history, data.users, data.videos)
        final_batch = final_pipeline.transform(with_history, data.users, data.videos)
    final_pipeline.save(out_dir / FEATURES_DIR)
    extra["n_train"] = len(final_batch)
    extra["refit"] = refit

    models: dict[str, LoadedRanker] = {}
    histories: dict[str, TrainingHistory] = {}
    for name, (current, network, history, facts) in selected.items():
        training_extra = extra | facts
        if refit:
            refit_config = _refit_trainer_config(trainer_config, history)
            training_extra = extra | {"selection": history.to_dict(), "refit_trainer": refit_config.model_dump(mode="json")}
            selected_network = network
            network, history, refit_facts = _train_one(current, config, final_pipeline.layout, final_batch, None,
                                                       None, refit_config, checkpoint_name=f"{current.name}-refit")
            training_extra |= refit_facts | {"selection_facts": facts}
            if current.calibrates and facts["calibration"]["rows"] == "validation":
                training_extra["calibration"] = _transfer_calibration(
                    current, selected_network, train_batch, facts["calibration"]["watch_scale"], network,
                    final_batch, trainer_config.eval_batch_size)
        is_main = name == objective.name
        model_dir = out_dir if is_main else out_dir / "baselines" / CLICK_BASELINE
        models[name] = _write_model(model_dir, network, current, history, final_pipeline,
                                    FEATURES_DIR if is_main else f"../../{FEATURES_DIR}", training_extra)
        histories[name] = history if not refit else TrainingHistory.from_dict(training_extra["selection"])
    ranker = models[objective.name]
    history = histories[objective.name]
    baselines = {CLICK_BASELINE: models[CLICK_BASELINE]} if CLICK_BASELINE in models else {}
    baseline_histories = {CLICK_BASELINE: histories[CLICK_BASELINE]} if CLICK_BASELINE in models else {}
    train_batch = final_batch

    best = history.best
    return RunResult(out_dir, ranker, history, dict(best.validation) if best else {}, baselines, baseline_histories,
                     len(train_batch), extra["n_validation"], validation_dates, time.perf_counter() - started)
