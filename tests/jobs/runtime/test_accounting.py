import pyarrow as pa
import pytest

from jobs.runtime import accounting, slices
from jobs.runtime.accounting import OUTCOMES, Ledger, Staged, collect, plan_sources, settle
from jobs.runtime.output import RowWriter
from jobs.runtime.slices import buckets
from jobs.stylize import finish as count_styled
from ops.io.errors import AccountingMismatch, JobFailed
from ops.io.schemas import MANIFEST, schema_for
from ops.io.storage import resolve
from ops.io.tables import OutputRun, read_table


def _manifest(root, uris: list[str], run_id: str = "m1") -> None:
    rows = [
        {
            "run_id": run_id,
            "uri": uri,
            "relpath": uri.rsplit("/", 1)[-1],
            "size": 1000 + i * 37 % 500,
            "sha256": f"{i:064x}",
            "media_kind": "jpeg",
            "media_category": "image",
            "mime": "image/jpeg",
        }
        for i, uri in enumerate(uris)
    ]
    rows.append(rows[0] | {"uri": "s3://a/song.wav", "media_category": "audio", "media_kind": "wav"})
    out = OutputRun(root, run_id, "manifest")
    out.write("manifest", pa.Table.from_pylist(rows, schema=MANIFEST))
    out.commit(tables=("errors",))


def _outcomes(ledger: Ledger, uris: list[str], kind: str = "result") -> str:
    rows = [
        {
            "key": uri,
            "kind": kind,
            "uri": uri,
            "sha256": None,
            "stage": "decode" if kind == "error" else None,
            "error_type": "image_error" if kind == "error" else None,
            "message": "not an image" if kind == "error" else None,
        }
        for uri in uris
    ]
    return ledger.stage(OUTCOMES, pa.Table.from_pylist(rows, schema=pa.schema(accounting.OUTCOME_FIELDS)))


@pytest.fixture
def planned(ray_cluster, tmp_path):
    root = resolve(str(tmp_path / "out"))
    uris = [f"s3://a/{i:03d}.jpg" for i in range(40)]
    _manifest(root, uris)
    ledger = Ledger(root.join("_staging", "r1", "a1", "ledger"))
    sources = plan_sources(root, None, ("image",), ["uri", "size"], 1, 4, ledger)
    return root, uris, ledger, sources


def _settle(root, ledger, staged):
    errors = RowWriter(root, "errors", schema_for("errors"), "r1", "a1")
    return settle(ledger, staged, count_styled, {}, errors, "demo")


def test_sources_are_planned_by_workers_in_blocks_balanced_by_size(planned):
    import ray

    _, uris, _, sources = planned
    blocks = ray.get(sources.blocks)
    assert sources.count == 40 and sources.manifest_rows == 41 and len(sources.listed) == 1
    assert sorted(u for b in blocks for u in b.column("uri").to_pylist()) == uris  # each once, audio left out
    loads = [sum(b.column("size").to_pylist()) for b in blocks]
    assert len(blocks) > 4 and max(loads) < 2 * min(loads)
    assert collect(ray.data.from_arrow_refs(sources.blocks).map_batches(_nothing_staged), sources).rows[OUTCOMES] == 0


def _nothing_staged(batch: pa.Table) -> pa.Table:
    return accounting.staged_rows([])


def test_every_source_once_settles_and_writes_the_error_rows(planned, monkeypatch):
    root, uris, ledger, sources = planned
    monkeypatch.setattr(slices, "SLICE_SOURCES", 7)  # several slices: each source meets its rows in one
    reported = [_outcomes(ledger, uris[:30]), _outcomes(ledger, uris[30:], "error")]
    staged = Staged(paths={accounting.LISTED: sources.listed, OUTCOMES: reported}, rows={OUTCOMES: 40})
    settled = _settle(root, ledger, staged)
    assert settled.counts["styled"] == 30 and settled.errors_by_type == {"image_error": 10}
    written = [f for f in settled.files if f.table == "errors"]
    assert 1 < len(written) <= 6 and sum(f.rows for f in written) == 10  # 6 slices, a file per slice with errors
    out = OutputRun(root, "r1", "demo", attempt="a1")
    out.add_files("errors", written)
    out.commit(tables=("errors",))
    assert sorted(read_table(root, "errors", "r1").column("uri").to_pylist()) == uris[30:]


@pytest.mark.parametrize(
    ("reported", "said"),
    [
        (lambda uris: [uris[:39]], "1 sources without a result or an error row"),
        (lambda uris: [uris, uris[5:6]], "1 sources reported twice"),
        (lambda uris: [uris + ["s3://a/other.jpg"]], "1 results for sources the manifest does not list"),
    ],
)
def test_a_lost_a_repeated_or_a_stray_source_fails_the_job(planned, reported, said):
    root, uris, ledger, sources = planned
    paths = [_outcomes(ledger, group) for group in reported(uris)]
    staged = Staged(paths={accounting.LISTED: sources.listed, OUTCOMES: paths}, rows={OUTCOMES: 40})
    with pytest.raises(AccountingMismatch, match=f"accounting mismatch: {said}.*nothing was committed"):
        _settle(root, ledger, staged)


def test_a_uri_listed_by_two_manifests_is_refused(ray_cluster, tmp_path):
    root = resolve(str(tmp_path / "out"))
    _manifest(root, ["s3://a/x.jpg"], "m1")
    _manifest(root, ["s3://a/x.jpg"], "m2")
    ledger = Ledger(root.join("_staging", "r1", "a1", "ledger"))
    sources = plan_sources(root, None, ("image",), ["uri", "size"], 1, 4, ledger)
    staged = Staged(paths={accounting.LISTED: sources.listed, OUTCOMES: [_outcomes(ledger, ["s3://a/x.jpg"])]})
    with pytest.raises(JobFailed, match="uris the manifest lists twice .pass --manifest-run-id."):
        _settle(root, ledger, staged)
    assert plan_sources(root, "m2", ("image",), ["uri"], 1, 4, ledger).count == 1


def test_buckets_are_stable_and_spread():
    got = buckets([f"s3://a/{i}.jpg" for i in range(4096)]).to_pylist()
    assert got[:2] == buckets(["s3://a/0.jpg", "s3://a/1.jpg"]).to_pylist()
    assert 0 <= min(got) and max(got) < slices.BUCKETS and len(set(got)) > 3900
