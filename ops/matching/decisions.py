"""What a comparison may say: a decision that follows the evidence, and the evidence in the forensic words.

A threshold at a false accept rate is a policy; the calibrated log-likelihood ratio (``ops.matching.calibration``)
is the evidence. A pair is called the same person ("accept", "match", an identity) only where both agree: its score
clears the threshold and its log-LR is above ``min_llr`` (0 by default: the evidence favours "same"). A score that
clears the threshold on evidence that does not is ``BELOW_EVIDENCE``, never a match. Without a calibration (no
log-LR) the threshold alone decides, as the model card or the user set it.

The verbal scale is the one forensic reports use (ENFSI guideline for evaluative reporting, 2015): for an LR (or
1/LR, in support of different people) of about 1 no support; 2-10 weak; 10-100 moderate; 100-1,000 moderately
strong; 1,000-10,000 strong; 10,000-1,000,000 very strong; beyond, extremely strong.

A calibration sets its threshold where its sample can measure the rate (``choose_threshold``): a false accept rate
of 1e-3 needs thousands of different-person pairs, and a threshold read off fewer is a guess that looks like a
figure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ops.io.errors import ModelError
from ops.matching import metrics

BELOW_EVIDENCE = "below the evidence needed"

# (LR at least, words): the scale's steps, for LR >= 1 (support for "same") or 1/LR (support for "different").
_SCALE = (
    (1e6, "extremely strong"),
    (1e4, "very strong"),
    (1e3, "strong"),
    (1e2, "moderately strong"),
    (10.0, "moderate"),
    (2.0, "weak"),
)


def verbal(llr: float | None, same: str = "the same person", different: str = "different people") -> str | None:
    """A natural-log LR in the verbal scale: "moderate support for the same person", "no support either way"; None
    when there is no log-LR."""
    if llr is None or math.isnan(llr):
        return None
    ratio = abs(llr)
    for at_least, words in _SCALE:
        if ratio >= math.log(at_least):
            return f"{words} support for {same if llr > 0 else different}"
    return "no support either way"


def verbal_array(llr: np.ndarray | None) -> list[str | None]:
    """``verbal`` of each log-LR (NaN or None: None)."""
    if llr is None:
        return []
    return [verbal(float(v)) for v in np.asarray(llr, np.float64)]


def decide(
    scores: np.ndarray,
    threshold: float | None,
    llr: np.ndarray | None,
    min_llr: float,
    positive: str | np.ndarray,
    negative: str,
) -> np.ndarray:
    """Each comparison's decision (object array): ``positive`` (a word, or one per row: identities) where the score
    clears the threshold and the log-LR (when there is one) is above ``min_llr``; ``BELOW_EVIDENCE`` where the score
    clears it and the evidence does not; ``negative`` below the threshold. Scores compare as stored (float32), as a
    reader of the table compares them."""
    scores = np.asarray(scores, np.float32)
    if threshold is None:
        return np.full(len(scores), None, dtype=object)
    clears = scores >= np.float32(threshold)
    supported = np.ones(len(scores), bool) if llr is None else np.asarray(llr, np.float64) > min_llr
    out = np.full(len(scores), negative, dtype=object)
    out[clears & ~supported] = BELOW_EVIDENCE
    chosen = clears & supported
    out[chosen] = positive[chosen] if isinstance(positive, np.ndarray) else positive
    return out


def is_positive(decision: str | None) -> bool:
    """Whether a row's decision says "the same person" (an accept, a match or an identity)."""
    return decision not in (None, "", "reject", "unknown", "no match", BELOW_EVIDENCE)


# A false accept rate is measured on at least this many times its inverse in impostor pairs (with N pairs, 10/N is
# about the lowest rate a sample shows with a tenth of it in errors; zero errors in N bound it only below 3/N).
PAIRS_PER_RATE = 10


@dataclass(frozen=True)
class ThresholdChoice:
    """A calibration's threshold and why it is that one."""

    threshold: float
    far: float | None  # the false accept rate it is set at on the sample (None: the model card's)
    rule: str  # "target", "model card", "lowest measurable" or "above every impostor"
    why: str


def published_threshold(model_name: str, models=None) -> float | None:
    """The published threshold of ``model_name`` as a cosine: a registry model's from its entry in the code (the same
    on every machine, whatever has been pulled), another's from its stored card under ``models``; None when it has
    none or the model cannot be found."""
    from ops.models import catalogue  # the registry imports every model module: only when asked
    from ops.models.registry import read_card

    try:
        return card_threshold(catalogue.spec(model_name).card)
    except ModelError:
        pass
    try:
        return card_threshold(read_card(catalogue.locate(model_name, models)))
    except ModelError:
        return None


def card_threshold(card: dict) -> float | None:
    """The model card's published threshold as a cosine between unit vectors, when it has one."""
    if card.get("metric") == "cosine" and card.get("default_threshold") is not None:
        return float(card["default_threshold"])
    if card.get("cosine_threshold") is not None:  # a published threshold of another metric, expressed as a cosine
        return float(card["cosine_threshold"])
    return None


def choose_threshold(
    scores: np.ndarray, same: np.ndarray, target_far: float, card: float | None, model: str
) -> ThresholdChoice:
    """The threshold for ``target_far`` where the impostor pairs can measure that rate (``PAIRS_PER_RATE`` /
    target_far of them); with fewer, the model card's published threshold when it has one, else the threshold at the
    lowest rate the sample can measure. ``why`` says which, in words."""
    impostors = int((~np.asarray(same, bool)).sum())
    needed = math.ceil(PAIRS_PER_RATE / target_far)
    if impostors >= needed:
        why = f"{impostors:,} different-person pairs measure a false accept rate of {target_far:g}"
        return ThresholdChoice(metrics.threshold_at_far(scores, same, target_far), target_far, "target", why)
    lowest = PAIRS_PER_RATE / max(impostors, 1)
    short = (
        f"{impostors:,} different-person pairs measure a false accept rate down to about {min(lowest, 1):.2g}, not "
        f"{target_far:g} (that needs {needed:,})"
    )
    if card is not None:
        return ThresholdChoice(card, None, "model card", f"{short}: the model card of {model} publishes {card:.4f}")
    if lowest >= 1:  # too few to measure any rate: no different-person pair of the sample is accepted
        why = f"{short}, and the model card of {model} publishes no threshold: set above every one of them"
        return ThresholdChoice(metrics.threshold_at_far(scores, same, 0.0), 0.0, "above every impostor", why)
    why = f"{short}, and the model card of {model} publishes no threshold: set at {lowest:.2g}"
    return ThresholdChoice(metrics.threshold_at_far(scores, same, lowest), lowest, "lowest measurable", why)
