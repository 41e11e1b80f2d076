import numpy as np
import pytest

from ops.attributes import metrics


def test_category_metrics_by_hand():
    truth = np.array([0, 0, 0, 0, 1, 2])
    predicted = np.array([0, 0, 0, 1, 1, 0])
    assert metrics.confusion(truth, predicted, 3).tolist() == [[3, 1, 0], [0, 1, 0], [1, 0, 0]]
    assert metrics.accuracy(truth, predicted) == pytest.approx(4 / 6)
    assert metrics.balanced_accuracy(truth, predicted, 3) == pytest.approx((3 / 4 + 1 + 0) / 3)
    majority = np.zeros(6, int)  # a majority guess: accuracy 4/6, balanced 1/3
    assert metrics.balanced_accuracy(truth, majority, 3) == pytest.approx(1 / 3)


def test_number_metrics_by_hand():
    truth, value = np.array([10.0, 20.0, 30.0, 40.0]), np.array([12.0, 20.0, 25.0, 41.0])
    assert metrics.mae(truth, value) == pytest.approx((2 + 0 + 5 + 1) / 4)
    assert metrics.rmse(truth, value) == pytest.approx(np.sqrt((4 + 0 + 25 + 1) / 4))
    assert metrics.within(truth, value, 2) == pytest.approx(3 / 4)


def test_coverage_of_an_honest_and_an_overconfident_uncertainty():
    rng = np.random.default_rng(0)
    truth = rng.normal(0, 2.0, 200_000)
    value = np.zeros_like(truth)
    assert metrics.coverage(truth, value, np.full_like(truth, 2.0)) == pytest.approx(0.90, abs=0.005)
    assert metrics.coverage(truth, value, np.full_like(truth, 1.0)) == pytest.approx(0.59, abs=0.01)
    # by hand: interval 0 +- 1.645 holds 1 and -1.6, not 2
    assert metrics.coverage(np.array([1.0, -1.6, 2.0]), np.zeros(3), np.ones(3)) == pytest.approx(2 / 3)
