import base64
import json
import subprocess
import sys
import threading
import uuid
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import ops.io.tables as tables
from ops.io.errors import CommitError, StorageError
from ops.io.schemas import ERRORS, SCHEMA_VERSION, faces, stored
from ops.io.sql import committed, connect
from ops.io.storage import resolve
from ops.io.tables import (
    OutputRun,
    commit,
    committed_runs,
    compact,
    delete_run,
    files,
    location,
    maintain,
    open_table,
    read,
    read_table,
    write_data_files,
)
from ops.testing.faultproxy import FaultProxy
from tests.conftest import REPO, new_bucket


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


def _files(dt) -> list[str]:
    return pa.table(dt.get_add_actions(flatten=True)).column("path").to_pylist()


@pytest.fixture(params=["local", "moto", "rclone"])
def root(request, tmp_path, monkeypatch):
    if request.param == "local":
        return resolve(str(tmp_path / "out"))
    return resolve(new_bucket(request, request.param, monkeypatch).uri("out"))


def test_nothing_is_visible_before_commit(root):
    run = OutputRun(root, "r1", "test")
    run.write("errors", errors(5, "r1"))
    (written,) = run._writers["errors"].close()  # a data file exists ...
    assert root.join("errors", written.path).exists() and written.path.startswith(f"data/r1/{run.attempt}")
    assert read_table(root, "errors").num_rows == 0  # ... but no reader sees it
    marker = run.commit(summary={"n": 5})
    assert marker["tables"]["errors"] == {"rows": 5, "files": 1} and marker["summary"] == {"n": 5}
    got = read_table(root, "errors")
    assert got.num_rows == 5 and got.schema == ERRORS
    assert root.join("errors", "_delta_log").exists() and root.join("runs", "_delta_log").exists()


def test_rerun_replaces_and_deletes_the_superseded_attempt(root):
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
    assert [m["attempt"] for m in committed_runs(root)] == [second.attempt]
    assert all(p.startswith(f"data/r1/{second.attempt}") for p in _files(open_table(root, "errors")))


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


def test_a_driver_killed_between_table_commits_shows_the_old_run_whole(tmp_path, monkeypatch):
    root = resolve(str(tmp_path))
    first = OutputRun(root, "r", "test")
    first.write("errors", errors(2, "r"))
    first.write("training", pa.table({"run_id": ["r"], "job": ["t"], "epoch": [0], "metric": ["m"], "value": [1.0]}))
    first.commit()

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("the driver dies here")

    second = OutputRun(root, "r", "test")
    second.write("errors", errors(4, "r", "new"))
    second.write("training", pa.table({"run_id": ["r"], "job": ["t"], "epoch": [1], "metric": ["m"], "value": [2.0]}))
    monkeypatch.setattr(commit, "_replace_run_row", killed)
    with pytest.raises(KeyboardInterrupt):
        second.commit()
    # Both tables committed the new attempt's files; the runs row still names the old attempt.
    assert len(_files(open_table(root, "errors"))) == 2
    assert sorted(read_table(root, "errors").column("uri").to_pylist()) == ["u0", "u1"]
    assert read_table(root, "training").column("epoch").to_pylist() == [0]


def test_concurrent_runs_into_one_root_lose_nothing(request, tmp_path, monkeypatch):
    roots = {"local": resolve(str(tmp_path)), "moto": resolve(new_bucket(request, "moto", monkeypatch).uri("o"))}
    for root in roots.values():
        failures = []

        def one(i: int, root=root, failures=failures) -> None:
            try:
                run = OutputRun(root, f"run{i}", "test")
                run.write("errors", errors(10, f"run{i}"))
                run.commit()
            except Exception as exc:  # noqa: BLE001 - reported below
                failures.append(exc)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        assert not failures
        assert sorted(m["run_id"] for m in committed_runs(root)) == [f"run{i}" for i in range(6)]
        assert read_table(root, "errors").num_rows == 60


def test_workers_write_files_the_driver_commits(tmp_path):
    root = resolve(str(tmp_path))
    run = OutputRun(root, "w", "test")
    for part in range(3):  # what three Ray workers return: file descriptions, never rows
        run.add_files("errors", write_data_files(root, "errors", errors(4, "w", str(part)), None, "w", run.attempt))
    marker = run.commit()
    assert marker["tables"]["errors"] == {"rows": 12, "files": 3}
    assert read_table(root, "errors").num_rows == 12


