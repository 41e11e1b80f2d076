"""jobs.archive.manifest_diff: a new snapshot of an archive reads only what changed since the last one, and equals a
full snapshot of the archive as it is now."""

import os
import time

import pyarrow as pa

from jobs import manifest
from ops.io.storage import resolve
from ops.io.tables import committed_runs, read_table
from ops.testing.samples import SAMPLE_LAYOUT, make_sample_archive

LABELS = ["--label-pattern", "*/{label}/*"]
SNAPSHOT = ["uri", "relpath", "size", "modified", "sha256", "media_kind", "media_category", "mime", "label"]


def _run(archive, output, run_id: str, *extra: str) -> dict:
    assert manifest.main([str(archive), "--output", str(output), "--run-id", run_id, *LABELS, *extra]) == 0
    (marker,) = [m for m in committed_runs(resolve(str(output))) if m["run_id"] == run_id]
    return marker["summary"]


def _snapshot(output, run_id: str) -> list[dict]:
    rows = read_table(resolve(str(output)), "manifest", run_id=run_id, columns=[*SNAPSHOT, "duplicate_of"])
    return sorted(rows.to_pylist(), key=lambda r: r["uri"])


def _age(folder, seconds: float, keep: str | None = None) -> None:
    """Every file's modification time moved ``seconds`` into the past (but ``keep``'s)."""
    for dirpath, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(dirpath, name)
            if os.path.relpath(path, folder) != keep:
                stat = os.stat(path)
                os.utime(path, (stat.st_atime - seconds, stat.st_mtime - seconds))


def test_second_snapshot_reads_only_what_changed_and_equals_a_full_one(ray_cluster, sample_archive, tmp_path):
    out = tmp_path / "out"
    # Written just now, this one could still be rewritten within the same second as the first listing: read again.
    racy = "photos/bob/portrait-2.bmp"
    _age(sample_archive, 3600, keep=racy)
    first = _run(sample_archive, out, "n1")
    assert "carried" not in first  # nothing to compare with: every object read

    new, modified, removed = "photos/carol/new.png", "voices/alice/greeting.wav", "photos/alice/portrait-1.jpg"
    (sample_archive / "photos" / "carol").mkdir(exist_ok=True)
    (sample_archive / new).write_bytes((sample_archive / "photos/alice/portrait-2.png").read_bytes() + b"x")
    (sample_archive / modified).write_bytes((sample_archive / "photos/alice/portrait-2.png").read_bytes())
    (sample_archive / removed).unlink()
    second = _run(sample_archive, out, "n2")

    errors = 2  # empty.jpg and notes.txt are in no manifest: read every time
    assert second["previous_manifest"] == "n1"
    assert second["read"] == 1 + 1 + errors + 1  # new, modified, the failures, the racy one
    assert second["carried"] == len(SAMPLE_LAYOUT) - 1 - 1 - errors - 1  # everything else, unread
    assert (second["new"], second["modified"], second["removed"]) == (1, 1, 1)
    changes = read_table(resolve(str(out)), "changes", run_id="n2").to_pylist()
    by_uri = {r["uri"].split("/archive/", 1)[1]: r for r in changes}
    assert {u: r["change"] for u, r in by_uri.items()} == {new: "new", modified: "modified", removed: "removed"}
    assert by_uri[removed]["sha256"] is None and by_uri[removed]["previous_sha256"]
    assert by_uri[new]["previous_sha256"] is None and all(r["previous_run_id"] == "n1" for r in changes)
    assert by_uri[modified]["sha256"] != by_uri[modified]["previous_sha256"]

    # The snapshot by difference is the snapshot a full run makes of the archive as it is now, duplicates included.
    fresh = tmp_path / "fresh"
    _run(sample_archive, fresh, "full")
    assert _snapshot(out, "n2") == _snapshot(fresh, "full")
    assert read_table(resolve(str(out)), "errors", run_id="n2").num_rows == errors

    # --full reads every object again and still tells what changed since the last snapshot (nothing).
    everything = _run(sample_archive, out, "n3", "--full")
    assert everything["read"] == len(SAMPLE_LAYOUT) + 1 - 1 and everything["carried"] == 0
    assert (everything["new"], everything["modified"], everything["removed"]) == (0, 0, 0)
    assert _snapshot(out, "n3") == _snapshot(fresh, "full")


