import numpy as np
import pytest

from ops.io.errors import SearchError
from ops.matching.vectors import invalid_rows, normalise, unit_or_zero


def test_matching_refuses_what_has_no_direction_and_writing_keeps_it():
    x = np.array([[3.0, 4.0], [0.0, 0.0], [np.nan, 1.0]], np.float32)
    assert invalid_rows(x).tolist() == [False, True, True]
    with pytest.raises(SearchError, match="NaN, infinite or zero"):
        normalise(x)
    assert np.allclose(normalise(x[:1]), [[0.6, 0.8]])
    kept = unit_or_zero(x[:2])
    assert np.allclose(kept, [[0.6, 0.8], [0.0, 0.0]]) and kept.dtype == np.float32