def test_a_table_holds_one_schema(tmp_path):
    root = resolve(str(tmp_path))
    run = OutputRun(root, "a", "test")
    run.write("faces", _faces(4, "a"), faces(4))
    run.commit()
    got = read_table(root, "faces")
    assert got.schema.field("embedding").type == pa.list_(pa.float32(), 4)  # the width, kept
    other = OutputRun(root, "b", "test")
    with pytest.raises(CommitError, match="another schema"):
        other.check_schema("faces", faces(8))  # another model's width: refused before any work
    other.write("faces", _faces(8, "b"), faces(8))
    with pytest.raises(CommitError, match="embedding"):
        other.commit()
    assert [m["run_id"] for m in committed_runs(root)] == ["a"]


def test_fixed_width_columns_are_the_logs_lists_in_data_files_and_fixed_again_for_crossmatch(tmp_path, monkeypatch):
    """Delta has no fixed-size list: data files hold embeddings, boxes and landmarks as the log's lists, so that
    Polars (which reads a table by the log's types and refuses a file that says a fixed size) reads them, and every
    reader of crossmatch gives them their width back, also from files written before, which hold them fixed."""
    import polars as pl

    root = resolve(str(tmp_path))
    run = OutputRun(root, "new", "test")
    run.write("faces", _faces(4, "new"), faces(4))
    run.commit()
    (path,) = tmp_path.glob("faces/data/new/*.parquet")
    assert pa.types.is_list(pq.read_schema(path).field("embedding").type)
    assert pl.read_delta(str(tmp_path / "faces"))["embedding"].to_list() == [[0.5] * 4]
    monkeypatch.setattr(files, "file_schema", lambda schema: schema)  # as data files were written before
    run = OutputRun(root, "old", "test")
    run.write("faces", _faces(4, "old"), faces(4))
    run.commit()
    monkeypatch.undo()
    (path,) = tmp_path.glob("faces/data/old/*.parquet")
    assert pa.types.is_fixed_size_list(pq.read_schema(path).field("embedding").type)

    fixed = faces(4).field("embedding").type
    assert read_table(root, "faces").schema == faces(4)
    assert [b.schema.field("box").type for b in tables.iter_table(root, "faces")] == [pa.list_(pa.float32(), 4)] * 2
    paths, pairs = tables.committed_files(root, "faces")
    for path in paths:  # what a worker reads of the file it is handed
        rows = tables.committed_rows(path, root, pairs, ["uri", "embedding", "landmarks"])
        assert rows.schema.field("embedding").type == fixed and rows.column("embedding").to_pylist() == [[0.5] * 4]
        assert rows.schema.field("landmarks").type == pa.list_(pa.float32(), 10)
        assert rows.schema.field("embedding").metadata == faces(4).field("embedding").metadata  # the doc, no more


def _faces(dim: int, run_id: str) -> pa.Table:
    schema = faces(dim)
    row = {f.name: None for f in schema}
    row |= {"run_id": run_id, "uri": "u", "sha256": "0" * 64, "frame_index": 0, "face_index": 0}
    row |= {"box": [0.0] * 4, "landmarks": [0.0] * 10, "score": 1.0, "face_size": 1.0, "embedding": [0.5] * dim}
    row |= {k: "x" for k in ("detector_name", "detector_sha256", "model_name", "model_sha256")}
    row |= {"eye_distance": 1.0, "sharpness": 1.0}
    return pa.Table.from_pylist([row], schema=schema)


def test_empty_tables_are_recorded(tmp_path):
    root = resolve(str(tmp_path))
    marker = OutputRun(root, "r", "test").commit(tables=("errors",))
    assert marker["tables"] == {"errors": {"rows": 0, "files": 0}}
    assert read_table(root, "errors").schema == ERRORS


def test_files_rotate_and_row_counts_add_up(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "ROW_GROUP_BYTES", 1)  # a row group per write
    monkeypatch.setattr(files, "FILE_BYTES", 1)  # a file per row group
    root = resolve(str(tmp_path))
    run = OutputRun(root, "r", "test")
    for i in range(3):
        run.write("errors", errors(4 + i, "r", str(i)))
    run.commit()
    actions = pa.table(open_table(root, "errors").get_add_actions(flatten=True))
    assert sorted(actions.column("num_records").to_pylist()) == [4, 5, 6]
    assert read_table(root, "errors").num_rows == 15