def test_a_rewrite_that_keeps_size_and_time_is_read_again(ray_cluster, sample_archive, tmp_path):
    """``cp -p`` and ``rsync -a`` give a rewritten file its old modification time; with the same size, only the
    etag (a local file's inode and ctime, which no copy tool sets back) says it changed."""
    _age(sample_archive, 3600)
    out = tmp_path / "out"
    _run(sample_archive, out, "a")
    target = sample_archive / "photos/alice/portrait-2.png"
    before, other = os.stat(target), (sample_archive / "photos/bob/portrait-2.bmp").read_bytes()
    copy = tmp_path / "copy"
    copy.write_bytes(target.read_bytes()[:-1] + bytes([target.read_bytes()[-1] ^ 0xFF]))  # same size, other bytes
    os.utime(copy, ns=(before.st_atime_ns, before.st_mtime_ns))
    os.replace(copy, target)  # what rsync -a does: a new file with the old time, renamed over the old one
    assert os.stat(target).st_mtime_ns == before.st_mtime_ns and os.stat(target).st_size == before.st_size
    in_place = sample_archive / "photos/bob/portrait-2.bmp"  # what cp -p does: the same inode rewritten, time set back
    kept = os.stat(in_place)
    in_place.write_bytes(other[:-1] + bytes([other[-1] ^ 0xFF]))
    os.utime(in_place, ns=(kept.st_atime_ns, kept.st_mtime_ns))

    second = _run(sample_archive, out, "b")
    assert second["modified"] == 2, second
    changes = read_table(resolve(str(out)), "changes", run_id="b").to_pylist()
    changed = {r["uri"].split("/archive/", 1)[1] for r in changes}
    assert changed == {"photos/alice/portrait-2.png", "photos/bob/portrait-2.bmp"}
    rows = read_table(resolve(str(out)), "manifest", run_id="b", columns=["etag"])
    assert all(rows.column("etag").to_pylist())  # every local row has one


def test_a_snapshot_from_before_etags_is_compared_and_its_objects_read_again(ray_cluster, sample_archive, tmp_path):
    """A results root whose manifest has no etag column (written before it existed): the next snapshot still
    compares with it, reads its objects again (nothing says they are unchanged), reports no change, and the table
    gains the column."""
    from ops.io.root import claim
    from ops.io.schemas import MANIFEST
    from ops.io.tables import OutputRun

    _age(sample_archive, 3600)
    _run(sample_archive, tmp_path / "now", "now")
    (config,) = [r["config"] for r in committed_runs(resolve(str(tmp_path / "now")))]
    before = pa.schema([f for f in MANIFEST if f.name != "etag"], metadata=MANIFEST.metadata)
    rows = read_table(resolve(str(tmp_path / "now")), "manifest", columns=before.names)
    root = resolve(str(tmp_path / "out"))
    claim(root)
    old = OutputRun(root, "old", "manifest")
    old.write("manifest", rows.set_column(0, "run_id", pa.array(["old"] * rows.num_rows)).cast(before), before)
    old.commit(("changes", "errors"), config=config)

    second = _run(sample_archive, tmp_path / "out", "new")
    assert second["previous_manifest"] == "old" and second["carried"] == 0
    assert (second["new"], second["modified"], second["removed"]) == (0, 0, 0)
    by_run = read_table(root, "manifest", columns=["run_id", "etag"]).to_pylist()
    assert {r["run_id"] for r in by_run if r["etag"] is None} == {"old"}
    assert all(r["etag"] for r in by_run if r["run_id"] == "new")


def test_a_label_pattern_change_relabels_carried_rows(ray_cluster, sample_archive, tmp_path):
    _age(sample_archive, 3600)
    out = tmp_path / "out"
    _run(sample_archive, out, "a")
    assert manifest.main([str(sample_archive), "--output", str(out), "--run-id", "b"]) == 0  # no label pattern now
    rows = read_table(resolve(str(out)), "manifest", run_id="b")
    assert rows.num_rows and pa.compute.all(pa.compute.is_null(rows.column("label"))).as_py()


def test_snapshots_by_difference_on_s3(ray_cluster, s3):
    archive = resolve(s3.uri("archive"))
    make_sample_archive(archive)
    out = s3.uri("results")
    _run(s3.uri("archive"), out, "s1")
    time.sleep(1.1)  # S3 times are whole seconds
    archive.join("photos/alice/portrait-1.jpg").remove_tree()
    archive.join("photos/dave/new.png").put_atomic(archive.join("photos/alice/portrait-2.png").read_bytes() + b"y")
    second = _run(s3.uri("archive"), out, "s2")
    assert (second["new"], second["removed"]) == (1, 1)
    assert second["read"] + second["carried"] == len(SAMPLE_LAYOUT)
    etags = read_table(resolve(out), "manifest", run_id="s2", columns=["etag"]).column("etag").to_pylist()
    assert all(etags)  # S3's ETag, from the listing
    _run(s3.uri("archive"), s3.uri("fresh"), "full")
    assert _snapshot(out, "s2") == _snapshot(s3.uri("fresh"), "full")
