"""Tests of the ranking objectives (ytdnn.training.losses)."""

from __future__ import annotations

import math

import pytest
import torch

from ytdnn.training.losses import (
    MAX_LOGIT_FOR_EXP,
    RANK_BY_CHOICES,
    RANKING_OBJECTIVES,
    ObjectiveError,
    ObjectiveInputError,
    RankingObjective,
    UnknownObjectiveError,
    WLRResampleObjective,
    make_objective,
    objective_from_config,
)

LOG2 = math.log(2.0)


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


# ---------------------------------------------------------------------------------------------
# A fixed synthetic dataset with no features: N impressions, k clicked with known watch times.
# ---------------------------------------------------------------------------------------------


def make_impressions(n: int = 2000, seed: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    is_click = (torch.rand(n, generator=gen, dtype=torch.float64) < 0.3).to(torch.float64)
    # Heavy-ish tail: exponential watch times with mean 40 s for clicked rows, 0 otherwise.
    watch = -40.0 * torch.log(torch.rand(n, generator=gen, dtype=torch.float64)) * is_click
    # A few clicked impressions with T = 0 (clicked and left at once): weight-0 positives.
    clicked_rows = torch.nonzero(is_click)[:, 0]
    watch[clicked_rows[:10]] = 0.0
    return is_click, watch


IS_CLICK, WATCH = make_impressions()
N = IS_CLICK.numel()
K = int(IS_CLICK.sum())
TOTAL_WATCH = float(WATCH.sum())


def fit_bias_only(objective: RankingObjective, is_click: torch.Tensor, watch: torch.Tensor) -> torch.Tensor:
    """Minimise the objective over a bias-only model (one scalar per head) with L-BFGS, from 0."""
    bias = torch.zeros(objective.n_heads, dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([bias], lr=1.0, max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-15,
                                  line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        value = objective.loss(bias.expand(is_click.shape[0], objective.n_heads), is_click, watch)
        value.backward()
        return value

    for _ in range(5):
        optimiser.step(closure)
    return bias.detach()


def served(objective: RankingObjective, bias: torch.Tensor | list[float]) -> dict[str, float]:
    outputs = torch.as_tensor(bias, dtype=torch.float64).reshape(1, objective.n_heads)
    return {key: float(value[0]) for key, value in objective.predict(outputs).items()}


# Closed-form bias-only served value of each deterministic objective.
EXPECTED_SERVED = {
    "wlr": TOTAL_WATCH / (N - K),  # Covington: ΣT / (N − k), not E[T] = ΣT / N
    "wlr-exact": TOTAL_WATCH / N,
    "wlr-corrected": TOTAL_WATCH / N,  # ΣT/(N−k) · (1 − k/N)
    "poisson": TOTAL_WATCH / N,
    "mse": TOTAL_WATCH / N,
    "log-mse": math.expm1(float(torch.log1p(WATCH).mean())),
    "click-only": TOTAL_WATCH / N,  # (k/N) · (ΣT/k)
    "click": TOTAL_WATCH / N,
}


def test_dataset_makes_the_objectives_disagree() -> None:
    # p ≈ 0.3, so WLR's 1/(1 − p) bias is ≈ 43%: the tests below can tell the optima apart.
    assert 0.25 < K / N < 0.35
    assert EXPECTED_SERVED["wlr"] / EXPECTED_SERVED["wlr-exact"] == pytest.approx(N / (N - K))


@pytest.mark.parametrize("name", sorted(EXPECTED_SERVED))
def test_bias_only_training_converges_to_the_closed_form_optimum(name: str) -> None:
    objective = make_objective(name).fit(IS_CLICK, WATCH)
    bias = fit_bias_only(objective, IS_CLICK, WATCH)
    assert served(objective, bias)["expected_watch_s"] == pytest.approx(EXPECTED_SERVED[name], rel=0.01)
    # Tighter than the brief's 1%: L-BFGS in float64 reaches the optimum itself.
    assert served(objective, bias)["expected_watch_s"] == pytest.approx(EXPECTED_SERVED[name], rel=1e-6)


@pytest.mark.parametrize("name", sorted(EXPECTED_SERVED))
def test_init_bias_is_the_bias_only_optimum(name: str) -> None:
    objective = make_objective(name).fit(IS_CLICK, WATCH)
    init = objective.init_bias(IS_CLICK, WATCH)
    assert len(init) == objective.n_heads
    assert served(objective, init)["expected_watch_s"] == pytest.approx(EXPECTED_SERVED[name], rel=1e-12)
    trained = fit_bias_only(objective, IS_CLICK, WATCH)
    assert init == pytest.approx(trained.tolist(), abs=1e-6)
    # The gradient of the loss at init_bias is zero.
    bias = torch.tensor(init, dtype=torch.float64, requires_grad=True)
    objective.loss(bias.expand(N, objective.n_heads), IS_CLICK, WATCH).backward()
    assert bias.grad is not None and bias.grad.abs().max().item() < 1e-9


def test_init_bias_closed_forms() -> None:
    assert make_objective("wlr").init_bias(IS_CLICK, WATCH) == pytest.approx([math.log(TOTAL_WATCH / (N - K))])
    assert make_objective("wlr-exact").init_bias(IS_CLICK, WATCH) == pytest.approx([math.log(TOTAL_WATCH / N)])
    assert make_objective("poisson").init_bias(IS_CLICK, WATCH) == pytest.approx([math.log(TOTAL_WATCH / N)])
    assert make_objective("mse").init_bias(IS_CLICK, WATCH) == pytest.approx([TOTAL_WATCH / N])
    assert make_objective("wlr-corrected").init_bias(IS_CLICK, WATCH) == pytest.approx(
        [math.log(TOTAL_WATCH / (N - K)), math.log(K / (N - K))])
    assert make_objective("click").init_bias(IS_CLICK, WATCH) == pytest.approx([math.log(K / (N - K))])
    resample = make_objective("wlr-resample").fit(IS_CLICK, WATCH)
    assert resample.init_bias(IS_CLICK, WATCH) == pytest.approx([math.log(K / (N - K))])  # c·ΣT = k


def test_wlr_corrected_serves_odds_times_one_minus_p_click() -> None:
    objective = make_objective("wlr-corrected").fit(IS_CLICK, WATCH)
    bias = fit_bias_only(objective, IS_CLICK, WATCH)
    values = served(objective, bias)
    assert values["odds"] == pytest.approx(TOTAL_WATCH / (N - K), rel=1e-6)
    assert values["p_click"] == pytest.approx(K / N, rel=1e-6)
    assert values["expected_watch_s"] == pytest.approx(values["odds"] * (1 - values["p_click"]), rel=1e-12)


def test_log_mse_is_biased_down_by_jensen() -> None:
    objective = make_objective("log-mse").fit(IS_CLICK, WATCH)
    value = served(objective, fit_bias_only(objective, IS_CLICK, WATCH))["expected_watch_s"]
    assert value == pytest.approx(math.expm1(float(torch.log1p(WATCH).mean())), rel=1e-6)
    # exp(E log(1+T)) − 1 ≤ E[T]; with 70% zeros the gap is huge (here ≈ 1.55 s vs ≈ 11.6 s).
    assert value < 0.5 * TOTAL_WATCH / N


def test_wlr_loss_on_a_tiny_case_by_hand() -> None:
    # Rows: clicked T=3 at z=log 2; unclicked at z=0; clicked T=0 at z=1.
    # ℓ = 3·sp(−log 2) + sp(0) + 0·sp(−1) = 3·log(1.5) + log 2; mean over B = 3 rows.
    outputs = torch.tensor([[LOG2], [0.0], [1.0]], dtype=torch.float64)
    is_click = torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)
    watch = torch.tensor([3.0, 0.0, 0.0], dtype=torch.float64)
    expected = (3 * math.log(1.5) + LOG2) / 3
    assert make_objective("wlr").loss(outputs, is_click, watch).item() == pytest.approx(expected, rel=1e-12)
    # Exact WLR adds a weight-1 negative for every row: + sp(log 2) + sp(1) on the clicked rows.
    expected_exact = (3 * math.log(1.5) + math.log(3.0) + LOG2 + softplus(1.0)) / 3
    assert make_objective("wlr-exact").loss(outputs, is_click, watch).item() == pytest.approx(expected_exact, rel=1e-12)
    # Poisson: e^z − T·z summed: (2 − 3 log 2) + 1 + e.
    expected_poisson = (2 - 3 * LOG2 + 1 + math.e) / 3
    assert make_objective("poisson").loss(outputs, is_click, watch).item() == pytest.approx(expected_poisson, rel=1e-12)


def test_clicked_impression_with_zero_watch_time_contributes_nothing_to_wlr() -> None:
    objective = make_objective("wlr")
    outputs = torch.tensor([[0.3], [-0.2], [2.0]], dtype=torch.float64)
    is_click = torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)
    watch = torch.tensor([5.0, 0.0, 0.0], dtype=torch.float64)
    with_row = objective.loss(outputs, is_click, watch).item() * 3
    without_row = objective.loss(outputs[:2], is_click[:2], watch[:2]).item() * 2
    assert with_row == pytest.approx(without_row, rel=1e-12)
    # It is not a negative either: moving its logit does not change the loss.
    moved = outputs.clone()
    moved[2, 0] = -7.0
    assert objective.loss(moved, is_click, watch).item() == pytest.approx(with_row / 3, rel=1e-12)


def test_fit_sets_the_documented_loss_scale() -> None:
    is_click = torch.tensor([1.0, 0.0, 1.0, 0.0])
    watch = torch.tensor([6.0, 0.0, 2.0, 0.0])
    # WLR mean weight: (6 + 2 + 2 negatives) / 4 = 2.5; exact: (8 + 4) / 4 = 3; Poisson mean T = 2.
    assert make_objective("wlr").fit(is_click, watch).loss_scale == pytest.approx(2.5)
    assert make_objective("wlr-corrected").fit(is_click, watch).loss_scale == pytest.approx(2.5)
    assert make_objective("wlr-exact").fit(is_click, watch).loss_scale == pytest.approx(3.0)
    assert make_objective("poisson").fit(is_click, watch).loss_scale == pytest.approx(2.0)
    # Var T of [6, 0, 2, 0]: mean 2, squares of deviations 16 + 4 + 0 + 4 → 6.
    assert make_objective("mse").fit(is_click, watch).loss_scale == pytest.approx(6.0)
    outputs = torch.zeros(4, 1)
    raw = make_objective("wlr").loss(outputs, is_click, watch)
    scaled = make_objective("wlr").fit(is_click, watch).loss(outputs, is_click, watch)
    assert scaled.item() == pytest.approx(raw.item() / 2.5)


def test_regression_losses_start_at_one_at_the_bias_only_optimum() -> None:
    for name in ("mse", "log-mse"):
        objective = make_objective(name).fit(IS_CLICK, WATCH)
        init = torch.tensor(objective.init_bias(IS_CLICK, WATCH), dtype=torch.float64)
        assert objective.loss(init.expand(N, 1), IS_CLICK, WATCH).item() == pytest.approx(1.0, rel=1e-9)


# ---------------------------------------------------------------------------------------------
# wlr-resample
# ---------------------------------------------------------------------------------------------


def test_wlr_corrected_ranks_by_the_odds_by_default_and_rank_by_round_trips() -> None:
    default = make_objective("wlr-corrected")
    assert default.ranking_key == "odds" and default.calibrates and default.watch_scale is None  # type: ignore[attr-defined]
    for rank_by in RANK_BY_CHOICES:
        for calibrate in (True, False):
            objective = make_objective("wlr-corrected", rank_by=rank_by, calibrate=calibrate).fit(IS_CLICK, WATCH)
            objective.set_watch_scale(1.25)
            config = objective.to_config()
            assert config["rank_by"] == rank_by and config["watch_scale"] == 1.25 and config["calibrate"] is calibrate
            rebuilt = objective_from_config(config)
            assert rebuilt == objective and rebuilt.ranking_key == rank_by and rebuilt.calibrates is calibrate
    with pytest.raises(ObjectiveError, match=r"rank_by must be one of \['odds', 'expected_watch_s'\], got 'p_click'"):
        make_objective("wlr-corrected", rank_by="p_click")
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ObjectiveError, match="watch_scale must be a finite number > 0"):
            make_objective("wlr-corrected", watch_scale=bad)
    # The ranking key is per instance: one objective's rank_by does not leak into another.
    assert make_objective("wlr-corrected", rank_by="expected_watch_s").ranking_key == "expected_watch_s"
    assert make_objective("wlr-corrected").ranking_key == "odds"
    # Objectives without a calibration constant say so.
    assert not make_objective("wlr").calibrates and make_objective("wlr").ranking_key == "expected_watch_s"
    with pytest.raises(ObjectiveError, match="wlr: this objective has no calibration constant"):
        make_objective("wlr").set_watch_scale(2.0)