def test_newer_schema_and_foreign_folders_are_refused(tmp_path):
    from deltalake import write_deltalake

    root = resolve(str(tmp_path))
    described = {
        "schema_version": SCHEMA_VERSION + 1,
        "arrow_schema": base64.b64encode(ERRORS.serialize().to_pybytes()).decode(),
    }
    write_deltalake(str(tmp_path / "errors"), errors(1, "r"), description=json.dumps(described))
    with pytest.raises(CommitError, match="newer than this crossmatch"):
        OutputRun(root, "r", "test").check_schema("errors", ERRORS)
    (tmp_path / "faces" / "r").mkdir(parents=True)
    (tmp_path / "faces" / "r" / "part-00000.parquet").write_bytes(b"old layout")
    with pytest.raises(CommitError, match="not a Delta table"):
        read_table(root, "faces")


@pytest.mark.parametrize("bad", ["", "../x", "a/b", "a b", "x" * 200, "a'b"])
def test_run_ids_are_safe_keys(tmp_path, bad):
    with pytest.raises(ValueError, match="invalid run id"):
        OutputRun(resolve(str(tmp_path)), bad, "test")


def test_abort_leaves_nothing(tmp_path):
    root = resolve(str(tmp_path))
    run = OutputRun(root, "r", "test")
    run.write("errors", errors(2, "r"))
    run._writers["errors"].close()
    run.abort()
    assert not list((tmp_path / "errors").rglob("*.parquet"))
    assert committed_runs(root) == []


def test_delete_erases_the_files_and_time_travel_reads_before(root):
    for run_id in ("a", "b"):
        run = OutputRun(root, run_id, "test")
        run.write("errors", errors(3, run_id, run_id))
        run.commit()
    before = open_table(root, "errors").version()
    held = [p for p in _files(open_table(root, "errors")) if p.startswith("data/a/")]
    removed = delete_run(root, "a")
    assert removed and all(not root.join("errors", p).exists() for p in held)  # the material is gone
    assert [m["run_id"] for m in committed_runs(root)] == ["b"]
    assert sorted(read_table(root, "errors").column("uri").to_pylist()) == ["ub0", "ub1", "ub2"]
    assert read_table(root, "errors", version=before, run_id="b").num_rows == 3  # what was not erased, as it was
    assert delete_run(root, "a") == []


def test_compact_merges_each_runs_files_and_vacuums_orphans(tmp_path):
    root = resolve(str(tmp_path))
    for i in range(2):
        run = OutputRun(root, f"r{i}", "test")
        for part in range(4):  # four workers' files each
            written = write_data_files(root, "errors", errors(2, f"r{i}", f"{i}{part}"), None, f"r{i}", run.attempt)
            run.add_files("errors", written)
        run.commit()
    orphan = OutputRun(root, "r9", "test")  # a worker killed mid-write leaves a file nobody commits
    orphan.write("errors", errors(2, "r9"))
    orphan._writers["errors"].close()
    assert len(_files(open_table(root, "errors"))) == 8
    done = compact(root, "errors", retain_hours=0)
    assert done["files_merged"] == 8 and done["vacuumed"] == 9  # the eight merged away and the orphan
    assert sorted(p.split("/")[1] for p in _files(open_table(root, "errors"))) == ["r0", "r1"]
    assert not list(Path(tmp_path / "errors" / "data" / "r9").glob("*.parquet"))
    assert read_table(root, "errors").num_rows == 16
    assert sorted(read_table(root, "errors", run_id="r1").column("uri").to_pylist())[:2] == ["u100", "u101"]


