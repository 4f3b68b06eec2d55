"""ExactIndex returns the true top-k by inner product."""

from __future__ import annotations

import numpy as np
import pytest

from ytdnn.index import ExactIndex


def test_hand_worked_top_k() -> None:
    # Items a=(1,0), b=(0,1), c=(1,1), d=(-1,0) under ids 10, 20, 30, 40; query u=(2,1):
    # u·a = 2, u·b = 1, u·c = 3, u·d = -2  ->  top-3 = c, a, b with scores 3, 2, 1.
    index = ExactIndex(dim=2)
    index.build(np.array([[1, 0], [0, 1], [1, 1], [-1, 0]], dtype=np.float32), np.array([10, 20, 30, 40]))
    scores, ids = index.search(np.array([[2.0, 1.0]], dtype=np.float32), k=3)
    assert ids.tolist() == [[30, 10, 20]]
    assert scores.tolist() == [[3.0, 2.0, 1.0]]
    assert scores.dtype == np.float32 and ids.dtype == np.int64


@pytest.mark.parametrize("score_block_elements", [1 << 25, 1_000])  # one block / 2 queries per block
def test_matches_brute_force_argsort(score_block_elements: int) -> None:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((500, 16), dtype=np.float32)
    # Non-contiguous, shuffled ids: the result must carry the ids, not row positions.
    ids = rng.permutation(10_000)[:500].astype(np.int64) * 3 + 5
    queries = rng.standard_normal((37, 16), dtype=np.float32)
    index = ExactIndex(dim=16, score_block_elements=score_block_elements)
    index.build(vectors, ids)

    scores, found = index.search(queries, k=25)

    brute = queries.astype(np.float64) @ vectors.T.astype(np.float64)
    order = np.argsort(-brute, axis=1)[:, :25]
    np.testing.assert_array_equal(found, ids[order])
    np.testing.assert_allclose(scores, np.take_along_axis(brute, order, axis=1), rtol=1e-5, atol=1e-5)
    assert (np.diff(scores, axis=1) <= 0).all()  # best first


def test_add_after_build_equals_one_build() -> None:
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((300, 8), dtype=np.float32)
    ids = np.arange(300, dtype=np.int64) + 1_000
    queries = rng.standard_normal((5, 8), dtype=np.float32)
    whole = ExactIndex(dim=8)
    whole.build(vectors, ids)
    pieces = ExactIndex(dim=8)
    pieces.add(vectors[:100], ids[:100])  # add on a fresh exact index acts as the first build
    pieces.add(vectors[100:], ids[100:])

    assert len(pieces) == 300
    np.testing.assert_array_equal(pieces.ids, ids)
    np.testing.assert_array_equal(pieces.search(queries, 10)[1], whole.search(queries, 10)[1])


def test_build_replaces_previous_contents() -> None:
    index = ExactIndex(dim=2)
    index.build(np.array([[1.0, 0.0]], dtype=np.float32), np.array([1]))
    index.build(np.array([[0.0, 1.0], [0.0, 2.0]], dtype=np.float32), np.array([2, 3]))
    assert len(index) == 2
    _, ids = index.search(np.array([[0.0, 1.0]], dtype=np.float32), k=3)
    assert ids.tolist() == [[3, 2, -1]]


def test_accepts_float64_and_integer_vectors_as_float32() -> None:
    index = ExactIndex(dim=2)
    index.build(np.array([[1, 2], [3, 4]], dtype=np.int32), np.array([0, 1], dtype=np.uint8))
    scores, ids = index.search(np.array([[1.0, 1.0]], dtype=np.float64), k=2)
    # (1,1)·(3,4) = 7, (1,1)·(1,2) = 3
    assert ids.tolist() == [[1, 0]] and scores.tolist() == [[7.0, 3.0]]
    assert index.vectors.dtype == np.float32
