import numpy as np
import pytest

from ops.metrics import equal_error_rate


def test_separable_scores_have_no_errors():
    assert equal_error_rate(np.array([0.9, 0.8, 0.2, 0.1]), np.array([1, 1, 0, 0])) == 0.0


def test_hand_computed_crossing():
    # same: 0.9, 0.6, 0.3; different: 0.7, 0.2, 0.1. At threshold 0.6: FRR 1/3 (0.3), FAR 1/3 (0.7) -> EER 1/3.
    scores = np.array([0.9, 0.6, 0.3, 0.7, 0.2, 0.1])
    same = np.array([1, 1, 1, 0, 0, 0], bool)
    assert equal_error_rate(scores, same) == pytest.approx(1 / 3)


def test_inverted_scores_are_all_errors():
    assert equal_error_rate(np.array([0.1, 0.2, 0.8, 0.9]), np.array([1, 1, 0, 0])) == pytest.approx(1.0)


def test_needs_both_kinds():
    with pytest.raises(ValueError):
        equal_error_rate(np.array([0.1, 0.2]), np.array([1, 1]))