def test_duckdb_and_polars_read_the_committed_runs_with_one_statement(request, monkeypatch):
    bucket = new_bucket(request, "moto", monkeypatch)
    root = resolve(bucket.uri("out"))
    for run_id, n in (("a", 2), ("b", 3)):
        run = OutputRun(root, run_id, "test")
        run.write("errors", errors(n, run_id, run_id))
        run.commit()
    uncommitted = OutputRun(root, "c", "test")  # committed to errors, never to runs: the driver died
    uncommitted.write("errors", errors(4, "c"))
    monkeypatch.setattr(commit, "_replace_run_row", lambda *a, **k: None)
    uncommitted.commit()
    rerun = OutputRun(root, "a", "test")
    rerun.write("errors", errors(1, "a", "again"))
    monkeypatch.undo()
    monkeypatch.setenv("AWS_ENDPOINT_URL", bucket.endpoint)
    rerun.commit()

    con = connect()  # the extensions from their packages, S3 from the environment (the test server's keys)
    theirs = con.execute(committed(root.uri, "errors")).fetch_arrow_table()
    ours = read_table(root, "errors")
    assert sorted(theirs.column("uri").to_pylist()) == sorted(ours.column("uri").to_pylist())
    assert sorted(ours.column("uri").to_pylist()) == ["uagain0", "ub0", "ub1", "ub2"]

    import polars as pl

    options = tables.delta_options(root) | {
        "AWS_ACCESS_KEY_ID": "crossmatch-test-key",
        "AWS_SECRET_ACCESS_KEY": "crossmatch-test-secret",
    }
    errors_, runs = (pl.read_delta(f"{root.uri}/{t}", storage_options=options) for t in ("errors", "runs"))
    polars = errors_.join(runs.select("run_id", "attempt"), on=["run_id", "attempt"], how="semi")
    assert sorted(polars["uri"].to_list()) == sorted(ours.column("uri").to_pylist())


def test_write_errors_name_the_object(s3):
    run = OutputRun(resolve("s3://no-such-bucket-crossmatch/out"), "r", "test")
    run.write("errors", errors(2, "r"))
    with pytest.raises(StorageError, match="no-such-bucket-crossmatch"):
        run.commit()
    with pytest.raises(StorageError, match="no-such-bucket-crossmatch"):
        OutputRun(resolve("s3://no-such-bucket-crossmatch/out"), "r", "test").check_writable()


def test_an_older_attempt_finishing_last_leaves_the_newer_one_alone(tmp_path):
    """Two attempts of one run overlap (a scheduler's retry while the first driver still lives): the one whose
    runs row stands keeps its files, whichever cleans up last."""
    root = resolve(str(tmp_path))
    first, second = OutputRun(root, "r", "test"), OutputRun(root, "r", "test")
    first.write("errors", errors(2, "r", "a"))
    second.write("errors", errors(3, "r", "b"))
    second.commit()
    first.commit()  # replaces second's runs row: first is the run now
    assert sorted(read_table(root, "errors").column("uri").to_pylist()) == ["ua0", "ua1"]
    commit._transact(root, "errors", stored(ERRORS), [], second._superseded, "r", second.attempt)
    assert sorted(read_table(root, "errors").column("uri").to_pylist()) == ["ua0", "ua1"]  # second's cleanup: none


def test_infinite_values_keep_a_files_statistics(tmp_path):
    root = resolve(str(tmp_path))
    run = OutputRun(root, "r", "test")
    row = {"run_id": "r", "job": "t", "epoch": 0, "metric": "loss", "value": float("inf")}
    run.write("training", pa.Table.from_pylist([row]))
    run.commit()
    (f,) = location._file_index(open_table(root, "training"))
    assert (f["run_id"], f["attempt"]) == ("r", run.attempt)
    assert read_table(root, "training").column("value").to_pylist() == [float("inf")]


def test_a_compaction_never_brings_back_a_deleted_run(tmp_path, monkeypatch):
    root = resolve(str(tmp_path))
    run = OutputRun(root, "gone", "test")
    for part in range(2):
        run.add_files(
            "errors", write_data_files(root, "errors", errors(2, "gone", str(part)), None, "gone", run.attempt)
        )
    run.commit()
    real = maintain._all_or_raise

    def delete_first(files, chosen):  # the run is deleted while the compaction merges its files
        delete_run(root, "gone")
        return real(location._file_index(open_table(root, "errors")), chosen)

    monkeypatch.setattr(maintain, "_all_or_raise", delete_first)
    assert compact(root, "errors", retain_hours=0)["files_merged"] == 0
    assert read_table(root, "errors").num_rows == 0
    assert not list((tmp_path / "errors" / "data").rglob("*.parquet"))


def test_a_table_made_empty_takes_rows_later(tmp_path):
    root = resolve(str(tmp_path))
    empty = OutputRun(root, "e", "test")
    empty.check_schema("errors", ERRORS)  # as a job does first; then no rows come
    empty.commit(tables=("errors",))
    full = OutputRun(root, "f", "test")
    full.write("errors", errors(2, "f"))
    full.commit()
    assert read_table(root, "errors").num_rows == 2


