"""The retrieval job: run folder, reload, losses from config, log-Q on skewed data, user-vector export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from ytdnn.config import ConfigError
from ytdnn.data.schema import InteractionData, write_dataset
from ytdnn.data.simulator import SimulatorConfig, simulate
from ytdnn.evaluation.metrics import retrieval_metrics
from ytdnn.features.retrieval import RetrievalFeaturizer
from ytdnn.models.candidate import CandidateGenerator
from ytdnn.training.retrieval import (
    RetrievalConfig,
    RetrievalLossConfig,
    RetrievalRunError,
    export_user_vectors,
    fit_candidate_model,
    load_retrieval_run,
    make_retrieval_loss,
    model_spec,
    train_retrieval,
    user_vector_batches,
)
from ytdnn.training.retrieval_losses import (
    FullSoftmaxLoss,
    LogUniformSampler,
    SampledSoftmaxLoss,
    UniformSampler,
    UnigramSampler,
)

SMALL_SIM = dict(n_users=300, n_videos=300, n_days=14, impressions_per_user_day=6.0, n_topics=8,
                 n_tokens=64, seed=3)


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("sim")
    write_dataset(simulate(SimulatorConfig(**SMALL_SIM)), folder)
    return folder


def _config(dataset: Path, **overrides: object) -> RetrievalConfig:
    tree = {"data.dataset": str(dataset), "train.epochs": 2, "train.num_threads": 1,
            "model.hidden_dims": [32], "model.output_dim": 16, "model.watch_embedding_dim": 16,
            "loss.num_negatives": 64}
    tree.update(overrides)
    return RetrievalConfig.load(None, tree)


@pytest.fixture(scope="module")
def small_run(small_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_retrieval(_config(small_dataset), tmp_path_factory.mktemp("run"))


def test_run_folder_holds_every_artifact(small_run: Path) -> None:
    for name in ("config.json", "model.safetensors", "model.json", "item_vocab.json",
                 "item_vectors.safetensors", "training_history.json"):
        assert (small_run / name).is_file(), name
    assert not list(small_run.glob(".*.tmp")) and not list(small_run.glob("*.pkl"))
    run = load_retrieval_run(small_run)
    vectors = load_file(str(small_run / "item_vectors.safetensors"))
    # item_vectors.safetensors holds [v_i; b_i] for every corpus row, keyed by video id.
    assert vectors["vectors"].shape == (run.featurizer.n_items, 16 + 1)
    np.testing.assert_array_equal(vectors["video_ids"], run.featurizer.video_ids)
    np.testing.assert_allclose(vectors["vectors"], run.model.serving_item_vectors().numpy(), rtol=0, atol=0)
    assert run.config == _config(Path(run.config.data.dataset))


def test_training_loss_decreases(small_dataset: Path, tmp_path: Path) -> None:
    from ytdnn.utils.io import read_json

    run_dir = train_retrieval(_config(small_dataset, **{"train.epochs": 4}), tmp_path)
    history = read_json(run_dir / "training_history.json")
    losses = [epoch["loss"] for epoch in history["epochs"]]
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert history["n_examples"] > 1000


def test_reloaded_model_gives_the_same_user_vectors(small_run: Path, small_dataset: Path) -> None:
    run = load_retrieval_run(small_run)
    data = run.config.load_data()
    examples = run.featurizer.serving_examples(data.impressions, data.users, [0, 1, 2])
    again = load_retrieval_run(small_run)
    a = np.concatenate(list(run.user_vectors(examples, batch_size=2)))
    b = np.concatenate(list(again.user_vectors(examples, batch_size=3)))
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)  # batch shapes change float summation order
    assert a.shape == (3, 17) and np.all(a[:, -1] == 1.0)  # the bias column of [u; 1]


def test_export_user_vectors_in_bounded_shards(small_run: Path, tmp_path: Path) -> None:
    run = load_retrieval_run(small_run)
    data = run.config.load_data()
    folder = export_user_vectors(small_run, tmp_path / "users", batch_size=128)
    parts = sorted(folder.glob("part-*.safetensors"))
    n_users = data.impressions["user_id"].n_unique()
    assert len(parts) == -(-n_users // 128)  # ceil: one shard per 128 users
    shards = [load_file(str(p)) for p in parts]
    user_ids = np.concatenate([s["user_ids"] for s in shards])
    vectors = np.concatenate([s["vectors"] for s in shards])
    assert sorted(user_ids.tolist()) == sorted(data.impressions["user_id"].unique().to_list())
    # Each shard equals the vectors computed for those users with the whole log at once.
    now = int(data.impressions["time_ms"].max()) + 1
    direct = run.featurizer.serving_examples(data.impressions, data.users, user_ids[:5], at_time_ms=now)
    np.testing.assert_allclose(vectors[:5], np.concatenate(list(run.user_vectors(direct))), rtol=1e-6, atol=1e-6)


def test_make_retrieval_loss_follows_the_config() -> None:
    counts = np.array([5, 3, 1])
    assert isinstance(make_retrieval_loss(RetrievalLossConfig(kind="full"), counts), FullSoftmaxLoss)
    for sampler, cls in (("uniform", UniformSampler), ("unigram", UnigramSampler), ("log_uniform", LogUniformSampler)):
        loss = make_retrieval_loss(RetrievalLossConfig(kind="sampled", sampler=sampler, num_negatives=7,
                                                       log_q_correction=False), counts)
        assert isinstance(loss, SampledSoftmaxLoss) and isinstance(loss.sampler, cls)
        assert loss.num_negatives == 7 and loss.log_q_correction is False and loss.remove_accidental_hits
    # unigram^alpha over train watches: q = c^0.5 / sum c^0.5
    loss = make_retrieval_loss(RetrievalLossConfig(sampler="unigram", unigram_alpha=0.5), counts)
    q = loss.sampler.probability(torch.arange(3))
    np.testing.assert_allclose(q.numpy(), np.sqrt(counts) / np.sqrt(counts).sum())


def test_config_rejects_unknown_keys_and_bad_values(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="loss.kind"):
        RetrievalConfig.load(None, {"loss.kind": "hierarchical"})
    with pytest.raises(ConfigError, match="features.history_lenght"):
        RetrievalConfig.load(None, {"features.history_lenght": 10})
    toml = tmp_path / "job.toml"
    toml.write_text('[data]\ndataset = "x"\n[features]\nhistory_length = 7\n[loss]\nkind = "full"\n')
    config = RetrievalConfig.load(toml, ["train.epochs=3"])
    assert (config.data.dataset, config.features.history_length, config.loss.kind, config.train.epochs) == (
        "x", 7, "full", 3)


def test_load_rejects_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    with pytest.raises(RetrievalRunError, match="config.json"):
        load_retrieval_run(tmp_path)


def _recall_at(data: InteractionData, config: RetrievalConfig, k: int) -> float:
    train, _ = config.split().split(data)
    featurizer = RetrievalFeaturizer.fit(train, data.users, config.features)
    examples = featurizer.training_examples(train, data.users, seed=config.seed)
    torch.manual_seed(config.seed)
    model = CandidateGenerator(model_spec(config, featurizer))
    with torch.random.fork_rng():
        torch.set_num_threads(1)
        fit_candidate_model(model, examples, make_retrieval_loss(config.loss, featurizer.item_train_clicks),
                            config.train, seed=config.seed)
    test = featurizer.replay_examples(data.impressions, data.users, config.split().test_mask())
    vectors = torch.from_numpy(np.concatenate(list(user_vector_batches(model, test))))
    top = torch.topk(vectors @ model.serving_item_vectors().T, k).indices.numpy()
    return retrieval_metrics(featurizer.video_ids[top], test.video_id, featurizer.n_items, ks=(k,))[f"recall@{k}"]


def test_log_q_correction_matters_on_popularity_skewed_data() -> None:
    # Zipf-skewed exposure, little personal taste: the next watch is mostly a popular video.
    data = simulate(SimulatorConfig(n_users=400, n_videos=400, n_days=14, impressions_per_user_day=6.0,
                                    popularity_skew=1.2, personal_exposure_share=0.2, popularity_drift=0.0,
                                    n_topics=8, n_tokens=64, seed=5))
    common = {"train.epochs": 3, "train.num_threads": 1, "model.hidden_dims": [32], "model.output_dim": 16,
              "model.watch_embedding_dim": 16, "loss.kind": "sampled", "loss.sampler": "unigram",
              "loss.unigram_alpha": 1.0, "loss.num_negatives": 32, "train.lr": 3e-3}
    with_correction = _recall_at(data, RetrievalConfig.load(None, {**common, "loss.log_q_correction": True}), 20)
    without = _recall_at(data, RetrievalConfig.load(None, {**common, "loss.log_q_correction": False}), 20)
    # Without log-Q the model learns p_i / q_i, i.e. it divides out popularity: popular items,
    # the likely next watches here, sink.
    print(f"recall@20 with log-Q {with_correction:.4f}, without {without:.4f}")
    assert with_correction > without + 0.05, (with_correction, without)
