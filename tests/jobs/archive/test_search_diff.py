"""jobs.archive.search_diff: a match run after a previous one searches only what changed, and its rows equal a full
search's (search, identify), removed sources gone from every list."""

import hashlib

import numpy as np
import pyarrow as pa
import pytest

from jobs import match
from ops.io.schemas import faces
from ops.io.storage import resolve
from ops.io.tables import OutputRun, committed_runs, read_table

SHA = "ab" * 32


def embed(root, run_id: str, uris: list[str], vectors: np.ndarray, rewritten: frozenset = frozenset()) -> None:
    """A committed faces/ run, one face per source, each source's sha256 that of its vector (its "content"); the
    ``rewritten`` uris' sha256 another (new bytes, the same face)."""
    rows = [
        {
            "run_id": run_id,
            "uri": u,
            "sha256": hashlib.sha256(v.tobytes() + (b"exif" if u in rewritten else b"")).hexdigest(),
            "frame_index": 0,
            "timestamp": None,
            "face_index": 0,
            "track_id": None,
            "track_frames": None,
            "box": [0, 0, 50, 50],
            "landmarks": [0.0] * 10,
            "score": 0.99,
            "face_size": 50.0,
            "eye_distance": 20.0,
            "sharpness": 100.0,
            "embedding": v.tolist(),
            "detector_name": "mtcnn",
            "detector_sha256": SHA,
            "model_name": "dlib-resnet-v1",
            "model_sha256": SHA,
        }
        for u, v in zip(uris, vectors, strict=True)
    ]
    out = OutputRun(root, run_id, "embed_faces")
    out.write("faces", pa.Table.from_pylist(rows, schema=faces(vectors.shape[1])), faces(vectors.shape[1]))
    out.commit()


def run(root, run_id: str, *args) -> dict:
    argv = [*map(str, args), "--output", str(root), "--run-id", run_id, "--log-level", "WARNING"]
    assert match.main(argv) == 0
    (marker,) = [m for m in committed_runs(resolve(str(root))) if m["run_id"] == run_id]
    return marker["summary"]


def rows_of(root, run_id: str) -> list[tuple]:
    rows = read_table(resolve(str(root)), "matches", run_id=run_id).drop_columns(["run_id", "threshold_source"])
    return sorted(tuple(r.values()) for r in rows.to_pylist())


@pytest.fixture
def night(tmp_path):
    """Two nights of an archive of 80 sources in 8 groups: the second lost one source, had one rewritten (same uri,
    new content), one rewritten with the same face (new bytes: only its sha256 changes), and gained four (one an
    exact copy of a source: equal scores, ranked by gallery id)."""
    rng = np.random.default_rng(7)
    centres = rng.standard_normal((8, 16))
    vectors = (np.repeat(centres, 10, axis=0) + 0.4 * rng.standard_normal((80, 16))).astype(np.float32)
    uris = [f"/archive/g{i // 10}/{i:02d}.jpg" for i in range(80)]
    root = resolve(str(tmp_path / "out"))
    embed(root, "e1", uris, vectors)
    after_uris, after = uris[1:], vectors[1:].copy()  # /archive/g0/00.jpg removed
    after[0] = (centres[0] + 0.4 * rng.standard_normal(16)).astype(np.float32)  # /archive/g0/01.jpg rewritten
    new = (centres[[1, 2, 5]] + 0.4 * rng.standard_normal((3, 16))).astype(np.float32)
    after_uris += [f"/archive/new/{i}.jpg" for i in range(4)]
    after = np.concatenate([after, new, vectors[15][None]]).astype(np.float32)
    embed(root, "e2", after_uris, after, rewritten=frozenset({uris[5]}))
    return root, uris


