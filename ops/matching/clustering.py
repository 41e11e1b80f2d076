"""Who is in an archive: identities as clusters of a k-nearest-neighbour graph of embeddings.

    graph = knn_graph(vectors, k=10, threshold=0.6)       # exact top-k of each item (ExactSearch), edges >= threshold
    labels = chinese_whispers(graph, seed=0)             # or connected_components(graph) at a stricter threshold

The graph comes from the exact search engine, so its edges are the true nearest neighbours, not an index's guess.
Two clusterings of it: **connected components** (every edge merges: a single false link chains two people, so it
wants a strict threshold) and **Chinese whispers** (Biemann 2006, as dlib's ``chinese_whispers``: each node in
turn takes the label its neighbours' edges weigh most; a stray link between two dense groups does not merge them).
Both are deterministic: components by construction, whispers for a given seed (visiting order), ties to the lower
label. Labels are the lowest member index of each cluster, so a clustering reads the same however it was computed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ops.matching.search import ExactSearch


@dataclass(frozen=True)
class Graph:
    """An undirected weighted graph over ``n`` items: each edge once (``src < dst``), its weight a cosine score."""

    n: int
    src: np.ndarray
    dst: np.ndarray
    weight: np.ndarray

    def __len__(self) -> int:
        return len(self.src)


def knn_graph(vectors: np.ndarray, k: int, threshold: float, device: str | None = None) -> Graph:
    """Each item linked to its exact top ``k`` others (cosine, ``ExactSearch``) that score at least ``threshold``;
    an edge found from both ends is kept once."""
    n = len(vectors)
    if n == 0:
        return Graph(0, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0))
    top = ExactSearch(vectors, ids=np.arange(n), device=device).search(vectors, min(k + 1, n))
    src = np.repeat(np.arange(n), top.ids.shape[1])
    dst, weight = top.ids.ravel(), top.scores.ravel()
    keep = (dst >= 0) & (dst != src) & (weight >= threshold)
    return undirected(n, src[keep], dst[keep], weight[keep])


def undirected(n: int, src: np.ndarray, dst: np.ndarray, weight: np.ndarray) -> Graph:
    """Edges as one undirected edge each (``src < dst``; a pair given twice keeps its larger weight)."""
    a, b = np.minimum(src, dst).astype(np.int64), np.maximum(src, dst).astype(np.int64)
    order = np.lexsort((-weight, b, a))
    a, b, weight = a[order], b[order], np.asarray(weight, np.float64)[order]
    first = np.r_[True, (a[1:] != a[:-1]) | (b[1:] != b[:-1])] if len(a) else np.zeros(0, bool)
    return Graph(n, a[first], b[first], weight[first])


def contract(graph: Graph, group: np.ndarray) -> Graph:
    """The graph over groups of items that must be together (a video's face track is one face): an edge between two
    groups weighs the sum of their members' edges, so a group votes in whispers as its members would together."""
    group = np.asarray(group, np.int64)
    m = int(group.max()) + 1 if len(group) else 0
    a, b = group[graph.src], group[graph.dst]
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    apart = lo != hi
    pairs, at = np.unique(lo[apart] * m + hi[apart], return_inverse=True)
    return Graph(m, pairs // m, pairs % m, np.bincount(at, graph.weight[apart], len(pairs)))


def cluster(
    graph: Graph,
    method: str,
    group: np.ndarray | None = None,
    iterations: int = 20,
    seed: int = 0,
    start: np.ndarray | None = None,
    movable: np.ndarray | None = None,
) -> np.ndarray:
    """Each item's cluster by ``method`` (whispers or components), the members of a ``group`` always together:
    the groups are clustered as one node each (``contract``), then every item takes its group's label. Whispers
    can go on from a clustering: ``start`` labels, and only the ``movable`` items change theirs (a group moves
    when all its members may)."""
    if group is not None:
        if start is not None and movable is not None:
            start, movable = _by_group(group, start, movable)
        found = cluster(contract(graph, group), method, None, iterations, seed, start, movable)
        return canonical(found[group])
    if method == "whispers":
        return chinese_whispers(graph, iterations, seed, start, movable)
    if method == "components":
        return connected_components(graph)
    raise ValueError(f"unknown clustering {method!r}: use whispers or components")


def _by_group(group: np.ndarray, start: np.ndarray, movable: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Groups' start labels and whether they move: a group with a fixed member keeps that member's label (the
    lowest, if several), a group of movable members starts as its lowest member's own label."""
    m = int(group.max()) + 1
    fixed_label = np.where(movable, np.iinfo(np.int64).max, start)
    group_start = np.full(m, np.iinfo(np.int64).max)
    np.minimum.at(group_start, group, fixed_label)
    group_movable = group_start == np.iinfo(np.int64).max
    lowest = np.full(m, np.iinfo(np.int64).max)
    np.minimum.at(lowest, group, np.arange(len(group)))
    return np.where(group_movable, lowest, group_start), group_movable


def connected_components(graph: Graph) -> np.ndarray:
    """Each item's component, labelled by its lowest member: hooking and pointer jumping, vectorised (a few
    passes over the edges, however long the chains)."""
    parent = np.arange(graph.n)
    while True:
        pu, pv = parent[graph.src], parent[graph.dst]
        lo, hi = np.minimum(pu, pv), np.maximum(pu, pv)
        moved = lo != hi
        if not moved.any():
            return parent
        np.minimum.at(parent, hi[moved], lo[moved])  # hook the higher root under the lower
        while True:  # jump: every item straight to its root
            up = parent[parent]
            if (up == parent).all():
                break
            parent = up


def chinese_whispers(
    graph: Graph,
    iterations: int = 20,
    seed: int = 0,
    start: np.ndarray | None = None,
    movable: np.ndarray | None = None,
    batches: int = 1024,
) -> np.ndarray:
    """Chinese whispers: each item starts as its own label (or its ``start`` label: an earlier clustering's); in
    each pass, in a seeded random order, every item with neighbours (every ``movable`` one) takes the label whose
    edges to it weigh most (ties: the lower label). Stops early when a pass changes nothing. Labels are then renamed
    to each cluster's lowest member.

    A pass visits the items in at most ``batches`` slices of that order, each slice's votes counted at once
    (vectorised: a pass over a million items is a few array sorts, not a million Python loops). Up to ``batches``
    items that is the one-at-a-time algorithm exactly; beyond, two neighbours rarely share a slice (a slice is a
    ``batches``-th of the items), so it behaves as the sequential one does."""
    n = graph.n
    # Labels numbered densely (order kept, so ties still go to the lower): votes are counted by item * n + label.
    labels = np.arange(n) if start is None else np.unique(start, return_inverse=True)[1].astype(np.int64)
    if n == 0 or len(graph) == 0:
        return canonical(labels)
    # Adjacency in CSR form, both directions.
    ends = np.concatenate([graph.src, graph.dst])
    others = np.concatenate([graph.dst, graph.src])
    weights = np.concatenate([graph.weight, graph.weight])
    order = np.argsort(ends, kind="stable")
    others, weights = others[order], weights[order]
    offsets = np.searchsorted(ends[order], np.arange(n + 1))
    degree = np.diff(offsets)
    rng = np.random.default_rng(seed)
    linked = np.flatnonzero((degree > 0) & (True if movable is None else np.asarray(movable, bool)))
    for _ in range(iterations):
        changed = False
        visit = rng.permutation(linked)
        if len(visit) == 0:  # nothing may move (every item kept from an earlier clustering)
            break
        for part in np.array_split(visit, min(batches, len(visit))):
            best = _votes(part, offsets, degree, others, weights, labels)
            moved = best != labels[part]
            if moved.any():
                labels[part[moved]] = best[moved]
                changed = True
        if not changed:
            break
    return canonical(labels)


def _votes(part, offsets, degree, others, weights, labels) -> np.ndarray:
    """For each item of ``part``, the label its edges weigh most (ties: the lower label), all at once."""
    count = degree[part]
    at = np.repeat(offsets[part] - np.r_[0, np.cumsum(count)[:-1]], count) + np.arange(count.sum())
    n = len(labels)
    keys, inverse = np.unique(np.repeat(np.arange(len(part)), count) * n + labels[others[at]], return_inverse=True)
    total = np.bincount(inverse, weights[at], len(keys))
    who, label = keys // n, keys % n
    pick = np.lexsort((label, -total, who))  # per item: the heaviest label, then the lowest
    first = np.r_[True, who[pick][1:] != who[pick][:-1]]
    return label[pick][first]


def join_groups(group: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Must-link groups (``group``: each item's) joined where a pair ``a[i]``, ``b[i]`` of items must be together (an
    analyst confirmed them the same person): each item's group, labelled by its lowest member."""
    group = np.asarray(group, np.int64)
    m = int(group.max()) + 1 if len(group) else 0
    joined = connected_components(undirected(m, group[a], group[b], np.ones(len(a))))
    return canonical(joined[group])


def keep_apart(
    graph: Graph, labels: np.ndarray, a: np.ndarray, b: np.ndarray, group: np.ndarray | None = None
) -> tuple[np.ndarray, int]:
    """``labels`` with no cluster holding both items of a pair ``a[i]``, ``b[i]`` that must stay apart (an analyst
    rejected them as one person), and how many clusters were split. A cluster that holds such a pair is built again
    from its own members along its own edges, strongest first (as single linkage), never joining two parts that
    hold the two sides of a pair; must-link groups stay whole, so a pair inside one group cannot be kept apart (the
    caller counts those). Clusters holding no such pair are untouched."""
    labels = np.asarray(labels, np.int64).copy()
    group = np.arange(graph.n) if group is None else np.asarray(group, np.int64)
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    broken = (labels[a] == labels[b]) & (group[a] != group[b])
    split = 0
    for cluster_label in np.unique(labels[a[broken]]):
        inside = (labels[graph.src] == cluster_label) & (labels[graph.dst] == cluster_label)
        order = np.argsort(-graph.weight[inside], kind="stable")
        edges = zip(group[graph.src[inside]][order].tolist(), group[graph.dst[inside]][order].tolist(), strict=True)
        members = np.flatnonzero(labels == cluster_label)
        pairs = np.flatnonzero(broken & (labels[a] == cluster_label))
        apart = zip(group[a[pairs]].tolist(), group[b[pairs]].tolist(), strict=True)
        part = _linked_apart(group[members].tolist(), edges, apart)
        parts = np.array([part[g] for g in group[members].tolist()])
        if len(np.unique(parts)) > 1:
            split += 1
            labels[members] = graph.n + parts  # apart from every label in use until renamed below
    return canonical(labels), split


def _linked_apart(groups: list[int], edges, apart_pairs) -> dict[int, int]:
    """Each group's part when the groups are joined along ``edges`` (strongest first) as single linkage does, except
    where a join would put the two groups of an ``apart_pairs`` pair in one part."""
    parent = {g: g for g in groups}

    def root(g: int) -> int:
        while parent[g] != g:
            parent[g] = parent[parent[g]]
            g = parent[g]
        return g

    apart: dict[int, set[int]] = {g: set() for g in parent}  # a part's root -> groups it must not join
    for ga, gb in apart_pairs:
        apart[ga].add(gb)
        apart[gb].add(ga)
    for ga, gb in edges:
        ra, rb = root(ga), root(gb)
        if ra == rb or any(root(g) == rb for g in apart[ra]) or any(root(g) == ra for g in apart[rb]):
            continue
        parent[rb] = ra
        apart[ra] |= apart.pop(rb)
    return {g: root(g) for g in parent}


def canonical(labels: np.ndarray) -> np.ndarray:
    """Cluster labels renamed to each cluster's lowest member index."""
    labels = np.asarray(labels)
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    return first[inverse]
