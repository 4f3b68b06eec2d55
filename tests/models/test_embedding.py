"""Tests of the embedding bank: OOV rows, multivalent means, initial scale, side routing."""

from __future__ import annotations

import pytest
import torch

from tests.models.synthetic import make_batch, make_layout
from ytdnn.features.layout import EmbeddingTableSpec, FeatureLayout, FeatureSpec
from ytdnn.models.embedding import EmbeddingBank, LayoutError, mean_of_bags


def test_oov_id_is_a_zero_vector_and_row_zero_gets_no_gradient() -> None:
    torch.manual_seed(0)
    layout = make_layout()
    bank = EmbeddingBank(layout)
    batch = make_batch(8, layout)
    batch.categorical[:3] = 0  # every categorical feature OOV on rows 0..2
    for ids in batch.multivalent:
        ids[:3] = 0  # and every bag empty
    sides = bank(batch.categorical, batch.multivalent)
    for side, embedded in sides.items():
        assert torch.equal(embedded[:3], torch.zeros_like(embedded[:3])), side
        assert embedded[3:].abs().sum() > 0, side
    loss = sum((embedded ** 2).sum() + embedded.sum() for embedded in sides.values())
    loss.backward()  # type: ignore[union-attr]
    for name, table in bank.tables.items():
        assert torch.equal(table.weight.grad[0], torch.zeros(table.embedding_dim)), name
        assert table.weight.grad[1:].abs().sum() > 0, name
    # An optimiser step (with weight decay) leaves row 0 at exactly zero.
    optimizer = torch.optim.Adam(bank.parameters(), lr=0.1, weight_decay=0.1)
    optimizer.step()
    for table in bank.tables.values():
        assert torch.equal(table.weight[0], torch.zeros(table.embedding_dim))


def test_multivalent_mean_ignores_padding() -> None:
    table = torch.tensor([[0.0, 0.0], [1.0, 2.0], [3.0, -4.0], [10.0, 20.0]])
    ids = torch.tensor([[1, 0, 2, 0],   # (E1 + E2) / 2 = ([1, 2] + [3, -4]) / 2 = [2, -1]
                        [3, 0, 0, 0],   # E3 alone = [10, 20] (padding not counted in the mean)
                        [0, 0, 0, 0],   # empty bag -> zero vector
                        [2, 2, 3, 1]])  # (E2 + E2 + E3 + E1) / 4 = [17, 14] / 4 = [4.25, 3.5]
    expected = torch.tensor([[2.0, -1.0], [10.0, 20.0], [0.0, 0.0], [4.25, 3.5]])
    assert torch.allclose(mean_of_bags(table, ids), expected)


def test_mean_ignores_padding_even_if_row_zero_were_nonzero() -> None:
    # The mask, not the zero row, excludes padding: a corrupted row 0 still does not leak in.
    table = torch.tensor([[100.0], [2.0], [4.0]])
    assert torch.allclose(mean_of_bags(table, torch.tensor([[1, 0, 2]])), torch.tensor([[3.0]]))


def test_tables_start_at_std_001_with_zero_row() -> None:
    torch.manual_seed(1)
    layout = FeatureLayout([EmbeddingTableSpec("video_id", 20001, 16)],
                           [FeatureSpec("video_id", "categorical", "item", "ids", table="video_id")])
    weight = EmbeddingBank(layout).tables["video_id"].weight.detach()
    assert torch.equal(weight[0], torch.zeros(16))
    # 320k draws of N(0, 0.01^2): the sample std is within 1% of 0.01.
    assert abs(float(weight[1:].std()) - 0.01) < 1e-4
    assert abs(float(weight[1:].mean())) < 1e-4


def test_side_widths_and_shared_table() -> None:
    layout = make_layout()
    bank = EmbeddingBank(layout)
    # user: user_id (3) + watched_video_ids (4); item: video_id (4) + author_id (2); cross: clicked_authors (2)
    assert (bank.side_width("user"), bank.side_width("item"), bank.side_width("cross")) == (7, 6, 2)
    assert set(bank.tables) == {"video_id", "user_id", "author_id"}  # watched ids share video_id
    batch = make_batch(4, layout)
    sides = bank(batch.categorical, batch.multivalent)
    video_table = bank.tables["video_id"].weight
    # The item side starts with the impression video's row of the shared table.
    assert torch.equal(sides["item"][:, :4], video_table[batch.categorical[:, 0]])
    # The user side ends with the mean of the watched videos' rows of the same table.
    assert torch.allclose(sides["user"][:, 3:], mean_of_bags(video_table, batch.multivalent[0]))


def test_feature_naming_an_undeclared_table_is_rejected() -> None:
    layout = FeatureLayout([EmbeddingTableSpec("video_id", 5, 2)],
                           [FeatureSpec("author_id", "categorical", "item", "ids", table="author_id")])
    with pytest.raises(LayoutError, match="author_id"):
        EmbeddingBank(layout)


def test_wrong_number_of_categorical_columns_is_rejected() -> None:
    bank = EmbeddingBank(make_layout())
    with pytest.raises(LayoutError, match=r"categorical: expected a LongTensor \[B, 3\]"):
        bank.check_inputs(torch.zeros((2, 2), dtype=torch.long), [torch.zeros((2, 3), dtype=torch.long)] * 2)