def test_wlr_corrected_serves_the_scale_times_odds_times_one_minus_p_click() -> None:
    objective = make_objective("wlr-corrected").fit(IS_CLICK, WATCH)
    outputs = torch.tensor([[math.log(40.0), 0.0], [math.log(10.0), math.log(3.0)], [2.0, -1.5]], dtype=torch.float64)
    unscaled = objective.predict(outputs)
    # Hand-worked rows: odds 40, p = 0.5 -> 20 s; odds 10, p = 0.75 -> 2.5 s.
    assert unscaled["expected_watch_s"][:2].tolist() == pytest.approx([20.0, 2.5], rel=1e-12)
    objective.set_watch_scale(1.6)
    scaled = objective.predict(outputs)
    expected = 1.6 * scaled["odds"] * (1 - scaled["p_click"])
    assert scaled["expected_watch_s"].tolist() == pytest.approx(expected.tolist(), rel=1e-12)
    assert scaled["expected_watch_s"][:2].tolist() == pytest.approx([32.0, 4.0], rel=1e-12)
    # The odds (the paper's score, the ranking key) and p_click are not scaled.
    torch.testing.assert_close(scaled["odds"], unscaled["odds"], rtol=0, atol=0)
    torch.testing.assert_close(scaled["p_click"], unscaled["p_click"], rtol=0, atol=0)
    objective.set_watch_scale(None)
    torch.testing.assert_close(objective.predict(outputs)["expected_watch_s"], unscaled["expected_watch_s"])


