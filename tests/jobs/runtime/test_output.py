import logging

import pyarrow as pa
import pytest

from jobs.runtime.cli import JobConfig
from jobs.runtime.launch import JobContext
from jobs.runtime.output import JobOutput, error_row
from ops.io.errors import TooLarge
from ops.io.schemas import MANIFEST, MATCH_ITEMS, MATCHES, TRAINING
from ops.io.storage import resolve
from ops.io.tables import committed_runs, read_table


def _context(tmp_path, job: str = "demo") -> JobContext:
    return JobContext(job, "r1", resolve(str(tmp_path / job)), logging.getLogger("crossmatch"))


def _info_keys(marker: dict) -> list[str]:
    """The keys of the runs row's info, in the order they are stored (a marker lists them after ``tables``)."""
    keys = list(marker)
    return keys[keys.index("tables") + 1 :]


def test_a_source_job_commits_its_tables_errors_and_counts(tmp_path, caplog):
    caplog.set_level(logging.INFO, "crossmatch")
    ctx = _context(tmp_path)
    job = JobOutput(ctx, JobConfig(output=ctx.output.uri), {"manifest": MANIFEST}, errors="counted")
    rows = [error_row(TooLarge("declares 65500x65500"), "decode", uri="a.jpg", sha256="0" * 64)]
    rows.append(error_row(OSError("disk"), "read", uri="b.jpg", sha256=None))
    job.write_errors(rows)
    marker = job.commit({"sources": 2}, "2 sources, 2 errors")
    assert marker["summary"] == {"sources": 2, "errors": 2, "errors_by_type": {"too_large": 1, "read_error": 1}}
    assert marker["tables"]["manifest"]["rows"] == 0 and marker["tables"]["errors"]["rows"] == 2
    errors = read_table(ctx.output, "errors", "r1").to_pylist()
    assert {(e["uri"], e["stage"], e["error_type"], e["job"]) for e in errors} == {
        ("a.jpg", "decode", "too_large", "demo"),
        ("b.jpg", "read", "read_error", "demo"),
    }
    assert "OSError: disk" in {e["message"] for e in errors}
    assert "2 sources, 2 errors" in caplog.text and "committed run r1:" in caplog.text
    assert "(tables manifest/, errors/)" in caplog.text


def test_a_job_with_no_tables_of_its_own_commits_its_row_alone_and_says_so_once(tmp_path, caplog):
    caplog.set_level(logging.INFO, "crossmatch")
    ctx = _context(tmp_path, "report")
    marker = JobOutput(ctx, JobConfig(output=ctx.output.uri)).commit({"bytes": 10}, "report of 0 runs")
    assert marker["tables"] == {} and marker["summary"] == {"bytes": 10}  # no errors/, no counts it never made
    assert _info_keys(marker) == ["config", "summary"]
    closing = [r.getMessage() for r in caplog.records if r.getMessage().startswith("committed run")]
    assert closing == [f"committed run r1: {ctx.output.join('runs').uri}"]
    assert caplog.messages.index("report of 0 runs") < caplog.messages.index(closing[0])


def test_an_errors_table_listed_but_counted_by_the_job_and_a_side_table_undeclared(tmp_path, caplog):
    caplog.set_level(logging.INFO, "crossmatch")
    ctx = _context(tmp_path, "match")
    job = JobOutput(ctx, JobConfig(output=ctx.output.uri), {"matches": MATCHES}, errors="table")
    items = job.row_writer("match_items")  # not declared: its schema from the schema module
    assert items.schema == MATCH_ITEMS and (items.run_id, items.attempt) == ("r1", job.attempt)
    row = {"run_id": "r1", "side": "queries", "item": "a.jpg#face0", "uri": "a.jpg", "sha256": "0" * 64}
    row["vector_sha256"] = "1" * 64
    job.add_files("match_items", items.write(pa.Table.from_pylist([row], schema=MATCH_ITEMS)))
    marker = job.commit({"mode": "search", "errors": 0})
    assert marker["summary"] == {"mode": "search", "errors": 0}  # the job's own count stands, nothing added
    assert {name: t["rows"] for name, t in marker["tables"].items()} == {"errors": 0, "match_items": 1, "matches": 0}
    assert read_table(ctx.output, "match_items", "r1").column("item").to_pylist() == ["a.jpg#face0"]
    assert "(tables matches/, errors/, match_items/)" in caplog.text
    with pytest.raises(KeyError, match="declare it"):  # a table of an embedding width has no schema of its own
        job.row_writer("faces")


def test_a_run_under_another_root_writes_stages_and_commits_there(tmp_path, caplog):
    caplog.set_level(logging.INFO, "crossmatch")
    ctx, elsewhere = _context(tmp_path, "export"), resolve(str(tmp_path / "elsewhere"))
    job = JobOutput(ctx, JobConfig(output=ctx.output.uri), {"training": TRAINING}, root=elsewhere)
    assert job.row_writer("training").root == elsewhere
    assert job.staging("pairs").uri == elsewhere.join("_staging", "r1", job.attempt, "pairs").uri
    row = {"run_id": "r1", "job": "export", "epoch": 0, "metric": "loss", "value": 1.0}
    job.write("training", pa.Table.from_pylist([row], schema=TRAINING))
    job.commit({"case": "c"})
    assert committed_runs(ctx.output) == []
    assert [m["run_id"] for m in committed_runs(elsewhere)] == ["r1"]
    assert read_table(elsewhere, "training", "r1").num_rows == 1
    assert f"committed run r1: {elsewhere.join('runs').uri} (tables training/)" in caplog.text


def test_stages_and_a_model_card_are_stored_in_the_order_the_jobs_stored_them(tmp_path):
    ctx = _context(tmp_path, "pipeline")
    stages = {"manifest": {"state": "done", "run_id": "m1"}}
    marker = JobOutput(ctx, JobConfig(output=ctx.output.uri)).commit({"stages": 1}, stages=stages)
    assert marker["stages"] == stages and _info_keys(marker) == ["config", "stages", "summary"]
    ctx = _context(tmp_path, "train_face")
    card = {"name": "head", "checkpoint_sha256": "f" * 64}
    trained = JobOutput(ctx, JobConfig(output=ctx.output.uri), {"training": TRAINING}, errors="table")
    marker = trained.commit({"model": "head"}, model_card=card)
    assert marker["model_card"] == card and _info_keys(marker) == ["config", "summary", "model_card"]
    assert set(marker["tables"]) == {"training", "errors"} and marker["summary"] == {"model": "head"}
