"""Embedding tables shared by the ranking (and candidate) towers.

One ``nn.Embedding`` per table of the :class:`~ytdnn.features.layout.FeatureLayout`. Features of
the same id space read the same table (the impression video id and the watched video ids both
read ``video_id``). Index 0 of every table is the out-of-vocabulary / padding id: its row is zero
and stays zero (``padding_idx=0`` gives it no gradient), so an unknown id contributes nothing.

Tables start at N(0, 0.01²): with unit-variance rows, the summed embedding inputs swamp the
dense block at the start of training, which was measured to hurt badly on KuaiRand.

A multivalent feature (a bag of ids, 0 = padding) is the *mean* of its non-padding rows::

    e(bag) = Σ_{j: id_j ≠ 0} E[id_j] / max(1, #{j: id_j ≠ 0})

so an all-padding bag is the zero vector.

Tables named in ``EmbeddingBank.sparse_tables`` get *sparse* gradients (only the rows a batch
touched), for ``torch.optim.SparseAdam``: with millions of ids, a dense gradient and a dense Adam
step over the whole table per batch cost O(vocabulary) where the batch touches O(batch) rows
(see :mod:`ytdnn.training.sharded`). The values computed are the same either way.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ytdnn.features.layout import FeatureLayout, FeatureSpec, Side

__all__ = ["EMBEDDING_INIT_STD", "SIDES", "EmbeddingBank", "LayoutError", "mean_of_bags"]

EMBEDDING_INIT_STD = 0.01
SIDES: tuple[Side, ...] = ("user", "item", "cross")


class LayoutError(ValueError):
    """A feature layout (or tensors handed with it) that the network cannot use; names the feature."""


def mean_of_bags(table: Tensor, ids: Tensor, sparse: bool = False) -> Tensor:
    """Mean of the rows ``table[ids[b, j]]`` over the non-zero ids of each bag; zeros for empty bags.

    ``ids``: LongTensor [B, L] with 0 = padding; returns [B, dim]. Written as gather + masked sum
    (not ``embedding_bag``) so that it exports to ONNX as plain Gather/ReduceSum ops.
    """
    mask = (ids != 0).to(table.dtype)  # [B, L]
    rows = nn.functional.embedding(ids, table, padding_idx=0, sparse=sparse)  # [B, L, dim]
    total = (rows * mask.unsqueeze(-1)).sum(dim=1)
    count = mask.sum(dim=1, keepdim=True).clamp(min=1.0)
    return total / count


class EmbeddingBank(nn.Module):
    """All embedding tables of a layout, returning the embedded features per side.

    ``forward(categorical, multivalent)`` → ``{"user": [B, w_user], "item": [B, w_item],
    "cross": [B, w_cross]}``: each side is the concatenation, in ``layout.features`` order, of the
    embeddings of that side's categorical and multivalent features (width 0 when a side has
    none). :meth:`side_width` gives the widths.
    """

    def __init__(self, layout: FeatureLayout) -> None:
        super().__init__()
        self.layout = layout
        self.tables = nn.ModuleDict()
        for spec in layout.tables:
            if spec.vocab_size < 1 or spec.dim < 1:
                raise LayoutError(f"embedding table {spec.name!r}: vocab_size and dim must be >= 1, "
                                  f"got vocab_size={spec.vocab_size}, dim={spec.dim}")
            if spec.name in self.tables:
                raise LayoutError(f"embedding table {spec.name!r} is declared twice")
            table = nn.Embedding(spec.vocab_size, spec.dim, padding_idx=0)
            self.tables[spec.name] = table
        categorical = layout.categorical
        multivalent = layout.multivalent
        for feature in categorical + multivalent:
            if feature.table is None:
                raise LayoutError(f"feature {feature.name!r} ({feature.kind}) names no embedding table")
            if feature.table not in self.tables:
                raise LayoutError(f"feature {feature.name!r} reads table {feature.table!r}, which the layout "
                                  f"does not declare; have {list(self.tables)}")
            if feature.side not in SIDES:
                raise LayoutError(f"feature {feature.name!r}: side must be one of {SIDES}, got {feature.side!r}")
        # (kind, position within its kind, spec) per side, in layout.features order.
        position = {id(f): j for j, f in enumerate(categorical)} | {id(f): j for j, f in enumerate(multivalent)}
        self._by_side: dict[str, list[tuple[str, int, FeatureSpec]]] = {side: [] for side in SIDES}
        for feature in layout.features:
            if feature.kind in ("categorical", "multivalent"):
                self._by_side[feature.side].append((feature.kind, position[id(feature)], feature))
        self.n_categorical = len(categorical)
        self.n_multivalent = len(multivalent)
        self.sparse_tables: frozenset[str] = frozenset()  # tables with sparse gradients (module docstring)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """N(0, 0.01²) rows, row 0 (OOV/padding) zero."""
        with torch.no_grad():
            for table in self.tables.values():
                nn.init.normal_(table.weight, mean=0.0, std=EMBEDDING_INIT_STD)
                table.weight[0].zero_()

    def side_width(self, side: Side) -> int:
        return sum(self.layout.table(spec.table).dim for _, _, spec in self._by_side[side])  # type: ignore[arg-type]

    def side_features(self, side: Side) -> list[FeatureSpec]:
        return [spec for _, _, spec in self._by_side[side]]

    def check_inputs(self, categorical: Tensor, multivalent: Sequence[Tensor]) -> None:
        if categorical.dim() != 2 or categorical.shape[1] != self.n_categorical:
            raise LayoutError(f"categorical: expected a LongTensor [B, {self.n_categorical}], "
                              f"got shape {list(categorical.shape)}")
        if len(multivalent) != self.n_multivalent:
            raise LayoutError(f"multivalent: expected {self.n_multivalent} tensors (one per multivalent "
                              f"feature), got {len(multivalent)}")
        for spec, ids in zip(self.layout.multivalent, multivalent, strict=True):
            if ids.dim() != 2:
                raise LayoutError(f"multivalent feature {spec.name!r}: expected a LongTensor [B, L], "
                                  f"got shape {list(ids.shape)}")

    def embed_side(self, side: Side, categorical: Tensor, multivalent: Sequence[Tensor]) -> Tensor:
        """[B, side_width(side)]: that side's embeddings, concatenated."""
        parts: list[Tensor] = []
        for kind, j, spec in self._by_side[side]:
            weight = self.tables[spec.table].weight  # type: ignore[index]
            sparse = spec.table in self.sparse_tables
            if kind == "categorical":
                parts.append(nn.functional.embedding(categorical[:, j], weight, padding_idx=0, sparse=sparse))
            else:
                parts.append(mean_of_bags(weight, multivalent[j], sparse))
        if not parts:
            return categorical.new_zeros((categorical.shape[0], 0), dtype=self._dtype())
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

    def forward(self, categorical: Tensor, multivalent: Sequence[Tensor]) -> dict[str, Tensor]:
        return {side: self.embed_side(side, categorical, multivalent) for side in SIDES}

    def _dtype(self) -> torch.dtype:
        for table in self.tables.values():
            return table.weight.dtype
        return torch.get_default_dtype()
