"""What training needs besides Ray: identity splits, P x K batches for mining, and the evaluation protocols.

Evaluation is always on identities held out of training (never on unseen recordings of seen people), with the
field's protocols: verification EER for a face encoder; 1:2 matching accuracy in both directions, verification AUC
and retrieval mAP for a joint voice-face model (Nagrani et al. 2018, "Seeing voices and hearing faces").
"""

from __future__ import annotations

import numpy as np

from ops.matching import metrics


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
    """EER, AUC and the threshold for 0.1% false accepts over every pair of (at most ``max_items``, a seeded sample
    of) unit embeddings."""
    if len(embeddings) > max_items:
        keep = np.sort(np.random.default_rng(seed).choice(len(embeddings), max_items, replace=False))
        embeddings, labels = embeddings[keep], labels[keep]
    upper = np.triu_indices(len(embeddings), 1)
    scores = (embeddings @ embeddings.T)[upper]
    same = labels[upper[0]] == labels[upper[1]]
    return {
        "eer": metrics.equal_error_rate(scores, same),
        "auc": metrics.auc(scores, same),
        "threshold_far_0.001": metrics.threshold_at_far(scores, same, 1e-3),
    }


def crossmodal(
    faces: np.ndarray,
    voices: np.ndarray,
    face_labels: np.ndarray,
    voice_labels: np.ndarray,
    face_sources: np.ndarray,
    voice_sources: np.ndarray,
    seed: int = 0,
) -> dict:
    """Joint-space face and voice embeddings (unit rows) of held-out identities, scored with the 1:2 protocol both
    ways, verification AUC and retrieval mAP.

    1:2 voice->face: each voice, a face of its identity (from another source when there is one: a video's own face
    would make it easy) and a face of another identity; correct when the true face scores higher. Face->voice
    likewise. AUC over those same and different pairs; mAP of each voice ranking every face, and the reverse."""
    rng = np.random.default_rng(seed)
    scores = voices @ faces.T  # (voice, face)
    same = voice_labels[:, None] == face_labels[None, :]
    other_source = voice_sources[:, None] != face_sources[None, :]

    def trials(same: np.ndarray, other: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        keep, pos, neg = [], [], []
        for i in range(len(same)):
            preferred = np.flatnonzero(same[i] & other[i])
            positives = preferred if len(preferred) else np.flatnonzero(same[i])
            negatives = np.flatnonzero(~same[i])
            if len(positives) and len(negatives):
                keep.append(i)
                pos.append(rng.choice(positives))
                neg.append(rng.choice(negatives))
        return np.array(keep, np.int64), np.array(pos, np.int64), np.array(neg, np.int64)

    q, pos, neg = trials(same, other_source)
    v2f = (scores[q, pos], scores[q, neg])
    q2, pos2, neg2 = trials(same.T, other_source.T)
    f2v = (scores[pos2, q2], scores[neg2, q2])
    pair_scores = np.concatenate([v2f[0], v2f[1]])
    pair_same = np.concatenate([np.ones(len(q), bool), np.zeros(len(q), bool)])
    return {
        "v2f_1of2": metrics.one_of_two_accuracy(*v2f),
        "f2v_1of2": metrics.one_of_two_accuracy(*f2v),
        "auc": metrics.auc(pair_scores, pair_same),
        "map_v2f": metrics.mean_average_precision(face_labels[np.argsort(-scores, axis=1)], voice_labels, same.sum(1)),
        "map_f2v": metrics.mean_average_precision(
            voice_labels[np.argsort(-scores.T, axis=1)], face_labels, same.sum(0)
        ),
        "threshold_far_0.01": metrics.threshold_at_far(pair_scores, pair_same, 0.01),
    }
