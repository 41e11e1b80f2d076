"""ops.matching.clustering: the k-NN graph from exact search, connected components and Chinese whispers, on hand-made
graphs and synthetic identities (and beside dlib's Chinese whispers on the same graph)."""

import numpy as np

from ops.matching.clustering import (
    Graph,
    canonical,
    chinese_whispers,
    cluster,
    connected_components,
    contract,
    join_groups,
    keep_apart,
    knn_graph,
    undirected,
)
from ops.matching.metrics import bcubed


def _graph(n: int, edges: list[tuple[int, int, float]]) -> Graph:
    src, dst, w = (np.array(x) for x in zip(*edges, strict=True)) if edges else ([], [], [])
    return undirected(n, np.asarray(src, np.int64), np.asarray(dst, np.int64), np.asarray(w, np.float64))


def identities(rng, people: int, per_person: int, spread: float, dim: int = 32) -> tuple[np.ndarray, np.ndarray]:
    centres = rng.standard_normal((people, dim))
    vectors = np.repeat(centres, per_person, axis=0) + spread * rng.standard_normal((people * per_person, dim))
    return vectors.astype(np.float32), np.repeat(np.arange(people), per_person)


def test_components_label_each_by_its_lowest_member_however_long_the_chain():
    g = _graph(6, [(2, 1, 0.9), (1, 0, 0.8), (4, 3, 0.7)])
    assert connected_components(g).tolist() == [0, 0, 0, 3, 3, 5]
    chain = _graph(1000, [(i, i + 1, 1.0) for i in reversed(range(999))])
    assert (connected_components(chain) == 0).all()


def test_an_edge_given_twice_is_kept_once_with_its_larger_weight():
    g = _graph(3, [(1, 0, 0.5), (0, 1, 0.7), (1, 2, 0.6)])
    assert g.src.tolist() == [0, 1] and g.dst.tolist() == [1, 2] and g.weight.tolist() == [0.7, 0.6]


def test_whispers_keep_two_groups_apart_across_one_stray_link():
    clique = lambda base: [(base + i, base + j, 0.9) for i in range(5) for j in range(i + 1, 5)]  # noqa: E731
    g = _graph(11, clique(0) + clique(5) + [(4, 5, 0.3)])  # and item 10 alone
    labels = chinese_whispers(g, seed=3)
    assert labels.tolist() == [0] * 5 + [5] * 5 + [10]
    assert connected_components(g).tolist() == [0] * 10 + [10]  # a single link chains them
    assert (chinese_whispers(g, seed=3) == labels).all()  # the same seed, the same answer


def test_the_knn_graph_holds_the_exact_neighbours_above_the_threshold():
    rng = np.random.default_rng(0)
    vectors, truth = identities(rng, people=8, per_person=10, spread=0.3)
    g = knn_graph(vectors, k=5, threshold=0.5)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    scores = unit.astype(np.float64) @ unit.T.astype(np.float64)
    np.fill_diagonal(scores, -np.inf)
    for i in range(0, 80, 7):  # each item's edges to higher indices are among its top 5 and above 0.5
        mine = g.dst[g.src == i]
        top = set(np.argsort(-scores[i])[:5].tolist())
        assert all(j in top or i in set(np.argsort(-scores[j])[:5].tolist()) for j in mine)
        assert (scores[i, mine] >= 0.5 - 1e-6).all()
    assert bcubed(truth, connected_components(g))[2] == 1.0 and bcubed(truth, chinese_whispers(g))[2] == 1.0


def test_whispers_cluster_as_well_as_dlibs_on_the_same_graph():
    import dlib  # the test extra pins dlib-bin: a broken install fails, it does not skip

    rng = np.random.default_rng(1)
    vectors, truth = identities(rng, people=40, per_person=6, spread=0.9)  # loose groups: some stray edges
    g = knn_graph(vectors, k=8, threshold=0.35)
    ours = bcubed(truth, chinese_whispers(g, seed=0))[2]
    edges = [(int(a), int(b), float(w)) for a, b, w in zip(g.src, g.dst, g.weight, strict=True)]
    theirs = np.array(dlib.chinese_whispers(edges))
    theirs = canonical(np.concatenate([theirs, -1 - np.arange(g.n - len(theirs))]))  # dlib stops at its last vertex
    assert ours >= bcubed(truth, theirs)[2] - 0.02 and ours > 0.8, (ours, bcubed(truth, theirs)[2])