def test_a_table_gains_a_nullable_column_and_every_engine_reads_the_old_rows_as_null(tmp_path):
    """matches/ written before it had llr (and verbal, added after it), then by a match that writes them: the table
    evolves in place."""
    from ops.io.schemas import MATCHES

    root = resolve(str(tmp_path))
    before = pa.schema([f for f in MATCHES if f.name not in ("llr", "verbal")], metadata=MATCHES.metadata)

    def rows(run_id: str, schema: pa.Schema, llr: float | None = None) -> pa.Table:
        row = {"run_id": run_id, "mode": "verify", "query_uri": "a", "query_sha256": "0" * 64, "query_item": "a"}
        row |= {"rank": 1, "score": 0.5, "model_name": "m", "model_sha256": "1" * 64}
        return pa.Table.from_pylist([row | ({"llr": llr} if "llr" in schema.names else {})], schema=schema)

    for run_id, schema, llr in (("old", before, None), ("new", MATCHES, 1.5)):
        run = OutputRun(root, run_id, "match")
        run.write("matches", rows(run_id, schema, llr), schema)
        run.commit()
    ours = {r["run_id"]: r["llr"] for r in read_table(root, "matches").to_pylist()}
    assert ours == {"old": None, "new": 1.5}
    with pytest.raises(CommitError, match="another schema"):  # a column removed or retyped is still refused
        run = OutputRun(root, "worse", "match")
        run.write("matches", rows("worse", before), before)
        run.commit()

    con = connect()
    sql = f"SELECT run_id, llr FROM delta_scan('{tmp_path}/matches') ORDER BY run_id"
    assert con.execute(sql).fetchall() == [("new", 1.5), ("old", None)]
    import polars as pl

    assert sorted(pl.read_delta(str(tmp_path / "matches")).select("run_id", "llr").rows()) == [
        ("new", 1.5),
        ("old", None),
    ]


def test_replies_lost_after_the_write_landed_and_bodies_cut_short_duplicate_nothing(moto_endpoint, monkeypatch):
    """The faults that corrupt state rather than fail a request: a commit (a conditional put of the next log entry)
    or a data file applied by the server whose answer never arrives, so the client retries a write that already
    landed; and answers whose body stops halfway. Every run is still committed once, with each row once."""
    import s3fs

    bucket = f"lost-{uuid.uuid4().hex[:8]}"
    s3fs.S3FileSystem(client_kwargs={"endpoint_url": moto_endpoint}, skip_instance_cache=True).mkdir(bucket)
    proxy = FaultProxy(moto_endpoint, rate=0.15, seed=5, faults=("lost_reply", "short_body")).start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    root = resolve(f"s3://{bucket}/out")
    try:
        for i in range(4):
            run = OutputRun(root, f"run{i}", "test")
            run.write("errors", errors(5, f"run{i}", tag=str(i)))
            run.commit()
        again = OutputRun(root, "run1", "test")  # a rerun replaces its earlier attempt, through the same faults
        again.write("errors", errors(3, "run1", tag="again"))
        again.commit()
    finally:
        proxy.stop()
    assert proxy.stats["lost_reply"] >= 5 and proxy.stats["short_body"] >= 5, proxy.stats
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    root = resolve(f"s3://{bucket}/out")
    assert sorted(m["run_id"] for m in committed_runs(root)) == [f"run{i}" for i in range(4)]
    rows = read_table(root, "errors").column("uri").to_pylist()
    assert sorted(rows) == sorted([f"u{i}{j}" for i in (0, 2, 3) for j in range(5)] + [f"uagain{j}" for j in range(3)])
    files = _files(open_table(root, "errors"))
    assert len(files) == len(set(files))  # no data file added twice to the table


