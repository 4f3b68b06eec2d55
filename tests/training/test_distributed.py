"""Distributed training: ``torchrun --nproc-per-node 2 -m ytdnn train ranker`` (gloo, CPU) reaches the
test metrics of one process with the same global batch, and only rank 0 writes the run folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from ytdnn.data.schema import write_dataset
from ytdnn.data.simulator import SimulatorConfig, simulate
from ytdnn.evaluation.metrics import weighted_per_user_loss
from ytdnn.training.distributed import DistributedContext
from ytdnn.training.ranker import load_ranker, page_ids

TORCHRUN = Path(sys.executable).with_name("torchrun")


def test_share_splits_a_global_batch_into_near_equal_slices() -> None:
    # 10 rows over 3 ranks: 4 + 3 + 3; 1 row over 2 ranks: 1 + 0.
    assert [DistributedContext(r, 3).share(10) for r in range(3)] == [(0, 4), (4, 7), (7, 10)]
    assert [DistributedContext(r, 2).share(1) for r in range(2)] == [(0, 1), (1, 1)]
    assert DistributedContext().share(7) == (0, 7)


def _test_loss(run_dir: Path, data, test_date: int) -> float:
    ranker = load_ranker(run_dir)
    log = ranker.pipeline.add_history(data.impressions, data.videos)
    test = log.filter(pl.col("date") == test_date)
    scores = ranker.score_frame(test, data.users, data.videos)
    return weighted_per_user_loss(page_ids(test), test["is_click"].to_numpy(), test["watch_time_s"].to_numpy(),
                                  scores["expected_watch_s"])


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed next to the interpreter")
def test_torchrun_two_processes_match_one_process(tmp_path: Path) -> None:
    config = SimulatorConfig(n_users=300, n_videos=300, n_days=4, start_date=20220501, impressions_per_user_day=10,
                             n_authors=40, n_music=50, n_tokens=100, seed=6)
    data = simulate(config)
    dataset = write_dataset(data, tmp_path / "data")
    args = ["train", "ranker", "--dataset", str(dataset), "--set", "model.hidden=[16]", "--set", "train.epochs=2",
            "--set", "train.batch_size=256", "--set", "train.progress=false", "--set", "train.patience=0",
            "--set", "baselines.click=false", "--set", "data.train_end=20220503", "--set", "data.test_start=20220504"]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    single, multi = tmp_path / "single", tmp_path / "multi"
    subprocess.run([sys.executable, "-m", "ytdnn", *args, "--out", str(single)], check=True, env=env,
                   capture_output=True, timeout=120)
    done = subprocess.run([str(TORCHRUN), "--standalone", "--nproc-per-node", "2", "-m", "ytdnn", *args,
                           "--out", str(multi)], env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "(2 processes)" in " ".join(done.stderr.split())  # rich wraps lines

    one, two = (json.loads((d / "training.json").read_text()) for d in (single, multi))
    assert two["examples_seen"] == one["examples_seen"] == 2 * one["n_train"]  # each row once per epoch, globally
    # The same rows per step and the same averaged gradient: only float summation order differs.
    for a, b in zip(one["epochs"], two["epochs"], strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
    loss_one, loss_two = _test_loss(single, data, 20220504), _test_loss(multi, data, 20220504)
    assert abs(loss_one - loss_two) < 0.005, (loss_one, loss_two)
    # Only rank 0 wrote: the run folder is the single-process layout, nothing else beside it.
    assert sorted(p.name for p in multi.iterdir()) == sorted(p.name for p in single.iterdir())
