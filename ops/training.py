"""What training needs besides Ray: identity splits, P x K batches for mining, and the evaluation protocols.

Evaluation is always on identities held out of training (never on unseen recordings of seen people), with the
field's protocols: verification EER for a face encoder; 1:2 matching accuracy in both directions, verification AUC
and retrieval mAP for a joint voice-face model (Nagrani et al. 2018, "Seeing voices and hearing faces").
"""

from __future__ import annotations

import numpy as np

from ops import metrics


def split_identities(labels: np.ndarray, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks (train, held out) over rows: a seeded ``holdout`` share of identities, all their rows."""
    names = np.unique(labels)
    rng = np.random.default_rng(seed)
    n_out = int(round(len(names) * holdout))
    if holdout > 0 and (n_out < 2 or len(names) - n_out < 2):
        raise ValueError(f"{len(names)} identities: too few to hold {holdout:.0%} out and train on the rest")
    out = set(rng.choice(names, n_out, replace=False).tolist())
    held = np.array([x in out for x in labels])
    return ~held, held


def groups(labels: np.ndarray) -> list[np.ndarray]:
    """Row indices of each identity with at least two rows (an identity seen once has no positive)."""
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.cumsum(counts)[:-1]
    return [g for g in np.split(order, bounds) if len(g) >= 2]


def pk_batch(by_identity: list[np.ndarray], p: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """Rows of ``p`` identities, ``k`` each (Hermans et al.'s P x K batch: every anchor has positives and negatives);
    an identity with fewer than ``k`` rows gives all of them, shuffled, and repeats."""
    chosen = rng.choice(len(by_identity), min(p, len(by_identity)), replace=False)
    rows = []
    for i in chosen:
        members = by_identity[i]
        rows.append(rng.choice(members, k, replace=len(members) < k))
    return np.concatenate(rows)


def verification(embeddings: np.ndarray, labels: np.ndarray, max_items: int = 4000, seed: int = 0) -> dict:
    """EER and AUC over every pair of (at most ``max_items``, a seeded sample of) unit embeddings."""
    if len(embeddings) > max_items:
        keep = np.sort(np.random.default_rng(seed).choice(len(embeddings), max_items, replace=False))
        embeddings, labels = embeddings[keep], labels[keep]
    upper = np.triu_indices(len(embeddings), 1)
    scores = (embeddings @ embeddings.T)[upper]
    same = labels[upper[0]] == labels[upper[1]]
    return {"eer": metrics.equal_error_rate(scores, same), "auc": metrics.auc(scores, same)}


def crossmodal(
    faces: np.ndarray, voices: np.ndarray, labels: np.ndarray, recordings: np.ndarray, seed: int = 0
) -> dict:
    """Joint-space face and voice embeddings (unit rows; row i of both from recording ``recordings[i]`` of
    identity ``labels[i]``) scored with the 1:2 protocol both ways, verification AUC and retrieval mAP.

    1:2 voice->face: a voice, a face of the same identity from another recording when there is one, and a face of
    another identity; correct when the true face scores higher. Face->voice likewise."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    scores = voices @ faces.T  # (voice, face)
    same_identity = labels[:, None] == labels[None, :]
    other_recording = recordings[:, None] != recordings[None, :]
    positive = np.empty(n, np.int64)
    negative = np.empty(n, np.int64)
    for i in range(n):
        candidates = np.flatnonzero(same_identity[i] & other_recording[i])
        positive[i] = rng.choice(candidates) if len(candidates) else i
        negative[i] = rng.choice(np.flatnonzero(~same_identity[i]))
    rows = np.arange(n)
    v2f = metrics.one_of_two_accuracy(scores[rows, positive], scores[rows, negative])
    f2v = metrics.one_of_two_accuracy(scores[positive, rows], scores[negative, rows])
    pair_scores = np.concatenate([scores[rows, positive], scores[rows, negative]])
    pair_same = np.concatenate([np.ones(n, bool), np.zeros(n, bool)])
    order = np.argsort(-scores, axis=1)
    relevant = same_identity.sum(1)
    return {
        "v2f_1of2": v2f,
        "f2v_1of2": f2v,
        "auc": metrics.auc(pair_scores, pair_same),
        "map_v2f": metrics.mean_average_precision(labels[order], labels, relevant),
        "map_f2v": metrics.mean_average_precision(labels[np.argsort(-scores.T, axis=1)], labels, relevant),
    }
