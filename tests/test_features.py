"""features.shape: proportions as the boosters need them, finite and bounded for any stone."""

from __future__ import annotations

import numpy as np

from appraiser import features


def test_shape_is_finite_and_bounded_for_absurd_measurements() -> None:
    carat = np.array([1.0, 1e-300, 1.0, 1.0, 0.5, 1.0])
    x = np.array([6.4, 6.0, 1e-300, 0.0, 5.1, 1e308])
    y = np.array([6.4, 6.0, 1e-300, 0.0, 5.1, 1e308])
    z = np.array([4.0, 4.0, 1e300, 0.0, 3.2, 1.0])
    spread, ratio, depth_ratio = features.shape(carat, x, y, z)
    for values in (spread, ratio, depth_ratio):
        assert np.isfinite(values).all()
        assert ((values >= 0) & (values <= features.SHAPE_LIMIT)).all()
    # ordinary stones keep their exact proportions
    mean = (x[[0, 4]] + y[[0, 4]]) / 2
    np.testing.assert_array_equal(spread[[0, 4]], mean / np.cbrt(carat[[0, 4]]))
    np.testing.assert_array_equal(depth_ratio[[0, 4]], z[[0, 4]] / mean)
    # 0/0 (no measurements) is no proportion: 0; a division past the limit is the limit
    assert ratio[3] == 0.0 and depth_ratio[3] == 0.0
    assert spread[1] == features.SHAPE_LIMIT and depth_ratio[2] == features.SHAPE_LIMIT
