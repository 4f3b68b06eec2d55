"""The candidate network: inputs, padding, output layer and serving vectors."""

from __future__ import annotations

import pytest
import torch

from ytdnn.models.candidate import CandidateGenerator, CandidateModelError, CandidateModelSpec
from ytdnn.models.embedding import mean_of_bags


def _spec(**overrides: object) -> CandidateModelSpec:
    base = dict(n_items=20, n_tokens=11, profile_cardinalities=[3, 5], dense_width=3, watch_embedding_dim=8,
                token_embedding_dim=4, profile_embedding_dim=2, hidden_dims=[16, 12], output_dim=6)
    base.update(overrides)
    return CandidateModelSpec(**base)  # type: ignore[arg-type]


def _inputs(batch: int = 4) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(0)
    history = torch.randint(0, 21, (batch, 5), generator=generator)
    tokens = torch.randint(0, 11, (batch, 3), generator=generator)
    profile = torch.stack([torch.randint(0, 3, (batch,), generator=generator),
                           torch.randint(0, 5, (batch,), generator=generator)], dim=1)
    dense = torch.rand((batch, 3), generator=generator)
    return history, tokens, profile, dense


def test_shapes_and_input_width() -> None:
    spec = _spec()
    # 8 (watches) + 4 (tokens) + 2 fields x 2 (profile) + 3 (example age) = 19
    assert spec.input_width == 19
    model = CandidateGenerator(spec)
    user = model.user_vectors(*_inputs())
    assert user.shape == (4, 6)
    assert model.scores(user).shape == (4, 20)
    assert model.tower[0].in_features == 19
    # Two ReLU layers and the final linear map: Linear, ReLU, Linear, ReLU, Linear.
    assert [type(m).__name__ for m in model.tower] == ["Linear", "ReLU", "Linear", "ReLU", "Linear"]


def test_padding_does_not_change_the_watch_average() -> None:
    torch.manual_seed(0)
    model = CandidateGenerator(_spec())
    history, tokens, profile, dense = _inputs(2)
    history = torch.tensor([[3, 4, 0, 0, 0], [0, 0, 0, 3, 4]])
    user = model.user_vectors(history, tokens[:1].expand(2, -1), profile[:1].expand(2, -1), dense[:1].expand(2, -1))
    # Same watches, different padding: the same user vector.
    torch.testing.assert_close(user[0], user[1])
    # The mean covers the non-padding rows only: (E[3] + E[4]) / 2, not / 5.
    expected = (model.watch_embedding.weight[3] + model.watch_embedding.weight[4]) / 2
    torch.testing.assert_close(mean_of_bags(model.watch_embedding.weight, history)[0], expected)


def test_padding_rows_start_at_zero() -> None:
    model = CandidateGenerator(_spec())
    assert torch.all(model.watch_embedding.weight[0] == 0)
    assert model.token_embedding is not None and torch.all(model.token_embedding.weight[0] == 0)
    assert all(torch.all(table.weight[0] == 0) for table in model.profile_embeddings)


def test_serving_vectors_fold_the_bias_into_the_dot_product() -> None:
    torch.manual_seed(1)
    model = CandidateGenerator(_spec())
    with torch.no_grad():
        model.item_bias.copy_(torch.linspace(-1, 1, 20))
    user = model.user_vectors(*_inputs())
    # [u; 1] . [v_i; b_i] = u . v_i + b_i
    served = model.serving_user_vectors(user) @ model.serving_item_vectors().T
    torch.testing.assert_close(served, model.scores(user))
    assert model.serving_item_vectors().shape == (20, 7) == (20, model.spec.serving_dim)

    no_bias = CandidateGenerator(_spec(use_item_bias=False))
    user = no_bias.user_vectors(*_inputs())
    assert no_bias.item_bias is None and no_bias.spec.serving_dim == 6
    torch.testing.assert_close(no_bias.serving_user_vectors(user) @ no_bias.serving_item_vectors().T,
                               no_bias.scores(user))


def test_no_tokens_no_profile_no_dense() -> None:
    spec = _spec(n_tokens=1, profile_cardinalities=[], dense_width=0, hidden_dims=[])
    model = CandidateGenerator(spec)
    assert spec.input_width == 8 and model.token_embedding is None
    history = torch.tensor([[1, 2, 0]])
    user = model.user_vectors(history, None, torch.zeros((1, 0), dtype=torch.int64), torch.zeros((1, 0)))
    # Depth 0: u is one linear map of the watch average.
    assert len(model.tower) == 1 and user.shape == (1, 6)


def test_bad_specs_and_inputs_are_named() -> None:
    with pytest.raises(CandidateModelError, match="n_items"):
        _spec(n_items=0)
    with pytest.raises(CandidateModelError, match="hidden_dims"):
        _spec(hidden_dims=[8, 0])
    with pytest.raises(CandidateModelError, match="dropout"):
        _spec(dropout=1.0)
    model = CandidateGenerator(_spec())
    history, tokens, profile, dense = _inputs()
    with pytest.raises(CandidateModelError, match="profile"):
        model.user_vectors(history, tokens, profile[:, :1], dense)
    with pytest.raises(CandidateModelError, match="dense"):
        model.user_vectors(history, tokens, profile, dense[:, :2])
    with pytest.raises(CandidateModelError, match="history"):
        model.user_vectors(history.float(), tokens, profile, dense)


def test_spec_round_trips_through_a_dict() -> None:
    spec = _spec()
    assert CandidateModelSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(CandidateModelError, match="model spec"):
        CandidateModelSpec.from_dict({**spec.to_dict(), "colour": "red"})
