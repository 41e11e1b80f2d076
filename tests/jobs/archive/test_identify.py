"""jobs.archive.identify: identities enrolled by tasks a slice of the uris at a time, the same whatever the slices;
probes searched against them as a search is, decided at rank 1."""

import numpy as np
import pyarrow.dataset as pads
import pytest

from jobs.archive import identify
from jobs.archive.identify import enrol
from jobs.archive.search import Search, ShardLayout, prepare_items, search_archive
from jobs.runtime import slices
from jobs.runtime.output import RowWriter
from ops.io.errors import EmbeddingError
from ops.io.schemas import MATCHES, faces
from ops.io.storage import resolve
from ops.io.tables import OutputRun, read_table
from ops.matching.search import normalise
from tests.jobs.archive.test_search import SHA, _faces


@pytest.fixture
def gallery(tmp_path):
    """6 people of 5 sources each (3 labelled, 2 not) and 4 strangers, in one committed faces/ run."""
    rng = np.random.default_rng(4)
    root = resolve(str(tmp_path / "root"))
    centres = normalise(rng.standard_normal((6, 16)).astype(np.float32))
    vectors = normalise(np.repeat(centres, 5, axis=0) + 0.15 * rng.standard_normal((30, 16)).astype(np.float32))
    vectors = np.concatenate([vectors, normalise(rng.standard_normal((4, 16)).astype(np.float32))])
    uris = [f"s3://a/p{i // 5}-{i % 5}.jpg" for i in range(30)] + [f"s3://a/stranger-{i}.jpg" for i in range(4)]
    out = OutputRun(root, "embed", "embed_faces")
    out.write("faces", _faces("embed", uris, vectors, [50.0] * len(uris)), faces(16))
    out.commit()
    labels = tmp_path / "labels.csv"
    labels.write_text("uri,label\n" + "".join(f"{uris[i]},p{i // 5}\n" for i in range(30) if i % 5 < 3))
    return root, uris, vectors, labels


@pytest.mark.parametrize("slice_sources", [100_000, 4])
def test_enrolment_is_the_mean_of_each_identitys_sources_whatever_the_slices(
    ray_cluster, gallery, monkeypatch, slice_sources
):
    root, uris, vectors, labels = gallery
    monkeypatch.setattr(slices, "SLICE_SOURCES", slice_sources)
    staging = root.join("_staging", "t")
    items = prepare_items(root, "faces", "embed", True, staging.join("g"))
    enrolled = enrol(root, items, str(labels), None, True, staging)
    assert enrolled.enrolled_sources == 18 and len(enrolled.identities) == 6 and len(enrolled.probes) == 16
    got = pads.dataset([p for p, _ in enrolled.identities.files], filesystem=root.arrow).to_table()
    want = {f"p{p}": normalise(vectors[[p * 5 + i for i in range(3)]].sum(0, keepdims=True))[0] for p in range(6)}
    for label, vector in zip(got.column("item").to_pylist(), identify._vectors(got), strict=True):
        np.testing.assert_allclose(vector, want[label], atol=1e-6)

    writer = RowWriter(root, "matches", MATCHES, "identify", "a1")
    fields = {"run_id": "identify", "model_name": "dlib-resnet-v1", "model_sha256": SHA, "threshold": 0.6}
    fields["threshold_source"] = "--threshold"
    layout = ShardLayout(shards=2, gpus_per_shard=0, query_batch=5)
    how = Search(k=2, keep=2, same_set=False, mode="identify", store=root, fields=fields, writer=writer, layout=layout)
    files, rows, unknown = search_archive(enrolled.probes, enrolled.identities, how)
    out = OutputRun(root, "identify", "match", attempt="a1")
    out.add_files("matches", files, MATCHES)
    out.commit(tables=("matches",))
    top = {r["query_uri"]: r for r in read_table(root, "matches", "identify").to_pylist() if r["rank"] == 1}
    assert rows == 32 and unknown == 4 and len(top) == 16
    for uri, row in top.items():
        want = uri.rsplit("/", 1)[-1].split("-")[0] if "stranger" not in uri else "unknown"
        assert row["decision"] == want and row["mode"] == "identify" and row["gallery_uri"] is None


def test_a_source_given_two_identities_is_refused(ray_cluster, gallery, tmp_path):
    root, uris, _, _ = gallery
    labels = tmp_path / "twice.csv"
    labels.write_text(f"uri,label\n{uris[0]},x\n{uris[0]},y\n")
    staging = root.join("_staging", "t")
    items = prepare_items(root, "faces", "embed", True, staging.join("g"))
    with pytest.raises(EmbeddingError, match="gives s3://a/p0-0.jpg two identities: x, y"):
        enrol(root, items, str(labels), None, True, staging)
