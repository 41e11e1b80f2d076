"""Held-out metrics of attribute heads, each tested against hand-computed cases: accuracy, balanced accuracy and
the confusion matrix for categories; MAE, RMSE and the share within +-N for numbers; and whether a predicted
uncertainty is honest (the share of true values inside the predicted 90% interval: 90% when it is)."""

from __future__ import annotations

import numpy as np

from ops.attributes.heads import interval


def confusion(truth: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    """Counts (true class, predicted class)."""
    matrix = np.zeros((classes, classes), np.int64)
    np.add.at(matrix, (np.asarray(truth), np.asarray(predicted)), 1)
    return matrix


def accuracy(truth: np.ndarray, predicted: np.ndarray) -> float:
    return float((np.asarray(truth) == np.asarray(predicted)).mean())


def balanced_accuracy(truth: np.ndarray, predicted: np.ndarray, classes: int) -> float:
    """The mean over the classes present of each one's recall: a majority guess scores 1/classes present."""
    matrix = confusion(truth, predicted, classes)
    present = matrix.sum(1) > 0
    return float((np.diag(matrix)[present] / matrix.sum(1)[present]).mean())


def mae(truth: np.ndarray, value: np.ndarray) -> float:
    return float(np.abs(np.asarray(truth) - np.asarray(value)).mean())


def rmse(truth: np.ndarray, value: np.ndarray) -> float:
    return float(np.sqrt(np.square(np.asarray(truth) - np.asarray(value)).mean()))


def within(truth: np.ndarray, value: np.ndarray, n: float) -> float:
    """The share of estimates within +-n of the truth."""
    return float((np.abs(np.asarray(truth) - np.asarray(value)) <= n).mean())


def coverage(truth: np.ndarray, value: np.ndarray, std: np.ndarray, level: float = 0.9) -> float:
    """The share of true values inside the predicted central ``level`` interval."""
    low, high = interval(np.asarray(value), np.asarray(std), level)
    truth = np.asarray(truth)
    return float(((truth >= low) & (truth <= high)).mean())
