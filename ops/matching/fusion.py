"""Face and voice evidence together: identities enrolled with both, trials, calibration per modality, fusion, and
the held-out figures the field reports (EER, TAR at FAR, Cllr).

An identity here is a pair (face label, voice label). Where the same people were labelled in both modalities (a
video archive) the pair is one label twice. Where faces and voices come from different people, identities are
*chimeric*: the face set of person A joined to the voice set of speaker B, a pairing fixed by the seed for the run
(the usual way to evaluate fusion without a bimodal corpus; it assumes face and voice are independent given the
person, which is what a sum of log-LRs assumes too).

A trial compares two samples, each a face and a voice: same identity (genuine) or two (impostor). Its face score is
the cosine of two distinct faces of the identities' face labels, its voice score likewise; trials are drawn from
those pairs with a seeded generator, at most ``per_pair`` per pair of identities.

Everything is measured held out: identities are split in two folds; calibrations (``ops.matching.calibration``) and
fusion weights fitted on one fold's pairs and trials score the other fold's trials, and the scores of both folds are
pooled. The decision thresholds (log-LR at the target false accept rate) come from those held-out scores; the final
calibrations and weights are fitted on everything.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from ops.matching import metrics
from ops.matching.calibration import LinearCalibration, cllr, fit_logistic, min_cllr

MODALITIES = ("faces", "voices")
SYSTEMS = ("face", "voice", "fused sum", "fused linear")
FARS = (1e-2, 1e-3)


@dataclass(frozen=True)
class Labelled:
    """One modality's labelled samples: unit vectors (n, d) and their labels (n,)."""

    vectors: np.ndarray
    labels: np.ndarray

    def of(self, label: str) -> np.ndarray:
        return np.flatnonzero(self.labels == label)


def pair_identities(faces: Labelled, voices: Labelled, seed: int) -> tuple[list[tuple[str, str]], str]:
    """Identities as (face label, voice label) and how they were made: labels with two samples or more in both
    modalities, when at least four labels are shared (what held-out figures need: "shared labels"); else the face
    labels with two faces or more joined in a seeded order to the voice labels with two voices or more
    ("chimeric")."""
    face_labels = _repeated(faces.labels)
    voice_labels = _repeated(voices.labels)
    shared = sorted(face_labels & voice_labels)
    if len(shared) >= 4:
        return [(label, label) for label in shared], "shared labels"
    rng = np.random.default_rng(seed)
    voice_order = [str(v) for v in rng.permutation(sorted(voice_labels))]
    n = min(len(face_labels), len(voice_order))  # the larger side's extra labels join no one
    return list(zip(sorted(face_labels)[:n], voice_order[:n], strict=True)), "chimeric"


def _repeated(labels: np.ndarray) -> set[str]:
    names, counts = np.unique(labels, return_counts=True)
    return {str(n) for n, c in zip(names, counts, strict=True) if c >= 2}


@dataclass
class Trials:
    """Scored trials: per-modality cosine scores, whether the two samples share an identity, and which identities
    (indices into the identity list) the two samples were of."""

    face: np.ndarray
    voice: np.ndarray
    same: np.ndarray
    first: np.ndarray
    second: np.ndarray

    def take(self, keep: np.ndarray) -> Trials:
        return Trials(self.face[keep], self.voice[keep], self.same[keep], self.first[keep], self.second[keep])

    def __len__(self) -> int:
        return len(self.same)


