import numpy as np
import pytest

from ops.training import protocols as training


def test_split_holds_whole_identities_out():
    labels = np.repeat(np.arange(10), 3)
    train, held = training.split_identities(labels, 0.2, seed=0)
    assert held.sum() == 6 and not set(labels[train]) & set(labels[held])
    assert np.array_equal(train, training.split_identities(labels, 0.2, seed=0)[0])  # seeded
    with pytest.raises(ValueError, match="too few"):
        training.split_identities(np.arange(3), 0.2, seed=0)


def test_pk_batches_hold_p_identities_with_k_rows_each():
    labels = np.array([0, 0, 0, 1, 1, 2, 3, 3, 3, 3])
    groups = training.groups(labels)
    assert [len(g) for g in groups] == [3, 2, 4]  # identity 2 has no positive: left out
    rows = training.pk_batch(groups, p=2, k=3, rng=np.random.default_rng(0))
    assert len(rows) == 6
    counts = np.unique(labels[rows], return_counts=True)[1]
    assert list(counts) == [3, 3]


def test_verification_of_perfect_and_random_embeddings():
    labels = np.repeat(np.arange(20), 3)
    perfect = np.eye(20)[labels]
    scores = training.verification(perfect, labels)
    assert scores["eer"] == 0.0 and scores["auc"] == 1.0 and 0 < scores["threshold_far_0.001"] <= 1
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((60, 32))
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    assert 0.35 < training.verification(noise, labels)["eer"] < 0.65


def test_crossmodal_protocol_on_a_perfect_joint_space():
    labels = np.repeat(np.arange(10), 2)
    space = np.eye(10)[labels]
    sources = np.arange(20)
    scores = training.crossmodal(space, space, labels, labels, sources, sources)
    assert scores["v2f_1of2"] == scores["f2v_1of2"] == 1.0 and scores["auc"] == 1.0
    assert scores["map_v2f"] == pytest.approx(1.0) and scores["map_f2v"] == pytest.approx(1.0)
