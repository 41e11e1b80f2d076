"""jobs.delete removes a run completely, stages and uncommitted attempts included, and nothing else."""

import shutil

import pytest

from jobs import compact, delete
from ops.io.storage import resolve
from ops.io.tables import OutputRun, committed_runs, read_table
from tests.conftest import new_bucket


def _error(uri: str) -> dict:
    return {"uri": uri, "sha256": "0" * 64, "error_type": "read_error", "message": "a row to delete or keep"}


def _files(root) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_a_pipeline_run_goes_whole_and_others_stay(pipeline_run, tmp_path, capsys):
    results = tmp_path / "results"
    shutil.copytree(pipeline_run["results"], results)
    root = resolve(str(results))
    other = OutputRun(root, "keep-me", "manual")
    other.write_errors([_error("x"), _error("y")], stage="test")
    other.commit()
    (results / "faces" / "data" / "pl.faces" / "killed-attempt-x.parquet").write_bytes(b"partial")  # a killed run's
    (results / "exports" / "pl").mkdir(parents=True)  # another tool's folder, named like the run: never touched
    (results / "exports" / "pl" / "case.zip").write_bytes(b"theirs")
    before = _files(results)

    assert delete.main([str(results), "pl", "--dry-run"]) == 0
    assert _files(results) == before and "would delete" in capsys.readouterr().out

    assert delete.main([str(results), "pl"]) == 0
    left = _files(results)
    assert not [f for f in left if ("/pl/" in f or "/pl." in f) and not f.startswith("exports/")], left
    assert "exports/pl/case.zip" in left
    assert [m["run_id"] for m in committed_runs(root)] == ["keep-me"]
    assert read_table(root, "errors", "keep-me").num_rows == 2
    assert delete.main([str(results), "pl"]) == 2  # nothing left to delete: the user asked for what is not there


def test_a_root_that_is_not_crossmatchs_is_never_deleted_from(tmp_path, capsys):
    (tmp_path / "report" / "2026-12-05").mkdir(parents=True)  # a scheduled tool's dated output
    (tmp_path / "report" / "2026-12-05" / "index.html").write_text("theirs")
    assert delete.main([str(tmp_path), "2026-12-05"]) == 2
    assert "not a crossmatch output root" in capsys.readouterr().err
    assert (tmp_path / "report" / "2026-12-05" / "index.html").exists()


def test_a_run_on_s3_goes_whole(request, monkeypatch):
    bucket = new_bucket(request, "moto", monkeypatch)
    root = resolve(bucket.uri("out"))
    for run_id in ("a", "b"):
        run = OutputRun(root, run_id, "manual")
        run.write_errors([_error(run_id)], stage="test")
        run.commit()
    root.join("styled-images", "a", "x.jpg").put_atomic(b"jpeg")
    assert delete.main([root.uri, "a"]) == 0
    data = [o.relpath for o in root.list() if "/data/" in o.relpath or o.relpath.startswith("styled")]
    assert data and all(p.split("/")[2] == "b" for p in data), data
    assert [m["run_id"] for m in committed_runs(root)] == ["b"]


@pytest.mark.parametrize("command", ["delete", "compact"])
def test_s3_without_credentials_is_said_with_the_fix(moto_endpoint, monkeypatch, capsys, caplog, command):
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    code = delete.main(["s3://bucket/results", "r"]) if command == "delete" else compact.main(["s3://bucket/results"])
    assert code == 2
    said = capsys.readouterr().err + caplog.text
    assert "no S3 credentials found for s3://bucket/results" in said and "AWS_ACCESS_KEY_ID" in said
