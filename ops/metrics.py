"""Verification metrics on scored pairs."""

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
