"""Signal transforms: arcsinh in, sinh out, negatives clipped; 'none' passes values through."""

import numpy as np
import pytest

from predictd.errors import PredictdError
from predictd.transform import TRANSFORMS, forward, inverse


def test_arcsinh_by_hand():
    np.testing.assert_allclose(forward([0.0, np.sinh(1.0), np.sinh(2.5)], "arcsinh"),
                               [0.0, 1.0, 2.5], rtol=1e-6)
    np.testing.assert_allclose(inverse([0.0, 1.0], "arcsinh"), [0.0, np.sinh(1.0)], rtol=1e-6)


def test_arcsinh_round_trip_non_negative():
    x = np.concatenate([[0.0, 1e-6, 0.5, 1.0, 171.85, 5e3, 1e5],
                        np.random.default_rng(0).gamma(0.5, 4.0, 1000)]).astype(np.float32)
    y = forward(x, "arcsinh")
    assert y.dtype == np.float32 and np.all(y >= 0)
    back = inverse(y, "arcsinh")
    assert back.dtype == np.float32
    np.testing.assert_allclose(back, x, rtol=2e-6, atol=1e-7)


def test_inverse_clips_negatives():
    y = np.array([-3.0, -1e-7, 0.0, 2.0], dtype=np.float32)
    before = y.copy()
    out = inverse(y, "arcsinh")
    np.testing.assert_array_equal(out[:3], [0.0, 0.0, 0.0])
    assert out[3] == pytest.approx(np.sinh(2.0), rel=1e-6)
    assert not np.signbit(out).any()  # no -0.0 either
    np.testing.assert_array_equal(y, before)  # input untouched


def test_none_is_identity_with_clipping():
    x = np.array([[0.0, 1.5], [2.25, 7.0]], dtype=np.float64)
    y = forward(x, "none")
    assert y.dtype == np.float32 and y.shape == (2, 2)
    np.testing.assert_array_equal(y, x)
    out = inverse(np.array([-2.0, 0.5, 3.0]), "none")
    np.testing.assert_array_equal(out, [0.0, 0.5, 3.0])
    src = np.array([-1.0, 1.0], dtype=np.float32)
    inverse(src, "none")
    assert src[0] == -1.0  # a copy is clipped, not the caller's array


def test_nan_stays_missing():
    assert np.isnan(forward([np.nan], "arcsinh")[0])


@pytest.mark.parametrize("fn", [forward, inverse])
def test_unknown_transform(fn):
    with pytest.raises(PredictdError, match="unknown transform 'log1p'"):
        fn(np.ones(2), "log1p")
    assert TRANSFORMS == ("arcsinh", "none")
