"""Verification, identification and retrieval metrics, each tested against hand-computed cases."""

from __future__ import annotations

import numpy as np


def equal_error_rate(scores: np.ndarray, same: np.ndarray) -> float:
    """The error rate where false accepts (different pairs scoring at or above the threshold) equal false rejects
    (same pairs scoring below it), interpolated between the two thresholds that bracket the crossing."""
    scores, same = np.asarray(scores, np.float64), np.asarray(same, bool)
    if same.all() or not same.any():
        raise ValueError("the EER needs both same and different pairs")
    thresholds = np.unique(scores)
    pos, neg = np.sort(scores[same]), np.sort(scores[~same])
    frr = np.searchsorted(pos, thresholds, side="left") / len(pos)  # same pairs below the threshold
    far = 1.0 - np.searchsorted(neg, thresholds, side="left") / len(neg)  # different pairs at or above it
    i = int(np.argmax(frr >= far))
    if i == 0:
        return float((frr[0] + far[0]) / 2)
    # Linear interpolation between thresholds i-1 and i, where far - frr changes sign.
    d0, d1 = far[i - 1] - frr[i - 1], far[i] - frr[i]
    t = d0 / (d0 - d1) if d0 != d1 else 0.0
    return float(frr[i - 1] + t * (frr[i] - frr[i - 1]))


def _split(scores: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores, same = np.asarray(scores, np.float64), np.asarray(same, bool)
    if same.all() or not same.any():
        raise ValueError("verification metrics need both same and different pairs")
    return np.sort(scores[same]), np.sort(scores[~same])


def roc(scores: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(far, tar, thresholds) with a pair accepted when its score is at or above the threshold; thresholds every
    distinct score, descending, then +inf (accept nothing) first so the curve starts at (0, 0)."""
    pos, neg = _split(scores, same)
    thresholds = np.concatenate([[np.inf], np.unique(np.concatenate([pos, neg]))[::-1]])
    tar = 1.0 - np.searchsorted(pos, thresholds, side="left") / len(pos)
    far = 1.0 - np.searchsorted(neg, thresholds, side="left") / len(neg)
    return far, tar, thresholds


def auc(scores: np.ndarray, same: np.ndarray) -> float:
    """Area under the ROC: the chance a same pair outscores a different pair (ties count half)."""
    pos, neg = _split(scores, same)
    below = np.searchsorted(neg, pos, side="left")
    ties = np.searchsorted(neg, pos, side="right") - below
    return float((below + 0.5 * ties).sum() / (len(pos) * len(neg)))


def threshold_at_far(scores: np.ndarray, same: np.ndarray, far: float) -> float:
    """The lowest threshold whose false accept rate is at most ``far`` (accepting score >= threshold)."""
    _, neg = _split(scores, same)
    allowed = int(np.floor(far * len(neg) + 1e-9))  # different pairs that may be accepted
    if allowed >= len(neg):
        return float(neg[0])
    # accept only scores above the (allowed+1)-th highest different score
    return float(np.nextafter(neg[len(neg) - allowed - 1], np.inf))


def tar_at_far(scores: np.ndarray, same: np.ndarray, far: float) -> float:
    """True accept rate at the threshold ``threshold_at_far`` picks."""
    pos, _ = _split(scores, same)
    t = threshold_at_far(scores, same, far)
    return float(1.0 - np.searchsorted(pos, t, side="left") / len(pos))


def recall_at_k(ranked_labels: np.ndarray, query_labels: np.ndarray, k: int) -> float:
    """Share of queries with at least one item of their own label among their first ``k`` results.
    ranked_labels (Q, >=k): result labels best first; query_labels (Q,)."""
    hits = np.asarray(ranked_labels)[:, :k] == np.asarray(query_labels)[:, None]
    return float(hits.any(axis=1).mean())


def mean_average_precision(ranked_labels: np.ndarray, query_labels: np.ndarray, relevant: np.ndarray) -> float:
    """mAP over queries: average precision of each ranked list, ``relevant[q]`` being how many gallery items share
    query q's label (so a list that misses some counts them as not found)."""
    hits = np.asarray(ranked_labels) == np.asarray(query_labels)[:, None]
    precision = np.cumsum(hits, axis=1) / np.arange(1, hits.shape[1] + 1)
    relevant = np.asarray(relevant, np.float64)
    ap = np.where(relevant > 0, (precision * hits).sum(axis=1) / np.maximum(relevant, 1), 0.0)
    return float(ap[relevant > 0].mean())


def one_of_two_accuracy(positive: np.ndarray, negative: np.ndarray) -> float:
    """1:2 matching: share of trials where the probe scores higher with the true match than with the foil
    (ties count half); 0.5 is chance."""
    positive, negative = np.asarray(positive, np.float64), np.asarray(negative, np.float64)
    return float(((positive > negative) + 0.5 * (positive == negative)).mean())


def one_of_n_accuracy(scores: np.ndarray, truth: np.ndarray) -> float:
    """1:N identification (rank-1): share of probes whose best-scoring candidate is the true one.
    scores (P, N); truth (P,) the true column. A tie with a wrong candidate counts as a miss."""
    scores = np.asarray(scores, np.float64)
    true = scores[np.arange(len(scores)), truth]
    others = scores.copy()
    others[np.arange(len(scores)), truth] = -np.inf
    return float((true > others.max(axis=1)).mean())


def _contingency(truth, found) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts of items per (found cluster, true class) pair present, with each pair's cluster and class sizes."""
    _, t = np.unique(np.asarray(truth), return_inverse=True)
    _, f = np.unique(np.asarray(found), return_inverse=True)
    pairs, counts = np.unique(np.stack([f, t]), axis=1, return_counts=True)
    return counts.astype(np.float64), np.bincount(f)[pairs[0]].astype(np.float64), np.bincount(t)[pairs[1]]


def bcubed(truth, found) -> tuple[float, float, float]:
    """BCubed precision, recall and F of a clustering (``found``) against true classes (``truth``): per item, the
    share of its cluster that shares its class (precision) and of its class that shares its cluster (recall),
    averaged over items (Amigo et al. 2009)."""
    counts, cluster, klass = _contingency(truth, found)
    n = counts.sum()
    precision = float((counts**2 / cluster).sum() / n)
    recall = float((counts**2 / klass).sum() / n)
    return precision, recall, 2 * precision * recall / (precision + recall)


def pairwise_f(truth, found) -> tuple[float, float, float]:
    """Pairwise precision, recall and F: over pairs of items, those put together that belong together."""
    counts, _, _ = _contingency(truth, found)
    together = (counts * (counts - 1) / 2).sum()
    _, f_sizes = np.unique(np.asarray(found), return_counts=True)
    _, t_sizes = np.unique(np.asarray(truth), return_counts=True)
    found_pairs = (f_sizes * (f_sizes - 1) / 2).sum()
    true_pairs = (t_sizes * (t_sizes - 1) / 2).sum()
    precision = float(together / found_pairs) if found_pairs else 1.0
    recall = float(together / true_pairs) if true_pairs else 1.0
    f = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f
