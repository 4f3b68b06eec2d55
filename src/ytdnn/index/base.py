"""The interface every retrieval index implements, its on-disk manifest, and the kind registry.

Serving the candidate generator (Covington et al. 2016, §3.5) means finding, for a user vector
u, the items with the largest dot product u·v_i over the item table. Every index here answers
exactly that maximum-inner-product query::

    search(U, k)[q] = the k ids i with the largest U[q]·v_i, best first.

Results always have k columns; when fewer than k items can be returned (a small index, or an
approximate index that found fewer) the row is padded with id ``PAD_ID`` (-1) and score -inf.
Ids are caller-chosen non-negative int64 values (e.g. ``video_id``), unique within an index.

A saved index is a folder: ``index.json`` (the manifest: kind, dim, count, params),
``ids.safetensors`` and one payload file per kind. The manifest is written last, and loading
checks every file's counts against it, so a save interrupted half-way is detected, not served.
"""

from __future__ import annotations

import importlib
import inspect
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
from safetensors.numpy import load_file, save_file

from ytdnn.utils.io import atomic_path, atomic_write_json, read_json

PAD_ID: int = -1
MANIFEST_NAME = "index.json"
IDS_FILE_NAME = "ids.safetensors"
FORMAT_VERSION = 1

# kind -> (module, class). Imported lazily so that `ytdnn.index.base` does not pull in FAISS.
_INDEX_CLASSES: dict[str, tuple[str, str]] = {
    "exact": ("ytdnn.index.exact", "ExactIndex"),
    "hnsw": ("ytdnn.index.faiss_index", "HnswIndex"),
    "ivf": ("ytdnn.index.faiss_index", "IvfFlatIndex"),
}
INDEX_KINDS: tuple[str, ...] = tuple(_INDEX_CLASSES)


class IndexInputError(ValueError):
    """Bad input to an index: vectors, ids, queries, k, construction parameters or a saved folder."""


class IndexNotTrainedError(RuntimeError):
    """The index needs ``build()`` (which trains it) before vectors can be added."""


# ---------------------------------------------------------------------------------------------
# Input validation shared by all kinds.


def check_positive_int(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise IndexInputError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    if int(value) < minimum:
        raise IndexInputError(f"{name}: expected an integer >= {minimum}, got {int(value)}")
    return int(value)


def as_float_matrix(name: str, values: object, dim: int) -> np.ndarray:
    """Return ``values`` as a C-contiguous float32 [n, dim] array of finite numbers, or raise."""
    array = np.asarray(values)
    if array.dtype == np.bool_ or not (np.issubdtype(array.dtype, np.floating)
                                       or np.issubdtype(array.dtype, np.integer)):
        raise IndexInputError(f"{name}: expected a real-valued array, got dtype {array.dtype}")
    if array.ndim != 2:
        raise IndexInputError(
            f"{name}: expected a 2-D array of shape [n, {dim}], got {array.ndim}-D shape {array.shape}"
            + (" (use x.reshape(1, -1) for a single vector)" if array.ndim == 1 else "")
        )
    if array.shape[1] != dim:
        raise IndexInputError(f"{name}: expected {dim} columns (the index dim), got shape {array.shape}")
    # Cast first: float64 values beyond float32 range become inf and are caught below.
    with np.errstate(over="ignore"):
        matrix = np.ascontiguousarray(array, dtype=np.float32)
    finite_rows = np.isfinite(matrix).all(axis=1)
    if not finite_rows.all():
        row = int(np.flatnonzero(~finite_rows)[0])
        bad = matrix[row][~np.isfinite(matrix[row])][0]
        raise IndexInputError(
            f"{name}: row {row} holds a non-finite value ({bad}) in float32; "
            f"{int((~finite_rows).sum())} row(s) affected"
        )
    return matrix


def as_id_vector(name: str, values: object, expected_len: int) -> np.ndarray:
    """Return ``values`` as a contiguous int64 [n] array of unique non-negative ids, or raise."""
    array = np.asarray(values)
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.integer):
        raise IndexInputError(f"{name}: expected an integer array, got dtype {array.dtype}")
    if array.ndim != 1:
        raise IndexInputError(f"{name}: expected a 1-D array, got shape {array.shape}")
    if array.shape[0] != expected_len:
        raise IndexInputError(
            f"{name}: length {array.shape[0]} does not match the {expected_len} vector rows"
        )
    if array.dtype == np.uint64 and array.size and int(array.max()) > np.iinfo(np.int64).max:
        raise IndexInputError(f"{name}: value {int(array.max())} does not fit in int64")
    ids = np.ascontiguousarray(array, dtype=np.int64)
    if ids.size and int(ids.min()) < 0:
        row = int(np.argmin(ids))
        raise IndexInputError(
            f"{name}: row {row} is {int(ids[row])}; ids must be >= 0 ({PAD_ID} marks padding)"
        )
    unique, counts = np.unique(ids, return_counts=True)
    if unique.size != ids.size:
        duplicate = int(unique[np.argmax(counts > 1)])
        rows = np.flatnonzero(ids == duplicate)[:5].tolist()
        raise IndexInputError(f"{name}: id {duplicate} appears more than once (rows {rows})")
    return ids


