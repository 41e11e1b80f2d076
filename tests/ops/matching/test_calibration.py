import math

import numpy as np
import pytest

from ops.matching.calibration import LinearCalibration, cllr, describe, fit_logistic, min_cllr, pav_llr


def test_cllr_of_no_evidence_is_one_bit():
    assert cllr(np.zeros(7), np.array([1, 0, 0, 1, 0, 1, 0], bool)) == pytest.approx(1.0)


def test_cllr_by_hand():
    # LR 3 for the same pair, 1/3 for the different one: each costs log2(1 + 1/3)
    assert cllr(np.log([3.0, 1 / 3]), np.array([True, False])) == pytest.approx(math.log2(4 / 3))
    # Classes weigh half each, whatever their counts: two same pairs at LR 1, one different pair at LR 1/7
    value = cllr(np.log([1.0, 1.0, 1 / 7]), np.array([True, True, False]))
    assert value == pytest.approx(0.5 * 1 + 0.5 * math.log2(1 + 1 / 7))
    # Confidently wrong costs more than a bit
    assert cllr(np.log([0.01, 100.0]), np.array([True, False])) == pytest.approx(math.log2(101))


def test_pav_by_hand():
    scores = np.array([1.0, 2.0, 3.0, 4.0])
    same = np.array([False, True, False, True])
    # isotonic fit of 0, 1, 0, 1: 0, 0.5, 0.5, 1; prior odds 1
    assert pav_llr(scores, same).tolist() == [-math.inf, 0.0, 0.0, math.inf]
    assert min_cllr(scores, same) == pytest.approx(0.5)  # the two middle pairs cost a bit each, in opposite classes
    # Tied scores are one block; prior odds 1/2 are taken out
    llr = pav_llr(np.array([0.0, 0.5, 0.5, 1.0, 1.0, 1.0]), np.array([False, True, False, False, True, True]))
    assert llr[1] == llr[2] == pytest.approx(math.log(1.0) - math.log(1 / 1))
    assert llr[3] == pytest.approx(math.log(2.0) - math.log(1.0))


def test_logistic_by_hand():
    # One same pair at 1, one different at -1: Platt's targets 2/3 and 1/3, so sigma(a + b) = 2/3, sigma(b - a) = 1/3
    weights, offset = fit_logistic(np.array([1.0, -1.0]), np.array([True, False]))
    assert weights[0] == pytest.approx(math.log(2.0), abs=1e-9) and offset == pytest.approx(0.0, abs=1e-9)


def test_logistic_minimises_cllr_and_is_finite_on_separated_scores():
    rng = np.random.default_rng(0)
    same = rng.random(4000) < 0.1
    scores = np.where(same, rng.normal(0.5, 0.1, 4000), rng.normal(0.3, 0.1, 4000))
    cal = LinearCalibration.fit(scores, same)
    best = cllr(cal(scores), same)
    assert best < 0.6 and best >= min_cllr(scores, same) - 1e-9
    for slope, offset in ((cal.slope * 1.2, cal.offset), (cal.slope * 0.8, cal.offset), (cal.slope, cal.offset + 0.5)):
        assert cllr(slope * scores + offset, same) > best  # other lines cost more
    # Equal Gaussians of variance v: the true log-LR is (m1 - m0)/v * (s - (m0 + m1)/2): slope 20, zero at 0.4
    assert cal.slope == pytest.approx(20, rel=0.1) and cal.score_at(0.0) == pytest.approx(0.4, abs=0.01)
    separated = LinearCalibration.fit(np.array([0.9, 0.8, 0.1, 0.2]), np.array([True, True, False, False]))
    assert math.isfinite(separated.slope) and separated.slope > 0


def test_fusion_weights_from_two_columns():
    rng = np.random.default_rng(1)
    same = rng.random(3000) < 0.5
    face = np.where(same, 2.0, -2.0) + rng.normal(0, 2, 3000)  # already log-LRs: mean +-2, variance 4
    voice = np.where(same, 1.0, -1.0) + rng.normal(0, 1.4, 3000)
    weights, offset = fit_logistic(np.stack([face, voice], 1), same)
    assert weights == pytest.approx([1.0, 1.0], abs=0.15) and abs(offset) < 0.15  # calibrated inputs: a plain sum


def test_calibration_refuses_scores_that_fall_with_sameness():
    with pytest.raises(ValueError, match="do not rise"):
        LinearCalibration.fit(np.array([0.1, 0.2, 0.8, 0.9]), np.array([True, True, False, False]))


def test_words():
    assert describe(math.log(250.0)) == "250 times more likely if it is the same person than if it is not"
    assert describe(-math.log(2.0), "this is Ann", "it is someone else") == (
        "2.0 times more likely if it is someone else than if this is Ann"
    )
    assert describe(math.log(12_345.0)).startswith("12,345 times")


def test_words_for_extreme_and_undefined_evidence():
    assert describe(float("nan")) == "of no stated weight (the log-LR is undefined)"
    assert describe(5000.0).startswith("about 10^2171 times more likely if it is the same person")
    assert describe(-math.inf) == "possible only if it is not"


def test_pav_on_millions_of_distinct_scores_is_quick_and_close():
    import time

    rng = np.random.default_rng(2)
    same = rng.random(400_000) < 0.2
    scores = np.where(same, rng.normal(1.0, 1.0, len(same)), rng.normal(0.0, 1.0, len(same)))
    t = time.perf_counter()
    quick = min_cllr(scores, same)  # over 100,000 levels
    assert time.perf_counter() - t < 10
    exact = cllr(pav_llr(scores[:50_000], same[:50_000]), same[:50_000])  # under the level count: exact
    assert quick == pytest.approx(exact, abs=0.02)