def test_resample_fit_chooses_c_so_expected_copies_equal_clicks() -> None:
    objective = make_objective("wlr-resample").fit(IS_CLICK, WATCH)
    assert isinstance(objective, WLRResampleObjective) and objective.c is not None
    assert objective.c == pytest.approx(K / TOTAL_WATCH)
    assert objective.c * TOTAL_WATCH == pytest.approx(K)


@pytest.mark.parametrize("copies", ["poisson", "round"])
def test_resampled_bias_only_training_converges_to_wlr_within_sampling_error(copies: str) -> None:
    objective = make_objective("wlr-resample", copies=copies).fit(IS_CLICK, WATCH)
    c = objective.c
    assert c is not None
    epochs = 40
    gen = torch.Generator().manual_seed(3)
    batch = {"is_click": IS_CLICK, "watch_time_s": WATCH}
    expanded = [objective.batch_transform(batch, gen) for _ in range(epochs)]
    is_click = torch.cat([part["is_click"] for part in expanded])
    watch = torch.cat([part["watch_time_s"] for part in expanded])
    bias = fit_bias_only(objective, is_click, watch)
    value = served(objective, bias)["expected_watch_s"]

    # The realised optimum: odds = (#positive copies) / (#negatives), served / c.
    n_positive = float(is_click.sum())
    assert value == pytest.approx(n_positive / (epochs * (N - K)) / c, rel=1e-6)

    # Sampling error: over the epochs, #positive copies has mean c·ΣT·epochs and variance
    # c·ΣT·epochs (sum of Poissons) or Σ frac(cT)(1 − frac(cT))·epochs (stochastic rounding).
    rate = c * WATCH
    frac = rate - torch.floor(rate)
    variance = float(rate.sum()) if copies == "poisson" else float((frac * (1 - frac)).sum())
    relative_sd = math.sqrt(variance * epochs) / (c * TOTAL_WATCH * epochs)
    target = TOTAL_WATCH / (N - K)
    assert abs(value / target - 1) < 4 * relative_sd
    assert relative_sd < 0.015  # the bound is tight enough to mean something (≈ 0.5% for Poisson)


