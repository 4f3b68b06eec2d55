"""The contract between the feature pipeline and the ranking network.

A :class:`FeatureLayout` says which embedding tables exist, which categorical and multivalent
features read which table (features of the same id space share one table: the impression video
id and the user's watched video ids both read ``video_id``), which columns the dense block holds,
and which *side* every feature is on:

- ``user``: known before any candidate is chosen (user id, profile, watch history, time since the
  last click, request context such as hour and tab);
- ``item``: a property of the candidate alone (video id, author, tags, music, video statistics);
- ``cross``: depends on the user *and* the candidate (previous impressions of this video to this
  user, the user's clicks on this author).

Serving computes the ``user`` part of the first layer once per request and the ``item``/``cross``
parts for all candidates in one batch, because W·[x_user; x_cand] = W_user·x_user + W_cand·x_cand.

A :class:`RankingBatch` holds the tensors for a batch of impressions. Index 0 of every table is
the out-of-vocabulary / padding id and maps to a zero vector.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

import torch

Side = Literal["user", "item", "cross"]


@dataclass(frozen=True)
class EmbeddingTableSpec:
    name: str
    vocab_size: int  # including index 0 (OOV/padding)
    dim: int


@dataclass(frozen=True)
class FeatureSpec:
    """One input feature. ``kind``: categorical (one id), multivalent (list of ids, averaged) or dense."""

    name: str
    kind: Literal["categorical", "multivalent", "dense"]
    side: Side
    group: str  # for ablations: "ids", "video_stats", "history", "profile", "context"
    table: str | None = None  # embedding table for categorical/multivalent
    width: int = 1  # dense columns it occupies (3 for x, x^2, sqrt x)


@dataclass
class FeatureLayout:
    tables: list[EmbeddingTableSpec] = field(default_factory=list)
    features: list[FeatureSpec] = field(default_factory=list)

    @property
    def categorical(self) -> list[FeatureSpec]:
        return [f for f in self.features if f.kind == "categorical"]

    @property
    def multivalent(self) -> list[FeatureSpec]:
        return [f for f in self.features if f.kind == "multivalent"]

    @property
    def dense(self) -> list[FeatureSpec]:
        return [f for f in self.features if f.kind == "dense"]

    @property
    def dense_width(self) -> int:
        return sum(f.width for f in self.dense)

    def table(self, name: str) -> EmbeddingTableSpec:
        for spec in self.tables:
            if spec.name == name:
                return spec
        raise KeyError(f"no embedding table {name!r}; have {[t.name for t in self.tables]}")

    def to_dict(self) -> dict[str, object]:
        return {"tables": [asdict(t) for t in self.tables], "features": [asdict(f) for f in self.features]}

    @classmethod
    def from_dict(cls, payload: dict[str, object]) -> "FeatureLayout":
        tables = [EmbeddingTableSpec(**t) for t in payload["tables"]]  # type: ignore[union-attr]
        features = [FeatureSpec(**f) for f in payload["features"]]  # type: ignore[union-attr]
        return cls(tables, features)


@dataclass
class RankingBatch:
    """Tensors for B impressions, in the order of the layout's features.

    categorical: LongTensor [B, n_categorical] (column j = layout.categorical[j]);
    multivalent: one LongTensor [B, L_f] per multivalent feature (0 = padding), same order;
    dense: FloatTensor [B, dense_width] (columns in layout.dense order, each already expanded);
    is_click, watch_time_s: FloatTensor [B] labels (zeros at serving).
    """

    categorical: torch.Tensor
    multivalent: list[torch.Tensor]
    dense: torch.Tensor
    is_click: torch.Tensor
    watch_time_s: torch.Tensor

    def __len__(self) -> int:
        return int(self.dense.shape[0])

    def index(self, rows: torch.Tensor) -> "RankingBatch":
        return RankingBatch(self.categorical[rows], [m[rows] for m in self.multivalent], self.dense[rows],
                            self.is_click[rows], self.watch_time_s[rows])
