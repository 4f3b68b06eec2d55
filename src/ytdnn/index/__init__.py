"""Retrieval indexes behind one interface: exact, FAISS HNSW, FAISS IVF-Flat (max inner product)."""

from __future__ import annotations

from ytdnn.index.base import (
    INDEX_KINDS,
    PAD_ID,
    IndexInputError,
    IndexNotTrainedError,
    VectorIndex,
    index_class,
    load_index,
    make_index,
    read_manifest,
)
from ytdnn.index.exact import ExactIndex
from ytdnn.index.faiss_index import HnswIndex, IvfFlatIndex, usable_cpu_count

__all__ = [
    "INDEX_KINDS",
    "PAD_ID",
    "ExactIndex",
    "HnswIndex",
    "IndexInputError",
    "IndexNotTrainedError",
    "IvfFlatIndex",
    "VectorIndex",
    "index_class",
    "load_index",
    "make_index",
    "read_manifest",
    "usable_cpu_count",
]