def test_a_long_history_is_checkpointed_and_each_runs_file_is_read_once(tmp_path, monkeypatch):
    """The runs table gains a commit per run: every CHECKPOINT_EVERY commits it gets a checkpoint, so opening it
    reads the checkpoint and the commits since; a look at the runs reads only the files committed since the last
    look. DuckDB reads the checkpointed tables as before."""
    root = resolve(str(tmp_path / "out"))
    count = commit.CHECKPOINT_EVERY + 3
    for i in range(count):
        run = OutputRun(root, f"r{i}", "test")
        run.write("errors", errors(1, f"r{i}", str(i)))
        run.commit()
    log = Path(root.join("runs", "_delta_log").path)
    assert sorted(p.name for p in log.glob("*.checkpoint.parquet")) and (log / "_last_checkpoint").exists()
    assert [m["run_id"] for m in committed_runs(root)] == [f"r{i}" for i in range(count)]

    opened = []
    real = read.pads.dataset
    monkeypatch.setattr(read.pads, "dataset", lambda paths, **kw: opened.append(paths) or real(paths, **kw))
    run = OutputRun(root, "last", "test")
    run.write("errors", errors(1, "last", "z"))
    run.commit()
    assert [m["run_id"] for m in committed_runs(root)][-1] == "last"
    runs_files = [p for paths in opened for p in paths if "/runs/" in p]
    assert len(runs_files) == 1 and "/runs/data/last/" in runs_files[0]  # only the new run's file was read
    monkeypatch.undo()

    theirs = connect().execute(committed(root.uri, "errors")).fetch_arrow_table()
    assert sorted(theirs.column("uri").to_pylist()) == sorted(read_table(root, "errors").column("uri").to_pylist())


_THEIR_RUNS = """
import sys
import pyarrow as pa
from ops.io.storage import resolve
from ops.io.tables import OutputRun
for run_id in sys.argv[2:]:
    run = OutputRun(resolve(sys.argv[1]), run_id, "test")
    run.write("errors", pa.table({"run_id": [run_id], "job": ["test"], "uri": [run_id], "sha256": [None],
                                  "stage": ["read"], "error_type": ["E"], "message": ["m"]}))
    run.commit()
"""


def _commit_elsewhere(root, *run_ids: str) -> None:
    """Runs committed by another process: this one's kept tables hear nothing of them."""
    done = subprocess.run(
        [sys.executable, "-c", _THEIR_RUNS, root.uri, *run_ids], cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_table_looked_at_again_reads_only_the_commits_since_and_sees_every_writer(request, monkeypatch):
    """A table is opened once per process and then brought up to date (on S3 a few requests, not a listing and
    every commit since the checkpoint): what another process committed since is seen, a time-travelled look leaves
    the next look at the latest, a table removed and made again since is read afresh, and one removed reads as
    none."""
    bucket = new_bucket(request, "moto", monkeypatch)
    proxy = FaultProxy(bucket.endpoint, rate=0.0).start()  # to count the requests
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    try:
        counted = resolve(bucket.uri("out"))
        for i in range(4):
            run = OutputRun(counted, f"r{i}", "test")
            run.write("errors", errors(1, f"r{i}", str(i)))
            run.commit()
        first = committed_runs(counted)
        before = proxy.stats["requests"]
        assert committed_runs(counted) == first
        assert proxy.stats["requests"] - before <= 3, proxy.stats["requests"] - before  # a fresh open: 15 or more
    finally:
        proxy.stop()
    monkeypatch.setenv("AWS_ENDPOINT_URL", bucket.endpoint)
    root = resolve(bucket.uri("out"))
    assert committed_runs(root) == first

    _commit_elsewhere(root, "theirs")
    assert [m["run_id"] for m in committed_runs(root)] == ["r0", "r1", "r2", "r3", "theirs"]
    assert sorted(read_table(root, "errors").column("uri").to_pylist()) == ["theirs", "u00", "u10", "u20", "u30"]

    as_of = datetime.fromisoformat(first[1]["committed_at"])  # after r0's commit, before r1's
    assert [m["run_id"] for m in committed_runs(root, as_of)] == ["r0"]
    assert len(committed_runs(root)) == 5  # the time-travelled look did not move the shared table

    # Removed and made again, longer than before, between two looks of this process: only the new runs are seen.
    root.join("runs").remove_tree()
    root.join("errors").remove_tree()
    _commit_elsewhere(root, *(f"n{i}" for i in range(7)))
    assert [m["run_id"] for m in committed_runs(root)] == [f"n{i}" for i in range(7)]
    assert sorted(read_table(root, "errors").column("uri").to_pylist()) == [f"n{i}" for i in range(7)]

    root.join("runs").remove_tree()
    assert committed_runs(root) == []