def test_resample_validation_loss_is_the_expected_resampled_loss() -> None:
    objective = make_objective("wlr-resample").fit(IS_CLICK, WATCH)
    c = objective.c
    assert c is not None
    # Logits that grow with watch time, so that weighting by c·T matters (an unweighted click
    # loss on these rows differs from the expected loss by far more than the Monte Carlo error).
    outputs = (0.05 * WATCH - 1.0).unsqueeze(1)
    # By hand: WLR with every positive weight multiplied by c.
    expected = make_objective("wlr").loss(outputs, IS_CLICK, c * WATCH)
    assert objective.validation_loss(outputs, IS_CLICK, WATCH).item() == pytest.approx(expected.item(), rel=1e-12)
    # Monte Carlo: the mean over resamplings of (loss · expanded rows / source rows) matches it.
    gen = torch.Generator().manual_seed(1)
    batch = {"is_click": IS_CLICK, "watch_time_s": WATCH, "outputs": outputs}
    draws = []
    for _ in range(200):
        out = objective.batch_transform(batch, gen)
        rows = out["is_click"].shape[0]
        draws.append(objective.loss(out["outputs"], out["is_click"], out["watch_time_s"]).item() * rows / N)
    mean = sum(draws) / len(draws)
    standard_error = float(torch.tensor(draws).std()) / math.sqrt(len(draws))
    assert abs(mean - expected.item()) < 4 * standard_error
    unweighted = make_objective("click").loss(outputs, IS_CLICK, WATCH).item()
    assert abs(unweighted - expected.item()) > 20 * standard_error
    # Every other objective validates with its training loss.
    wlr = make_objective("wlr")
    assert wlr.validation_loss(outputs, IS_CLICK, WATCH).item() == wlr.loss(outputs, IS_CLICK, WATCH).item()


