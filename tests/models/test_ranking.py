"""Tests of the ranking tower: the split first layer, serving split, config/weights round trip."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.models.synthetic import CANDIDATE_DENSE_COLUMNS, USER_DENSE_COLUMNS, make_batch, make_layout
from ytdnn.features.layout import RankingBatch
from ytdnn.models import LayoutError, RankingNet, load_weights, mean_of_bags, save_weights


def _concatenated_input(model: RankingNet, batch: RankingBatch) -> torch.Tensor:
    """[x_user; x_candidate] built by hand from the raw tensors, independently of the model's routing."""
    tables = {name: table.weight for name, table in model.embeddings.tables.items()}
    cat, (watched, clicked_authors), dense = batch.categorical, batch.multivalent, batch.dense
    x_user = [tables["user_id"][cat[:, 1]], mean_of_bags(tables["video_id"], watched), dense[:, USER_DENSE_COLUMNS]]
    x_candidate = [tables["video_id"][cat[:, 0]], tables["author_id"][cat[:, 2]],
                   mean_of_bags(tables["author_id"], clicked_authors), dense[:, CANDIDATE_DENSE_COLUMNS]]
    return torch.cat(x_user + x_candidate, dim=1)


@pytest.mark.parametrize("hidden", [[16, 8], [5], []])
def test_split_first_layer_equals_a_plain_layer_on_the_concatenated_input(hidden: list[int]) -> None:
    torch.manual_seed(0)
    model = RankingNet(make_layout(), hidden=hidden, n_heads=2).eval()
    batch = make_batch(32, model.layout)
    assert (model.user_width, model.candidate_width) == (3 + 4 + 3, 4 + 2 + 2 + 4)
    plain = nn.Linear(model.user_width + model.candidate_width, model.first_width)
    with torch.no_grad():
        plain.weight.copy_(torch.cat([model.user_linear.weight, model.candidate_linear.weight], dim=1))
        plain.bias.copy_(model.user_linear.bias)
    expected = model.tower(plain(_concatenated_input(model, batch)))
    assert torch.allclose(model(batch), expected, atol=1e-6, rtol=0)
    assert model(batch).shape == (32, 2)


def test_forward_split_broadcasts_one_user_part_over_all_candidates() -> None:
    torch.manual_seed(0)
    model = RankingNet(make_layout(), hidden=[16, 8]).eval()
    candidates = make_batch(10, model.layout, seed=3)
    request = make_batch(1, model.layout, seed=4)
    # Give every candidate row the request's user-side inputs: then forward == forward_split.
    joined = RankingBatch(candidates.categorical.clone(), [m.clone() for m in candidates.multivalent],
                          candidates.dense.clone(), candidates.is_click, candidates.watch_time_s)
    joined.categorical[:, 1] = request.categorical[0, 1]
    joined.multivalent[0][:] = request.multivalent[0][0]
    joined.dense[:, USER_DENSE_COLUMNS] = request.dense[0, USER_DENSE_COLUMNS]
    user_hidden = model.user_part(request)
    assert user_hidden.shape == (1, 16)
    assert torch.allclose(model.forward_split(user_hidden, candidates), model(joined), atol=1e-6, rtol=0)
    # The per-row user part gives the same as well.
    assert torch.allclose(model.forward_split(model.user_part(joined), candidates), model(joined), atol=1e-6)


def test_forward_tensors_is_the_same_function_with_plain_tensors() -> None:
    torch.manual_seed(0)
    model = RankingNet(make_layout(), hidden=[8]).eval()
    batch = make_batch(6, model.layout)
    logits = model.forward_tensors(batch.categorical, *batch.multivalent, batch.dense)
    assert torch.equal(logits, model(batch))


def test_output_bias_is_settable_for_every_depth() -> None:
    for hidden in ([8, 4], []):
        model = RankingNet(make_layout(), hidden=hidden, n_heads=2)
        model.set_output_bias([4.5, -1.25])
        assert model.output_bias.tolist() == [4.5, -1.25]
    with pytest.raises(LayoutError, match="expected 2 values"):
        model.set_output_bias([1.0])


def test_first_layer_bound_uses_the_total_fan_in() -> None:
    torch.manual_seed(0)
    model = RankingNet(make_layout(), hidden=[64])
    bound = (model.user_width + model.candidate_width) ** -0.5  # 1/sqrt(22)
    for tensor in (model.user_linear.weight, model.candidate_linear.weight, model.user_linear.bias):
        assert float(tensor.detach().abs().max()) <= bound
    assert float(model.candidate_linear.weight.detach().abs().max()) > 0.9 * bound


def test_config_and_safetensors_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = RankingNet(make_layout(), hidden=[16, 8], n_heads=2, dropout=0.25)
    model.set_output_bias([3.0, -2.0])
    save_weights(model, tmp_path / "model.safetensors")
    rebuilt = RankingNet.from_config(model.to_config())
    load_weights(rebuilt, tmp_path / "model.safetensors")
    batch = make_batch(20, model.layout)
    assert torch.equal(rebuilt.eval()(batch), model.eval()(batch))
    assert rebuilt.to_config() == model.to_config()
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temp file left


def test_weights_of_another_architecture_are_rejected(tmp_path: Path) -> None:
    save_weights(RankingNet(make_layout(), hidden=[16]), tmp_path / "w.safetensors")
    with pytest.raises(LayoutError, match="weights do not fit"):
        load_weights(RankingNet(make_layout(), hidden=[8]), tmp_path / "w.safetensors")


def test_bad_dense_width_names_the_field() -> None:
    model = RankingNet(make_layout(), hidden=[4])
    batch = make_batch(3, model.layout)
    with pytest.raises(LayoutError, match=r"dense: expected a FloatTensor \[B, 7\]"):
        model.forward_tensors(batch.categorical, *batch.multivalent, batch.dense[:, :5])


def test_dropout_is_active_only_in_training_mode() -> None:
    torch.manual_seed(0)
    model = RankingNet(make_layout(), hidden=[32, 16], dropout=0.5)
    batch = make_batch(16, model.layout)
    model.eval()
    assert torch.equal(model(batch), model(batch))
    model.train()
    assert not torch.equal(model(batch), model(batch))


class _Exported(nn.Module):
    """What a serving bundle exports: forward_tensors with one input per tensor."""

    def __init__(self, model: RankingNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, categorical: torch.Tensor, watched: torch.Tensor, clicked_authors: torch.Tensor,
                dense: torch.Tensor) -> torch.Tensor:
        return self.model.forward_tensors(categorical, watched, clicked_authors, dense)


def test_forward_tensors_exports_to_onnx_with_a_dynamic_batch(tmp_path: Path) -> None:
    onnxruntime = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = RankingNet(make_layout(), hidden=[16, 8], n_heads=2).eval()
    names = ["categorical", "watched", "clicked_authors", "dense"]
    example = make_batch(7, model.layout)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(_Exported(model), (example.categorical, *example.multivalent, example.dense),
                          str(tmp_path / "ranker.onnx"), input_names=names, output_names=["logits"],
                          dynamic_axes={name: {0: "batch"} for name in names}, dynamo=False)
    session = onnxruntime.InferenceSession(str(tmp_path / "ranker.onnx"))
    other = make_batch(13, model.layout, seed=5)  # another batch size than the one traced
    inputs = dict(zip(names, [t.numpy() for t in (other.categorical, *other.multivalent, other.dense)], strict=True))
    logits = session.run(None, inputs)[0]
    assert logits.shape == (13, 2)
    assert float(abs(logits - model(other).detach().numpy()).max()) < 1e-5
