"""Shared fixtures: a small simulated log, tiny ranker and retrieval runs trained on it, a bundle.

Built once per session (about ten seconds); every serving test reads them, none writes them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ytdnn.data.schema import InteractionData
from ytdnn.data.simulator import SimulatorConfig, simulate
from ytdnn.serving.bundle import build_bundle, load_recommender
from ytdnn.serving.recommender import Recommender
from ytdnn.serving.settings import ServingSettings
from ytdnn.training.ranker import RankerConfig, train_ranker
from ytdnn.training.retrieval import RetrievalConfig, train_retrieval

TRAIN_END = 20220427
TEST_START = 20220428
ADMIN_TOKEN = "test-admin-token"


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> None:
    # Small matrix products on 2 OpenMP threads are 100x slower on a busy 2-core machine.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def sim_data() -> InteractionData:
    return simulate(SimulatorConfig(n_users=120, n_videos=200, n_days=5, impressions_per_user_day=6, seed=7))


@pytest.fixture(scope="session")
def runs(tmp_path_factory: pytest.TempPathFactory, sim_data: InteractionData) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("serving_runs")
    ranker = RankerConfig.load(None, {
        "data.dataset": "simulated", "data.train_end": TRAIN_END, "data.test_start": TEST_START,
        "model.hidden": [16, 8], "train.epochs": 1, "train.progress": False, "train.num_threads": 1,
        "baselines.click": False})
    train_ranker(ranker, root / "ranker", data=sim_data)
    retrieval = RetrievalConfig.load(None, {
        "data.dataset": "simulated", "data.train_end": TRAIN_END, "data.test_start": TEST_START,
        "model.hidden_dims": [16], "model.output_dim": 8, "model.watch_embedding_dim": 8,
        "model.token_embedding_dim": 4, "model.profile_embedding_dim": 2, "train.epochs": 1,
        "train.num_threads": 1, "loss.kind": "full"})
    train_retrieval(retrieval, root / "retrieval", data=sim_data)
    return root / "ranker", root / "retrieval"


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory, runs: tuple[Path, Path], sim_data: InteractionData) -> Path:
    root = tmp_path_factory.mktemp("serving_bundle")
    return build_bundle(list(runs), root / "bundle", data=sim_data, parity_rows=512)


def settings(**overrides: object) -> ServingSettings:
    """Test settings: small candidate count, quick warm-up, loads before serving, admin on."""
    values: dict[str, object] = {"candidate_count": 40, "max_k": 20, "warmup_requests": 2, "background_load": False,
                                 "admin_token": ADMIN_TOKEN}
    values.update(overrides)
    return ServingSettings(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def recommender(bundle_dir: Path) -> Recommender:
    model = load_recommender(bundle_dir, settings())
    model.warm_up(2)
    return model