def test_batch_transform_gathers_every_feature_row() -> None:
    objective = make_objective("wlr-resample", c=0.5)
    batch = {
        "is_click": torch.tensor([1, 0, 1, 1], dtype=torch.int8),
        "watch_time_s": torch.tensor([4.0, 0.0, 0.0, 3.0]),
        "video_index": torch.tensor([10, 11, 12, 13]),
        "dense": torch.arange(8, dtype=torch.float32).reshape(4, 2),
    }
    out = make_objective("wlr-resample", c=0.5, copies="round").batch_transform(batch, torch.Generator().manual_seed(0))
    counts = torch.bincount(out["video_index"] - 10, minlength=4).tolist()
    # c·T = 2 exactly (2 copies), unclicked once, clicked T=0 never, c·T = 1.5 → 1 or 2 copies.
    assert counts[0] == 2 and counts[1] == 1 and counts[2] == 0 and counts[3] in (1, 2)
    source = out["video_index"] - 10
    assert torch.equal(out["dense"], batch["dense"][source])
    assert torch.equal(out["is_click"], batch["is_click"][source])
    assert objective.resample_index(batch["is_click"], batch["watch_time_s"], torch.Generator().manual_seed(0)).dtype == torch.int64


def test_batch_transform_rejects_ragged_values() -> None:
    objective = make_objective("wlr-resample", c=1.0)
    batch = {"is_click": torch.tensor([1.0, 0.0]), "watch_time_s": torch.tensor([2.0, 0.0]), "tags": torch.zeros(3)}
    with pytest.raises(ObjectiveInputError, match="tags"):
        objective.batch_transform(batch)
    with pytest.raises(ObjectiveInputError, match="watch_time_s"):
        objective.batch_transform({"is_click": torch.tensor([1.0])})


def test_resample_serves_odds_divided_by_c() -> None:
    objective = make_objective("wlr-resample", c=0.25)
    values = served(objective, [math.log(5.0)])
    assert values["expected_watch_s"] == pytest.approx(20.0)
    assert values["odds"] == pytest.approx(20.0)


def test_resample_needs_c() -> None:
    objective = make_objective("wlr-resample")
    with pytest.raises(ObjectiveError, match="fit"):
        objective.predict(torch.zeros(2, 1))
    with pytest.raises(ObjectiveError, match="fit"):
        objective.batch_transform({"is_click": torch.ones(1), "watch_time_s": torch.ones(1)})


# ---------------------------------------------------------------------------------------------
# Serving, registry, validation
# ---------------------------------------------------------------------------------------------


