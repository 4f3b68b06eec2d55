"""The shared contract of every index kind: validation, padding, registry, save/load."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ytdnn.index import (
    INDEX_KINDS,
    ExactIndex,
    HnswIndex,
    IndexInputError,
    IndexNotTrainedError,
    IvfFlatIndex,
    VectorIndex,
    load_index,
    make_index,
    read_manifest,
)

DIM = 8


def small_index(kind: str, count: int = 200, seed: int = 0) -> tuple[VectorIndex, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((count, DIM), dtype=np.float32)
    ids = rng.permutation(100 * count)[:count].astype(np.int64)
    params = {"nlist": 4, "nprobe": 2} if kind == "ivf" else {}
    index = make_index(kind, DIM, **params)
    index.build(vectors, ids)
    return index, vectors, ids


# --- registry -------------------------------------------------------------------------------


def test_make_index_builds_each_kind_with_params() -> None:
    assert INDEX_KINDS == ("exact", "hnsw", "ivf")
    assert isinstance(make_index("exact", 4), ExactIndex)
    hnsw = make_index("hnsw", 4, M=8, ef_construction=20, ef_search=50)
    assert isinstance(hnsw, HnswIndex) and hnsw.params() == {"M": 8, "ef_construction": 20, "ef_search": 50}
    ivf = make_index("ivf", 4, nlist=16, nprobe=3)
    assert isinstance(ivf, IvfFlatIndex) and ivf.params() == {"nlist": 16, "nprobe": 3}
    assert all(make_index(kind, 4).kind == kind for kind in INDEX_KINDS)


def test_make_index_rejects_unknown_kind_and_params() -> None:
    with pytest.raises(IndexInputError, match=r"kind: 'annoy' is not one of \['exact', 'hnsw', 'ivf'\]"):
        make_index("annoy", 4)
    with pytest.raises(IndexInputError, match=r"\['nprobe'\] not accepted by kind 'hnsw'"):
        make_index("hnsw", 4, nprobe=3)
    with pytest.raises(IndexInputError, match="ef_search: expected an integer >= 1, got 0"):
        make_index("hnsw", 4, ef_search=0)
    with pytest.raises(IndexInputError, match="dim: expected an integer >= 1, got 0"):
        make_index("exact", 0)


# --- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", INDEX_KINDS)
def test_bad_vectors_and_ids_are_named(kind: str) -> None:
    index = make_index(kind, DIM)
    good = np.zeros((3, DIM), dtype=np.float32)
    with pytest.raises(IndexInputError, match=r"vectors: expected 8 columns \(the index dim\), got shape \(3, 5\)"):
        index.build(np.zeros((3, 5), dtype=np.float32), np.arange(3))
    with pytest.raises(IndexInputError, match=r"vectors: expected a 2-D array .* got 1-D .*reshape\(1, -1\)"):
        index.build(np.zeros(DIM, dtype=np.float32), np.arange(1))
    with pytest.raises(IndexInputError, match="vectors: expected a 2-D array .* got 3-D"):
        index.build(np.zeros((1, 3, DIM), dtype=np.float32), np.arange(1))
    with pytest.raises(IndexInputError, match="ids: length 2 does not match the 3 vector rows"):
        index.build(good, np.arange(2))
    with pytest.raises(IndexInputError, match="ids: expected an integer array, got dtype float64"):
        index.build(good, np.arange(3, dtype=np.float64))
    with pytest.raises(IndexInputError, match=r"ids: id 7 appears more than once \(rows \[0, 2\]\)"):
        index.build(good, np.array([7, 8, 7]))
    with pytest.raises(IndexInputError, match=r"ids: row 1 is -1; ids must be >= 0"):
        index.build(good, np.array([0, -1, 2]))
    bad = good.copy()
    bad[2, 5] = np.nan
    with pytest.raises(IndexInputError, match=r"vectors: row 2 holds a non-finite value \(nan\)"):
        index.build(bad, np.arange(3))
    # float64 beyond float32 range would silently become inf: caught after the cast.
    huge = np.zeros((3, DIM), dtype=np.float64)
    huge[1, 0] = 1e300
    with pytest.raises(IndexInputError, match=r"vectors: row 1 holds a non-finite value \(inf\)"):
        index.build(huge, np.arange(3))
    with pytest.raises(IndexInputError, match="vectors: expected a real-valued array, got dtype bool"):
        index.build(np.zeros((3, DIM), dtype=bool), np.arange(3))
    assert len(index) == 0  # nothing was stored by the failed calls


@pytest.mark.parametrize("kind", INDEX_KINDS)
def test_bad_queries_and_k_are_named(kind: str) -> None:
    index, _, _ = small_index(kind)
    query = np.zeros((2, DIM), dtype=np.float32)
    with pytest.raises(IndexInputError, match=r"queries: expected 8 columns \(the index dim\), got shape \(2, 3\)"):
        index.search(np.zeros((2, 3), dtype=np.float32), k=5)
    with pytest.raises(IndexInputError, match="queries: expected a 2-D array"):
        index.search(np.zeros(DIM, dtype=np.float32), k=5)
    bad = query.copy()
    bad[1, 0] = -np.inf
    with pytest.raises(IndexInputError, match=r"queries: row 1 holds a non-finite value \(-inf\)"):
        index.search(bad, k=5)
    for k in (0, -3, 2.5, True):
        with pytest.raises(IndexInputError, match="k: expected an integer >= 1"):
            index.search(query, k=k)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", INDEX_KINDS)
def test_add_rejects_ids_already_present(kind: str) -> None:
    index, vectors, ids = small_index(kind)
    with pytest.raises(IndexInputError, match=rf"ids: row 1 is {ids[5]}, which is already in the index"):
        index.add(vectors[:2] + 1.0, np.array([10**9, ids[5]]))
    assert len(index) == 200


def test_ivf_add_before_build_needs_training() -> None:
    with pytest.raises(IndexNotTrainedError, match=r"IvfFlatIndex: call build\(\) before add\(\)"):
        IvfFlatIndex(DIM).add(np.zeros((1, DIM), dtype=np.float32), np.array([0]))
    with pytest.raises(IndexInputError, match="IVF training needs at least nlist=10 vectors, got 5"):
        IvfFlatIndex(DIM, nlist=10).build(np.zeros((5, DIM), dtype=np.float32), np.arange(5))


def test_ids_view_is_read_only() -> None:
    index, _, _ = small_index("exact")
    with pytest.raises(ValueError, match="read-only"):
        index.ids[0] = 5


# --- padding --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", INDEX_KINDS)
def test_pads_with_minus_one_and_minus_inf_when_k_exceeds_count(kind: str) -> None:
    index, vectors, ids = small_index(kind, count=5 if kind != "ivf" else 8)
    if kind == "ivf":
        index.nprobe = 4  # all 4 cells, so every item is reachable
    count = len(index)
    queries = np.random.default_rng(9).standard_normal((3, DIM), dtype=np.float32)
    scores, found = index.search(queries, k=count + 4)
    assert scores.shape == found.shape == (3, count + 4)
    assert (found[:, count:] == -1).all() and np.isneginf(scores[:, count:]).all()
    # The first `count` columns hold every item once, scored by its true inner product.
    position = {int(item): row for row, item in enumerate(ids)}
    for row in range(3):
        assert sorted(found[row, :count].tolist()) == sorted(ids.tolist())
        true_scores = vectors[[position[int(i)] for i in found[row, :count]]] @ queries[row]
        np.testing.assert_allclose(scores[row, :count], true_scores, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["exact", "hnsw"])
def test_empty_index_and_zero_queries(kind: str) -> None:
    index = make_index(kind, DIM)
    scores, found = index.search(np.zeros((2, DIM), dtype=np.float32), k=3)
    assert found.tolist() == [[-1, -1, -1]] * 2 and np.isneginf(scores).all()
    index.build(np.ones((4, DIM), dtype=np.float32), np.arange(4))
    scores, found = index.search(np.zeros((0, DIM), dtype=np.float32), k=3)
    assert scores.shape == (0, 3) and found.shape == (0, 3)


# --- save / load ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", INDEX_KINDS)
def test_save_load_roundtrip_gives_identical_results(kind: str, tmp_path: Path) -> None:
    index, _, ids = small_index(kind, count=400)
    queries = np.random.default_rng(3).standard_normal((20, DIM), dtype=np.float32)
    before = index.search(queries, k=15)

    index.save(tmp_path / "idx")
    manifest = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert manifest == {"format_version": 1, "kind": kind, "dim": DIM, "count": 400, "params": index.params()}
    assert sorted(p.name for p in (tmp_path / "idx").iterdir()) == sorted(
        ["index.json", "ids.safetensors", "vectors.safetensors" if kind == "exact" else "index.faiss"]
    )

    folder = tmp_path / "idx"
    for loaded in (load_index(folder), VectorIndex.load(folder), type(index).load(folder)):
        assert type(loaded) is type(index) and loaded.params() == index.params()
        assert len(loaded) == 400 and loaded.dim == DIM
        np.testing.assert_array_equal(loaded.ids, ids)
        after = loaded.search(queries, k=15)
        np.testing.assert_array_equal(after[1], before[1])
        np.testing.assert_array_equal(after[0], before[0])


def test_search_params_settable_after_load(tmp_path: Path) -> None:
    hnsw, _, _ = small_index("hnsw")
    hnsw.ef_search = 77
    hnsw.save(tmp_path / "hnsw")
    loaded_hnsw = load_index(tmp_path / "hnsw")
    assert isinstance(loaded_hnsw, HnswIndex) and loaded_hnsw.ef_search == 77
    loaded_hnsw.ef_search = 500
    assert loaded_hnsw.params()["ef_search"] == 500

    ivf, vectors, ids = small_index("ivf")  # nlist=4, nprobe=2
    ivf.save(tmp_path / "ivf")
    loaded_ivf = load_index(tmp_path / "ivf")
    assert isinstance(loaded_ivf, IvfFlatIndex) and loaded_ivf.nprobe == 2
    # Scanning every cell makes IVF-Flat exhaustive: the result equals exact search.
    loaded_ivf.nprobe = 4
    exact = ExactIndex(DIM)
    exact.build(vectors, ids)
    queries = np.random.default_rng(4).standard_normal((10, DIM), dtype=np.float32)
    np.testing.assert_array_equal(loaded_ivf.search(queries, 20)[1], exact.search(queries, 20)[1])
    with pytest.raises(IndexInputError, match="nprobe: expected an integer >= 1, got 0"):
        loaded_ivf.nprobe = 0


def test_load_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="index.json: no index manifest"):
        load_index(tmp_path / "nowhere")

    index, _, _ = small_index("hnsw")
    folder = index.save(tmp_path / "hnsw")
    with pytest.raises(IndexInputError, match="holds a 'hnsw' index, not 'exact'"):
        ExactIndex.load(folder)

    # A manifest whose count disagrees with the files (an interrupted re-save).
    manifest = read_manifest(folder)
    manifest["count"] = 199
    (folder / "index.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexInputError, match="holds 200 ids but the manifest says 199"):
        load_index(folder)

    manifest["count"] = 200
    manifest["kind"] = "annoy"
    (folder / "index.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexInputError, match=r"kind 'annoy' is not one of"):
        load_index(folder)

    manifest["kind"] = "hnsw"
    (folder / "index.json").write_text(json.dumps(manifest))
    (folder / "index.faiss").write_bytes(b"not a faiss file")
    with pytest.raises(IndexInputError, match="index.faiss: not a readable FAISS index"):
        load_index(folder)


def test_saving_an_unbuilt_ivf_index_is_refused(tmp_path: Path) -> None:
    with pytest.raises(IndexNotTrainedError, match=r"call build\(\) before save\(\)"):
        IvfFlatIndex(DIM).save(tmp_path / "ivf")
    assert not (tmp_path / "ivf" / "index.json").exists()