@pytest.mark.parametrize("slice_sources", [100_000, 16])
def test_search_by_difference_equals_a_full_search(ray_cluster, night, slice_sources, monkeypatch):
    monkeypatch.setattr("jobs.runtime.slices.SLICE_SOURCES", slice_sources)  # 16: six slices of the uris
    root, uris = night
    first = run(
        root,
        "s1",
        "search",
        "--queries",
        root,
        "--queries-run-id",
        "e1",
        "--gallery-run-id",
        "e1",
        "--k",
        5,
        "--threshold",
        0.5,
    )
    assert first["merged_from"] is None and first["queries_searched"] == 80
    second = run(
        root,
        "s2",
        "search",
        "--queries",
        root,
        "--queries-run-id",
        "e2",
        "--gallery-run-id",
        "e2",
        "--k",
        5,
        "--threshold",
        0.5,
    )
    full = run(
        root,
        "s3",
        "search",
        "--queries",
        root,
        "--queries-run-id",
        "e2",
        "--gallery-run-id",
        "e2",
        "--k",
        5,
        "--threshold",
        0.5,
        "--no-reuse",
    )
    assert second["merged_from"] == "s1" and full["merged_from"] is None
    assert second["gallery_added"] == 6 and second["gallery_removed"] == 3  # 4 new, 2 rewritten (out and in)
    # Searched in full: the 6 added queries and the lists that named the removed or rewritten sources.
    changed = {uris[0], uris[1], uris[5]}
    before = read_table(resolve(str(root)), "matches", run_id="s1").to_pylist()
    named = {r["query_uri"] for r in before if r["gallery_uri"] in changed} - changed
    assert second["queries_searched"] == 6 + len(named) and second["queries_merged"] == 83 - 6 - len(named)
    assert second["queries_merged"] > 50
    assert rows_of(root, "s2") == rows_of(root, "s3")
    assert not [r for r in read_table(root, "matches", run_id="s2").to_pylist() if uris[0] in r["gallery_item"]]
    # Each run records what it searched: a reader sees what the lists were computed over.
    items = read_table(resolve(str(root)), "match_items", run_id="s2")
    assert items.num_rows == 83 and set(items.column("side").to_pylist()) == {"both"}
    # The same night again: everything merged, nothing searched, the same rows.
    again = run(
        root,
        "s4",
        "search",
        "--queries",
        root,
        "--queries-run-id",
        "e2",
        "--gallery-run-id",
        "e2",
        "--k",
        5,
        "--threshold",
        0.5,
    )
    assert again["merged_from"] == "s3" and again["queries_searched"] == 0 and again["gallery_added"] == 0
    assert rows_of(root, "s4") == rows_of(root, "s3")


def test_identify_by_difference_equals_a_full_identification(ray_cluster, night, tmp_path):
    root, uris = night
    labels = tmp_path / "labels.csv"
    labels.write_text("uri,label\n" + "".join(f"{uris[g * 10 + 2]},p{g}\n" for g in range(8)))
    args = ("identify", "--queries", root, "--labels", labels, "--k", 3, "--threshold", 0.6)
    first = run(root, "i1", *args, "--queries-run-id", "e1", "--gallery-run-id", "e1")
    assert first["identities"] == 8 and first["queries_searched"] == 72
    # The next night: p3 gets a second sample (its centroid moves), p8 is a new identity.
    labels.write_text(labels.read_text() + f"{uris[33]},p3\n/archive/new/3.jpg,p8\n")
    second = run(root, "i2", *args, "--queries-run-id", "e2", "--gallery-run-id", "e2")
    full = run(root, "i3", *args, "--queries-run-id", "e2", "--gallery-run-id", "e2", "--no-reuse")
    assert second["merged_from"] == "i1" and second["gallery_added"] == 2 and second["gallery_removed"] == 1
    assert 0 < second["queries_searched"] < second["probes"] and second["probes"] == full["probes"] == 73
    assert rows_of(root, "i2") == rows_of(root, "i3")
    decided = [r for r in read_table(root, "matches", run_id="i2").to_pylist() if r["rank"] == 1]
    assert len(decided) == 73 and {r["decision"] for r in decided} <= {f"p{g}" for g in range(9)} | {"unknown"}