def test_served_exponentials_are_clamped() -> None:
    huge = torch.tensor([[1000.0]])
    for name in ("wlr", "wlr-exact", "poisson", "log-mse"):
        value = make_objective(name).predict(huge)["expected_watch_s"]
        assert torch.isfinite(value).all()
        assert value.item() == pytest.approx(math.exp(MAX_LOGIT_FOR_EXP), rel=1e-5)
    corrected = make_objective("wlr-corrected").predict(torch.tensor([[1000.0, -1000.0]]))
    assert torch.isfinite(corrected["expected_watch_s"]).all() and torch.isfinite(corrected["odds"]).all()


def test_negative_predictions_are_served_as_zero() -> None:
    assert make_objective("mse").predict(torch.tensor([-3.0, 2.0]))["expected_watch_s"].tolist() == [0.0, 2.0]
    assert make_objective("log-mse").predict(torch.tensor([-3.0]))["expected_watch_s"].tolist() == [0.0]


def test_every_objective_predicts_the_required_keys() -> None:
    for name in RANKING_OBJECTIVES:
        objective = make_objective(name).fit(IS_CLICK, WATCH)
        outputs = torch.randn(5, objective.n_heads, dtype=torch.float64)
        prediction = objective.predict(outputs)
        assert {"logit", "expected_watch_s"} <= set(prediction)
        assert objective.ranking_key in prediction
        assert prediction["expected_watch_s"].shape == (5,)
        assert bool((prediction["expected_watch_s"] >= 0).all())
        loss = objective.loss(outputs.requires_grad_(), IS_CLICK[:5], WATCH[:5])
        assert loss.dim() == 0 and math.isfinite(loss.item())


def test_click_models_serve_p_click_times_mean_watch_given_click() -> None:
    for name in ("click", "click-only"):
        objective = make_objective(name).fit(IS_CLICK, WATCH)
        assert objective.name == name and objective.ranking_key == "p_click"
        prediction = objective.predict(torch.tensor([0.0]))
        assert prediction["p_click"].item() == pytest.approx(0.5)
        assert prediction["expected_watch_s"].item() == pytest.approx(0.5 * TOTAL_WATCH / K)
    with pytest.raises(ObjectiveError, match="fit"):
        make_objective("click").predict(torch.zeros(1))


def test_config_round_trip_keeps_fitted_constants() -> None:
    for name in RANKING_OBJECTIVES:
        objective = make_objective(name).fit(IS_CLICK, WATCH)
        rebuilt = objective_from_config(objective.to_config())
        assert rebuilt == objective and type(rebuilt) is type(objective)


def test_unknown_objective_names_the_choices() -> None:
    with pytest.raises(UnknownObjectiveError, match="wlr-exact"):
        make_objective("wrl")
    with pytest.raises(ObjectiveError, match="bad parameters"):
        make_objective("wlr", c=2.0)
    with pytest.raises(ObjectiveError, match="c must be"):
        make_objective("wlr-resample", c=-1.0)


def test_bad_inputs_name_the_field_and_row() -> None:
    objective = make_objective("wlr")
    outputs = torch.zeros(3, 1)
    with pytest.raises(ObjectiveInputError, match=r"is_click row 1: expected 0 or 1"):
        objective.loss(outputs, torch.tensor([1.0, 0.5, 0.0]), torch.zeros(3))
    with pytest.raises(ObjectiveInputError, match=r"watch_time_s row 2"):
        objective.loss(outputs, torch.zeros(3), torch.tensor([0.0, 1.0, -1.0]))
    with pytest.raises(ObjectiveInputError, match=r"watch_time_s row 0"):
        objective.loss(outputs, torch.zeros(3), torch.tensor([float("nan"), 1.0, 1.0]))
    with pytest.raises(ObjectiveInputError, match=r"outputs: expected shape \[B, 2\]"):
        make_objective("wlr-corrected").loss(outputs, torch.zeros(3), torch.zeros(3))
    with pytest.raises(ObjectiveInputError, match="one per output row"):
        objective.loss(outputs, torch.zeros(4), torch.zeros(4))


def test_degenerate_data_has_no_finite_init() -> None:
    all_clicked = torch.ones(3)
    with pytest.raises(ObjectiveError, match="N - k = 0"):
        make_objective("wlr").init_bias(all_clicked, torch.ones(3))
    with pytest.raises(ObjectiveError, match="no clicked"):
        make_objective("wlr-exact").init_bias(torch.zeros(3), torch.zeros(3))
