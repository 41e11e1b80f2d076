"""Metric-learning losses for the face encoder and the joint voice-face model.

Distances are Euclidean between the rows given (the heads L2-normalise their outputs, so d^2 = 2 - 2 cos). Every
loss is a mean over the terms that exist; a batch with none (no positive pair, say) gives 0 with a gradient path,
so a training step never fails on an unlucky batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def distances(a: Tensor, b: Tensor) -> Tensor:
    """Euclidean distances between every row of ``a`` and every row of ``b``, (len(a), len(b)); stable at 0."""
    squared = (a * a).sum(1, keepdim=True) - 2 * a @ b.T + (b * b).sum(1)
    return squared.clamp_min(1e-12).sqrt()


def triplet_loss(anchor: Tensor, positive: Tensor, negative: Tensor, margin: float) -> Tensor:
    """FaceNet's triplet loss: mean of max(0, d(a, p) - d(a, n) + margin), i.e. d(a,p) + margin <= d(a,n) costs 0."""
    d_ap = (anchor - positive).pow(2).sum(1).clamp_min(1e-12).sqrt()
    d_an = (anchor - negative).pow(2).sum(1).clamp_min(1e-12).sqrt()
    return F.relu(d_ap - d_an + margin).mean()


def _masks(labels: Tensor, other: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Same-label and different-label masks between ``labels`` and ``other`` (itself, without the diagonal)."""
    same = labels[:, None] == (labels if other is None else other)[None, :]
    if other is None:
        eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        return same & ~eye, ~same
    return same, ~same


def _mean(terms: Tensor, anchor: Tensor) -> Tensor:
    return terms.mean() if terms.numel() else anchor.sum() * 0.0


def batch_hard_triplet_loss(
    embeddings: Tensor, labels: Tensor, margin: float, candidates: Tensor | None = None, other: Tensor | None = None
) -> Tensor:
    """Batch-hard mining (Hermans et al. 2017): each anchor against its farthest positive and nearest negative.
    With ``candidates`` (and their labels ``other``), anchors are matched against that set instead: cross-modal."""
    cand = embeddings if candidates is None else candidates
    d = distances(embeddings, cand)
    pos, neg = _masks(labels, other)
    valid = pos.any(1) & neg.any(1)
    hardest_pos = d.masked_fill(~pos, float("-inf")).amax(1)
    hardest_neg = d.masked_fill(~neg, float("inf")).amin(1)
    return _mean(F.relu(hardest_pos - hardest_neg + margin)[valid], embeddings)


def semi_hard_triplet_loss(embeddings: Tensor, labels: Tensor, margin: float) -> Tensor:
    """Semi-hard mining (FaceNet): for every positive pair, the nearest negative that is farther than the positive;
    when none is, the farthest negative (the easiest: no collapse from the hardest ones early in training)."""
    d = distances(embeddings, embeddings)
    pos, neg = _masks(labels)
    a_idx, p_idx = pos.nonzero(as_tuple=True)
    if len(a_idx) == 0:
        return embeddings.sum() * 0.0
    d_ap = d[a_idx, p_idx]
    d_an = d[a_idx]  # (pairs, N)
    neg_rows = neg[a_idx]
    farther = neg_rows & (d_an > d_ap[:, None])
    semi = d_an.masked_fill(~farther, float("inf")).amin(1)
    easiest = d_an.masked_fill(~neg_rows, float("-inf")).amax(1)
    chosen = torch.where(farther.any(1), semi, easiest)
    has_neg = neg_rows.any(1)
    return _mean(F.relu(d_ap - chosen + margin)[has_neg], embeddings)


def contrastive_loss(a: Tensor, b: Tensor, same: Tensor, margin: float) -> Tensor:
    """Hadsell, Chopra and LeCun (2006): same pairs pulled together (d^2 / 2), different pairs pushed out to the
    margin (max(0, margin - d)^2 / 2); mean over pairs."""
    d = (a - b).pow(2).sum(1).clamp_min(1e-12).sqrt()
    same = same.to(d.dtype)
    return (0.5 * same * d.pow(2) + 0.5 * (1 - same) * F.relu(margin - d).pow(2)).mean()


def info_nce(a: Tensor, b: Tensor, temperature: float = 0.1) -> Tensor:
    """Symmetric InfoNCE (CLIP's loss): row i of ``a`` and row i of ``b`` are a pair, every other row a negative;
    the mean of the a->b and b->a cross-entropies over cosine similarities / temperature."""
    logits = F.normalize(a, dim=1) @ F.normalize(b, dim=1).T / temperature
    target = torch.arange(len(a), device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


class IdentityHead(nn.Module):
    """A softmax cross-entropy identity classifier over normalised embeddings and normalised class weights
    (NormFace): logits are ``scale`` times the cosine to each identity's weight."""

    def __init__(self, dim: int, identities: int, scale: float = 16.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(identities, dim) / dim**0.5)
        self.scale = scale

    def logits(self, embeddings: Tensor) -> Tensor:
        return self.scale * F.normalize(embeddings, dim=1) @ F.normalize(self.weight, dim=1).T

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        return F.cross_entropy(self.logits(embeddings), labels)


LOSSES = ("batch-hard", "semi-hard", "contrastive", "softmax", "infonce")