# ---------------------------------------------------------------------------------------------


class VectorIndex(ABC):
    """Maximum-inner-product index over (id, vector) pairs; see the module docstring.

    Subclasses implement storage only, on row positions 0..n-1 in insertion order; this class
    owns the ids, validation, padding, the manifest and the save/load protocol. Searching is
    safe from several threads at once; ``build``/``add`` must not run concurrently with it.
    """

    kind: ClassVar[str]

    def __init__(self, dim: int) -> None:
        self._dim = check_positive_int("dim", dim)
        self._ids = np.empty(0, dtype=np.int64)

    # -- what subclasses provide -------------------------------------------------------------

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """Construction parameters, JSON-serialisable; ``cls(dim, **params())`` rebuilds an
        equivalent empty index. Written to the manifest."""

    @abstractmethod
    def _build_storage(self, vectors: np.ndarray) -> None:
        """Replace the stored vectors with ``vectors`` (training first where the kind needs it)."""

    @abstractmethod
    def _add_storage(self, vectors: np.ndarray) -> None:
        """Append ``vectors`` after the stored ones (positions continue from ``len(self)``)."""

    @abstractmethod
    def _search_positions(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` by inner product for non-empty storage and ``1 <= k``: (scores float32,
        positions int64), each [q, <=k], best first, position -1 where nothing was found."""

    @abstractmethod
    def _save_payload(self, directory: Path) -> None:
        """Write the kind's payload file(s) into ``directory`` atomically."""

    @abstractmethod
    def _load_payload(self, directory: Path, count: int) -> None:
        """Read the payload written by ``_save_payload``; raise IndexInputError unless it holds
        ``count`` vectors of ``self.dim``."""

    # -- public interface ------------------------------------------------------------------

    @property
    def dim(self) -> int:
        """Vector dimension d."""
        return self._dim

    @property
    def ids(self) -> np.ndarray:
        """Stored ids in insertion order (a read-only view)."""
        view = self._ids.view()
        view.flags.writeable = False
        return view

    def __len__(self) -> int:
        return int(self._ids.shape[0])

    def __repr__(self) -> str:
        params = ", ".join(f"{key}={value!r}" for key, value in self.params().items())
        return f"{type(self).__name__}(dim={self.dim}, count={len(self)}{', ' if params else ''}{params})"

    def build(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Replace the contents with ``vectors`` [n, dim] keyed by ``ids`` [n] (unique, >= 0)."""
        matrix = as_float_matrix("vectors", vectors, self.dim)
        new_ids = as_id_vector("ids", ids, matrix.shape[0])
        self._build_storage(matrix)
        self._ids = new_ids

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Append ``vectors`` keyed by ``ids``; ids must not already be in the index."""
        matrix = as_float_matrix("vectors", vectors, self.dim)
        new_ids = as_id_vector("ids", ids, matrix.shape[0])
        if new_ids.size == 0:
            return
        clash = np.isin(new_ids, self._ids)
        if clash.any():
            row = int(np.flatnonzero(clash)[0])
            raise IndexInputError(f"ids: row {row} is {int(new_ids[row])}, which is already in the index")
        self._add_storage(matrix)
        self._ids = np.concatenate([self._ids, new_ids])

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` ids with the largest inner product for each query row.

        Returns (scores float32 [q, k], ids int64 [q, k]), best first; padded with score -inf
        and id -1 when fewer than k are found.
        """
        k = check_positive_int("k", k)
        matrix = as_float_matrix("queries", queries, self.dim)
        scores = np.full((matrix.shape[0], k), -np.inf, dtype=np.float32)
        found_ids = np.full((matrix.shape[0], k), PAD_ID, dtype=np.int64)
        if matrix.shape[0] == 0 or len(self) == 0:
            return scores, found_ids
        raw_scores, positions = self._search_positions(matrix, k)
        width = positions.shape[1]
        found = positions >= 0
        found_ids[:, :width] = np.where(found, self._ids[np.where(found, positions, 0)], PAD_ID)
        scores[:, :width] = np.where(found, raw_scores, -np.inf)
        return scores, found_ids

    def save(self, directory: str | Path) -> Path:
        """Write the index into ``directory`` (created if needed); return its path."""
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / IDS_FILE_NAME, suffix=".safetensors") as tmp:
            save_file({"ids": self._ids}, str(tmp))
        self._save_payload(folder)
        # The manifest goes last: its presence with matching counts marks a complete save.
        atomic_write_json(folder / MANIFEST_NAME, {
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "dim": self.dim,
            "count": len(self),
            "params": self.params(),
        })
        return folder

    @classmethod
    def load(cls, directory: str | Path) -> Self:
        """Read an index written by ``save``. On ``VectorIndex`` itself, dispatch on the kind."""
        folder = Path(directory)
        manifest = read_manifest(folder)
        if cls is VectorIndex or inspect.isabstract(cls):
            return load_index(folder)  # type: ignore[return-value]
        if manifest["kind"] != cls.kind:
            raise IndexInputError(
                f"{folder / MANIFEST_NAME}: holds a '{manifest['kind']}' index, not '{cls.kind}' "
                f"(use ytdnn.index.load_index to load any kind)"
            )
        try:
            index = cls(manifest["dim"], **manifest["params"])
        except TypeError as error:
            raise IndexInputError(f"{folder / MANIFEST_NAME}: params do not fit {cls.__name__}: {error}") from None
        ids = _read_ids(folder / IDS_FILE_NAME)
        if ids.shape[0] != manifest["count"]:
            raise IndexInputError(
                f"{folder / IDS_FILE_NAME}: holds {ids.shape[0]} ids but the manifest says "
                f"{manifest['count']} (interrupted save?)"
            )
        index._load_payload(folder, manifest["count"])
        index._ids = ids
        return index


def _read_ids(path: Path) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (the index folder is incomplete)")
    tensors = load_file(str(path))
    if "ids" not in tensors:
        raise IndexInputError(f"{path}: expected a tensor named 'ids', found {sorted(tensors)}")
    ids = tensors["ids"]
    if ids.dtype != np.int64 or ids.ndim != 1:
        raise IndexInputError(f"{path}: 'ids' must be 1-D int64, got {ids.dtype} shape {ids.shape}")
    return np.ascontiguousarray(ids)


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """Read and check ``index.json`` in ``directory``."""
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no index manifest (was the index saved here?)")
    manifest = read_json(path)
    if not isinstance(manifest, dict):
        raise IndexInputError(f"{path}: expected a JSON object")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise IndexInputError(f"{path}: format_version {version!r}, this code reads {FORMAT_VERSION}")
    kind = manifest.get("kind")
    if kind not in _INDEX_CLASSES:
        raise IndexInputError(f"{path}: kind {kind!r} is not one of {list(INDEX_KINDS)}")
    for field, minimum in (("dim", 1), ("count", 0)):
        value = manifest.get(field)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise IndexInputError(f"{path}: '{field}' must be an integer >= {minimum}, got {value!r}")
    if not isinstance(manifest.get("params", {}), dict):
        raise IndexInputError(f"{path}: 'params' must be a JSON object")
    manifest.setdefault("params", {})
    return manifest


def index_class(kind: str) -> type[VectorIndex]:
    """The class implementing ``kind`` ("exact", "hnsw" or "ivf")."""
    if kind not in _INDEX_CLASSES:
        raise IndexInputError(f"kind: {kind!r} is not one of {list(INDEX_KINDS)}")
    module_name, class_name = _INDEX_CLASSES[kind]
    cls: type[VectorIndex] = getattr(importlib.import_module(module_name), class_name)
    return cls


def make_index(kind: str, dim: int, **params: Any) -> VectorIndex:
    """A new, empty index of ``kind`` with the given construction parameters."""
    cls = index_class(kind)
    accepted = [name for name in inspect.signature(cls.__init__).parameters if name not in ("self", "dim")]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise IndexInputError(f"params: {unknown} not accepted by kind '{kind}'; expected some of {accepted}")
    return cls(dim, **params)


def load_index(directory: str | Path) -> VectorIndex:
    """Load whichever kind of index ``directory`` holds (dispatching on ``index.json``)."""
    manifest = read_manifest(directory)
    return index_class(manifest["kind"]).load(directory)
