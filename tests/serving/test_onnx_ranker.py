"""The ranker's two ONNX graphs (user half once, candidate half batched) against PyTorch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ytdnn.features.layout import EmbeddingTableSpec, FeatureLayout, FeatureSpec, RankingBatch
from ytdnn.models.ranking import RankingNet
from ytdnn.serving.bundle import read_manifest
from ytdnn.serving.onnx_ranker import (
    OnnxSplitNetwork,
    TorchSplitNetwork,
    batch_arrays,
    check_parity,
    export_ranker_onnx,
    input_names,
    item_hidden_table,
    zero_sides,
)
from ytdnn.training.losses import WLRCorrectedObjective, WLRObjective


def _layout() -> FeatureLayout:
    tables = [EmbeddingTableSpec("video_id", 30, 6), EmbeddingTableSpec("user_id", 10, 4),
              EmbeddingTableSpec("tag", 8, 3)]
    features = [
        FeatureSpec("user_id", "categorical", "user", "ids", table="user_id"),
        FeatureSpec("video_id", "categorical", "item", "ids", table="video_id"),
        FeatureSpec("clicked_ids", "multivalent", "user", "history", table="video_id"),
        FeatureSpec("tags", "multivalent", "item", "ids", table="tag"),
        FeatureSpec("duration", "dense", "item", "video_stats", width=3),
        FeatureSpec("since_click", "dense", "user", "history", width=4),
        FeatureSpec("prev_impressions", "dense", "cross", "history", width=3),
    ]
    return FeatureLayout(tables, features)


def _batch(n: int, seed: int = 0, same_user: bool = False) -> RankingBatch:
    g = torch.Generator().manual_seed(seed)
    users = torch.randint(0, 10, (1 if same_user else n,), generator=g).expand(n)
    categorical = torch.stack([users, torch.randint(0, 30, (n,), generator=g)], dim=1).contiguous()
    clicked = torch.randint(0, 30, (1 if same_user else n, 5), generator=g).expand(n, 5).contiguous()
    tags = torch.randint(0, 8, (n, 2), generator=g)
    dense = torch.rand((n, 10), generator=g)
    if same_user:
        dense[:, 3:7] = dense[0, 3:7]  # the user's dense columns (since_click, width 4)
    return RankingBatch(categorical, [clicked, tags], dense, torch.zeros(n), torch.zeros(n))


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[RankingNet, OnnxSplitNetwork]:
    torch.manual_seed(0)
    net = RankingNet(_layout(), hidden=[8, 4]).eval()
    with torch.no_grad():  # trained-looking embeddings, not the N(0, 0.01) start
        for table in net.embeddings.tables.values():
            table.weight[1:].normal_()
    graphs = export_ranker_onnx(net, _batch(4), tmp_path_factory.mktemp("onnx"))
    return net, OnnxSplitNetwork(*graphs, feature_names=input_names(net), n_heads=1)


def test_split_graphs_equal_the_full_forward_pass(exported: tuple[RankingNet, OnnxSplitNetwork]) -> None:
    net, onnx_net = exported
    report = check_parity(net, onnx_net, _batch(300, seed=1), WLRObjective().predict)
    assert report.rows == 300
    assert report.passed and report.max_relative_diff <= 1e-4
    assert report.quantities == ("odds", "expected_watch_s")


def test_user_half_computed_once_broadcasts_over_candidates(exported: tuple[RankingNet, OnnxSplitNetwork]) -> None:
    net, onnx_net = exported
    batch = _batch(200, seed=2, same_user=True)
    categorical, multivalent, dense = batch_arrays(batch)
    user_hidden = onnx_net.user_hidden(categorical[:1], [m[:1] for m in multivalent], dense[:1])
    assert user_hidden.shape == (1, 8)
    logits = onnx_net.logits(user_hidden, categorical, multivalent, dense)
    with torch.no_grad():
        reference = net(batch).numpy()
    np.testing.assert_allclose(logits, reference, rtol=1e-5, atol=1e-6)


def test_precomputed_item_half_plus_cross_tower_equals_the_full_pass(
        exported: tuple[RankingNet, OnnxSplitNetwork]) -> None:
    """W_c·x_c = W_i·x_i + W_x·x_x: the item half from a per-video table, the cross half per request."""
    net, onnx_net = exported
    batch = _batch(120, seed=6)
    table = item_hidden_table(net, batch)  # here every row is its own "video"
    report = check_parity(net, onnx_net, batch, WLRObjective().predict, item_hidden=table)
    assert report.passed and report.max_relative_diff <= 1e-4
    # The cross-tower graph really ignores the item columns it is given...
    categorical, multivalent, dense = batch_arrays(zero_sides(net, batch, ("item",)))
    hidden = onnx_net.user_hidden(*batch_arrays(batch))
    without_items = onnx_net.cached_logits(hidden, table, categorical, multivalent, dense)
    with torch.no_grad():
        np.testing.assert_allclose(without_items, net(batch).numpy(), rtol=1e-5, atol=1e-6)
    # ...and reads the cross ones: change a cross column, the logits move.
    dense[:, 7] += 1.0
    assert not np.allclose(onnx_net.cached_logits(hidden, table, categorical, multivalent, dense), without_items)
    torch_report = check_parity(net, TorchSplitNetwork(net), batch, WLRObjective().predict, item_hidden=table)
    assert torch_report.max_abs_logit_diff <= 1e-5


def test_graphs_keep_only_the_inputs_their_side_reads(exported: tuple[RankingNet, OnnxSplitNetwork]) -> None:
    _, onnx_net = exported
    # The user graph never reads the item's tags; the candidate graph never reads the user's clicks.
    assert "multivalent__tags" not in onnx_net._user_inputs
    assert "multivalent__clicked_ids" not in onnx_net._candidate_inputs
    assert {"categorical", "dense", "user_hidden"} <= onnx_net._candidate_inputs
    # The cross-tower graph reads neither the tags (item) nor the clicks (user).
    assert onnx_net._cross_inputs <= {"user_hidden", "item_hidden", "categorical", "dense"}


def test_torch_backend_matches_too(exported: tuple[RankingNet, OnnxSplitNetwork]) -> None:
    net, _ = exported
    report = check_parity(net, TorchSplitNetwork(net), _batch(64, seed=3), WLRObjective().predict)
    assert report.max_abs_logit_diff <= 1e-6


def test_parity_check_catches_a_graph_that_differs(tmp_path: Path) -> None:
    torch.manual_seed(1)
    net = RankingNet(_layout(), hidden=[8]).eval()
    graphs = export_ranker_onnx(net, _batch(4), tmp_path)
    onnx_net = OnnxSplitNetwork(*graphs, feature_names=input_names(net), n_heads=1)
    with torch.no_grad():
        net.tower[-1].bias.add_(0.01)  # e^(z + 0.01) is 1% more than e^z
    report = check_parity(net, onnx_net, _batch(50, seed=4), WLRObjective().predict)
    assert not report.passed
    assert report.max_relative_diff == pytest.approx(1 - np.exp(-0.01), rel=1e-3)


def test_two_head_objective_serves_p_click(tmp_path: Path) -> None:
    torch.manual_seed(2)
    net = RankingNet(_layout(), hidden=[8], n_heads=2).eval()
    graphs = export_ranker_onnx(net, _batch(4), tmp_path)
    onnx_net = OnnxSplitNetwork(*graphs, feature_names=input_names(net), n_heads=2)
    report = check_parity(net, onnx_net, _batch(80, seed=5), WLRCorrectedObjective().predict)
    assert report.passed
    assert "p_click" in report.quantities and "odds" in report.quantities


def test_bundle_parity_was_checked_on_real_rows(bundle_dir: Path) -> None:
    manifest = read_manifest(bundle_dir)
    parity = manifest["onnx_parity"]
    assert parity["passed"] is True
    assert parity["rows"] == 512
    assert parity["max_relative_diff"] <= 1e-4
    cached = manifest["onnx_parity_item_cache"]
    assert cached["passed"] is True and cached["max_relative_diff"] <= 1e-4
    assert 0 < cached["rows"] <= 512  # the rows whose video is in the table


def test_bundle_checked_the_whole_served_path_on_real_rows(bundle_dir: Path) -> None:
    served = read_manifest(bundle_dir)["served_parity"]
    assert served["passed"] is True and served["max_relative_diff"] <= 1e-4
    assert served["requests"] == 9 and served["rows"] > 0
    assert 0 < served["snapshot_rows"] < served["rows"]  # both the snapshot and the exact item history
