r"""The ranking network at serving time, split in graphs, run by ONNX Runtime or PyTorch.

The first layer of :class:`~ytdnn.models.ranking.RankingNet` is split by side,
:math:`W[x_u; x_c] + b = (W_u x_u + b) + W_c x_c`, so a request costs

- one **user graph**: :math:`h_u = W_u x_u + b` for the requesting user ([1, h1]), and
- one **candidate graph** over all N candidates at once:
  :math:`z = \mathrm{tower}(h_u + W_c x_c)` ([N, n_heads] logits),

instead of N full forward passes over :math:`[x_u; x_c]`: the user-side columns of the first
matrix product (embeddings of the user id, profile and watch history, most of the input) are
multiplied once instead of N times.

The candidate half splits once more, :math:`W_c x_c = W_i x_i + W_x x_x`, into the item part
(a function of the video alone: ids, tags, statistics) and the cross part (user × video history
counts). The item part of every video of the bundle is computed once at load
(:func:`item_hidden_table`, [n_videos, h1]), so a request only gathers its rows and runs the
**cross-tower graph** :math:`z = \mathrm{tower}(h_u + h_i[v] + W_x x_x)`.

Every graph takes the *full-width* feature tensors of :class:`~ytdnn.features.layout.RankingBatch`
(``categorical``, one tensor per multivalent feature, ``dense``) and reads only its own side's
columns, so one batch feeds them all; graph inputs the exporter pruned (features a graph never
reads) are simply not fed.

:func:`export_ranker_onnx` writes ``user_part.onnx``, ``candidate_part.onnx`` and
``cross_tower.onnx``; :func:`check_parity` compares a backend with the PyTorch network's full
forward pass on real rows.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from ytdnn.features.layout import FeatureSpec, RankingBatch
from ytdnn.models.ranking import RankingNet
from ytdnn.utils.io import atomic_path

__all__ = [
    "CANDIDATE_GRAPH_NAME",
    "CROSS_TOWER_GRAPH_NAME",
    "USER_GRAPH_NAME",
    "OnnxExportError",
    "OnnxSplitNetwork",
    "ParityReport",
    "SplitNetwork",
    "TorchSplitNetwork",
    "check_parity",
    "export_ranker_onnx",
    "input_names",
    "is_dynamic_candidate_feature",
    "item_hidden_table",
    "zero_sides",
]

USER_GRAPH_NAME = "user_part.onnx"
CANDIDATE_GRAPH_NAME = "candidate_part.onnx"
CROSS_TOWER_GRAPH_NAME = "cross_tower.onnx"
ONNX_OPSET = 17


class OnnxExportError(ValueError):
    """The ranker could not be exported, or the exported graphs disagree with PyTorch."""


def input_names(net: RankingNet) -> list[str]:
    """Graph input names of the feature tensors: ``categorical``, ``multivalent__<name>``…, ``dense``."""
    return ["categorical", *(f"multivalent__{f.name}" for f in net.layout.multivalent), "dense"]


class _UserGraph(nn.Module):
    def __init__(self, net: RankingNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, categorical: Tensor, *rest: Tensor) -> Tensor:
        *multivalent, dense = rest
        return self.net.user_part_tensors(categorical, list(multivalent), dense)


class _CandidateGraph(nn.Module):
    def __init__(self, net: RankingNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, user_hidden: Tensor, categorical: Tensor, *rest: Tensor) -> Tensor:
        return self.net.forward_split_tensors(user_hidden, categorical, *rest)


class _CrossTowerGraph(nn.Module):
    """tower(h_u + h_i + W_x·x_x): the candidate half with its static item part precomputed;
    x_x holds the dynamic candidate features (cross, and item-side history)."""

    def __init__(self, net: RankingNet) -> None:
        super().__init__()
        self.net = net
        columns = _cross_columns(net)
        self.register_buffer("cross_weight", net.candidate_linear.weight.detach()[:, columns["input"]].clone())
        self.register_buffer("cross_dense_columns", torch.tensor(columns["dense"], dtype=torch.long))

    def forward(self, user_hidden: Tensor, item_hidden: Tensor, categorical: Tensor, *rest: Tensor) -> Tensor:
        *multivalent, dense = rest
        cross = self.net.embeddings.embed_side("cross", categorical, list(multivalent))
        x_cross = torch.cat([cross, dense.index_select(1, self.cross_dense_columns).to(cross.dtype)], dim=1)
        return self.net.tower(user_hidden + item_hidden + nn.functional.linear(x_cross, self.cross_weight))


def is_dynamic_candidate_feature(spec: FeatureSpec) -> bool:
    """Candidate-side features that change with the request: cross features, and item-side
    history (over all users' events before the request time). The rest of the item side is a
    static property of the video, cacheable per video."""
    return spec.side == "cross" or (spec.side == "item" and spec.group == "history")


def _cross_columns(net: RankingNet) -> dict[str, list[int]]:
    """Positions of the dynamic features in x_c ([item emb; cross emb; candidate dense]) and in ``dense``."""
    for spec in (*net.layout.categorical, *net.layout.multivalent):
        if spec.side == "item" and is_dynamic_candidate_feature(spec):
            raise OnnxExportError(f"item-side history feature {spec.name!r} is an embedding; the item cache "
                                  "supports dense ones only")
    item_width = net.embeddings.side_width("item")
    cross_width = net.embeddings.side_width("cross")
    x_positions = list(range(item_width, item_width + cross_width))
    dense_columns: list[int] = []
    offset = 0
    candidate_position = item_width + cross_width
    for spec in net.layout.dense:
        if spec.side in ("item", "cross"):
            if is_dynamic_candidate_feature(spec):
                x_positions.extend(range(candidate_position, candidate_position + spec.width))
                dense_columns.extend(range(offset, offset + spec.width))
            candidate_position += spec.width
        offset += spec.width
    return {"input": x_positions, "dense": dense_columns}


def zero_sides(net: RankingNet, batch: RankingBatch, sides: Sequence[str], *,
               dynamic_items: bool = False) -> RankingBatch:
    """A copy of ``batch`` with every feature of ``sides`` (and, with ``dynamic_items``, the
    item-side history features) set to its zero input: id 0 (a zero embedding), dense 0."""
    layout = net.layout

    def zeroed(spec: FeatureSpec) -> bool:
        return spec.side in sides or (dynamic_items and is_dynamic_candidate_feature(spec))

    categorical = batch.categorical.clone()
    for j, spec in enumerate(layout.categorical):
        if zeroed(spec):
            categorical[:, j] = 0
    multivalent = [torch.zeros_like(m) if zeroed(spec) else m
                   for spec, m in zip(layout.multivalent, batch.multivalent, strict=True)]
    dense = batch.dense.clone()
    offset = 0
    for spec in layout.dense:
        if zeroed(spec):
            dense[:, offset:offset + spec.width] = 0
        offset += spec.width
    return RankingBatch(categorical, multivalent, dense, batch.is_click, batch.watch_time_s)


def item_hidden_table(net: RankingNet, item_batch: RankingBatch, chunk_rows: int = 65_536, *,
                      with_item_history: bool = False) -> np.ndarray:
    """h_i = W_i·x_i for every row of ``item_batch`` (rows = videos), float32 [rows, h1].

    The cross inputs are zeroed, and so are the item-history inputs unless
    ``with_item_history``, so W_c·x_c reduces to its static item part (W_c has no bias); the
    cross-tower graph adds the rest per request. With ``with_item_history`` the table also holds
    W_h·x_h of the item-history values in ``item_batch`` (a snapshot at one request time), and
    the cross tower must then be fed zeros in those columns (W_h·0 = 0, so nothing is counted twice).
    """
    net = net.eval()
    only_items = zero_sides(net, item_batch, ("user", "cross"), dynamic_items=not with_item_history)
    parts = []
    with torch.inference_mode():
        for start in range(0, len(only_items), chunk_rows):
            part = only_items.index(torch.arange(start, min(start + chunk_rows, len(only_items))))
            parts.append(net.candidate_part(part).float().numpy())
    return np.concatenate(parts) if parts else np.zeros((0, net.first_width), dtype=np.float32)


def _feature_tensors(batch: RankingBatch) -> list[Tensor]:
    return [batch.categorical, *batch.multivalent, batch.dense]


def _export(module: nn.Module, args: tuple[Tensor, ...], names: list[str], dynamic: dict[str, dict[int, str]],
            path: Path) -> None:
    with atomic_path(path, suffix=".onnx") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(module, args, str(tmp), input_names=names, output_names=["output"],
                          dynamic_axes=dynamic, opset_version=ONNX_OPSET, dynamo=False)


def export_ranker_onnx(net: RankingNet, example: RankingBatch, directory: str | Path) -> tuple[Path, Path, Path | None]:
    """Write the user, candidate and cross-tower graphs of ``net`` into ``directory`` (no
    cross-tower graph, None, for a layout the item cache does not support).

    ``example``: a few real rows (any B >= 1) used to trace the graphs; batch size and the
    length of every multivalent feature stay dynamic. Returns the three paths.
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    if len(example) < 1:
        raise OnnxExportError("example: need at least one row to trace the ranker")
    net = net.eval()
    names = input_names(net)
    features = tuple(_feature_tensors(example))
    dynamic: dict[str, dict[int, str]] = {"categorical": {0: "batch"}, "dense": {0: "batch"}, "output": {0: "batch"}}
    for name in names[1:-1]:
        dynamic[name] = {0: "batch", 1: f"{name}_length"}
    user_path, candidate_path = folder / USER_GRAPH_NAME, folder / CANDIDATE_GRAPH_NAME
    cross_path = folder / CROSS_TOWER_GRAPH_NAME
    try:
        with torch.no_grad():
            _export(_UserGraph(net), features, names, dynamic, user_path)
            hidden = net.user_part_tensors(example.categorical, example.multivalent, example.dense)
            _export(_CandidateGraph(net), (hidden, *features), ["user_hidden", *names],
                    dynamic | {"user_hidden": {0: "user_rows"}}, candidate_path)
            try:
                cross_graph: _CrossTowerGraph | None = _CrossTowerGraph(net)
            except OnnxExportError:
                cross_graph = None  # no item cache for this layout; the candidate graph serves
            if cross_graph is not None:
                item_hidden = net.candidate_part(zero_sides(net, example, ("user", "cross"), dynamic_items=True))
                _export(cross_graph, (hidden, item_hidden, *features), ["user_hidden", "item_hidden", *names],
                        dynamic | {"user_hidden": {0: "user_rows"}, "item_hidden": {0: "batch"}}, cross_path)
    except Exception as exc:  # the exporters raise many types; the message is what matters
        raise OnnxExportError(f"exporting the ranker to ONNX failed: {type(exc).__name__}: {exc}") from exc
    return user_path, candidate_path, (cross_path if cross_graph is not None else None)


# ---------------------------------------------------------------------------------------------
# Serving backends


class SplitNetwork(Protocol):
    """The two halves of the ranking network on NumPy arrays (what the recommender calls)."""

    n_heads: int

    def user_hidden(self, categorical: np.ndarray, multivalent: Sequence[np.ndarray], dense: np.ndarray) -> np.ndarray:
        """W_u·x_u + b for each row, [B, h1] float32."""

    def logits(self, user_hidden: np.ndarray, categorical: np.ndarray, multivalent: Sequence[np.ndarray],
               dense: np.ndarray) -> np.ndarray:
        """[N, n_heads] float32 logits for N candidate rows given [1 or N, h1] user rows."""

    def cached_logits(self, user_hidden: np.ndarray, item_hidden: np.ndarray, categorical: np.ndarray,
                      multivalent: Sequence[np.ndarray], dense: np.ndarray) -> np.ndarray:
        """Like :meth:`logits` with the item part given ([N, h1] rows of :func:`item_hidden_table`);
        only the cross columns of the feature arrays are read."""


class TorchSplitNetwork:
    """:class:`SplitNetwork` on the PyTorch module itself (the reference, and a fallback)."""

    def __init__(self, net: RankingNet, threads: int | None = None) -> None:
        self.net = net.eval()
        self.n_heads = net.n_heads
        self.threads = threads
        self._cross_tower = _CrossTowerGraph(self.net).eval()

    def user_hidden(self, categorical: np.ndarray, multivalent: Sequence[np.ndarray], dense: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = self.net.user_part_tensors(torch.from_numpy(categorical), [torch.from_numpy(m) for m in multivalent],
                                             torch.from_numpy(dense))
        return out.numpy()

    def logits(self, user_hidden: np.ndarray, categorical: np.ndarray, multivalent: Sequence[np.ndarray],
               dense: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = self.net.forward_split_tensors(torch.from_numpy(user_hidden), torch.from_numpy(categorical),
                                                 *[torch.from_numpy(m) for m in multivalent],
                                                 dense=torch.from_numpy(dense))
        return out.numpy()

    def cached_logits(self, user_hidden: np.ndarray, item_hidden: np.ndarray, categorical: np.ndarray,
                      multivalent: Sequence[np.ndarray], dense: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = self._cross_tower(torch.from_numpy(user_hidden), torch.from_numpy(item_hidden),
                                    torch.from_numpy(categorical), *[torch.from_numpy(m) for m in multivalent],
                                    torch.from_numpy(dense))
        return out.numpy()


class OnnxSplitNetwork:
    """:class:`SplitNetwork` on the two exported graphs, run by ONNX Runtime.

    ONNX Runtime sessions are safe to call from several threads at once.
    """

    def __init__(self, user_graph: str | Path, candidate_graph: str | Path, cross_tower_graph: str | Path | None = None,
                 *, feature_names: Sequence[str], n_heads: int, threads: int = 1) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        try:
            self._user = ort.InferenceSession(str(user_graph), options, providers=["CPUExecutionProvider"])
            self._candidate = ort.InferenceSession(str(candidate_graph), options, providers=["CPUExecutionProvider"])
            self._cross = (ort.InferenceSession(str(cross_tower_graph), options, providers=["CPUExecutionProvider"])
                           if cross_tower_graph is not None else None)
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable graphs
            raise OnnxExportError(f"cannot load the ONNX ranker graphs: {exc}") from exc
        self.feature_names = list(feature_names)
        self.n_heads = int(n_heads)
        self._user_inputs = {i.name for i in self._user.get_inputs()}
        self._candidate_inputs = {i.name for i in self._candidate.get_inputs()}
        self._cross_inputs = {i.name for i in self._cross.get_inputs()} if self._cross is not None else set()
        unknown = ((self._user_inputs | self._candidate_inputs | self._cross_inputs) - set(self.feature_names)
                   - {"user_hidden", "item_hidden"})
        if unknown:
            raise OnnxExportError(f"the ONNX graphs expect inputs {sorted(unknown)} that the layout does not have "
                                  f"(layout inputs: {self.feature_names})")

    def _feeds(self, wanted: set[str], categorical: np.ndarray, multivalent: Sequence[np.ndarray],
               dense: np.ndarray) -> dict[str, np.ndarray]:
        values = [categorical, *multivalent, dense]
        if len(values) != len(self.feature_names):
            raise OnnxExportError(f"expected {len(self.feature_names) - 2} multivalent arrays, got {len(multivalent)}")
        return {name: value for name, value in zip(self.feature_names, values, strict=True) if name in wanted}

    def user_hidden(self, categorical: np.ndarray, multivalent: Sequence[np.ndarray], dense: np.ndarray) -> np.ndarray:
        feeds = self._feeds(self._user_inputs, categorical, multivalent, dense)
        return self._user.run(None, feeds)[0]

    def logits(self, user_hidden: np.ndarray, categorical: np.ndarray, multivalent: Sequence[np.ndarray],
               dense: np.ndarray) -> np.ndarray:
        feeds = self._feeds(self._candidate_inputs, categorical, multivalent, dense)
        feeds["user_hidden"] = np.ascontiguousarray(user_hidden, dtype=np.float32)
        return self._candidate.run(None, feeds)[0]

    @property
    def has_cross_tower(self) -> bool:
        return self._cross is not None

    def cached_logits(self, user_hidden: np.ndarray, item_hidden: np.ndarray, categorical: np.ndarray,
                      multivalent: Sequence[np.ndarray], dense: np.ndarray) -> np.ndarray:
        if self._cross is None:
            raise OnnxExportError("no cross-tower graph was loaded")
        feeds = self._feeds(self._cross_inputs, categorical, multivalent, dense)
        feeds["user_hidden"] = np.ascontiguousarray(user_hidden, dtype=np.float32)
        feeds["item_hidden"] = np.ascontiguousarray(item_hidden, dtype=np.float32)
        return self._cross.run(None, feeds)[0]


def batch_arrays(batch: RankingBatch) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """(categorical int64, [multivalent int64…], dense float32) NumPy views of a batch."""
    return (np.ascontiguousarray(batch.categorical.numpy(), dtype=np.int64),
            [np.ascontiguousarray(m.numpy(), dtype=np.int64) for m in batch.multivalent],
            np.ascontiguousarray(batch.dense.numpy(), dtype=np.float32))


# ---------------------------------------------------------------------------------------------
# Parity


@dataclass(frozen=True)
class ParityReport:
    """ONNX (split graphs) against PyTorch (full forward pass) on the same rows.

    ``max_relative_diff`` = max over rows and served quantities q of
    |q_onnx − q_torch| / max(|q_torch|, ``floor``); ``max_abs_logit_diff`` on the raw logits.
    """

    rows: int
    max_relative_diff: float
    max_abs_logit_diff: float
    tolerance: float
    quantities: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return math.isfinite(self.max_relative_diff) and self.max_relative_diff <= self.tolerance

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "max_relative_diff": self.max_relative_diff,
                "max_abs_logit_diff": self.max_abs_logit_diff, "tolerance": self.tolerance,
                "quantities": list(self.quantities), "passed": self.passed}


def check_parity(net: RankingNet, network: SplitNetwork, batch: RankingBatch, predict: Any,
                 tolerance: float = 1e-4, floor: float = 1e-6, chunk_rows: int = 4096,
                 item_hidden: np.ndarray | None = None) -> ParityReport:
    """Score ``batch`` with PyTorch's full forward pass and with ``network`` (user graph per row,
    then the candidate graph — or, given ``item_hidden`` rows aligned with ``batch``, the
    cross-tower graph), and compare the served quantities of ``predict(logits)``.

    ``predict``: the objective's ``predict`` (logits tensor → dict of tensors). Raises nothing;
    the caller decides what a failed report means.
    """
    net = net.eval()
    worst_rel = 0.0
    worst_abs = 0.0
    quantities: tuple[str, ...] = ()
    for start in range(0, len(batch), chunk_rows):
        part = batch.index(torch.arange(start, min(start + chunk_rows, len(batch))))
        with torch.inference_mode():
            reference_logits = net(part)
        categorical, multivalent, dense = batch_arrays(part)
        hidden = network.user_hidden(categorical, multivalent, dense)
        if item_hidden is None:
            logits = torch.from_numpy(network.logits(hidden, categorical, multivalent, dense))
        else:
            items = item_hidden[start:start + len(part)]
            logits = torch.from_numpy(network.cached_logits(hidden, items, categorical, multivalent, dense))
        worst_abs = max(worst_abs, float((logits - reference_logits).abs().max()))
        reference = predict(reference_logits)
        candidate = predict(logits)
        quantities = tuple(key for key in reference if key != "logit")
        for key in quantities:
            ref = reference[key].double()
            diff = (candidate[key].double() - ref).abs() / ref.abs().clamp(min=floor)
            worst_rel = max(worst_rel, float(diff.max()) if diff.numel() else 0.0)
    return ParityReport(rows=len(batch), max_relative_diff=worst_rel, max_abs_logit_diff=worst_abs,
                        tolerance=tolerance, quantities=quantities)
