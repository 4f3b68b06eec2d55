r"""The candidate-generation network (Covington et al. 2016, section 3): user tower + item table.

Inputs of one example (see :mod:`ytdnn.features.retrieval` for how they are built)::

    x = [ mean_j E_watch[h_j]          (last N watches, 0 = padding, excluded from the mean)
        ; mean_j E_token[w_j]          (bag of search/topic tokens)
        ; E_f[p_f] for each profile field f
        ; example age a, a^2, sqrt a ]

A tower of fully connected ReLU layers and a final linear map give the user vector
:math:`u \in R^d`. The output layer holds one vector :math:`v_i` (and optionally a bias
:math:`b_i`) per corpus video; the model scores video i as :math:`s_i = u \cdot v_i + b_i` and
training treats :math:`P(\text{watch} = i \mid U, C) = e^{s_i} / \sum_j e^{s_j}` as extreme
multiclass classification. At serving the softmax is not needed: the top-k of :math:`s_i` is a
maximum-inner-product search, and the bias folds into the dot product with
:math:`\tilde u = [u; 1]`, :math:`\tilde v_i = [v_i; b_i]` (:meth:`CandidateGenerator.serving_item_vectors`).

Index conventions: ``history`` ids are corpus index + 1 (0 = padding); output-layer rows and
``target`` are corpus indices 0..n_items-1.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ytdnn.models.embedding import EMBEDDING_INIT_STD, mean_of_bags

__all__ = ["CandidateGenerator", "CandidateModelError", "CandidateModelSpec"]


class CandidateModelError(ValueError):
    """A model spec or input tensors the candidate network cannot use; names the field."""


@dataclass(frozen=True)
class CandidateModelSpec:
    """Sizes of the candidate network (everything needed to rebuild it before loading weights)."""

    n_items: int  # output-layer rows (corpus size); the watch-history table has n_items + 1 rows
    n_tokens: int = 1  # token table rows including 0; 1 = no tokens
    profile_cardinalities: list[int] = field(default_factory=list)  # rows per field including 0
    dense_width: int = 0
    watch_embedding_dim: int = 64
    token_embedding_dim: int = 32
    profile_embedding_dim: int = 8
    hidden_dims: list[int] = field(default_factory=lambda: [256])
    output_dim: int = 64
    use_item_bias: bool = True
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("n_items", "n_tokens", "watch_embedding_dim", "token_embedding_dim",
                     "profile_embedding_dim", "output_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise CandidateModelError(f"{name}: expected an int >= 1, got {value!r}")
        if self.dense_width < 0:
            raise CandidateModelError(f"dense_width: expected >= 0, got {self.dense_width}")
        bad = [c for c in self.profile_cardinalities if c < 1]
        if bad:
            raise CandidateModelError(f"profile_cardinalities: every field needs >= 1 row, got {bad}")
        bad = [h for h in self.hidden_dims if h < 1]
        if bad:
            raise CandidateModelError(f"hidden_dims: layer widths must be >= 1, got {self.hidden_dims}")
        if not 0.0 <= self.dropout < 1.0:
            raise CandidateModelError(f"dropout: expected 0 <= dropout < 1, got {self.dropout}")

    @property
    def uses_tokens(self) -> bool:
        return self.n_tokens > 1

    @property
    def input_width(self) -> int:
        return (self.watch_embedding_dim + (self.token_embedding_dim if self.uses_tokens else 0)
                + self.profile_embedding_dim * len(self.profile_cardinalities) + self.dense_width)

    @property
    def serving_dim(self) -> int:
        """Dimension of the vectors an inner-product index stores (bias folded in)."""
        return self.output_dim + (1 if self.use_item_bias else 0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> CandidateModelSpec:
        try:
            return cls(**payload)
        except TypeError as exc:
            raise CandidateModelError(f"model spec: {exc}") from exc


class CandidateGenerator(nn.Module):
    """User tower u(x) and output table (v_i, b_i); scores s_i = u·v_i + b_i."""

    def __init__(self, spec: CandidateModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.watch_embedding = nn.Embedding(spec.n_items + 1, spec.watch_embedding_dim, padding_idx=0)
        self.token_embedding = (nn.Embedding(spec.n_tokens, spec.token_embedding_dim, padding_idx=0)
                                if spec.uses_tokens else None)
        self.profile_embeddings = nn.ModuleList(
            nn.Embedding(rows, spec.profile_embedding_dim, padding_idx=0) for rows in spec.profile_cardinalities)
        for table in [self.watch_embedding, *self.profile_embeddings] + (
                [self.token_embedding] if self.token_embedding is not None else []):
            # Small tables: large random rows would swamp the example-age columns at the start.
            nn.init.normal_(table.weight, std=EMBEDDING_INIT_STD)
            with torch.no_grad():
                table.weight[0].zero_()
        layers: list[nn.Module] = []
        width = spec.input_width
        for hidden in spec.hidden_dims:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            if spec.dropout > 0:
                layers.append(nn.Dropout(spec.dropout))
            width = hidden
        layers.append(nn.Linear(width, spec.output_dim))
        self.tower = nn.Sequential(*layers)
        self.item_vectors = nn.Embedding(spec.n_items, spec.output_dim)
        nn.init.normal_(self.item_vectors.weight, std=spec.output_dim ** -0.5)
        self.item_bias = nn.Parameter(torch.zeros(spec.n_items)) if spec.use_item_bias else None

    def _check(self, history: Tensor, tokens: Tensor | None, profile: Tensor, dense: Tensor) -> None:
        batch = history.shape[0]
        if history.dim() != 2 or history.dtype != torch.int64:
            raise CandidateModelError(f"history: expected int64 [B, N], got {history.dtype} {list(history.shape)}")
        if profile.dim() != 2 or profile.shape != (batch, len(self.spec.profile_cardinalities)):
            raise CandidateModelError(
                f"profile: expected [B={batch}, {len(self.spec.profile_cardinalities)}], got {list(profile.shape)}")
        if dense.dim() != 2 or dense.shape != (batch, self.spec.dense_width):
            raise CandidateModelError(f"dense: expected [B={batch}, {self.spec.dense_width}], got {list(dense.shape)}")
        if tokens is not None and self.spec.uses_tokens and (tokens.dim() != 2 or tokens.shape[0] != batch):
            raise CandidateModelError(f"tokens: expected [B={batch}, L], got {list(tokens.shape)}")

    def user_vectors(self, history: Tensor, tokens: Tensor | None, profile: Tensor, dense: Tensor) -> Tensor:
        """u: FloatTensor [B, output_dim] from the example's inputs (see the module docstring)."""
        self._check(history, tokens, profile, dense)
        parts = [mean_of_bags(self.watch_embedding.weight, history)]
        if self.token_embedding is not None:
            if tokens is None:
                tokens = torch.zeros((history.shape[0], 1), dtype=torch.int64, device=history.device)
            parts.append(mean_of_bags(self.token_embedding.weight, tokens))
        for j, table in enumerate(self.profile_embeddings):
            parts.append(table(profile[:, j]))
        if self.spec.dense_width:
            parts.append(dense)
        return self.tower(torch.cat(parts, dim=1))

    def forward(self, history: Tensor, tokens: Tensor | None, profile: Tensor, dense: Tensor) -> Tensor:
        return self.user_vectors(history, tokens, profile, dense)

    def scores(self, user_vectors: Tensor) -> Tensor:
        """s = u Vᵀ + b: [B, n_items] logits over the whole corpus."""
        logits = user_vectors @ self.item_vectors.weight.T
        return logits + self.item_bias if self.item_bias is not None else logits

    def serving_item_vectors(self) -> Tensor:
        """[n_items, serving_dim]: v_i with b_i appended when the model has a bias."""
        vectors = self.item_vectors.weight.detach()
        if self.item_bias is None:
            return vectors.clone()
        return torch.cat([vectors, self.item_bias.detach().unsqueeze(1)], dim=1)

    def serving_user_vectors(self, user_vectors: Tensor) -> Tensor:
        """[B, serving_dim]: u with a 1 appended when the model has a bias, so ũ·ṽ_i = s_i."""
        if self.item_bias is None:
            return user_vectors
        ones = torch.ones((user_vectors.shape[0], 1), dtype=user_vectors.dtype, device=user_vectors.device)
        return torch.cat([user_vectors, ones], dim=1)
