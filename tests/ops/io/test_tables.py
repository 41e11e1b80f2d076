import json

import pyarrow as pa
import pytest

import ops.io.tables as tables
from ops.io.errors import CommitError, StorageError
from ops.io.schemas import ERRORS, SCHEMA_VERSION
from ops.io.storage import resolve
from ops.io.tables import OutputRun, committed_files, committed_runs, read_table
from tests.conftest import new_bucket


def errors(n: int, run_id: str, tag: str = "") -> pa.Table:
    return pa.table(
        {
            "run_id": [run_id] * n,
            "job": ["test"] * n,
            "uri": [f"u{tag}{i}" for i in range(n)],
            "sha256": [None] * n,
            "stage": ["read"] * n,
            "error_type": ["E"] * n,
            "message": [f"m{i}" for i in range(n)],
        }
    )


@pytest.fixture(params=["local", "moto", "rclone"])
def root(request, tmp_path, monkeypatch):
    if request.param == "local":
        return resolve(str(tmp_path / "out"))
    return resolve(new_bucket(request, request.param, monkeypatch).uri("out"))


def test_nothing_is_visible_before_commit(root):
    run = OutputRun(root, "r1", "test")
    run.write("errors", errors(5, "r1"))
    run._writers["errors"].close()  # data files exist ...
    assert root.join("errors", "r1", run.attempt, "part-00000.parquet").exists()
    assert read_table(root, "errors").num_rows == 0  # ... but no reader sees them
    marker = run.commit(summary={"n": 5})
    assert marker["tables"]["errors"]["rows"] == 5 and marker["summary"] == {"n": 5}
    got = read_table(root, "errors")
    assert got.num_rows == 5 and got.schema == ERRORS


def test_rerun_replaces_and_removes_superseded_attempts(root):
    first = OutputRun(root, "r1", "test")
    first.write("errors", errors(5, "r1"))
    first.commit()
    failed = OutputRun(root, "r1", "test")  # an attempt that died before committing
    failed.write("errors", errors(7, "r1", "x"))
    failed._writers["errors"].close()
    second = OutputRun(root, "r1", "test")
    second.write("errors", errors(3, "r1", "y"))
    second.commit()
    got = read_table(root, "errors")
    assert sorted(got.column("uri").to_pylist()) == ["uy0", "uy1", "uy2"]
    run_dir = root.join("errors", "r1")
    assert [p.rsplit("/", 1)[-1] for p in run_dir.fs.ls(run_dir.path, detail=False)] == [second.attempt]


def test_runs_add_up_and_can_be_read_alone(root):
    for run_id, n in (("a", 2), ("b", 3)):
        run = OutputRun(root, run_id, "test")
        run.write("errors", errors(n, run_id))
        run.commit()
    assert [m["run_id"] for m in committed_runs(root)] == ["a", "b"]
    assert read_table(root, "errors").num_rows == 5
    assert read_table(root, "errors", run_id="b", columns=["uri"]).column_names == ["uri"]
    with pytest.raises(CommitError, match="no committed run 'c'"):
        read_table(root, "errors", run_id="c")


def test_empty_tables_are_recorded(tmp_path):
    root = resolve(str(tmp_path))
    marker = OutputRun(root, "r", "test").commit(tables=("errors",))
    assert marker["tables"] == {"errors": {"rows": 0, "files": []}}
    assert read_table(root, "errors").schema == ERRORS


def test_files_rotate_and_row_counts_add_up(tmp_path, monkeypatch):
    monkeypatch.setattr(tables, "ROW_GROUP_BYTES", 1)  # a row group per write
    monkeypatch.setattr(tables, "FILE_BYTES", 1)  # a file per row group
    root = resolve(str(tmp_path))
    run = OutputRun(root, "r", "test")
    for i in range(3):
        run.write("errors", errors(4 + i, "r", str(i)))
    run.commit()
    files = committed_files(root, "errors")
    assert [f.rows for f in files] == [4, 5, 6]
    assert all(f.bytes == root.join(f.path).size() for f in files)
    assert read_table(root, "errors").num_rows == 15


def test_newer_schema_is_refused(tmp_path):
    root = resolve(str(tmp_path))
    OutputRun(root, "r", "test").commit(tables=("errors",))
    marker_path = tmp_path / "_commits" / "r.json"
    marker = json.loads(marker_path.read_text())
    marker["schema_version"] = SCHEMA_VERSION + 1
    marker_path.write_text(json.dumps(marker))
    with pytest.raises(CommitError, match="newer than this crossmatch"):
        read_table(root, "errors")


@pytest.mark.parametrize("bad", ["", "../x", "a/b", "a b", "x" * 200])
def test_run_ids_are_safe_keys(tmp_path, bad):
    with pytest.raises(ValueError, match="invalid run id"):
        OutputRun(resolve(str(tmp_path)), bad, "test")


def test_abort_leaves_nothing(tmp_path):
    root = resolve(str(tmp_path))
    run = OutputRun(root, "r", "test")
    run.write("errors", errors(2, "r"))
    run._writers["errors"].close()
    run.abort()
    assert not root.join("errors", "r", run.attempt).exists()
    assert committed_runs(root) == []


def test_write_errors_name_the_object(s3):

    run = OutputRun(resolve("s3://no-such-bucket-crossmatch/out"), "r", "test")
    run.write("errors", errors(2, "r"))
    with pytest.raises(StorageError, match="s3://no-such-bucket-crossmatch/out/errors/r/"):
        run.commit()
    with pytest.raises(StorageError, match="no-such-bucket-crossmatch"):
        OutputRun(resolve("s3://no-such-bucket-crossmatch/out"), "r", "test").check_writable()
