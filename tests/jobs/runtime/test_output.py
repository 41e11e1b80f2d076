import logging

from jobs.runtime.cli import JobConfig
from jobs.runtime.launch import JobContext
from jobs.runtime.output import SourceJob, error_row
from ops.io.errors import TooLarge
from ops.io.schemas import MANIFEST
from ops.io.storage import resolve
from ops.io.tables import read_table


def test_a_source_job_commits_its_tables_errors_and_counts(tmp_path, caplog):
    caplog.set_level(logging.INFO, "crossmatch")
    ctx = JobContext("demo", "r1", resolve(str(tmp_path)), logging.getLogger("crossmatch"))
    job = SourceJob(ctx, JobConfig(output=str(tmp_path)), {"manifest": MANIFEST})
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
