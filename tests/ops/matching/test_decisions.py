import math

import numpy as np
import pytest

from ops.matching.decisions import (
    BELOW_EVIDENCE,
    PAIRS_PER_RATE,
    card_threshold,
    choose_threshold,
    decide,
    is_positive,
    verbal,
)


@pytest.mark.parametrize(
    "lr, words",
    [
        (1.0, "no support either way"),
        (1.9, "no support either way"),
        (2.0, "weak support for the same person"),
        (9.9, "weak support for the same person"),
        (10.0, "moderate support for the same person"),
        (500.0, "moderately strong support for the same person"),
        (5_000.0, "strong support for the same person"),
        (50_000.0, "very strong support for the same person"),
        (5e6, "extremely strong support for the same person"),
        (1 / 8.4, "weak support for different people"),  # the log-LR -2.13 a FAR threshold once sat at
        (1 / 300.0, "moderately strong support for different people"),
    ],
)
def test_verbal_scale_is_the_forensic_one(lr, words):
    assert verbal(math.log(lr)) == words


def test_no_log_lr_has_no_words():
    assert verbal(None) is None and verbal(float("nan")) is None


def test_a_decision_needs_the_threshold_and_the_evidence():
    scores = np.array([0.95, 0.85, 0.80, 0.40], np.float32)
    llr = np.array([3.0, -0.8, 0.5, -6.0])
    out = decide(scores, 0.8, llr, 0.0, "accept", "reject")
    assert out.tolist() == ["accept", BELOW_EVIDENCE, "accept", "reject"]
    # A stricter --min-llr: 0.5 is not above 1.
    assert decide(scores, 0.8, llr, 1.0, "accept", "reject").tolist()[2] == BELOW_EVIDENCE
    # Without a calibration the threshold alone decides; without a threshold nothing is decided.
    assert decide(scores, 0.8, None, 0.0, "match", "no match").tolist() == ["match", "match", "match", "no match"]
    assert decide(scores, None, llr, 0.0, "match", "no match").tolist() == [None] * 4
    # Identities: one per row.
    who = np.array(["ann", "bob", "cy", "dee"], object)
    assert decide(scores, 0.8, llr, 0.0, who, "unknown").tolist() == ["ann", BELOW_EVIDENCE, "cy", "unknown"]


def test_only_accepts_matches_and_identities_are_positive():
    assert is_positive("accept") and is_positive("match") and is_positive("ann")
    assert not any(map(is_positive, ["reject", "unknown", "no match", BELOW_EVIDENCE, None, ""]))


def _sample(impostors: int, genuine: int = 50, seed: int = 0):
    rng = np.random.default_rng(seed)
    scores = np.concatenate([rng.normal(0.9, 0.03, genuine), rng.normal(0.5, 0.1, impostors)])
    same = np.arange(len(scores)) < genuine
    return scores, same


def test_a_far_the_impostors_can_measure_sets_the_threshold():
    scores, same = _sample(impostors=PAIRS_PER_RATE * 100)
    choice = choose_threshold(scores, same, 1e-2, 0.7, "m")
    assert choice.rule == "target" and choice.far == 1e-2
    assert (scores[~same] >= choice.threshold).mean() <= 1e-2


def test_too_few_impostors_fall_back_to_the_card_or_the_lowest_measurable_rate():
    scores, same = _sample(impostors=96)  # the 96 pairs that once "measured" 1e-3
    choice = choose_threshold(scores, same, 1e-3, 0.91, "dlib-resnet-v1")
    assert choice.rule == "model card" and choice.threshold == 0.91 and choice.far is None
    assert "96 different-person pairs" in choice.why and "not 0.001" in choice.why and "10,000" in choice.why
    choice = choose_threshold(scores, same, 1e-3, None, "m")
    assert choice.rule == "lowest measurable" and choice.far == pytest.approx(10 / 96)
    assert (scores[~same] >= choice.threshold).mean() <= 10 / 96
    assert "publishes no threshold" in choice.why


def test_card_thresholds_are_cosines():
    assert card_threshold({"metric": "cosine", "default_threshold": 0.75}) == 0.75
    assert card_threshold({"metric": "euclidean", "default_threshold": 0.6, "cosine_threshold": 0.91}) == 0.91
    assert card_threshold({"metric": "euclidean", "default_threshold": 0.6}) is None
    assert card_threshold({}) is None


def test_fewer_than_ten_impostors_measure_no_rate_at_all():
    scores, same = _sample(impostors=6)
    choice = choose_threshold(scores, same, 1e-2, None, "m")
    assert choice.rule == "above every impostor" and choice.far == 0.0
    assert choice.threshold > scores[~same].max() and "above every one of them" in choice.why
