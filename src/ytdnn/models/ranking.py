r"""The ranking tower: embeddings + dense block → ReLU tower → ``n_heads`` logits.

The first layer is a *split* linear layer. With the input split by side into the user part
:math:`x_u` (user features) and the candidate part :math:`x_c` (item and cross features),

.. math:: W [x_u; x_c] + b = (W_u x_u + b) + W_c x_c

so ``user_part`` (:math:`W_u x_u + b`, [B, h1]) can be computed once per request and broadcast
over all candidates, whose ``candidate_part`` (:math:`W_c x_c`) is computed in one batch;
``forward = tower(user_part + candidate_part)`` with ``tower`` = ReLU → dropout → Linear → … →
Linear(h_last, n_heads). With ``hidden=[]`` the split layer *is* the output layer (the paper's
"no hidden layer" logistic regression) and the tower is the identity.

Input order inside each part (fixed, so a plain first layer on ``[x_u; x_c]`` is the same model):

- ``x_u`` = the user side's embeddings (``layout.features`` order), then the dense columns of
  the user-side dense features (``layout.dense`` order);
- ``x_c`` = the item side's embeddings, the cross side's embeddings, then the dense columns of
  the item- and cross-side dense features (``layout.dense`` order).

Dense column offsets follow ``layout.dense`` order and widths (a feature of width 3 — x̃, x̃²,
√x̃ — occupies 3 consecutive columns).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ytdnn.features.layout import FeatureLayout, RankingBatch
from ytdnn.models.embedding import EmbeddingBank, LayoutError
from ytdnn.utils.io import atomic_write_with

__all__ = ["RANKING_NET_FORMAT", "RankingNet", "load_weights", "save_weights"]

RANKING_NET_FORMAT = "ytdnn-ranking-net-v1"


def _dense_columns(layout: FeatureLayout) -> dict[str, list[int]]:
    """Dense column indices per side (``user``, ``candidate``) from ``layout.dense`` order/widths."""
    columns: dict[str, list[int]] = {"user": [], "candidate": []}
    offset = 0
    for feature in layout.dense:
        if feature.width < 1:
            raise LayoutError(f"dense feature {feature.name!r}: width must be >= 1, got {feature.width}")
        if feature.side not in ("user", "item", "cross"):
            raise LayoutError(f"dense feature {feature.name!r}: side must be user/item/cross, got {feature.side!r}")
        part = "user" if feature.side == "user" else "candidate"
        columns[part].extend(range(offset, offset + feature.width))
        offset += feature.width
    return columns


class RankingNet(nn.Module):
    """Ranking tower over a :class:`FeatureLayout`; outputs ``[B, n_heads]`` logits.

    ``hidden``: widths of the ReLU layers (``[]`` = logistic regression on the inputs);
    ``n_heads``: the objective's number of outputs; ``dropout``: after every hidden ReLU.
    """

    def __init__(self, layout: FeatureLayout, hidden: Sequence[int] = (256, 128), n_heads: int = 1,
                 dropout: float = 0.0) -> None:
        super().__init__()
        hidden = [int(h) for h in hidden]
        if any(h < 1 for h in hidden):
            raise LayoutError(f"hidden: every layer width must be >= 1, got {hidden}")
        if n_heads < 1:
            raise LayoutError(f"n_heads must be >= 1, got {n_heads}")
        if not 0.0 <= dropout < 1.0:
            raise LayoutError(f"dropout must be in [0, 1), got {dropout}")
        self.layout = layout
        self.hidden = hidden
        self.n_heads = int(n_heads)
        self.dropout = float(dropout)

        self.embeddings = EmbeddingBank(layout)
        columns = _dense_columns(layout)
        self.register_buffer("user_dense_columns", torch.tensor(columns["user"], dtype=torch.long), persistent=False)
        self.register_buffer("candidate_dense_columns", torch.tensor(columns["candidate"], dtype=torch.long),
                             persistent=False)
        self.user_width = self.embeddings.side_width("user") + len(columns["user"])
        self.candidate_width = (self.embeddings.side_width("item") + self.embeddings.side_width("cross")
                                + len(columns["candidate"]))
        if self.user_width + self.candidate_width == 0:
            raise LayoutError("the layout has no input feature")

        first_width = hidden[0] if hidden else self.n_heads
        self.first_width = first_width
        self.user_linear = nn.Linear(self.user_width, first_width, bias=True)
        self.candidate_linear = nn.Linear(self.candidate_width, first_width, bias=False)
        layers: list[nn.Module] = []
        for width_in, width_out in zip(hidden, hidden[1:] + [self.n_heads]):  # no layer when hidden == []
            layers.append(nn.ReLU())
            if self.dropout > 0:
                layers.append(nn.Dropout(self.dropout))
            layers.append(nn.Linear(width_in, width_out))
        self.tower = nn.Sequential(*layers)
        self._reset_first_layer()

    # -- construction ---------------------------------------------------------------------------
    def _reset_first_layer(self) -> None:
        # nn.Linear's default init on the *concatenated* input (bound 1/sqrt(fan_in) with the total
        # fan-in), so the split layer is distributed exactly like a plain first layer.
        bound = 1.0 / math.sqrt(self.user_width + self.candidate_width)
        with torch.no_grad():
            for tensor in (self.user_linear.weight, self.user_linear.bias, self.candidate_linear.weight):
                tensor.uniform_(-bound, bound)

    @property
    def output_bias(self) -> Tensor:
        """The bias of the layer that produces the logits ([n_heads])."""
        if self.hidden:
            last = self.tower[-1]
            assert isinstance(last, nn.Linear)
            return last.bias
        return self.user_linear.bias

    def set_output_bias(self, values: Sequence[float]) -> None:
        """Set the logits' bias, e.g. to the objective's bias-only optimum ``init_bias``."""
        values = [float(v) for v in values]
        if len(values) != self.n_heads:
            raise LayoutError(f"output bias: expected {self.n_heads} values (one per head), got {len(values)}")
        if not all(math.isfinite(v) for v in values):
            raise LayoutError(f"output bias: values must be finite, got {values}")
        with torch.no_grad():
            self.output_bias.copy_(torch.tensor(values, dtype=self.output_bias.dtype))

    def to_config(self) -> dict[str, Any]:
        """JSON-serialisable description; ``RankingNet.from_config`` rebuilds the same architecture."""
        return {"format": RANKING_NET_FORMAT, "layout": self.layout.to_dict(), "hidden": list(self.hidden),
                "n_heads": self.n_heads, "dropout": self.dropout}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> RankingNet:
        if config.get("format") != RANKING_NET_FORMAT:
            raise LayoutError(f"network config: format must be {RANKING_NET_FORMAT!r}, got {config.get('format')!r}")
        missing = [key for key in ("layout", "hidden", "n_heads", "dropout") if key not in config]
        if missing:
            raise LayoutError(f"network config: missing key(s) {missing}")
        return cls(FeatureLayout.from_dict(config["layout"]), hidden=config["hidden"],
                   n_heads=int(config["n_heads"]), dropout=float(config["dropout"]))

    # -- the two halves of the first layer --------------------------------------------------------
    def _check(self, categorical: Tensor, multivalent: Sequence[Tensor], dense: Tensor) -> None:
        self.embeddings.check_inputs(categorical, multivalent)
        if dense.dim() != 2 or dense.shape[1] != self.layout.dense_width:
            raise LayoutError(f"dense: expected a FloatTensor [B, {self.layout.dense_width}], "
                              f"got shape {list(dense.shape)}")

    def user_input(self, categorical: Tensor, multivalent: Sequence[Tensor], dense: Tensor) -> Tensor:
        """x_u [B, user_width]: user-side embeddings, then user-side dense columns."""
        embedded = self.embeddings.embed_side("user", categorical, multivalent)
        return torch.cat([embedded, dense.index_select(1, self.user_dense_columns).to(embedded.dtype)], dim=1)

    def candidate_input(self, categorical: Tensor, multivalent: Sequence[Tensor], dense: Tensor) -> Tensor:
        """x_c [B, candidate_width]: item-side, cross-side embeddings, then their dense columns."""
        item = self.embeddings.embed_side("item", categorical, multivalent)
        cross = self.embeddings.embed_side("cross", categorical, multivalent)
        dense_part = dense.index_select(1, self.candidate_dense_columns).to(item.dtype)
        return torch.cat([item, cross, dense_part], dim=1)

    def user_part_tensors(self, categorical: Tensor, multivalent: Sequence[Tensor], dense: Tensor) -> Tensor:
        """W_u·x_u + b, [B, first_width] (pre-activation)."""
        self._check(categorical, multivalent, dense)
        return self.user_linear(self.user_input(categorical, multivalent, dense))

    def candidate_part_tensors(self, categorical: Tensor, multivalent: Sequence[Tensor], dense: Tensor) -> Tensor:
        """W_c·x_c, [B, first_width] (no bias: it lives in the user part)."""
        self._check(categorical, multivalent, dense)
        return self.candidate_linear(self.candidate_input(categorical, multivalent, dense))

    def user_part(self, batch: RankingBatch) -> Tensor:
        """W_u·x_u + b for each row of ``batch`` (only its user-side columns are read)."""
        return self.user_part_tensors(batch.categorical, batch.multivalent, batch.dense)

    def candidate_part(self, batch: RankingBatch) -> Tensor:
        """W_c·x_c for each row of ``batch`` (only its item- and cross-side columns are read)."""
        return self.candidate_part_tensors(batch.categorical, batch.multivalent, batch.dense)

    # -- forward passes ---------------------------------------------------------------------------
    def forward_tensors(self, categorical: Tensor, *multivalent: Tensor, dense: Tensor | None = None) -> Tensor:
        """Logits [B, n_heads] from plain tensors (the ONNX export signature).

        Called as ``forward_tensors(categorical, *multivalent, dense)``: the last positional
        tensor is the dense block when ``dense`` is not given by keyword.
        """
        if dense is None:
            if not multivalent:
                raise LayoutError("forward_tensors: expected (categorical, *multivalent, dense)")
            *multivalent_list, dense = multivalent
        else:
            multivalent_list = list(multivalent)
        self._check(categorical, multivalent_list, dense)
        first = (self.user_linear(self.user_input(categorical, multivalent_list, dense))
                 + self.candidate_linear(self.candidate_input(categorical, multivalent_list, dense)))
        return self.tower(first)

    def forward(self, batch: RankingBatch) -> Tensor:
        return self.forward_tensors(batch.categorical, *batch.multivalent, dense=batch.dense)

    def forward_split(self, user_hidden: Tensor, candidate_batch: RankingBatch) -> Tensor:
        """Logits for candidates given a precomputed ``user_part`` ([1, h1] broadcast, or [B, h1])."""
        return self.forward_split_tensors(user_hidden, candidate_batch.categorical, *candidate_batch.multivalent,
                                          dense=candidate_batch.dense)

    def forward_split_tensors(self, user_hidden: Tensor, categorical: Tensor, *multivalent: Tensor,
                              dense: Tensor | None = None) -> Tensor:
        """:meth:`forward_split` from plain tensors (``dense`` last, as in :meth:`forward_tensors`)."""
        if dense is None:
            if not multivalent:
                raise LayoutError("forward_split_tensors: expected (user_hidden, categorical, *multivalent, dense)")
            *multivalent_list, dense = multivalent
        else:
            multivalent_list = list(multivalent)
        if user_hidden.dim() != 2 or user_hidden.shape[1] != self.first_width or \
                user_hidden.shape[0] not in (1, categorical.shape[0]):
            raise LayoutError(f"user_hidden: expected shape [1 or {categorical.shape[0]}, {self.first_width}], "
                              f"got {list(user_hidden.shape)}")
        return self.tower(user_hidden + self.candidate_part_tensors(categorical, multivalent_list, dense))


def save_weights(module: nn.Module, path: str | Path) -> None:
    """Write ``module``'s state dict as safetensors, atomically."""
    state = {name: tensor.detach().contiguous().cpu() for name, tensor in module.state_dict().items()}
    atomic_write_with(path, lambda tmp: save_file(state, str(tmp)), suffix=".safetensors")


def load_weights(module: nn.Module, path: str | Path) -> None:
    """Load safetensors weights into ``module`` (strict: every tensor must match by name and shape)."""
    state = load_file(str(path))
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise LayoutError(f"{path}: weights do not fit the network: {exc}") from exc
