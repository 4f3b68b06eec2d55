from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from ytdnn.features.quantile import QuantileError, QuantileNormaliser

# Hand case: n = 10 training values, q = 5 → probabilities 0, .2, .4, .6, .8, 1.
# inverted-CDF quantiles (smallest x with F(x) >= p): 0, 0, 0, 2, 4, 6 → knots {0, 2, 4, 6}.
# c_j = #{x_i < u_j} / 10: u=0 → 0, u=2 → 5/10 (0,0,0,0,1), u=4 → 7/10, u=6 → 9/10.
TRAIN = [0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]


def _fitted(**kwargs) -> QuantileNormaliser:
    return QuantileNormaliser.fit(np.array(TRAIN), name="x", n_quantiles=5, **kwargs)


def test_knots_and_cdf_on_hand_case() -> None:
    q = _fitted()
    assert q.knots.tolist() == [0.0, 2.0, 4.0, 6.0]
    assert q.cdf.tolist() == pytest.approx([0.0, 0.5, 0.7, 0.9])


def test_transform_interpolates_and_clips() -> None:
    q = _fitted()
    # 1 → halfway 0..2 → 0.25; 3 → halfway .5..0.7 → 0.6; 6 (max) → 0.9; 100 → clipped 0.9; -5 → 0.
    out = q.transform(np.array([0.0, 1.0, 3.0, 6.0, 100.0, -5.0]))
    assert out.tolist() == pytest.approx([0.0, 0.25, 0.6, 0.9, 0.9, 0.0])
    assert np.all((out >= 0) & (out < 1))


def test_missing_values_get_the_training_median() -> None:
    q = _fitted()
    # median(TRAIN) = (1 + 2) / 2 = 1.5 → 0 + 0.5 · 1.5/2 = 0.375
    assert q.fill_cdf == pytest.approx(0.375)
    out = q.transform(pl.Series([None, 3.0, float("nan")], dtype=pl.Float64))
    assert out.tolist() == pytest.approx([0.375, 0.6, 0.375])


def test_expand_gives_square_and_square_root() -> None:
    expanded = QuantileNormaliser.expand(np.array([0.25, 0.0, 0.81]))
    np.testing.assert_allclose(expanded, [[0.25, 0.0625, 0.5], [0.0, 0.0, 0.0], [0.81, 0.6561, 0.9]])
    np.testing.assert_allclose(_fitted().transform_expand(np.array([1.0])), [[0.25, 0.0625, 0.5]])


def test_indicator_policy_adds_a_missing_column() -> None:
    q = _fitted(missing="indicator")
    assert q.width == 4
    out = q.transform_expand(pl.Series([1.0, None]))
    np.testing.assert_allclose(out, [[0.25, 0.0625, 0.5, 0.0], [0.375, 0.140625, 0.375 ** 0.5, 1.0]])


def test_constant_and_empty_features_map_to_zero() -> None:
    constant = QuantileNormaliser.fit([7.0, 7.0, 7.0], name="c")
    assert constant.transform(np.array([7.0, 1.0, 9.0])).tolist() == [0.0, 0.0, 0.0]
    empty = QuantileNormaliser.fit(pl.Series([None, None], dtype=pl.Float64), name="e")
    assert empty.transform(np.array([3.0, np.nan])).tolist() == [0.0, 0.0]


def test_infinite_values_and_text_are_rejected() -> None:
    with pytest.raises(QuantileError, match="'x'.*position 1 is infinite"):
        QuantileNormaliser.fit([1.0, float("inf")], name="x")
    with pytest.raises(QuantileError, match="expected numbers"):
        QuantileNormaliser.fit(pl.Series(["a"]), name="x")


def test_save_load_roundtrip(tmp_path) -> None:
    rng = np.random.default_rng(0)
    q = QuantileNormaliser.fit(rng.lognormal(size=5000), name="w", n_quantiles=100, missing="indicator")
    q.save(tmp_path / "q.json")
    loaded = QuantileNormaliser.load(tmp_path / "q.json")
    probe = np.concatenate([rng.lognormal(size=1000), [np.nan, -1.0, 1e9]])
    assert np.array_equal(loaded.transform_expand(probe), q.transform_expand(probe))
    assert loaded.knots.size <= 101
