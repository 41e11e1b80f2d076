import numpy as np
import pytest

from ops.io.errors import SearchError
from ops.matching.search import ExactSearch, merge, normalise


def unit(rng, n, d=32):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_force(q, g, k, ids=None):
    """Exact scores of the stored vectors rounded to float32 (as rows store them), ordered by score then id."""
    ids = np.arange(len(g)) if ids is None else ids
    scores = (q.astype(np.float64) @ g.astype(np.float64).T).astype(np.float32).astype(np.float64)
    order = np.lexsort((np.broadcast_to(ids, scores.shape), -scores), axis=1)[:, :k]
    return np.take_along_axis(scores, order, 1), ids[order]


@pytest.mark.parametrize(("gallery_block", "query_block"), [(64, 7), (128, 100), (4096, 512)])
def test_matches_brute_force_exactly_whatever_the_blocks(gallery_block, query_block):
    rng = np.random.default_rng(0)
    engine = ExactSearch(unit(rng, 3000), gallery_block=gallery_block, query_block=query_block)
    q = unit(rng, 250)
    scores, ids = brute_force(normalise(q), engine.gallery, 10)  # exact for the vectors the engine holds
    got = engine.search(q, 10)
    np.testing.assert_array_equal(got.ids, ids)
    np.testing.assert_allclose(got.scores, scores, rtol=0, atol=1e-12)


def test_the_torch_code_path_gives_the_same_answer():
    # The path CUDA takes (torch products, torch filter, device-side re-scoring), run here on the CPU.
    rng = np.random.default_rng(5)
    g, q = unit(rng, 3000), unit(rng, 300)
    numpy_path = ExactSearch(g, gallery_block=256).search(q, 8)
    torch_path = ExactSearch(g, gallery_block=256, query_block=128, backend="torch").search(q, 8)
    np.testing.assert_array_equal(torch_path.ids, numpy_path.ids)
    np.testing.assert_array_equal(torch_path.scores, numpy_path.scores)


def test_ties_go_to_the_lower_id_and_short_galleries_pad():
    rng = np.random.default_rng(1)
    base = unit(rng, 5)
    g = np.repeat(base, 3, axis=0)  # every vector three times: exact ties
    got = ExactSearch(g, gallery_block=64).search(base, 4)
    assert got.ids[0, :3].tolist() == [0, 1, 2] and got.ids[1, :3].tolist() == [3, 4, 5]
    short = ExactSearch(g[:2], gallery_block=64).search(base[:1], 5)
    assert short.ids[0, 2:].tolist() == [-1, -1, -1] and np.isneginf(short.scores[0, 2:]).all()


def test_shards_merge_to_the_unsharded_answer():
    rng = np.random.default_rng(2)
    g, q = unit(rng, 2000), unit(rng, 50)
    whole = ExactSearch(g).search(q, 7)
    parts = [
        ExactSearch(g[i : i + 600], ids=np.arange(i, min(i + 600, 2000)), gallery_block=128).search(q, 7)
        for i in range(0, 2000, 600)
    ]
    merged = merge(parts, 7)
    np.testing.assert_array_equal(merged.ids, whole.ids)
    np.testing.assert_array_equal(merged.scores, whole.scores)


def test_agrees_with_faiss():
    import faiss  # the test extra pins it: a broken install fails here, it does not skip

    rng = np.random.default_rng(3)
    g, q = unit(rng, 5000, 64), unit(rng, 200, 64)
    index = faiss.IndexFlatIP(64)
    index.add(normalise(g))
    _, theirs = index.search(normalise(q), 5)
    assert (ExactSearch(g).search(q, 5).ids == theirs).mean() > 0.999  # equal up to fp32 near-ties


def test_bad_inputs_are_refused_with_reasons():
    rng = np.random.default_rng(4)
    g = unit(rng, 10)
    with pytest.raises(SearchError, match="NaN, infinite or zero"):
        ExactSearch(np.vstack([g, np.zeros((1, 32), np.float32)]))
    with pytest.raises(SearchError, match="NaN, infinite or zero"):
        ExactSearch(g).search(np.full((1, 32), np.nan, np.float32), 3)
    with pytest.raises(SearchError, match="16 dimensions, the gallery 32"):
        ExactSearch(g).search(unit(rng, 2, 16), 3)
    with pytest.raises(SearchError, match="for CUDA"):
        ExactSearch(g, device="cpu", precision="bf16")


def test_the_torch_code_path_proves_its_top_k_or_falls_back_to_the_filter():
    """Near-duplicates crowd the margin around the K-th best: the device's kept extra entries cannot prove the
    answer complete, and those queries take the filtered path; the answer is still exact."""
    rng = np.random.default_rng(6)
    base = unit(rng, 20)
    crowded = np.repeat(base, 60, axis=0) + 1e-7 * rng.standard_normal((1200, 32)).astype(np.float32)
    g = np.vstack([crowded, unit(rng, 3000)])
    q = np.vstack([base, unit(rng, 30)])
    expected = ExactSearch(g, gallery_block=256).search(q, 10)
    engine = ExactSearch(g, gallery_block=256, query_block=16, backend="torch")
    filtered, block = [], engine._block
    engine._block = lambda queries, k: filtered.append(len(queries)) or block(queries, k)
    got = engine.search(q, 10)
    assert sum(filtered) == 20  # the crowded queries, and only they
    np.testing.assert_array_equal(got.ids, expected.ids)
    np.testing.assert_array_equal(got.scores, expected.scores)


@pytest.mark.parametrize("size", [3, 10, 41, 700])
def test_the_torch_code_path_on_galleries_near_the_kept_size(size):
    rng = np.random.default_rng(size)
    g, q = unit(rng, size), unit(rng, 9)
    expected = ExactSearch(g, gallery_block=64).search(q, 10)
    got = ExactSearch(g, gallery_block=128, backend="torch").search(q, 10)
    np.testing.assert_array_equal(got.ids, expected.ids)
    np.testing.assert_array_equal(got.scores, expected.scores)
