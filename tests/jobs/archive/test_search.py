"""jobs.archive.search: items staged by workers, shards that read their own slice, query blocks merged and written
by tasks; exact against brute force however the gallery is cut."""

import numpy as np
import pyarrow as pa
import pytest

from jobs.archive.search import Prepared, Search, ShardLayout, prepare_items, search_archive, split, stage_items
from jobs.runtime.output import RowWriter
from ops.io.errors import EmbeddingError
from ops.io.schemas import MATCHES, faces
from ops.io.storage import resolve
from ops.io.tables import OutputRun, read_table
from ops.matching.embeddings import item_id
from ops.matching.search import normalise

SHA = "ab" * 32


def _faces(run_id: str, uris, vectors, sizes, frame: int = 0) -> pa.Table:
    rows = [
        {
            "run_id": run_id,
            "uri": u,
            "sha256": f"{abs(hash(u)):064x}"[:64],
            "frame_index": frame,
            "timestamp": None,
            "face_index": 0,
            "track_id": None,
            "track_frames": None,
            "box": [0, 0, 50, 50],
            "landmarks": [0.0] * 10,
            "score": 0.99,
            "face_size": float(s),
            "eye_distance": 20.0,
            "sharpness": 100.0,
            "embedding": v.tolist(),
            "detector_name": "mtcnn",
            "detector_sha256": SHA,
            "model_name": "dlib-resnet-v1",
            "model_sha256": SHA,
        }
        for i, (u, v, s) in enumerate(zip(uris, vectors, sizes, strict=True))
    ]
    return pa.Table.from_pylist(rows, schema=faces(vectors.shape[1]))


@pytest.fixture
def archive(tmp_path):
    """60 sources of 3 faces each, every source's faces spread over three data files (as workers write them),
    plus the file of an attempt that never committed."""
    rng = np.random.default_rng(0)
    root = resolve(str(tmp_path / "root"))
    uris = [f"s3://a/{i:03d}.mp4" for i in range(60)]
    vectors = rng.standard_normal((3, 60, 16)).astype(np.float32)
    sizes = rng.uniform(20, 90, (3, 60))
    lost = OutputRun(root, "embed", "embed_faces")
    lost.write("faces", _faces("embed", uris, rng.standard_normal((60, 16)).astype(np.float32), [99.0] * 60), faces(16))
    out = OutputRun(root, "embed", "embed_faces")  # a retry: the first attempt's file stays, uncommitted
    for part in range(3):
        out.write("faces", _faces("embed", uris, vectors[part], sizes[part], frame=part), faces(16))
    out.commit()
    best = vectors[np.argmax(sizes, axis=0), np.arange(60)]  # each source's largest face
    return root, uris, vectors, best


def _search(root, tmp_path, per_source: bool, shards: int, query_batch: int, k: int = 5):
    staging = root.join("_staging", "t")
    items = prepare_items(root, "faces", "embed", per_source, staging.join("q"))
    out = OutputRun(root, "search", "match")
    writer = RowWriter(root, "matches", MATCHES, "search", out.attempt)
    fields = {"run_id": "search", "model_name": "dlib-resnet-v1", "model_sha256": SHA}
    # No shards asked: a gallery this small is read by each query task (jobs.archive.search.InTask), no actor.
    layout = ShardLayout(shards=shards, gpus_per_shard=None if shards is None else 0, query_batch=query_batch)
    how = Search(k=k + 1, keep=k, same_set=True, store=root, fields=fields, writer=writer, layout=layout)
    files, rows, _ = search_archive(items, items, how)
    out.add_files("matches", files, MATCHES)
    out.commit()
    return items, rows


@pytest.mark.parametrize(("shards", "query_batch"), [(1, 1000), (3, 7), (None, 7)])
def test_per_source_search_is_exact_whatever_the_shards_and_batches(
    ray_cluster, archive, tmp_path, shards, query_batch
):
    root, uris, _, best = archive
    items, rows = _search(root, tmp_path, True, shards, query_batch)
    assert len(items) == 60 and rows == 60 * 5
    unit = normalise(best).astype(np.float64)
    scores = unit @ unit.T
    np.fill_diagonal(scores, -np.inf)
    found = read_table(root, "matches", run_id="search").to_pylist()
    for q in range(60):
        got = sorted((r for r in found if r["query_uri"] == uris[q]), key=lambda r: r["rank"])
        assert [r["gallery_uri"] for r in got] == [uris[g] for g in np.argsort(-scores[q], kind="stable")[:5]]
        np.testing.assert_allclose([r["score"] for r in got], np.sort(scores[q])[::-1][:5], atol=1e-6)
        assert [r["rank"] for r in got] == [1, 2, 3, 4, 5] and got[0]["query_item"] == uris[q]


def test_every_face_as_an_item(ray_cluster, archive, tmp_path):
    root, uris, vectors, _ = archive
    items, rows = _search(root, tmp_path, False, 2, 50, k=3)
    assert len(items) == 180 and rows == 180 * 3  # the uncommitted attempt's faces are not items
    found = read_table(root, "matches", run_id="search")
    assert all("#frame=" in key or "#" in key for key in found.column("query_item").to_pylist())


def test_cpu_shards_on_every_cpu_still_finish(ray_cluster, tmp_path):
    """Query block tasks ask for no CPU: shards holding every CPU of the cluster would otherwise leave them (and the
    job) waiting forever."""
    import ray

    cpus = int(ray.cluster_resources()["CPU"])
    rng = np.random.default_rng(1)
    root, staging = resolve(str(tmp_path)), resolve(str(tmp_path / "staged"))
    gallery = Prepared()
    for shard in range(cpus):
        uris = [f"s3://a/{shard}-{i}.jpg" for i in range(5)]
        rows = _faces("embed", uris, rng.standard_normal((5, 8)).astype(np.float32), [50.0] * 5)
        summary = stage_items(rows, "faces", True, staging, None)
        gallery.files.append((summary["path"], summary["rows"]))
    writer = RowWriter(root, "matches", MATCHES, "s", "a")
    fields = {"run_id": "s", "model_name": "dlib-resnet-v1", "model_sha256": SHA}
    layout = ShardLayout(shards=cpus, gpus_per_shard=0, query_batch=4)
    how = Search(k=3, keep=2, same_set=True, store=root, fields=fields, writer=writer, layout=layout)
    _, rows, _ = search_archive(gallery, gallery, how)
    assert rows == 5 * cpus * 2


def test_the_shards_split_the_files_by_items_and_ids_do_not_depend_on_order():
    files = [("a", 10), ("b", 10), ("c", 5), ("d", 5), ("e", 1)]
    assert sorted(map(sorted, split(files, 2))) == [["a", "c", "e"], ["b", "d"]]
    assert item_id("s3://x/1.jpg") == item_id("s3://x/1.jpg") != item_id("s3://x/2.jpg") >= 0


def test_no_rows_says_which_job_to_run(ray_cluster, tmp_path):
    with pytest.raises(EmbeddingError, match="run `python -m jobs.embed_faces` first"):
        prepare_items(resolve(str(tmp_path)), "faces", None, True, resolve(str(tmp_path / "s")))