def make_trials(
    faces: Labelled,
    voices: Labelled,
    identities: list[tuple[str, str]],
    seed: int,
    per_pair: int = 50,
    max_trials: int = 1_000_000,
) -> Trials:
    """Trials between every identity and itself (genuine) and, up to ``max_trials`` in all, between pairs of
    identities (impostor; a seeded sample of identity pairs when there are too many)."""
    rng = np.random.default_rng(seed)
    members = [(faces.of(f), voices.of(v)) for f, v in identities]
    k = len(identities)
    others = [(i, j) for i in range(k) for j in range(i + 1, k)]
    room = max(1, (max_trials - k * per_pair) // per_pair)
    if len(others) > room:
        chosen = rng.choice(len(others), room, replace=False)
        others = [others[c] for c in sorted(chosen)]
    parts = []
    for i, j in [(i, i) for i in range(k)] + others:
        face_pairs = _pairs(members[i][0], members[j][0], i == j)
        voice_pairs = _pairs(members[i][1], members[j][1], i == j)
        total = len(face_pairs) * len(voice_pairs)
        if total == 0:
            continue
        picks = rng.choice(total, min(per_pair, total), replace=False)
        f, v = face_pairs[picks // len(voice_pairs)], voice_pairs[picks % len(voice_pairs)]
        parts.append((f, v, i, j))
    face_vectors, voice_vectors = faces.vectors.astype(np.float64), voices.vectors.astype(np.float64)
    face = np.concatenate([_cosines(face_vectors, f) for f, _, _, _ in parts])
    voice = np.concatenate([_cosines(voice_vectors, v) for _, v, _, _ in parts])
    first = np.concatenate([np.full(len(f), i) for f, _, i, _ in parts])
    second = np.concatenate([np.full(len(f), j) for f, _, _, j in parts])
    return Trials(face, voice, first == second, first, second)


def _pairs(a: np.ndarray, b: np.ndarray, same: bool) -> np.ndarray:
    """Index pairs (n, 2): distinct members of one set, or every member of a with every member of b."""
    if same:
        i, j = np.triu_indices(len(a), 1)
        return np.stack([a[i], a[j]], 1)
    return np.stack(np.meshgrid(a, b, indexing="ij"), -1).reshape(-1, 2)


def _cosines(vectors: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", vectors[pairs[:, 0]], vectors[pairs[:, 1]])


def single_pairs(data: Labelled, labels: set[str]) -> tuple[np.ndarray, np.ndarray]:
    """Scores and sameness of every pair of samples whose labels are in ``labels``: what a modality's calibration
    is fitted on."""
    keep = np.flatnonzero(np.isin(data.labels, sorted(labels)))
    v = data.vectors[keep].astype(np.float64)
    upper = np.triu(np.ones((len(keep), len(keep)), bool), 1)  # each pair once, as jobs.calibrate scores them
    codes = np.unique(data.labels[keep], return_inverse=True)[1]
    return (v @ v.T)[upper], (codes[:, None] == codes[None, :])[upper]


@dataclass(frozen=True)
class Fusion:
    """Per-modality calibrations and the linear fusion's weights: score pairs to log-LRs."""

    face: LinearCalibration
    voice: LinearCalibration
    weights: tuple[float, float]
    offset: float

    def llrs(self, face: np.ndarray, voice: np.ndarray) -> dict[str, np.ndarray]:
        lf, lv = self.face(face), self.voice(voice)
        return {
            "face": lf,
            "voice": lv,
            "fused sum": lf + lv,
            "fused linear": self.weights[0] * lf + self.weights[1] * lv + self.offset,
        }

    def to_dict(self) -> dict:
        return {
            "face": self.face.to_dict(),
            "voice": self.voice.to_dict(),
            "linear": {"weights": list(self.weights), "offset": self.offset},
        }

    @classmethod
    def from_dict(cls, d: dict) -> Fusion:
        return cls(
            LinearCalibration(**d["face"]),
            LinearCalibration(**d["voice"]),
            tuple(d["linear"]["weights"]),
            float(d["linear"]["offset"]),
        )


def fit(faces: Labelled, voices: Labelled, identities: list[tuple[str, str]], trials: Trials) -> Fusion:
    """Calibrations from every pair of the identities' faces and of their voices; the linear fusion's weights from
    the trials."""
    face = LinearCalibration.fit(*single_pairs(faces, {f for f, _ in identities}))
    voice = LinearCalibration.fit(*single_pairs(voices, {v for _, v in identities}))
    features = np.stack([face(trials.face), voice(trials.voice)], 1)
    weights, offset = fit_logistic(features, trials.same)
    return Fusion(face, voice, (float(weights[0]), float(weights[1])), offset)


@dataclass
class Evaluation:
    """Held-out log-LRs of every system on the pooled held-out trials, and the fusion fitted on everything."""

    held_out: dict[str, np.ndarray]
    same: np.ndarray
    fusion: Fusion
    folds: list[list[int]]

    def figures(self, target_far: float) -> dict[str, dict]:
        """Each system's held-out figures and its decision threshold: the log-LR at ``target_far``, but never below
        0 (a log-LR below 0 favours different people: with few impostor trials the FAR threshold can fall there,
        and accepting on such evidence would be wrong whatever the rate)."""
        out = {}
        for name, llr in self.held_out.items():
            at_far = metrics.threshold_at_far(llr, self.same, target_far)
            out[name] = {
                "eer": metrics.equal_error_rate(llr, self.same),
                "auc": metrics.auc(llr, self.same),
                **{f"tar_at_far_{far:g}": metrics.tar_at_far(llr, self.same, far) for far in FARS},
                "cllr": cllr(llr, self.same),
                "min_cllr": min_cllr(llr, self.same),
                "llr_at_far": at_far,
                "llr_threshold": max(at_far, 0.0),
                "different_trials_above_threshold": int((llr[~self.same] >= max(at_far, 0.0)).sum()),
                "different_trials": int((~self.same).sum()),
            }
        return out


def enough_identities(identities: list[tuple[str, str]]) -> None:
    if len(identities) < 4:
        raise ValueError(
            f"{len(identities)} identities with two faces and two voices or more: held-out figures need at least 4 "
            "(two per fold, for impostor trials on both sides)"
        )


def evaluate(
    faces: Labelled, voices: Labelled, identities: list[tuple[str, str]], trials: Trials, seed: int
) -> Evaluation:
    """Two folds of identities: each fold's trials scored by what the other fold fitted, pooled."""
    enough_identities(identities)
    order = np.random.default_rng(seed).permutation(len(identities))
    folds = [sorted(order[: len(order) // 2].tolist()), sorted(order[len(order) // 2 :].tolist())]
    held: dict[str, list[np.ndarray]] = {name: [] for name in SYSTEMS}
    same = []
    for test, train in (folds, folds[::-1]):
        inside = lambda members: np.isin(trials.first, members) & np.isin(trials.second, members)  # noqa: E731
        fitted = fit(faces, voices, [identities[i] for i in train], trials.take(inside(train)))
        scored = trials.take(inside(test))
        for name, llr in fitted.llrs(scored.face, scored.voice).items():
            held[name].append(llr)
        same.append(scored.same)
    pooled = {name: np.concatenate(parts) for name, parts in held.items()}
    return Evaluation(pooled, np.concatenate(same), fit(faces, voices, identities, trials), folds)


def pairing_sha256(identities: list[tuple[str, str]]) -> str:
    """A hash of the identity pairing, so that a record says which chimeras it was measured on."""
    return hashlib.sha256("\n".join(f"{f}\t{v}" for f, v in identities).encode()).hexdigest()
