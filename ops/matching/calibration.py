"""Scores to log-likelihood ratios, and what the ratios are worth: the forensic reading of a comparison score.

A log-likelihood ratio (natural log) says how much more likely the score is if the two samples come from one person
than from two: 0 is no evidence, log(100) is a hundred to one for "same". Calibration maps a score to it by a
prior-weighted logistic regression (the linear calibration of Brümmer's FoCal and BOSARIS toolkits): two numbers, a
monotone map that extrapolates, the minimum of Cllr on the training pairs. Its targets are Platt's, (N+1)/(N+2) and
1/(N+2) instead of 1 and 0, so perfectly separated training scores still give a finite slope. The pool-adjacent-
violators fit (isotonic, non-parametric) is the best any monotone map could do on the pairs it sees: it gives
``min_cllr``, the discrimination part of Cllr, and is not used to map new scores (it is a step function with
infinite steps at the ends).

Cllr (Brümmer and du Preez, 2006) is the cost of the log-LRs in bits: 0 is perfect, 1 is a system that always says
"no evidence" (log-LR 0), above 1 is worse than saying nothing. Cllr - min_cllr is what calibration loses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

LN2 = math.log(2.0)


def cllr(llr: np.ndarray, same: np.ndarray) -> float:
    """Cllr in bits: half the mean of log2(1 + 1/LR) over same pairs plus half the mean of log2(1 + LR) over
    different pairs (each class weighs half, whatever the counts)."""
    llr, same = np.asarray(llr, np.float64), np.asarray(same, bool)
    if same.all() or not same.any():
        raise ValueError("Cllr needs both same and different pairs")
    with np.errstate(over="ignore", invalid="ignore"):
        miss = np.logaddexp(0.0, -llr[same]).mean()
        false = np.logaddexp(0.0, llr[~same]).mean()
    return float((miss + false) / (2 * LN2))


LEVELS = 100_000  # PAV's resolution: scores fall on this many steps of their range at most


def pav_llr(scores: np.ndarray, same: np.ndarray) -> np.ndarray:
    """The log-LR of each pair under the monotone map of scores that fits the pairs best (pool adjacent violators:
    the isotonic regression of the labels on the scores, tied scores pooled), the data's prior odds removed.
    Ends may be -inf or +inf where a block holds only one class. Scores are first put on at most ``LEVELS`` + 1
    steps of their range (ties pooled): the merging loop then runs in a fraction of a second even for the 12.5M
    pairs of a 5,000-source calibration, which took minutes over every distinct float."""
    scores, same = np.asarray(scores, np.float64), np.asarray(same, bool)
    low, high = scores.min(), scores.max()
    if len(np.unique(scores)) > LEVELS and high > low:
        scores = np.round((scores - low) / (high - low) * LEVELS)
    order = np.argsort(scores, kind="stable")
    values, first = np.unique(scores[order], return_index=True)
    sizes = np.diff(np.append(first, len(scores))).astype(np.float64)
    sums = np.add.reduceat(same[order].astype(np.float64), first)
    # Blocks as a stack of (sum, size); merge while the last two are out of order.
    block_sum, block_size, block_len = [], [], []
    for s, n in zip(sums, sizes, strict=True):
        block_sum.append(s)
        block_size.append(n)
        block_len.append(1)
        while len(block_sum) > 1 and block_sum[-2] / block_size[-2] >= block_sum[-1] / block_size[-1]:
            s2, n2, l2 = block_sum.pop(), block_size.pop(), block_len.pop()
            block_sum[-1] += s2
            block_size[-1] += n2
            block_len[-1] += l2
    posterior_per_value = np.repeat(np.array(block_sum) / np.array(block_size), block_len)
    posterior = np.empty(len(scores))
    posterior[order] = np.repeat(posterior_per_value, sizes.astype(int))
    prior_log_odds = math.log(same.sum() / (~same).sum())
    with np.errstate(divide="ignore"):
        return np.log(posterior) - np.log1p(-posterior) - prior_log_odds


def min_cllr(scores: np.ndarray, same: np.ndarray) -> float:
    """Cllr after the best monotone map of these scores: what no calibration of them can beat."""
    return cllr(pav_llr(scores, same), same)


def fit_logistic(features: np.ndarray, same: np.ndarray, iterations: int = 100) -> tuple[np.ndarray, float]:
    """Weights and offset of llr = features @ weights + offset by prior-weighted (0.5) logistic regression with
    Platt's targets, by Newton's method. ``features``: (n,) scores or (n, d) columns (e.g. per-modality log-LRs
    for linear fusion)."""
    x = np.asarray(features, np.float64)
    x = x[:, None] if x.ndim == 1 else x
    same = np.asarray(same, bool)
    positives, negatives = int(same.sum()), int((~same).sum())
    if not positives or not negatives:
        raise ValueError("calibration needs both same and different pairs")
    target = np.where(same, (positives + 1) / (positives + 2), 1 / (negatives + 2))
    weight = np.where(same, 0.5 / positives, 0.5 / negatives)  # each class weighs half: the output is a log-LR
    design = np.hstack([x, np.ones((len(x), 1))])

    def loss(theta: np.ndarray) -> float:  # the weighted cross-entropy against Platt's targets
        z = design @ theta
        return float((weight * (target * np.logaddexp(0, -z) + (1 - target) * np.logaddexp(0, z))).sum())

    theta = np.zeros(design.shape[1])
    current = loss(theta)
    for _ in range(iterations):
        z = design @ theta
        p = 0.5 * (1 + np.tanh(z / 2))  # the logistic function, without overflow
        gradient = design.T @ (weight * (p - target))
        hessian = (design * (weight * p * (1 - p))[:, None]).T @ design + 1e-12 * np.eye(len(theta))
        step = np.linalg.solve(hessian, gradient)
        # Newton's step, halved until the loss falls: nearly separated scores overshoot from the start.
        for _ in range(40):
            trial = loss(theta - step)
            if trial <= current:
                break
            step = step / 2
        theta, current = theta - step, min(trial, current)
        if np.abs(step).max() < 1e-10:
            break
    return theta[:-1], float(theta[-1])


@dataclass(frozen=True)
class LinearCalibration:
    """llr = slope * score + offset: a cosine score as a natural-log likelihood ratio."""

    slope: float
    offset: float

    def __call__(self, scores: np.ndarray) -> np.ndarray:
        return self.slope * np.asarray(scores, np.float64) + self.offset

    def score_at(self, llr: float) -> float:
        """The score whose log-LR is ``llr``."""
        return (llr - self.offset) / self.slope

    @classmethod
    def fit(cls, scores: np.ndarray, same: np.ndarray) -> LinearCalibration:
        weights, offset = fit_logistic(scores, same)
        if weights[0] <= 0:
            raise ValueError("scores do not rise with sameness on these pairs: no calibration to a log-LR")
        return cls(float(weights[0]), offset)

    def to_dict(self) -> dict:
        return {"slope": self.slope, "offset": self.offset}


def describe(llr: float, same: str = "it is the same person", different: str = "it is not") -> str:
    """A log-LR in words a reader can check: how many times more likely the evidence is under one hypothesis than
    under the other (``same`` and ``different`` complete "if ...")."""
    if math.isnan(llr):
        return "of no stated weight (the log-LR is undefined)"
    if not math.isfinite(llr):
        return f"possible only if {same if llr > 0 else different}"
    if abs(llr) > 50 * math.log(10):  # beyond 10^50 a number of times is no longer a figure a reader checks
        times = f"about 10^{abs(llr) / math.log(10):.0f}"
    else:
        ratio = math.exp(abs(llr))
        times = f"{ratio:,.0f}" if ratio >= 10 else f"{ratio:.1f}"
    first, second = (same, different) if llr >= 0 else (different, same)
    return f"{times} times more likely if {first} than if {second}"


def enough_labels(names: np.ndarray) -> bool:
    """Genuine and impostor pairs both exist: two labels or more, and a label with two sources."""
    return len(set(names)) >= 2 and any((names == n).sum() >= 2 for n in set(names))
