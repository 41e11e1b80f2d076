import json
import logging
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs import manifest
from jobs.runtime.output import RowWriter, parse_file_row
from ops.io.schemas import schema_for
from ops.io.storage import resolve
from ops.io.tables import committed_runs, read_table, table_store
from ops.media.encode import encode_image
from ops.testing.samples import SAMPLE_LAYOUT, make_sample_archive, portrait

LABELS = ["--label-pattern", "*/{label}/*"]


def run_manifest(archive: str, output: str, *extra: str) -> int:
    return manifest.main([archive, "--output", output, *extra])


def accounted(output) -> tuple[pa.Table, pa.Table]:
    """The committed manifest and errors, after checking that no uri appears twice across them."""
    root = resolve(str(output))
    rows, errors = read_table(root, "manifest"), read_table(root, "errors")
    uris = rows.column("uri").to_pylist() + errors.column("uri").to_pylist()
    assert len(uris) == len(set(uris)), "an object was accounted for twice"
    return rows, errors


def test_hash_objects_reports_each_failure_as_a_row(tmp_path):
    (tmp_path / "ok.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_bytes(b"just words")
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling.wav")
    names = ["ok.png", "empty.jpg", "text.jpg", "dangling.wav", "deleted.mp4"]
    archive, staging = resolve(str(tmp_path)), resolve(str(tmp_path / "staging"))
    batch = pa.table(
        {
            "relpath": names,
            "uri": names,
            "modified": pa.nulls(5, pa.timestamp("ms", tz="UTC")),
            "etag": pa.nulls(5, pa.string()),
        }
    )
    errors = RowWriter(archive, "errors", schema_for("errors"), "r", "a1")
    out = manifest.hash_objects(batch, archive, staging, "r", None, errors=errors).to_pylist()
    hashed, staged, written = out
    assert hashed["kind"] == "staged" and hashed["size"] == 48 + 10  # the bytes read (png, text), for progress
    assert staged["kind"] == "staged" and staged["relpath"] == "1" and staged["stage"] == "0"  # the png, partition 0
    (row,) = pq.read_table(staged["uri"]).to_pylist()
    assert (row["relpath"], row["media_kind"], row["run_id"]) == ("ok.png", "png", "r")
    # the error rows are written by the task: the driver gets the file, its rows and their types
    assert written["kind"] == "errors" and written["relpath"] == "4"
    assert json.loads(written["message"]) == {"empty_file": 1, "unknown_media_type": 1, "not_found": 2}
    file = parse_file_row(written["uri"])
    failed = pq.read_table(table_store(archive, "errors").join(file.path).path).to_pylist()
    got = {r["uri"]: (r["stage"], r["error_type"]) for r in failed}
    assert got == {
        "empty.jpg": ("sniff", "empty_file"),
        "text.jpg": ("sniff", "unknown_media_type"),
        "dangling.wav": ("read", "not_found"),
        "deleted.mp4": ("read", "not_found"),
    }
    message = next(r["message"] for r in failed if r["uri"] == "deleted.mp4")
    assert "not found" in message and "deleted.mp4" in message


def test_sample_archive_every_object_accounted_once(ray_cluster, sample_archive, tmp_path, caplog):
    caplog.set_level(logging.INFO, "crossmatch")
    assert run_manifest(str(sample_archive), str(tmp_path / "out"), *LABELS) == 0
    rows, errors = accounted(tmp_path / "out")
    assert rows.num_rows + errors.num_rows == len(SAMPLE_LAYOUT)
    by_path = {r["relpath"]: r for r in rows.to_pylist()}
    for relpath, kind in SAMPLE_LAYOUT.items():
        if kind is not None:
            assert by_path[relpath]["media_kind"] == kind, relpath
    # content, not the name: a PNG called .mp3
    assert by_path["misnamed/recording.mp3"]["media_category"] == "image"
    assert by_path["photos/bob/portrait-2.bmp"]["label"] == "bob"
    assert by_path["videos/interview.mp4"]["label"] is None  # "videos/interview.mp4" has no person folder
    copy, original = by_path["copies/portrait-copy.jpg"], by_path["photos/alice/portrait-1.jpg"]
    assert copy["sha256"] == original["sha256"]
    assert (copy["duplicate_of"], original["duplicate_of"]) == (None, copy["uri"])  # the first uri keeps the flag off
    assert sum(r["duplicate_of"] is not None for r in by_path.values()) == 2
    assert {e["uri"].rsplit("/", 1)[-1]: e["error_type"] for e in errors.to_pylist()} == {
        "empty.jpg": "empty_file",
        "notes.txt": "unknown_media_type",
    }
    run_ids = set(rows.column("run_id").to_pylist()) | set(errors.column("run_id").to_pylist())
    assert run_ids == {committed_runs(resolve(str(tmp_path / "out")))[0]["run_id"]}
    assert "committed run manifest-" in caplog.text


def test_rerun_replaces_instead_of_duplicating(ray_cluster, sample_archive, tmp_path):
    out = str(tmp_path / "out")
    assert run_manifest(str(sample_archive), out) == 0
    (sample_archive / "photos" / "late.png").write_bytes((sample_archive / "photos/alice/portrait-2.png").read_bytes())
    assert run_manifest(str(sample_archive), out) == 0
    rows, errors = accounted(out)
    assert rows.num_rows + errors.num_rows == len(SAMPLE_LAYOUT) + 1
    assert len(committed_runs(resolve(out))) == 1
    # an explicit, different run id is a different run: both are committed, each whole
    assert run_manifest(str(sample_archive), out, "--run-id", "second", "--glob", "photos/**") == 0
    assert len(read_table(resolve(out), "manifest", run_id="second")) == 7


def test_an_output_root_inside_the_archive_is_not_listed_and_the_archive_itself_is_refused(
    ray_cluster, sample_archive, caplog
):
    caplog.set_level(logging.INFO, "crossmatch")
    out = str(sample_archive / "results")  # as `jobs.manifest .` with the default out/results
    for run_id in ("first", "again"):  # the second run finds the first's tables and logs inside the archive
        assert run_manifest(str(sample_archive), out, "--run-id", run_id) == 0
        rows, errors = read_table(resolve(out), "manifest", run_id), read_table(resolve(out), "errors", run_id)
        assert rows.num_rows + errors.num_rows == len(SAMPLE_LAYOUT)
        assert not [u for u in rows.column("uri").to_pylist() if "/results/" in u]
    assert "lies inside the archive: its objects (results/) are not listed" in caplog.text
    assert run_manifest(str(sample_archive), str(sample_archive)) == 2
    assert "is the archive itself" in caplog.text and not (sample_archive / "crossmatch-root.json").exists()


def test_glob_selects_objects(ray_cluster, sample_archive, tmp_path):
    assert run_manifest(str(sample_archive), str(tmp_path / "out"), "--glob", "voices/**/*.wav") == 0
    rows, errors = accounted(tmp_path / "out")
    assert rows.column("relpath").to_pylist() == ["voices/alice/greeting.wav"] and errors.num_rows == 0


def test_unreadable_files_become_error_rows(ray_cluster, tmp_path):
    archive = tmp_path / "archive"
    make_sample_archive(resolve(str(archive)))
    os.symlink(tmp_path / "gone", archive / "photos" / "dangling.jpg")
    locked = archive / "photos" / "locked.jpg"
    locked.write_bytes(b"\xff\xd8\xff" + bytes(10))
    locked.chmod(0)
    assert run_manifest(str(archive), str(tmp_path / "out")) == 0
    rows, errors = accounted(tmp_path / "out")
    assert rows.num_rows + errors.num_rows == len(SAMPLE_LAYOUT) + 2
    reasons = {e["uri"].rsplit("/", 1)[-1]: (e["stage"], e["error_type"]) for e in errors.to_pylist()}
    assert reasons["dangling.jpg"] == ("read", "not_found")
    if os.geteuid() != 0:  # root reads mode-000 files
        assert reasons["locked.jpg"] == ("read", "permission_denied")


@pytest.mark.parametrize(
    "archive, words",
    [("{tmp}/missing", "does not exist"), ("gs://bucket/x", "unsupported URI scheme 'gs'"), ("", "no archive given")],
)
def test_bad_archive_fails_with_a_clear_message(tmp_path, caplog, archive, words):
    caplog.set_level(logging.INFO, "crossmatch")
    assert run_manifest(archive.format(tmp=tmp_path), str(tmp_path / "out")) == 2
    assert words in caplog.text
    assert committed_runs(resolve(str(tmp_path / "out"))) == []


def test_glob_matching_nothing_fails(tmp_path, caplog):
    (tmp_path / "a.txt").write_bytes(b"x")
    assert run_manifest(str(tmp_path), str(tmp_path / "out"), "--glob", "*.jpg") == 2
    assert "no objects under" in caplog.text and "--glob" in caplog.text


def test_label_pattern_needs_a_label_field(ray_cluster, sample_archive, tmp_path, caplog):
    assert run_manifest(str(sample_archive), str(tmp_path / "out"), "--label-pattern", "*/*") == 2
    assert "has no {label} field" in caplog.text


def test_a_label_pattern_says_how_many_objects_it_named_and_two_it_did_not(
    ray_cluster, sample_archive, tmp_path, caplog
):
    caplog.set_level(logging.INFO, "crossmatch")
    out = str(tmp_path / "out")
    nowhere = ["--label-pattern", "people/{label}/*"]  # the sample has no people/ folder
    assert run_manifest(str(sample_archive), out, *nowhere, "--run-id", "none") == 0
    (marker,) = committed_runs(resolve(out))
    assert marker["summary"]["labelled"] == 0
    rows = marker["summary"]["manifest_rows"]
    assert f"gave a label to 0 of {rows} objects; not matched: " in caplog.text and "'*/{label}/*'" in caplog.text
    assert run_manifest(str(sample_archive), out, *LABELS, "--run-id", "some") == 0
    labelled = [m for m in committed_runs(resolve(out)) if m["run_id"] == "some"][0]["summary"]["labelled"]
    assert 0 < labelled < rows and f"gave a label to {labelled} of {rows} objects" in caplog.text


def test_s3_archive_and_output(ray_cluster, s3):
    make_sample_archive(resolve(s3.uri("archive")))
    assert run_manifest(s3.uri("archive"), s3.uri("results"), *LABELS) == 0
    rows, errors = accounted(s3.uri("results"))
    assert rows.num_rows + errors.num_rows == len(SAMPLE_LAYOUT)
    assert all(u.startswith(f"s3://{s3.bucket}/archive/") for u in rows.column("uri").to_pylist())
    assert errors.num_rows == 2


def test_s3_wrong_credentials_fail_with_the_fix(rclone_endpoint, monkeypatch, caplog, tmp_path):
    caplog.set_level(logging.INFO, "crossmatch")
    monkeypatch.setenv("AWS_ENDPOINT_URL", rclone_endpoint)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    assert run_manifest("s3://bucket/archive", str(tmp_path / "out")) == 2
    assert "access denied to s3://bucket/archive" in caplog.text and "check the S3 credentials" in caplog.text
    assert "not-the-secret" not in caplog.text


def test_s3_missing_credentials_fail_with_the_fix(moto_endpoint, monkeypatch, caplog):
    caplog.set_level(logging.INFO, "crossmatch")
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    assert run_manifest("s3://bucket/archive", "s3://bucket/results") == 2  # the output's write check says so
    assert "no S3 credentials found for s3://bucket/results" in caplog.text and "AWS_ACCESS_KEY_ID" in caplog.text


def test_unwritable_output_fails_before_any_work(s3, sample_archive, caplog):
    caplog.set_level(logging.INFO, "crossmatch")
    assert run_manifest(str(sample_archive), "s3://no-such-bucket-crossmatch/results") == 2
    assert "s3://no-such-bucket-crossmatch/results/" in caplog.text and "bucket does not exist" in caplog.text
    assert "listed" not in caplog.text  # failed before listing, let alone hashing


def test_labels_come_from_one_manifest_run_the_newest_by_default(ray_cluster, tmp_path, caplog):
    """A root that keeps last month's archive's manifest beside today's: labels are today's alone, or the run asked
    for; never a mix in which a source labelled twice is decided by dict order."""
    from ops.io.errors import EmbeddingError
    from ops.matching.embeddings import read_labels

    out = resolve(str(tmp_path / "out"))
    old, new = tmp_path / "old", tmp_path / "new"
    rng = np.random.default_rng(0)
    for folder, person in ((old, "alice"), (new, "bob")):
        (folder / person).mkdir(parents=True)
        (folder / person / "a.jpg").write_bytes(encode_image(portrait(rng, 0), "jpeg"))
    (new / "bob" / "b.jpg").write_bytes(encode_image(portrait(rng, 1), "jpeg"))
    for folder in (old, new):
        args = [str(folder), "--output", out.uri, "--run-id", folder.name, "--label-pattern", "{label}/*"]
        assert manifest.main(args) == 0
    with caplog.at_level(logging.INFO, logger="crossmatch"):
        labels = read_labels(out)
    assert set(labels.values()) == {"bob"} and len(labels) == 2
    assert "labels from manifest run new" in caplog.text
    assert set(read_labels(out, manifest_run_id="old").values()) == {"alice"}
    with pytest.raises(EmbeddingError, match="no committed manifest"):
        read_labels(resolve(str(tmp_path / "empty")))
