"""Tests of the weighted-LR methods study (ytdnn.experiments.wlr_methods).

The expensive part — what the issue's "what it must show" asks of the simulator — trains the real
objectives with the real trainer, feature pipeline and network on two small simulator worlds
once per session (module fixtures), then each test asserts one requirement.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from ytdnn.config import ConfigError
from ytdnn.data.simulator import SimulatorConfig, simulate
from ytdnn.evaluation.metrics import MetricInputError
from ytdnn.experiments import wlr_methods
from ytdnn.experiments.wlr_methods import (
    _Labels,
    DEFAULT_METHODS,
    LEARNABLE_RANKER,
    LEARNABLE_SIMULATOR_SETTINGS,
    PreparedWorld,
    WlrMethodsConfig,
    WlrMethodsError,
    choose_default,
    default_candidates,
    evaluate_predictions,
    graded_ndcg_at_k,
    prepare_world,
    refit_output_bias,
    requirement_checks,
    run_wlr_methods,
    summarise_runs,
    train_method,
    wlr_theory_ratio,
)
from ytdnn.features.layout import RankingBatch
from ytdnn.training.losses import make_objective
from ytdnn.training.ranker import RankerConfig
from ytdnn.training.trainer import Trainer, TrainerConfig

# ---------------------------------------------------------------------------------------------
# graded NDCG@k, worked by hand
# ---------------------------------------------------------------------------------------------


def test_graded_ndcg_on_a_hand_worked_case() -> None:
    # Page 0: relevance [3, 1, 0], scores [0.1, 0.9, 0.5] → ranked rel 1, 0, 3:
    #   DCG = 1/log2(2) + 0/log2(3) + 3/log2(4) = 1 + 0 + 1.5 = 2.5
    #   IDCG = 3/log2(2) + 1/log2(3) + 0 = 3 + 0.6309298 = 3.6309298 → NDCG = 0.6885289
    # Page 1: relevance [2, 0] with tied scores [1, 1]: each row gets the mean discount of
    #   positions 0 and 1, (1 + 1/log2(3))/2 = 0.8154649 → DCG = 2 · 0.8154649 = 1.6309298,
    #   IDCG = 2 → NDCG = 0.8154649
    # Page 2: one row, no ranking decision → skipped.
    # Mean over pages 0 and 1 = (0.6885289 + 0.8154649) / 2 = 0.7519969
    pages = [0, 0, 0, 1, 1, 2]
    relevance = [3.0, 1.0, 0.0, 2.0, 0.0, 5.0]
    score = [0.1, 0.9, 0.5, 1.0, 1.0, 0.0]
    assert graded_ndcg_at_k(pages, relevance, score, k=10) == pytest.approx(0.7519969, abs=1e-7)
    # k = 1: page 0 DCG = 1, IDCG = 3 → 1/3; page 1 (tie over positions 0, 1 with discounts 1, 0)
    # → mean discount 1/2, DCG = 1, IDCG = 2 → 1/2. Mean = (1/3 + 1/2) / 2 = 5/12.
    assert graded_ndcg_at_k(pages, relevance, score, k=1) == pytest.approx(5.0 / 12.0)


def test_graded_ndcg_is_one_for_the_ideal_order_and_order_free() -> None:
    rng = np.random.default_rng(0)
    pages = rng.integers(0, 30, size=400)
    relevance = rng.exponential(20.0, size=400)
    assert graded_ndcg_at_k(pages, relevance, relevance) == pytest.approx(1.0)
    assert graded_ndcg_at_k(pages, relevance, 3.0 * relevance + 7.0) == pytest.approx(1.0)  # monotone = same
    shuffled = rng.permutation(400)
    assert graded_ndcg_at_k(pages[shuffled], relevance[shuffled], relevance[shuffled] * -1.0) < 0.9
    # A constant score is the expected NDCG of a random order, not the log order's.
    constant = graded_ndcg_at_k(pages, relevance, np.zeros(400))
    assert constant == pytest.approx(graded_ndcg_at_k(pages[::-1], relevance[::-1], np.zeros(400)))


def test_graded_ndcg_edge_cases_and_bad_input() -> None:
    assert math.isnan(graded_ndcg_at_k([0, 1], [1.0, 2.0], [0.0, 0.0]))  # every page has one row
    assert math.isnan(graded_ndcg_at_k([0, 0], [0.0, 0.0], [1.0, 2.0]))  # IDCG = 0
    assert math.isnan(graded_ndcg_at_k([], [], []))
    with pytest.raises(MetricInputError, match="relevance row 1"):
        graded_ndcg_at_k([0, 0], [1.0, -1.0], [0.0, 1.0])
    with pytest.raises(MetricInputError, match="score row 0"):
        graded_ndcg_at_k([0, 0], [1.0, 1.0], [math.nan, 1.0])
    with pytest.raises(MetricInputError, match="differ in length"):
        graded_ndcg_at_k([0, 0], [1.0], [0.0, 1.0])
    with pytest.raises(MetricInputError, match="k must be"):
        graded_ndcg_at_k([0, 0], [1.0, 2.0], [0.0, 1.0], k=0)


def test_wlr_theory_ratio_by_hand() -> None:
    # E = [1, 1], p = [0, 0.5]: mean(E/(1-p)) = (1 + 2)/2 = 1.5; mean(E) = 1 → 1.5.
    assert wlr_theory_ratio([0.0, 0.5], [1.0, 1.0]) == pytest.approx(1.5)
    # Constant p: 1/(1 − p) whatever E is.
    assert wlr_theory_ratio([0.44] * 3, [1.0, 5.0, 9.0]) == pytest.approx(1.0 / 0.56)
    # High-p rows weigh more when they also carry more E: E = [1, 3], p = [0, 0.5] → (1 + 6)/2 / 2 = 1.75.
    assert wlr_theory_ratio([0.0, 0.5], [1.0, 3.0]) == pytest.approx(1.75)
    with pytest.raises(MetricInputError, match="p_click row 1"):
        wlr_theory_ratio([0.2, 1.0], [1.0, 1.0])


# ---------------------------------------------------------------------------------------------
# Bias-only convergence through the real trainer (minibatch loop, batch_transform, Adam)
# ---------------------------------------------------------------------------------------------


class BiasOnly(nn.Module):
    """A model with no features: one learnable logit per head, started at 0."""

    def __init__(self, n_heads: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(n_heads))

    def forward(self, batch: RankingBatch) -> Tensor:
        return self.bias.expand(len(batch), -1)


def featureless_batch(n: int = 20_000, seed: int = 5) -> RankingBatch:
    gen = torch.Generator().manual_seed(seed)
    is_click = (torch.rand(n, generator=gen) < 0.3).float()
    watch = -40.0 * torch.log(torch.rand(n, generator=gen)) * is_click  # exponential, mean 40 s
    return RankingBatch(torch.zeros((n, 0), dtype=torch.long), [], torch.zeros((n, 0)), is_click, watch)


def train_bias_only(name: str, batch: RankingBatch, **params: Any) -> float:
    objective = make_objective(name, **params).fit(batch.is_click, batch.watch_time_s)
    model = BiasOnly(objective.n_heads)  # from 0, not from init_bias: the trainer must get there
    config = TrainerConfig(batch_size=len(batch), lr=0.1, epochs=200, patience=0, progress=False, seed=1)
    Trainer(model, objective, batch, None, config).fit()
    with torch.no_grad():
        served = objective.predict(model(batch)[:1])["expected_watch_s"]
    return float(served[0])


BATCH = featureless_batch()
N_ROWS = len(BATCH)
N_CLICKS = int(BATCH.is_click.sum())
TOTAL_WATCH = float(BATCH.watch_time_s.double().sum())


def test_trainer_brings_bias_only_wlr_to_total_watch_over_unclicked() -> None:
    assert train_bias_only("wlr", BATCH) == pytest.approx(TOTAL_WATCH / (N_ROWS - N_CLICKS), rel=0.01)


def test_trainer_brings_bias_only_exact_wlr_to_the_mean_watch_time() -> None:
    assert train_bias_only("wlr-exact", BATCH) == pytest.approx(TOTAL_WATCH / N_ROWS, rel=0.01)


@pytest.mark.parametrize("copies", ["poisson", "round"])
def test_trainer_brings_bias_only_resampled_wlr_to_wlr_within_sampling_error(copies: str) -> None:
    served = train_bias_only("wlr-resample", BATCH, copies=copies)
    target = TOTAL_WATCH / (N_ROWS - N_CLICKS)
    # Sampling error of one epoch's expansion: the positive copies number Poisson(c·ΣT) = Poisson(k)
    # in expectation k, relative sd 1/sqrt(k) (≈ 1.3%); stochastic rounding has less. The trained
    # bias averages many epochs' draws, so 3 sd of a single epoch bounds its error.
    relative_sd = 1.0 / math.sqrt(N_CLICKS)
    assert abs(served / target - 1.0) < 3 * relative_sd
    assert 3 * relative_sd < 0.05  # tight enough to tell WLR (target) from exact WLR (30% lower)


class LinearNet(nn.Module):
    """z = dense · w + output_bias: enough of a network for refit_output_bias."""

    def __init__(self, n_features: int, n_heads: int) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.weight = nn.Parameter(torch.randn(n_features, n_heads, generator=gen) * 0.5)
        self.output_bias = nn.Parameter(torch.full((n_heads,), 0.3))

    def forward(self, batch: RankingBatch) -> Tensor:
        return batch.dense @ self.weight + self.output_bias


def featured_batch(n: int = 4000) -> RankingBatch:
    gen = torch.Generator().manual_seed(9)
    dense = torch.randn(n, 3, generator=gen)
    is_click = (torch.rand(n, generator=gen) < torch.sigmoid(dense[:, 0])).float()
    watch = torch.exp(3.0 + 0.5 * dense[:, 1] + 0.3 * torch.randn(n, generator=gen)) * is_click
    return RankingBatch(torch.zeros((n, 0), dtype=torch.long), [], dense, is_click, watch)


def test_refit_output_bias_reaches_each_objectives_bias_optimality_condition() -> None:
    batch = featured_batch()
    click, watch = batch.is_click.double(), batch.watch_time_s.double()
    # Poisson: d/dδ Σ (e^{z+δ} − T(z+δ)) = 0  ⇔  Σ e^{z+δ} = Σ T: the served mean equals the labels'.
    poisson = make_objective("poisson").fit(batch.is_click, batch.watch_time_s)
    net = LinearNet(3, 1)
    before = float(net.output_bias.detach())
    shift = refit_output_bias(net, poisson, batch)
    assert float(net.output_bias.detach()) == pytest.approx(before + shift[0], abs=1e-6)
    with torch.no_grad():
        z = net(batch)[:, 0].double()
    assert float(torch.exp(z).sum()) == pytest.approx(float(watch.sum()), rel=1e-5)
    # WLR: Σ_clicked T σ(−z) = Σ_unclicked σ(z) (weighted positives balance weighted negatives).
    wlr = make_objective("wlr").fit(batch.is_click, batch.watch_time_s)
    net = LinearNet(3, 1)
    refit_output_bias(net, wlr, batch)
    with torch.no_grad():
        z = net(batch)[:, 0].double()
    positive = float((click * watch * torch.sigmoid(-z)).sum())
    negative = float(((1 - click) * torch.sigmoid(z)).sum())
    assert positive == pytest.approx(negative, rel=1e-5)
    # Two heads (wlr-corrected): the click head's condition is Σ σ(z₁) = k.
    corrected = make_objective("wlr-corrected").fit(batch.is_click, batch.watch_time_s)
    net = LinearNet(3, 2)
    refit_output_bias(net, corrected, batch)
    with torch.no_grad():
        z1 = net(batch)[:, 1].double()
    assert float(torch.sigmoid(z1).sum()) == pytest.approx(float(click.sum()), rel=1e-5)


def test_a_served_scale_changes_calibration_but_not_ranking() -> None:
    rng = np.random.default_rng(1)
    n = 200
    is_click = (rng.random(n) < 0.4).astype(np.int8)
    labels = _Labels(pages=np.repeat(np.arange(20), 10), users=np.repeat(np.arange(20), 10), is_click=is_click,
                     watch_time_s=is_click * rng.exponential(30.0, n), true_p_click=None, true_expected_watch_s=None)
    served = rng.exponential(20.0, n)
    plain, _ = evaluate_predictions(labels, {"expected_watch_s": served, "odds": served}, "expected_watch_s")
    scaled, _ = evaluate_predictions(labels, {"expected_watch_s": served, "odds": served}, "expected_watch_s",
                                     served_scale=2.0)
    assert scaled["mean_ratio"] == pytest.approx(2.0 * plain["mean_ratio"])
    assert scaled["weighted_per_user_loss"] == plain["weighted_per_user_loss"]
    assert "by_odds_weighted_per_user_loss" not in scaled  # the odds still are the ranking score


# ---------------------------------------------------------------------------------------------
# The issue's simulator requirements, on small learnable worlds
# ---------------------------------------------------------------------------------------------

# The study's learnable worlds: p(x) and E[T | click, x] depend only on what the network sees —
# the video (its id and duration) and the tab — with every video shown often, so a trained model
# can reach the population optimum and the theory applies to what it learns. (In the study's
# personalised worlds p(x) also depends on a user × video affinity that 3 epochs learn in part.)
LEARNABLE_WORLD: dict[str, Any] = dict(LEARNABLE_SIMULATOR_SETTINGS)
TEST_RANKER = RankerConfig().merged(LEARNABLE_RANKER)
WLR_FAMILY = ("wlr", "wlr-resample", "wlr-exact", "wlr-corrected")


def world(click_rate: float, **changes: Any) -> PreparedWorld:
    data = simulate(SimulatorConfig(**(LEARNABLE_WORLD | changes), target_click_rate=click_rate, seed=0))
    return prepare_world(data, TEST_RANKER, key=f"test@{click_rate}", dataset="simulator", click_rate=click_rate,
                         seed=0)


def served_over_true(prepared: PreparedWorld, label: str, epochs: int, ranker: RankerConfig = TEST_RANKER) -> float:
    """Mean served / mean true E[T|x] on the test days, after the output-bias refit.

    The refit re-optimises the output bias with the objective's own loss, i.e. finishes the
    optimisation of the one parameter whose noise Adam leaves largest (the overall level drifts
    ±10% from epoch to epoch at lr 1e-3, more at CTR 1%). The tests judge the objectives' optima,
    not that drift; the study reports both.
    """
    method = next(m for m in DEFAULT_METHODS if m.label == label)
    record = train_method(prepared, method, ranker, seed=0, epochs=epochs)
    return float(record["metrics"]["refit_mean_ratio_truth"])


@pytest.fixture(scope="module")
def world_44() -> PreparedWorld:
    return world(0.44)


@pytest.fixture(scope="module")
def world_01() -> PreparedWorld:
    # 3× the rows (≈ 2,150 training clicks) to keep the labels' own sampling deviation small.
    return world(0.01, impressions_per_user_day=60.0)


def test_at_ctr_44_plain_wlr_over_predicts_by_the_theory_amount(world_44: PreparedWorld) -> None:
    theory = world_44.info["theory_ratio"]
    assert 1.9 < theory < 2.6  # p varies: more than the constant-p 1/(1 − 0.44) = 1.79
    measured = served_over_true(world_44, "wlr", epochs=3)
    assert abs((measured - 1.0) - (theory - 1.0)) <= 0.1 * (theory - 1.0)


@pytest.mark.parametrize("label", ["wlr-exact", "wlr-corrected"])
def test_at_ctr_44_exact_and_corrected_wlr_serve_the_true_mean(world_44: PreparedWorld, label: str) -> None:
    assert served_over_true(world_44, label, epochs=3) == pytest.approx(1.0, abs=0.05)


def test_at_ctr_1_every_wlr_variant_serves_the_true_mean(world_01: PreparedWorld) -> None:
    # At CTR 1% WLR's own bias, theory ratio − 1 = mean-weighted p/(1 − p), is about 1.5%.
    assert 1.0 < world_01.info["theory_ratio"] < 1.02
    # The world's draw itself is off: the training labels' mean differs from the truth's by the
    # sampling noise of ~2,150 clicks (≈ 3% sd). Every model inherits that deviation, so the
    # objective's own bias is the ratio net of it.
    label_ratio = world_01.info["train_label_ratio"]
    assert abs(label_ratio - 1.0) < 0.05
    fast = TEST_RANKER.merged({"train.batch_size": 4096})  # one epoch from the bias-only optimum
    ratios = {label: served_over_true(world_01, label, epochs=1, ranker=fast) for label in WLR_FAMILY}
    for label, ratio in ratios.items():
        assert ratio / label_ratio == pytest.approx(1.0, abs=0.05), (label, ratios, label_ratio)
        assert abs(ratio - 1.0) <= 0.05 + abs(label_ratio - 1.0), (label, ratios, label_ratio)


# ---------------------------------------------------------------------------------------------
# Summaries, the requirement checks and the choice of the default
# ---------------------------------------------------------------------------------------------


def fake_run(group: str, method: str, seed: int, **metrics: float) -> dict[str, Any]:
    dataset, _, rate = group.partition("@")
    return {"world": f"{group}/seed={seed}", "dataset": dataset, "click_rate": float(rate) if rate else None,
            "seed": seed, "method": method, "metrics": metrics,
            "training": {"seconds": 1.0, "seconds_per_epoch": 0.5, "best_epoch": 2}, "history": []}


def test_summaries_take_mean_and_sample_sd_across_seeds() -> None:
    runs = [fake_run("kuairand", "wlr", 0, mean_ratio=2.0), fake_run("kuairand", "wlr", 1, mean_ratio=3.0),
            fake_run("simulator@0.44", "wlr", 0, mean_ratio=1.0)]
    summary = summarise_runs(runs)
    stats = summary["kuairand"]["wlr"]["mean_ratio"]
    assert stats["mean"] == pytest.approx(2.5)
    assert stats["sd"] == pytest.approx(math.sqrt(0.5))  # sample sd of [2, 3]
    assert stats["n"] == 2 and stats["values"] == [2.0, 3.0]
    assert summary["simulator@0.44"]["wlr"]["mean_ratio"]["sd"] == 0.0


def kuairand_summary(rows: dict[str, tuple[float, float, float]]) -> dict[str, Any]:
    runs = [fake_run("kuairand", label, 0, mean_ratio=ratio, relative_calibration_error=rce,
                     weighted_per_user_loss=loss) for label, (ratio, rce, loss) in rows.items()]
    return summarise_runs(runs)["kuairand"]


def test_choose_default_applies_each_requirement() -> None:
    summary = kuairand_summary({
        "wlr": (2.4, 1.3, 0.300),
        "wlr-corrected": (1.02, 0.06, 0.304),  # passes
        "wlr-exact": (0.99, 0.05, 0.303),  # passes, lower loss → chosen
        "poisson": (1.00, 0.05, 0.306),  # loss 0.006 worse than WLR's: fails
        "mse": (0.94, 0.05, 0.300),  # ratio out of range: fails
        "log-mse": (1.0, 0.11, 0.300),  # calibration error too large: fails
    })
    decision = choose_default(summary)
    assert sorted(decision["passing"]) == ["wlr-corrected", "wlr-exact"]
    assert decision["chosen"] == "wlr-exact"
    assert decision["methods"]["poisson"]["checks"] == {"mean_ratio": True, "relative_calibration_error": True,
                                                        "weighted_per_user_loss": False}
    assert decision["methods"]["wlr-exact"]["wpu_loss_gap"] == pytest.approx(0.003)


def test_choose_default_names_the_closest_when_none_passes() -> None:
    summary = kuairand_summary({"wlr": (2.4, 1.3, 0.300), "wlr-corrected": (0.93, 0.12, 0.301),
                                "poisson": (1.0, 0.30, 0.300)})
    decision = choose_default(summary)
    assert decision["chosen"] is None
    # wlr-corrected: (0.07 − 0.05)/0.05 + (0.12 − 0.10)/0.10 = 0.6; poisson: (0.30 − 0.10)/0.10 = 2.
    assert decision["methods"]["wlr-corrected"]["violation"] == pytest.approx(0.6)
    assert decision["closest"] == "wlr-corrected"
    with pytest.raises(WlrMethodsError, match="reference method 'wlr'"):
        choose_default({"poisson": summary["poisson"]})


def test_default_candidates_add_recalibrated_refit_and_ranked_by_odds_variants() -> None:
    runs = [fake_run("kuairand", "wlr-corrected", 0, mean_ratio=0.9, weighted_per_user_loss=0.32,
                     by_odds_weighted_per_user_loss=0.30, recal_mean_ratio=1.0, recal_weighted_per_user_loss=0.32,
                     recal_by_odds_weighted_per_user_loss=0.30, refit_mean_ratio=0.8),
            fake_run("kuairand", "poisson", 0, mean_ratio=1.0, weighted_per_user_loss=0.31)]
    candidates = default_candidates(summarise_runs(runs)["kuairand"])
    assert sorted(candidates) == sorted([
        "wlr-corrected", "wlr-corrected × held-out mean match", "wlr-corrected + bias refit",
        "wlr-corrected, ranked by odds", "wlr-corrected × held-out mean match, ranked by odds", "poisson"])
    ranked = candidates["wlr-corrected × held-out mean match, ranked by odds"]
    assert ranked["mean_ratio"]["mean"] == 1.0  # calibration of the served value...
    assert ranked["weighted_per_user_loss"]["mean"] == 0.30  # ...ranking by the odds


def test_requirement_checks_use_the_theory_amount_and_five_percent() -> None:
    runs = [fake_run("simulator@0.44", "wlr", 0, mean_ratio_truth=2.30),
            fake_run("simulator@0.44", "wlr-exact", 0, mean_ratio_truth=1.06),
            fake_run("simulator@0.01", "wlr-resample", 0, mean_ratio_truth=0.96),
            fake_run("simulator@0.01", "poisson", 0, mean_ratio_truth=0.5)]
    worlds = {"simulator@0.44": {"theory_ratio": {"mean": 2.5}}}
    checks = {c["name"]: c for c in requirement_checks(summarise_runs(runs), worlds, DEFAULT_METHODS)}
    wlr = checks["simulator, CTR 0.44: wlr over-predicts by the theory amount (within 10%)"]
    # Measured 1.30 vs theory 1.50: off by 0.20 > 0.15 = 10% of 1.50.
    assert (wlr["measured"], wlr["target"], wlr["tolerance"], wlr["passes"]) == pytest.approx((1.3, 1.5, 0.15, False))
    assert not checks["simulator, CTR 0.44: wlr-exact mean within ±5% of the truth"]["passes"]
    assert checks["simulator, CTR 0.01: wlr-resample mean within ±5% of the truth"]["passes"]
    assert not any("poisson" in name for name in checks)  # only the WLR family is held to it


# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------


def test_quick_fills_only_what_is_not_given() -> None:
    quick = WlrMethodsConfig.load(None, ["quick=true", "simulator.click_rates=[0.2]"])
    assert quick.seeds == [0, 1] and quick.epochs == 3
    assert quick.simulator.click_rates == [0.2]
    assert quick.simulator.settings["n_users"] == 300
    assert quick.learnable.click_rates == [0.01, 0.44]
    assert quick.learnable.settings == LEARNABLE_SIMULATOR_SETTINGS
    assert [name for name, _ in quick.families()] == ["learnable", "simulator"]
    assert quick.kuairand_seeds() == [0]
    assert [m.label for m in quick.kuairand_methods()] == ["wlr", "wlr-resample", "wlr-exact", "wlr-corrected",
                                                           "poisson"]
    own = WlrMethodsConfig.load(None, ["quick=true", 'methods=[{"label": "mine", "objective": "poisson"}]'])
    assert [m.label for m in own.kuairand_methods()] == ["mine"]
    assert quick.file_stem() == "wlr_methods_quick"
    full = WlrMethodsConfig.load(None, ["quick=false"])
    assert full.seeds == [0, 1, 2, 3, 4] and full.simulator.click_rates == [0.01, 0.05, 0.2, 0.44, 0.7]
    assert full.file_stem() == "wlr_methods"


def test_ranker_config_is_the_rankers_defaults_with_the_study_training_plus_overrides() -> None:
    config = WlrMethodsConfig.load(None, {"ranker": {"train.lr": 0.005}})
    ranker = config.ranker_config()
    assert ranker.train.lr == 0.005
    assert ranker.model.hidden == RankerConfig().model.hidden
    # The study pins its own training (3 epochs, no epoch-end averaging, no refit) over the ranker's.
    assert config.budget_epochs() == 3 == ranker.train.epochs
    assert ranker.train.average_last_epochs == 1 and ranker.data.refit is False
    # The learnable family adds its own overrides on top of the study's.
    learnable = config.family_ranker_config(config.learnable)
    assert learnable.train.lr == 0.005 and learnable.model.hidden == [32]
    assert config.family_ranker_config(config.simulator).model.hidden == RankerConfig().model.hidden


def test_ranker_config_pins_the_unused_objective_section() -> None:
    # The study trains each method itself; the ranker's default objective must not change the
    # worlds' fingerprints, so its objective section is the reference method's.
    assert RankerConfig().objective.name == "wlr-corrected"
    assert WlrMethodsConfig().ranker_config().objective.name == "wlr"
    corrected = next(m for m in DEFAULT_METHODS if m.label == "wlr-corrected")
    assert make_objective(corrected.objective, **corrected.params).ranking_key == "expected_watch_s"


def test_low_click_rate_worlds_get_impressions_for_the_click_target() -> None:
    study = wlr_methods.SimulatorStudy(settings={"n_users": 100, "n_days": 10, "impressions_per_user_day": 5.0},
                                       min_expected_clicks=5000)
    # 100 · 10 · 5 = 5,000 impressions: 50 clicks expected at CTR 1%, so 100× the impressions.
    assert study.settings_for(0.01)["impressions_per_user_day"] == 500.0
    assert study.settings_for(0.03)["impressions_per_user_day"] == pytest.approx(167.0)  # 166.67 rounded up
    # CTR 0.7 already expects 3,500 < 5,000 clicks: 5 · 5000/3500 = 7.142… -> 7.15.
    assert study.settings_for(0.7)["impressions_per_user_day"] == pytest.approx(7.15)
    enough = wlr_methods.SimulatorStudy(settings={"n_users": 100, "n_days": 10, "impressions_per_user_day": 5.0},
                                        min_expected_clicks=1000)
    assert enough.settings_for(0.44) == enough.settings  # unchanged: same world fingerprint as before
    off = wlr_methods.SimulatorStudy(settings={"n_users": 100}, min_expected_clicks=None)
    assert off.settings_for(0.01) == {"n_users": 100}
    assert WlrMethodsConfig.load(None, {"quick": True}).learnable.min_expected_clicks is None  # quick stays quick
    # The study's defaults: only the 1% worlds change (≈ 5,000 clicks each instead of ≈ 1,100).
    config = WlrMethodsConfig()
    assert config.learnable.settings_for(0.01)["impressions_per_user_day"] == pytest.approx(89.3)
    assert config.simulator.settings_for(0.01)["impressions_per_user_day"] == pytest.approx(35.8)
    for rate in (0.05, 0.2, 0.44, 0.7):
        assert config.learnable.settings_for(rate) == config.learnable.settings
        assert config.simulator.settings_for(rate) == config.simulator.settings


@pytest.mark.slow
def test_study_meets_the_issues_simulator_requirements(tmp_path: Path) -> None:
    """The issue's simulator checks on the study's learnable worlds at CTR 0.44 and 0.01, 5 seeds,
    models as trained (≈ 5 min on one thread): plain WLR over-predicts by the theory amount within
    10% of it; wlr-exact and wlr-corrected within ±5% of the true mean at CTR 0.44; every WLR
    variant within ±5% at CTR 0.01 (worlds with ≈ 5,000 expected clicks)."""
    config = WlrMethodsConfig.load(None, {
        "methods": [m.model_dump(mode="json") for m in DEFAULT_METHODS if m.is_wlr_family],
        "learnable": {"click_rates": [0.01, 0.44], "learning_curve_click_rates": [0.44]},
        "simulator": {"enabled": False}, "kuairand": {"enabled": False}, "progress": False})
    results = run_wlr_methods(config, tmp_path)
    checks = [c for c in results["checks"] if c["variant"] == "as trained" and "net of" not in c["name"]]
    assert len(checks) == 1 + 2 + 5  # wlr's theory amount; exact, corrected at 0.44; five variants at 0.01
    failing = [(c["name"], c["measured"]) for c in checks if not c["passes"]]
    assert not failing, failing


@pytest.mark.parametrize("overrides, message", [
    (['methods=[{"label": "a", "objective": "nope"}]'], "unknown objective"),
    (['methods=[{"label": "a", "objective": "wlr"}, {"label": "a", "objective": "mse"}]'], "labels repeat"),
    (['methods=[{"label": "a", "objective": "wlr-resample", "params": {"copies": "bad"}}]'], "copies"),
    (['simulator.settings={"seed": 3}'], "settings.seed"),
    (['simulator.settings={"n_user": 3}'], "n_user"),
    (["simulator.click_rates=[0.0]"], "in \\(0, 1\\)"),
    (['kuairand.methods=["nope"]'], "not labels"),
    (["seeds=[]"], "at least one seed"),
    (['learnable.ranker={"model.hiden": [3]}'], "hiden"),
])
def test_bad_configs_fail_at_load_naming_the_field(overrides: list[str], message: str) -> None:
    with pytest.raises((ConfigError, ValueError), match=message):
        WlrMethodsConfig.load(None, overrides)


# ---------------------------------------------------------------------------------------------
# The whole study, tiny, end to end (report, plots, results, resume)
# ---------------------------------------------------------------------------------------------


def test_study_end_to_end_writes_report_plots_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    overrides = {
        "quick": True, "seeds": [0], "epochs": 1, "progress": False,
        "methods": [{"label": "wlr", "objective": "wlr"}, {"label": "wlr-exact", "objective": "wlr-exact"}],
        "ranker": {"model.hidden": [8], "features.groups": ["ids", "context"]},
        "simulator": {"click_rates": [0.44], "learning_curve_click_rates": [0.44],
                      "settings": {"n_users": 60, "n_videos": 120, "n_days": 14}},
        "learnable": {"enabled": False},
        "kuairand": {"enabled": False},
    }
    config = WlrMethodsConfig.load(None, overrides)
    results = run_wlr_methods(config, tmp_path)
    assert results["complete"] and len(results["runs"]) == 2
    report = (tmp_path / "wlr_methods_quick.md").read_text()
    assert "## Simulator" in report and "| wlr-exact |" in report
    assert (tmp_path / "wlr_methods_quick_bias_vs_ctr.png").stat().st_size > 10_000
    assert (tmp_path / "wlr_methods_quick_learning_curves.png").is_file()
    theory = results["world_summary"]["simulator@0.44"]["theory_ratio"]["mean"]
    assert f"{theory:.3f}" in report

    # A second invocation with the same config trains nothing: it reuses both runs.
    def no_training(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(wlr_methods, "train_method", no_training)
    again = run_wlr_methods(config, tmp_path)
    assert [r["metrics"] for r in again["runs"]] == [r["metrics"] for r in results["runs"]]
    # A changed budget does not reuse them.
    with pytest.raises(AssertionError, match="trained again"):
        run_wlr_methods(config.model_copy(update={"epochs": 2}), tmp_path)
    # One more method trains that method only (runs are fingerprinted one by one).
    trained: list[str] = []

    def count(world: PreparedWorld, method: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        trained.append(method.label)
        return train_method(world, method, *args, **kwargs)

    monkeypatch.setattr(wlr_methods, "train_method", count)
    wider = WlrMethodsConfig.load(None, overrides | {"methods": overrides["methods"] + [
        {"label": "poisson", "objective": "poisson"}]})
    assert len(run_wlr_methods(wider, tmp_path)["runs"]) == 3
    assert trained == ["poisson"]
