import numpy as np
import pytest

from ops.matching.metrics import equal_error_rate


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


# Hand-computed cases: same pairs score 0.9, 0.8, 0.4; different pairs 0.7, 0.3, 0.2, 0.1.
S = np.array([0.9, 0.8, 0.4, 0.7, 0.3, 0.2, 0.1])
SAME = np.array([1, 1, 1, 0, 0, 0, 0], bool)


def test_auc_counts_ordered_pairs():
    from ops.matching.metrics import auc

    # of 3 x 4 = 12 (same, different) pairs, 0.4 loses to 0.7 only: 11/12
    assert auc(S, SAME) == pytest.approx(11 / 12)
    assert auc(np.array([0.5, 0.5]), np.array([1, 0], bool)) == 0.5  # a tie counts half


def test_roc_starts_at_the_origin_and_ends_at_one():
    from ops.matching.metrics import roc

    far, tar, thr = roc(S, SAME)
    assert (far[0], tar[0], thr[0]) == (0.0, 0.0, np.inf)
    assert (far[-1], tar[-1]) == (1.0, 1.0)
    i = list(thr).index(0.7)  # accept >= 0.7: two same pairs, one different pair
    assert (tar[i], far[i]) == pytest.approx((2 / 3, 1 / 4))


def test_threshold_and_tar_at_far():
    from ops.matching.metrics import tar_at_far, threshold_at_far

    assert threshold_at_far(S, SAME, 0.0) > 0.7  # no different pair may pass: just above 0.7
    assert tar_at_far(S, SAME, 0.0) == pytest.approx(2 / 3)
    assert threshold_at_far(S, SAME, 0.25) == pytest.approx(0.3, abs=1e-12)  # one of four may pass: above 0.3
    assert tar_at_far(S, SAME, 0.25) == 1.0


def test_recall_and_map():
    from ops.matching.metrics import mean_average_precision, recall_at_k

    ranked = np.array([["a", "b", "a"], ["c", "c", "b"], ["a", "a", "a"]])
    labels = np.array(["b", "c", "b"])
    assert recall_at_k(ranked, labels, 1) == pytest.approx(1 / 3)
    assert recall_at_k(ranked, labels, 2) == pytest.approx(2 / 3)
    # query 0: hit at rank 2 -> AP = (1/2) / 1; query 1: hits at 1, 2 of 2 relevant -> 1; query 2: none of 1 -> 0
    assert mean_average_precision(ranked, labels, np.array([1, 2, 1])) == pytest.approx((0.5 + 1 + 0) / 3)


def test_one_of_two_and_one_of_n():
    from ops.matching.metrics import one_of_n_accuracy, one_of_two_accuracy

    assert one_of_two_accuracy(np.array([0.9, 0.2, 0.5]), np.array([0.1, 0.4, 0.5])) == pytest.approx(1.5 / 3)
    scores = np.array([[0.9, 0.1, 0.2], [0.3, 0.3, 0.1], [0.1, 0.2, 0.8]])
    assert one_of_n_accuracy(scores, np.array([0, 0, 1])) == pytest.approx(1 / 3)  # a tie is a miss


def test_bcubed_and_pairwise_f_by_hand():
    from ops.matching.metrics import bcubed, pairwise_f

    truth, found = list("aaabb"), [1, 1, 2, 2, 2]
    # BCubed precision: (2/2 + 2/2 + 1/3 + 2/3 + 2/3) / 5 = 11/15; recall: (2/3 + 2/3 + 1/3 + 2/2 + 2/2) / 5 = 11/15
    assert bcubed(truth, found) == pytest.approx((11 / 15, 11 / 15, 11 / 15))
    # Pairs together in both: (0,1) and (3,4) of 4 found pairs and 4 true pairs.
    assert pairwise_f(truth, found) == pytest.approx((0.5, 0.5, 0.5))
    assert bcubed(truth, truth) == (1.0, 1.0, 1.0) and pairwise_f(truth, ["x"] * 5)[1] == 1.0
    assert bcubed(truth, list(range(5)))[0] == 1.0  # singletons: every cluster pure
