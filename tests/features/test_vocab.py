from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from ytdnn.features.vocab import Vocabulary, VocabularyError, embedding_dim


def _train() -> pl.DataFrame:
    # video 7: 3 clicks; video 5: 2 clicks; video 9: 2 clicks (ties with 5 → smaller value first);
    # video 3: 1 click; video 8: impressed 4 times but never clicked (must stay out).
    return pl.DataFrame({
        "video_id": [7, 7, 7, 5, 5, 9, 9, 3, 8, 8, 8, 8],
        "is_click": [1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0],
    })


def test_built_from_clicked_training_values_ranked_by_frequency_with_value_tiebreak() -> None:
    vocab = Vocabulary.from_clicked(_train(), "video_id")
    assert vocab.keys.to_list() == [7, 5, 9, 3]
    assert vocab.counts.tolist() == [3, 2, 2, 1]
    assert vocab.size == 5  # 4 values + OOV row 0
    # 8 was only impressed, never clicked; 42 never seen (a test-only value): both OOV → 0.
    assert vocab.lookup(np.array([7, 5, 9, 3, 8, 42])).tolist() == [1, 2, 3, 4, 0, 0]


def test_build_is_independent_of_input_order() -> None:
    shuffled = _train().sample(fraction=1.0, shuffle=True, seed=3)
    assert Vocabulary.from_clicked(shuffled, "video_id") == Vocabulary.from_clicked(_train(), "video_id")


def test_max_size_and_min_count_truncate() -> None:
    assert Vocabulary.from_clicked(_train(), "video_id", max_size=2).keys.to_list() == [7, 5]
    assert Vocabulary.from_clicked(_train(), "video_id", min_count=2).keys.to_list() == [7, 5, 9]
    assert Vocabulary.from_clicked(_train(), "video_id", max_size=0).lookup([7]).tolist() == [0]


def test_string_values_nulls_and_integer_inputs_to_string_vocab() -> None:
    vocab = Vocabulary.build(pl.Series(["b", "a", "b", None, "c", "a", "b"]), name="degree")
    assert vocab.keys.to_list() == ["b", "a", "c"]  # a and c: counts 2 and 1
    out = vocab.lookup(pl.Series(["c", None, "zzz", "b"]))
    assert out.dtype == np.int64 and out.tolist() == [3, 0, 0, 1]
    numbers = Vocabulary.build(pl.Series(["1", "2", "2"]), name="flag")
    assert numbers.lookup(pl.Series([2, 1, 5])).tolist() == [1, 2, 0]  # ints compared as their text


def test_wrong_value_kind_is_a_clear_error() -> None:
    vocab = Vocabulary.build(pl.Series([1, 2]), name="video_id")
    with pytest.raises(VocabularyError, match="video_id.*integer keys"):
        vocab.lookup(pl.Series(["1"]))
    with pytest.raises(VocabularyError, match="integers or strings"):
        Vocabulary.build(pl.Series([1.5, 2.5]), name="x")


def test_lookup_lists_pads_truncates_and_drops_oov_items() -> None:
    vocab = Vocabulary.build(pl.Series([[10, 11], [10], [12]]), name="tag")  # 10:2, 11:1, 12:1
    assert vocab.keys.to_list() == [10, 11, 12]
    lists = pl.Series([[11, 99, 10, 12], [], None, [99], [12]], dtype=pl.List(pl.Int64))
    out = vocab.lookup_lists(lists, max_len=2)
    # row 0: 99 is OOV and dropped, the first two known items kept; empty / null / all-OOV rows are padding.
    assert out.tolist() == [[2, 1], [0, 0], [0, 0], [0, 0], [3, 0]]


def test_save_load_roundtrip(tmp_path) -> None:
    for vocab in (Vocabulary.from_clicked(_train(), "video_id"), Vocabulary.build(pl.Series(["x", "y", "y"]), name="s")):
        path = tmp_path / f"{vocab.name}.json"
        vocab.save(path)
        loaded = Vocabulary.load(path)
        assert loaded == vocab
        assert loaded.lookup(vocab.keys).tolist() == list(range(1, vocab.size))


def test_embedding_dim_grows_with_log_of_vocab_and_clips() -> None:
    # round(4 · log2 25) = round(18.58) = 19; round(4 · log2 7000) = round(51.09) = 51.
    assert embedding_dim(25) == 19
    assert embedding_dim(7000) == 51
    assert embedding_dim(1) == 4  # log2 1 = 0 → min_dim
    assert embedding_dim(10**9) == 64  # 4 · 29.9 = 120 → max_dim
    assert embedding_dim(1000, multiplier=2.0, min_dim=8, max_dim=16) == 16  # round(19.93) = 20 → 16
    assert embedding_dim(1024, multiplier=1.5) == round(1.5 * math.log2(1024))  # 15
    with pytest.raises(VocabularyError):
        embedding_dim(0)
