"""Each loss against values worked out by hand."""

import math

import pytest
import torch

from ops.training import losses

POINTS = torch.tensor([[0.0], [1.0], [1.5], [3.0]])  # on a line: distances are differences
LABELS = torch.tensor([0, 0, 1, 1])


def test_distances_are_euclidean_and_have_a_gradient_at_zero():
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0]], requires_grad=True)
    d = losses.distances(x, x)
    assert torch.allclose(d, torch.tensor([[0.0, 5.0], [5.0, 0.0]]), atol=1e-5)
    d.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_triplet_loss_is_zero_once_the_negative_is_a_margin_farther():
    a = torch.zeros(2, 2)
    p = torch.tensor([[3.0, 4.0], [3.0, 4.0]])  # d(a, p) = 5
    n = torch.tensor([[6.0, 8.0], [0.0, 5.0]])  # d(a, n) = 10 (satisfied), 5 (violates by the margin)
    assert losses.triplet_loss(a, p, n, margin=1.0).item() == pytest.approx((0 + 1) / 2)


def test_batch_hard_takes_the_farthest_positive_and_the_nearest_negative():
    # anchor 0: pos 1, neg min 1.5 -> 0.5; anchor 1: 1 - 0.5 + 1 = 1.5; anchor 2: 1.5 - 0.5 + 1 = 2; anchor 3: 0.5
    assert losses.batch_hard_triplet_loss(POINTS, LABELS, 1.0).item() == pytest.approx((0.5 + 1.5 + 2 + 0.5) / 4)


def test_batch_hard_across_modalities_matches_anchors_against_the_other_set():
    faces, voices, labels = torch.tensor([[0.0], [2.0]]), torch.tensor([[0.5], [1.5]]), torch.tensor([0, 1])
    assert losses.batch_hard_triplet_loss(faces, labels, 1.0, voices, labels).item() == pytest.approx(0.0)
    assert losses.batch_hard_triplet_loss(faces, labels, 2.0, voices, labels).item() == pytest.approx(1.0)


def test_semi_hard_takes_the_nearest_farther_negative_else_the_farthest():
    # pairs (0,1): 1 - 1.5 + 1 = 0.5; (1,0): 1 - 2 + 1 = 0; (2,3): none farther than 1.5, farthest 1.5 -> 1;
    # (3,2): 1.5 - 2 + 1 = 0.5
    assert losses.semi_hard_triplet_loss(POINTS, LABELS, 1.0).item() == pytest.approx((0.5 + 0 + 1 + 0.5) / 4)


def test_contrastive_pulls_same_pairs_and_pushes_different_ones_to_the_margin():
    a, b = torch.zeros(2, 2), torch.tensor([[3.0, 4.0], [0.0, 1.0]])
    same = torch.tensor([1, 0])
    assert losses.contrastive_loss(a, b, same, margin=2.0).item() == pytest.approx((0.5 * 25 + 0.5 * 1) / 2)


def test_info_nce_is_the_symmetric_cross_entropy_over_cosines():
    eye = torch.eye(2)
    expected = math.log(1 + math.exp(-1))  # logits [1, 0] at temperature 1, both directions
    assert losses.info_nce(eye, eye, temperature=1.0).item() == pytest.approx(expected, rel=1e-5)
    assert losses.info_nce(eye, eye, temperature=0.1).item() < 1e-3  # confident and right


def test_identity_head_is_cross_entropy_over_scaled_cosines():
    head = losses.IdentityHead(2, 2, scale=1.0)
    with torch.no_grad():
        head.weight.copy_(torch.eye(2))
    loss = head(torch.tensor([[2.0, 0.0]]), torch.tensor([0]))
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)), rel=1e-5)


def test_a_batch_without_positives_costs_nothing_and_still_backpropagates():
    x = torch.randn(3, 4, requires_grad=True)
    labels = torch.tensor([0, 1, 2])
    for loss in (losses.batch_hard_triplet_loss(x, labels, 0.2), losses.semi_hard_triplet_loss(x, labels, 0.2)):
        assert loss.item() == 0.0
        loss.backward()
