"""Tests of the generic ranking trainer: reproducibility, early stopping, budgets, transforms."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import Tensor

from tests.models.synthetic import make_batch, make_layout
from ytdnn.features.layout import RankingBatch
from ytdnn.models import RankingNet
from ytdnn.training.losses import make_objective
from ytdnn.training.trainer import Trainer, TrainerConfig, TrainingError, TrainingHistory, predict_outputs

QUIET = {"progress": False, "num_threads": 1}


def _setup(seed: int = 0, n_train: int = 600, objective_name: str = "wlr", hidden: list[int] | None = None,
           dropout: float = 0.0):
    layout = make_layout()
    train, validation = make_batch(n_train, layout, seed=1), make_batch(300, layout, seed=2)
    objective = make_objective(objective_name).fit(train.is_click, train.watch_time_s)
    torch.manual_seed(seed)
    model = RankingNet(layout, hidden=hidden or [16, 8], n_heads=objective.n_heads, dropout=dropout)
    model.set_output_bias(objective.init_bias(train.is_click, train.watch_time_s))
    return model, objective, train, validation


def test_same_seed_gives_identical_weights_and_history() -> None:
    runs = []
    for _ in range(2):
        model, objective, train, validation = _setup(seed=7, dropout=0.2)
        history = Trainer(model, objective, train, validation,
                          TrainerConfig(batch_size=64, epochs=3, seed=7, patience=0, **QUIET)).fit()
        runs.append((model.state_dict(), history))
    (state_a, history_a), (state_b, history_b) = runs
    assert state_a.keys() == state_b.keys()
    for name in state_a:
        assert torch.equal(state_a[name], state_b[name]), name
    assert [e.train_loss for e in history_a.epochs] == [e.train_loss for e in history_b.epochs]
    # A different shuffling seed changes the result (so the test above can fail).
    model, objective, train, validation = _setup(seed=7, dropout=0.2)
    Trainer(model, objective, train, validation, TrainerConfig(batch_size=64, epochs=3, seed=8, patience=0,
                                                               **QUIET)).fit()
    assert not torch.equal(model.state_dict()["user_linear.weight"], state_a["user_linear.weight"])


def test_training_beats_the_bias_only_start_on_validation() -> None:
    model, objective, train, validation = _setup()
    start = float(objective.loss(predict_outputs(model, validation), validation.is_click, validation.watch_time_s))
    history = Trainer(model, objective, train, validation,
                      TrainerConfig(batch_size=32, epochs=8, lr=3e-3, patience=0, **QUIET)).fit()
    best = history.best
    assert best is not None and best.validation["val_loss"] < start - 0.01
    # Final weights are the best epoch's: re-evaluating gives the recorded value.
    again = float(objective.loss(predict_outputs(model, validation), validation.is_click, validation.watch_time_s))
    assert again == pytest.approx(best.validation["val_loss"], rel=1e-6)
    assert history.examples_seen == 8 * 600
    assert all(e.seconds > 0 for e in history.epochs)


def test_early_stopping_restores_the_best_epoch() -> None:
    model, objective, train, validation = _setup()
    scripted = [3.0, 1.0, 2.0, 4.0, 0.5, 0.1]  # best at epoch 2; patience 2 stops after epoch 4
    snapshots: list[dict[str, Tensor]] = []

    def metric_fn(predictions: dict[str, np.ndarray]) -> dict[str, float]:
        assert predictions["expected_watch_s"].shape == (300,)
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        return {"scripted": scripted[len(snapshots) - 1]}

    config = TrainerConfig(batch_size=100, epochs=6, patience=2, early_stopping_metric="scripted", **QUIET)
    history = Trainer(model, objective, train, validation, config, metric_fn).fit()
    assert len(history.epochs) == 4 and history.stopped_early and history.best_epoch == 2
    assert [e.validation["scripted"] for e in history.epochs] == [3.0, 1.0, 2.0, 4.0]
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, snapshots[1][name]), name
    assert not torch.equal(snapshots[1]["user_linear.weight"], snapshots[3]["user_linear.weight"])


def test_max_mode_and_history_round_trip() -> None:
    model, objective, train, validation = _setup()
    values = iter([0.2, 0.9, 0.5])
    config = TrainerConfig(batch_size=200, epochs=3, patience=5, early_stopping_metric="auc", mode="max", **QUIET)
    history = Trainer(model, objective, train, validation, config, lambda p: {"auc": next(values)}).fit()
    assert history.best_epoch == 2 and not history.stopped_early
    restored = TrainingHistory.from_dict(history.to_dict())
    assert restored.to_dict() == history.to_dict()


def test_example_budget_is_exact_and_cuts_the_epoch() -> None:
    model, objective, train, validation = _setup()
    config = TrainerConfig(batch_size=64, epochs=10, max_examples=1000, patience=0, **QUIET)
    history = Trainer(model, objective, train, validation, config).fit()
    # 600 rows per epoch: epoch 1 sees 600, epoch 2 the remaining 400 (last batch cut from 64 to 16).
    assert [e.examples_seen for e in history.epochs] == [600, 1000]
    assert history.budget_exhausted


@dataclass
class _DuplicatingObjective:
    """Stand-in for an expanding objective: every row twice (counts 2 examples per source row)."""

    inner: object
    name: str = "duplicating"
    n_heads: int = 1
    calls: int = 0

    def batch_transform(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> dict[str, Tensor]:
        self.calls += 1
        assert isinstance(generator, torch.Generator)
        return {key: torch.cat([value, value]) for key, value in batch.items()}

    def loss(self, outputs: Tensor, is_click: Tensor, watch_time_s: Tensor) -> Tensor:
        return self.inner.loss(outputs, is_click, watch_time_s)  # type: ignore[attr-defined]

    def predict(self, outputs: Tensor) -> dict[str, Tensor]:
        return self.inner.predict(outputs)  # type: ignore[attr-defined]


def test_batch_transform_is_applied_and_budget_counts_expanded_rows() -> None:
    model, objective, train, validation = _setup()
    wrapper = _DuplicatingObjective(objective)
    config = TrainerConfig(batch_size=100, epochs=2, patience=0, max_examples=1500, **QUIET)
    history = Trainer(model, wrapper, train, validation, config).fit()
    # 6 batches of 100 → 1200 expanded rows in epoch 1; epoch 2 stops after 300 more.
    assert [e.examples_seen for e in history.epochs] == [1200, 1500]
    assert wrapper.calls == 6 + 2


def test_resampling_objective_trains_through_the_trainer() -> None:
    model, objective, train, validation = _setup(objective_name="wlr-resample")
    history = Trainer(model, objective, train, validation,
                      TrainerConfig(batch_size=100, epochs=2, patience=0, **QUIET)).fit()
    # Expanded rows: ~1 per source row on average (c = 1/mean T), but not exactly 600 per epoch.
    assert history.epochs[0].examples_seen != 600
    assert 400 < history.epochs[0].examples_seen < 800
    assert all(math.isfinite(e.validation["val_loss"]) for e in history.epochs)


def test_without_validation_keeps_the_last_epoch() -> None:
    model, objective, train, _ = _setup()
    history = Trainer(model, objective, train, None, TrainerConfig(batch_size=300, epochs=2, **QUIET)).fit()
    assert history.best_epoch is None and len(history.epochs) == 2 and history.epochs[1].validation == {}


def test_unknown_stopping_metric_and_empty_data_are_rejected() -> None:
    model, objective, train, validation = _setup()
    with pytest.raises(TrainingError, match="'ndcg' is not among the validation metrics"):
        Trainer(model, objective, train, validation,
                TrainerConfig(epochs=1, early_stopping_metric="ndcg", **QUIET)).fit()
    empty = RankingBatch(train.categorical[:0], [m[:0] for m in train.multivalent], train.dense[:0],
                         train.is_click[:0], train.watch_time_s[:0])
    with pytest.raises(TrainingError, match="train: the training batch has 0 rows"):
        Trainer(model, objective, empty, validation)


def test_diverging_loss_names_the_epoch() -> None:
    model, objective, train, validation = _setup()
    with torch.no_grad():
        model.output_bias.fill_(float("nan"))
    with pytest.raises(TrainingError, match="epoch 1, rows 0..64"):
        Trainer(model, objective, train, validation, TrainerConfig(batch_size=64, epochs=1, **QUIET)).fit()


def test_thread_count_is_restored() -> None:
    model, objective, train, validation = _setup()
    before = torch.get_num_threads()
    history = Trainer(model, objective, train, validation,
                      TrainerConfig(epochs=1, progress=False, num_threads=2)).fit()
    assert history.num_threads == 2 and torch.get_num_threads() == before


# ---- learning-rate schedule and parameter groups ------------------------------------------------------


def test_lr_multiplier_by_hand() -> None:
    from ytdnn.training.trainer import lr_multiplier

    assert [lr_multiplier("constant", s, 4) for s in range(4)] == [1.0, 1.0, 1.0, 1.0]
    assert [lr_multiplier("linear", s, 4) for s in range(5)] == [1.0, 0.75, 0.5, 0.25, 0.0]
    # cosine: (1 + cos(pi s/4)) / 2 = 1, (1 + 1/sqrt 2)/2, 1/2, (1 - 1/sqrt 2)/2, 0
    expected = [1.0, 0.5 + 0.5 / math.sqrt(2), 0.5, 0.5 - 0.5 / math.sqrt(2), 0.0]
    assert [lr_multiplier("cosine", s, 4) for s in range(5)] == pytest.approx(expected, abs=1e-12)
    assert lr_multiplier("linear", 9, 4) == 0.0  # past the horizon it stays at 0
    with pytest.raises(TrainingError, match="lr_schedule"):
        lr_multiplier("step", 1, 4)


def _recorded_learning_rates(monkeypatch: pytest.MonkeyPatch, config: TrainerConfig) -> list[list[float]]:
    model, objective, train, validation = _setup(n_train=100)
    seen: list[list[float]] = []
    original = torch.optim.Adam.step

    def step(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append([group["lr"] for group in self.param_groups])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", step)
    Trainer(model, objective, train, validation, config).fit()
    return seen


def test_linear_schedule_decays_over_the_planned_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    # 100 rows, batch 25: 4 steps per epoch, 2 epochs = 8 planned steps; lr_t = 0.01 (1 - t/8).
    config = TrainerConfig(batch_size=25, epochs=2, lr=0.01, patience=0, lr_schedule="linear", **QUIET)
    lrs = [group[0] for group in _recorded_learning_rates(monkeypatch, config)]
    assert lrs == pytest.approx([0.01 * (1 - t / 8) for t in range(8)], rel=1e-12)
    # The budget shortens the horizon: 60 rows = 3 steps of 25 (the last one cut to 10 rows).
    budget = config.model_copy(update={"max_examples": 60})
    lrs = [group[0] for group in _recorded_learning_rates(monkeypatch, budget)]
    assert lrs == pytest.approx([0.01, 0.01 * 2 / 3, 0.01 / 3], rel=1e-12)


def test_lr_scale_by_prefix_freezes_or_slows_only_those_parameters(monkeypatch: pytest.MonkeyPatch) -> None:
    config = TrainerConfig(batch_size=25, epochs=1, lr=0.01, patience=0, lr_schedule="cosine",
                           lr_scale_by_prefix={"embeddings.": 0.5}, **QUIET)
    groups = _recorded_learning_rates(monkeypatch, config)
    # Two groups (tower at 1×, tables at 0.5×), both on the same cosine schedule over 4 steps.
    assert len(groups) == 4 and all(len(g) == 2 for g in groups)
    assert sorted(groups[1]) == pytest.approx(sorted([0.01 * (0.5 + 0.5 / math.sqrt(2)),
                                                      0.005 * (0.5 + 0.5 / math.sqrt(2))]))

    model, objective, train, validation = _setup()
    tables_before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("embeddings.")}
    tower_before = model.state_dict()["user_linear.weight"].clone()
    Trainer(model, objective, train, validation,
            TrainerConfig(batch_size=64, epochs=1, patience=0, lr_scale_by_prefix={"embeddings.": 0.0},
                          **QUIET)).fit()
    after = model.state_dict()
    assert tables_before and all(torch.equal(after[k], v) for k, v in tables_before.items())
    assert not torch.equal(after["user_linear.weight"], tower_before)


def test_weight_decay_by_prefix_groups_parameters_by_longest_prefix() -> None:
    from ytdnn.training.trainer import _adam

    model, _, _, _ = _setup()
    names = {id(p): name for name, p in model.named_parameters()}
    table_names = [name for name in names.values() if name.startswith("embeddings.tables.")]
    first_table = table_names[0]
    config = TrainerConfig(weight_decay=1e-5, decoupled_weight_decay=True,
                           weight_decay_by_prefix={"embeddings.": 1e-3, first_table: 0.1})
    optimizer = _adam(model, config)
    decay_of = {names[id(p)]: group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    assert decay_of[first_table] == 0.1
    assert all(decay_of[name] == 1e-3 for name in table_names[1:])
    assert decay_of["user_linear.weight"] == 1e-5
    assert len(decay_of) == len(names)  # every parameter in exactly one group
    assert all(group["decoupled_weight_decay"] for group in optimizer.param_groups)
    with pytest.raises(TrainingError, match="match no parameter"):
        _adam(model, TrainerConfig(weight_decay_by_prefix={"embedding_tables.": 1e-3}))



# ---- tail averaging of epoch-end weights -------------------------------------------------------------


def test_average_states_by_hand() -> None:
    from ytdnn.training.trainer import average_states

    a = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)}
    b = {"w": torch.tensor([3.0, 6.0]), "n": torch.tensor(5)}
    mean = average_states([a, b])
    assert torch.equal(mean["w"], torch.tensor([2.0, 4.0])) and int(mean["n"]) == 5  # integers: the last one
    with pytest.raises(TrainingError, match="no state"):
        average_states([])


def _raw_weights_after(epochs: int) -> dict[str, Tensor]:
    model, objective, train, _ = _setup(seed=3)
    Trainer(model, objective, train, None, TrainerConfig(batch_size=64, epochs=epochs, seed=5, **QUIET)).fit()
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_tail_average_keeps_the_mean_of_the_last_epoch_ends() -> None:
    # The same seed draws the same permutations whatever the epoch count, so the raw weights at
    # the ends of epochs 2 and 3 are those of 2- and 3-epoch runs.
    raw_2, raw_3 = _raw_weights_after(2), _raw_weights_after(3)
    model, objective, train, _ = _setup(seed=3)
    Trainer(model, objective, train, None,
            TrainerConfig(batch_size=64, epochs=3, seed=5, average_last_epochs=2, **QUIET)).fit()
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, (raw_2[name] + raw_3[name]) / 2, rtol=0, atol=1e-6)
    assert not torch.allclose(model.state_dict()["user_linear.weight"], raw_3["user_linear.weight"])


def test_tail_average_is_what_validation_sees_and_what_is_restored() -> None:
    model, objective, train, validation = _setup(seed=3)
    history = Trainer(model, objective, train, validation,
                      TrainerConfig(batch_size=64, epochs=3, seed=5, patience=0, average_last_epochs=3,
                                    **QUIET)).fit()
    best = history.best
    assert best is not None
    again = float(objective.loss(predict_outputs(model, validation), validation.is_click, validation.watch_time_s))
    assert again == pytest.approx(best.validation["val_loss"], rel=1e-6)
    if history.best_epoch == 3:  # then the kept weights are the mean of all three epoch ends
        raw = [_raw_weights_after(e) for e in (1, 2, 3)]
        torch.testing.assert_close(model.state_dict()["user_linear.weight"],
                                   sum(r["user_linear.weight"] for r in raw) / 3, rtol=0, atol=1e-6)
