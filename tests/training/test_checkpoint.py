"""Checkpoints and resume: exact continuation from any step, atomic files, refusing foreign runs.

The SIGKILL test runs the real CLI in a subprocess (``python -m ytdnn train ranker``), kills it
after its first checkpoint and resumes it with ``--resume``.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.models.synthetic import make_batch, make_layout
from ytdnn.models import RankingNet
from ytdnn.training.checkpoint import (CheckpointError, CheckpointStore, optimizer_state_from_tensors,
                                       optimizer_state_to_tensors)
from ytdnn.training.losses import make_objective
from ytdnn.training.trainer import Trainer, TrainerConfig, TrainingError, TrainingHistory

QUIET = {"progress": False, "num_threads": 1}


def _setup(objective_name: str = "wlr", dropout: float = 0.2, init_seed: int = 0):
    layout = make_layout()
    train, validation = make_batch(500, layout, seed=1), make_batch(200, layout, seed=2)
    objective = make_objective(objective_name).fit(train.is_click, train.watch_time_s)
    torch.manual_seed(init_seed)
    model = RankingNet(layout, hidden=[16, 8], n_heads=objective.n_heads, dropout=dropout)
    model.set_output_bias(objective.init_bias(train.is_click, train.watch_time_s))
    return model, objective, train, validation


def _config(checkpoint_dir: Path, **extra) -> TrainerConfig:
    # 500 rows / 64 = 8 batches per epoch; every 3 steps puts checkpoints mid-epoch and at ends.
    base = dict(batch_size=64, epochs=3, seed=5, patience=0, checkpoint_dir=str(checkpoint_dir),
                checkpoint_every_batches=3, checkpoint_keep=1000)
    return TrainerConfig(**(base | QUIET | extra))


def _without_seconds(history: TrainingHistory) -> dict:
    payload = history.to_dict()
    payload.pop("seconds")
    payload.pop("resumed_from_step")
    for epoch in payload["epochs"]:
        epoch.pop("seconds")
    return payload


def _assert_same_weights(left: torch.nn.Module, right: torch.nn.Module) -> None:
    for (name, a), (_, b) in zip(left.state_dict().items(), right.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("objective_name", ["wlr", "wlr-resample"])  # resample draws from the shuffling generator
def test_resume_from_any_checkpoint_is_bit_exact(tmp_path: Path, objective_name: str) -> None:
    model, objective, train, validation = _setup(objective_name)
    full_dir = tmp_path / "full"
    reference = Trainer(model, objective, train, validation, _config(full_dir)).fit()
    store = CheckpointStore(full_dir / objective.name)
    steps = [int(p.name[11:23]) for p in store.paths()]
    # Mid-epoch steps 3, 6, 9, ... plus the epoch ends 8 and 16 (step 24 = the final checkpoint).
    assert steps == [3, 6, 8, 9, 12, 15, 16, 18, 21, 24]
    for step in (6, 8, 9, 18):  # mid-epoch 1, end of epoch 1, mid-epoch 2 (after an end), mid-epoch 3
        resume_dir = tmp_path / f"resume-{step}" / objective.name
        resume_dir.mkdir(parents=True)
        shutil.copy(store.directory / f"checkpoint-{step:012d}.safetensors", resume_dir)
        fresh, objective_again, _, _ = _setup(objective_name, init_seed=99)  # other init: the checkpoint wins
        history = Trainer(fresh, objective_again, train, validation,
                          _config(resume_dir.parent, resume=True)).fit()
        assert history.resumed_from_step == step
        assert history.examples_seen == reference.examples_seen
        if objective_name == "wlr":
            assert reference.examples_seen == 3 * 500
        assert _without_seconds(history) == _without_seconds(reference)
        _assert_same_weights(fresh, model)


def test_resume_of_a_finished_run_returns_its_result(tmp_path: Path) -> None:
    model, objective, train, validation = _setup()
    reference = Trainer(model, objective, train, validation, _config(tmp_path, patience=1)).fit()
    fresh, _, _, _ = _setup(init_seed=7)
    history = Trainer(fresh, objective, train, validation, _config(tmp_path, patience=1, resume=True)).fit()
    assert history.resumed_from_step == 8 * len(reference.epochs)  # the final checkpoint (8 steps an epoch)
    assert _without_seconds(history) == _without_seconds(reference)
    _assert_same_weights(fresh, model)  # the restored best epoch's weights


def test_budget_and_early_stop_state_survive_a_resume(tmp_path: Path) -> None:
    model, objective, train, validation = _setup()
    config = _config(tmp_path, max_examples=700)  # 11 batches: 10 full + one of 60 rows
    reference = Trainer(model, objective, train, validation, config).fit()
    assert reference.examples_seen == 700 and reference.budget_exhausted
    store = CheckpointStore(tmp_path / objective.name)
    for path in store.paths():
        if path.name != "checkpoint-000000000006.safetensors":
            path.unlink()
    fresh, _, _, _ = _setup(init_seed=3)
    history = Trainer(fresh, objective, train, validation, config.model_copy(update={"resume": True})).fit()
    assert history.examples_seen == 700 and history.budget_exhausted
    assert _without_seconds(history) == _without_seconds(reference)
    _assert_same_weights(fresh, model)


def test_fresh_run_clears_old_checkpoints_and_keeps_the_last_few(tmp_path: Path) -> None:
    model, objective, train, validation = _setup()
    stale = tmp_path / objective.name / "checkpoint-000000009999.safetensors"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"from an older run")
    temp = tmp_path / objective.name / ".checkpoint-000000000003.safetensors.abc.safetensors"
    temp.write_bytes(b"half")  # what a killed writer leaves
    Trainer(model, objective, train, validation, _config(tmp_path, checkpoint_keep=2)).fit()
    names = sorted(p.name for p in (tmp_path / objective.name).iterdir())
    assert names == ["checkpoint-000000000021.safetensors", "checkpoint-000000000024.safetensors"]


def test_resume_without_a_checkpoint_starts_fresh(tmp_path: Path) -> None:
    model, objective, train, validation = _setup()
    reference = Trainer(model, objective, train, validation, _config(tmp_path / "a")).fit()
    fresh, _, _, _ = _setup()
    history = Trainer(fresh, objective, train, validation, _config(tmp_path / "b", resume=True)).fit()
    assert history.resumed_from_step is None
    assert _without_seconds(history) == _without_seconds(reference)
    _assert_same_weights(fresh, model)


def test_a_checkpoint_of_another_run_is_refused(tmp_path: Path) -> None:
    model, objective, train, validation = _setup()
    Trainer(model, objective, train, validation, _config(tmp_path, epochs=1)).fit()
    fresh, _, _, _ = _setup()
    with pytest.raises(TrainingError, match=r"different run \(\['batch_size'\] differ: checkpoint \[64\], now \[32\]"):
        Trainer(fresh, objective, train, validation, _config(tmp_path, batch_size=32, resume=True)).fit()
    other = RankingNet(make_layout(), hidden=[4], n_heads=objective.n_heads)
    with pytest.raises(TrainingError, match="does not fit this model"):
        Trainer(other, objective, train, validation, _config(tmp_path, resume=True)).fit()


def test_truncated_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    model, objective, train, validation = _setup()
    Trainer(model, objective, train, validation, _config(tmp_path, epochs=1)).fit()
    store = CheckpointStore(tmp_path / objective.name)
    latest = store.latest_path()
    assert latest is not None
    latest.write_bytes(latest.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=f"{latest.name}: not a readable checkpoint"):
        store.latest()


def test_optimizer_state_round_trips_through_tensors() -> None:
    model, objective, train, _ = _setup()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, betas=(0.8, 0.95))
    loss = objective.loss(model(train), train.is_click, train.watch_time_s)
    loss.backward()
    optimizer.step()
    tensors, rest = optimizer_state_to_tensors(optimizer.state_dict())
    restored = optimizer_state_from_tensors(tensors, rest)
    original = optimizer.state_dict()
    assert restored["param_groups"] == original["param_groups"]
    assert restored["param_groups"][0]["betas"] == (0.8, 0.95)
    for index, state in original["state"].items():
        for key, value in state.items():
            assert torch.equal(restored["state"][index][key], value)


def _simulated_dataset(directory: Path) -> Path:
    from ytdnn.data.schema import write_dataset
    from ytdnn.data.simulator import SimulatorConfig, simulate

    config = SimulatorConfig(n_users=300, n_videos=300, n_days=4, start_date=20220501, impressions_per_user_day=12,
                             n_authors=40, n_music=50, n_tokens=100, seed=4)
    return write_dataset(simulate(config), directory)


def _train_command(dataset: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "ytdnn", "train", "ranker", "--out", str(out), "--dataset", str(dataset),
            "--set", "model.hidden=[16]", "--set", "train.epochs=2", "--set", "train.batch_size=32",
            "--set", "train.progress=false", "--set", "train.patience=0", "--set", "baselines.click=false",
            "--set", "data.train_end=20220503", "--set", "data.test_start=20220504",
            "--checkpoint-every", "20", *extra]


def test_sigkilled_cli_run_resumes_to_the_same_result(tmp_path: Path) -> None:
    dataset = _simulated_dataset(tmp_path / "data")
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    reference_dir = tmp_path / "reference"
    subprocess.run(_train_command(dataset, reference_dir), check=True, env=env, capture_output=True, timeout=300)

    killed_dir = tmp_path / "killed"
    checkpoints = killed_dir / "checkpoints" / "wlr-corrected"  # the default objective
    process = subprocess.Popen(_train_command(dataset, killed_dir), env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not list(checkpoints.glob("checkpoint-*.safetensors")) and process.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (killed_dir / "model.json").exists()
    for path in CheckpointStore(checkpoints).paths():  # every complete-named file is whole
        assert load_file(str(path))

    subprocess.run(_train_command(dataset, killed_dir, "--resume"), check=True, env=env, capture_output=True,
                   timeout=300)
    import json

    reference = json.loads((reference_dir / "training.json").read_text())
    resumed = json.loads((killed_dir / "training.json").read_text())
    # The kill came during the selection pass (checkpoints/wlr-corrected); the refit then ran afresh.
    selection, reference_selection = resumed["selection"], reference["selection"]
    assert selection["resumed_from_step"] is not None and selection["resumed_from_step"] >= 20
    for ran, unbroken in ((selection, reference_selection), (resumed, reference)):
        assert ran["examples_seen"] == unbroken["examples_seen"] > 0
        assert [e["train_loss"] for e in ran["epochs"]] == [e["train_loss"] for e in unbroken["epochs"]]
    # Bit-exact: the same weights as the run that was never interrupted.
    left, right = load_file(str(reference_dir / "model.safetensors")), load_file(str(killed_dir / "model.safetensors"))
    assert left.keys() == right.keys() and all(torch.equal(left[k], right[k]) for k in left)
    assert math.isfinite(selection["best_validation"]["weighted_per_user_loss"])
    assert resumed["calibration"] == reference["calibration"]  # the same calibration constant c


def test_resume_with_tail_averaging_and_an_lr_schedule_is_bit_exact(tmp_path: Path) -> None:
    # The averaged window (the previous epoch ends) travels in the checkpoint; the schedule is a
    # function of the step, which the checkpoint holds.
    extra = {"average_last_epochs": 2, "lr_schedule": "linear", "weight_decay_by_prefix": {"embeddings.": 1e-3}}
    model, objective, train, validation = _setup()
    full_dir = tmp_path / "full"
    reference = Trainer(model, objective, train, validation, _config(full_dir, **extra)).fit()
    store = CheckpointStore(full_dir / objective.name)
    for step in (9, 18):  # mid-epoch 2 (one epoch end in the window), mid-epoch 3 (two seen)
        assert len(store.load(store.directory / f"checkpoint-{step:012d}.safetensors").recent_epochs) == 1
        resume_dir = tmp_path / f"resume-{step}" / objective.name
        resume_dir.mkdir(parents=True)
        shutil.copy(store.directory / f"checkpoint-{step:012d}.safetensors", resume_dir)
        fresh, objective_again, _, _ = _setup(init_seed=99)
        history = Trainer(fresh, objective_again, train, validation,
                          _config(resume_dir.parent, resume=True, **extra)).fit()
        assert history.resumed_from_step == step
        assert _without_seconds(history) == _without_seconds(reference)
        _assert_same_weights(fresh, model)