def test_a_group_is_clustered_as_one_node():
    # 0-1 linked, 2-3 linked, nothing between: two clusters, until 1 and 2 must be together.
    graph = undirected(5, np.array([0, 2]), np.array([1, 3]), np.array([0.9, 0.8]))
    assert cluster(graph, "components").tolist() == [0, 0, 2, 2, 4]
    together = np.array([0, 1, 1, 2, 3])  # item -> group
    assert contract(graph, together).n == 4
    for method in ("components", "whispers"):
        assert cluster(graph, method, together).tolist() == [0, 0, 0, 0, 4]


def test_whispers_goes_on_from_earlier_labels_with_groups():
    # Items 3 and 4 were one identity, 5 another; 0-1 is a new track (one group), 2 a new face.
    graph = undirected(6, np.array([0, 2]), np.array([3, 5]), np.array([0.9, 0.9]))
    group = np.array([0, 0, 1, 2, 3, 4])
    start, movable = np.array([0, 1, 2, 3, 3, 5]), np.array([True, True, True, False, False, False])
    assert cluster(graph, "whispers", group, start=start, movable=movable).tolist() == [0, 0, 2, 0, 0, 2]
    # Nothing may move: the earlier labels stand, whatever the edges say.
    assert cluster(graph, "whispers", None, start=start, movable=np.zeros(6, bool)).tolist() == [0, 1, 2, 3, 3, 5]


def test_whispers_in_slices_finds_what_one_at_a_time_finds():
    rng = np.random.default_rng(3)
    people, each = 300, 6
    src = np.repeat(np.arange(people * each), each - 1)
    dst = (src // each) * each + (src % each + 1 + np.tile(np.arange(each - 1), people * each)) % each
    stray = rng.integers(0, people * each, (2, 200))  # weak links between people
    graph = undirected(
        people * each,
        np.r_[src, stray[0]],
        np.r_[dst, stray[1]],
        np.r_[np.full(len(src), 0.9), np.full(200, 0.3)],
    )
    truth = np.repeat(np.arange(people), each)
    for batches in (1024, people * each):  # sliced, and one item at a time
        assert bcubed(truth, chinese_whispers(graph, batches=batches))[2] == 1.0


def test_a_confirmed_pair_joins_two_groups_into_one():
    group = np.array([0, 0, 2, 3, 4])  # items 0 and 1 one track already
    assert join_groups(group, np.array([1, 3]), np.array([3, 4])).tolist() == [0, 0, 2, 0, 0]
    assert join_groups(group, np.array([], np.int64), np.array([], np.int64)).tolist() == [0, 0, 2, 3, 4]


def test_a_rejected_pair_splits_the_chain_that_joined_them_at_its_weakest_link():
    # Two people chained by one weak link: components merge them; an analyst rejects items 0 and 5 as one person.
    clique = lambda base: [(base + i, base + j, 0.9) for i in range(3) for j in range(i + 1, 3)]  # noqa: E731
    g = _graph(7, clique(0) + clique(3) + [(2, 3, 0.5), (5, 6, 0.2)])
    together = connected_components(g)
    assert (together == 0).all()
    apart, split = keep_apart(g, together, np.array([0]), np.array([5]))
    # Strongest edges first, never joining 0's part with 5's: the weak chain link is the one left out; item 6
    # joins 5's part by its own edge.
    assert apart.tolist() == [0, 0, 0, 3, 3, 3, 3] and split == 1
    # Reviews of pairs already apart, or a cluster left alone, change nothing.
    same, none = keep_apart(g, apart, np.array([0]), np.array([5]))
    assert same.tolist() == apart.tolist() and none == 0


def test_a_rejected_pair_inside_one_must_link_group_cannot_be_kept_apart():
    g = _graph(3, [(0, 1, 0.9), (1, 2, 0.8)])
    group = np.array([0, 0, 2])  # 0 and 1 one track
    labels = cluster(g, "components", group)
    kept, split = keep_apart(g, labels, np.array([0, 0]), np.array([1, 2]), group)
    assert kept.tolist() == [0, 0, 2] and split == 1  # 0 ~ 2 kept apart; 0 ~ 1 is one track: left to the caller
