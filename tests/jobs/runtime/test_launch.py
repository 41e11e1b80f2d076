import logging

import pytest

from jobs.runtime.cli import default_run_id
from jobs.runtime.launch import run_job
from ops.io.errors import AccountingMismatch, JobFailed
from tests.jobs.runtime.test_cli import DemoConfig


def _run(argv, body):
    return run_job("demo", DemoConfig, body, argv, "a demo job")


def test_exit_codes_and_messages(caplog, tmp_path):
    caplog.set_level(logging.INFO, "crossmatch")
    seen = {}
    assert _run(["in/", "--output", str(tmp_path)], lambda c, ctx: seen.update(run_id=ctx.run_id)) == 0
    assert seen["run_id"] == default_run_id("demo", DemoConfig(source="in/"))

    def fails(config, ctx):
        raise JobFailed("the archive is empty: check --glob")

    assert _run(["in/"], fails) == 2
    assert "job demo failed: the archive is empty: check --glob" in caplog.text

    def bug(config, ctx):
        raise ZeroDivisionError("oops")

    assert _run(["in/"], bug) == 1
    assert "unexpected error (a bug" in caplog.text and "ZeroDivisionError" in caplog.text
    assert _run(["in/", "--run-id", "../escape"], lambda c, ctx: None) == 2
    assert _run(["in/", "--output", "gs://b/x"], lambda c, ctx: None) == 2
    assert "unsupported URI scheme 'gs'" in caplog.text


def test_the_log_never_shows_a_credential_even_in_a_traceback(caplog, monkeypatch, tmp_path):
    caplog.set_level(logging.INFO, "crossmatch")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "do-not-print-me")

    def leaks(config, ctx):
        ctx.log.info("connecting with do-not-print-me")
        raise RuntimeError("server said: signature for do-not-print-me is wrong at https://alice:pw@minio.local/b")

    assert _run(["in/", "--output", str(tmp_path)], leaks) == 1
    (ours,) = [h for h in logging.getLogger("crossmatch").handlers if getattr(h, "_crossmatch", False)]
    shown = "\n".join(ours.format(record) for record in caplog.records)  # as our stderr handler writes them
    assert "do-not-print-me" not in shown and shown.count("[redacted]") >= 3  # line, message, traceback
    assert "alice:pw" not in shown and "https://[redacted]@minio.local/b" in shown


def test_local_paths_are_refused_on_a_cluster_of_many_nodes(monkeypatch, tmp_path):
    import ray

    from jobs.embed_faces import EmbedFacesConfig
    from jobs.runtime.launch import check_locations

    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 16.0, "GPU": 2.0})
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True}, {"Alive": True}, {"Alive": False}])
    local = EmbedFacesConfig(manifest=str(tmp_path), output=str(tmp_path / "out"))
    with pytest.raises(
        JobFailed, match=r"this cluster has 2 nodes\): --output .*out, --manifest .*--models .*models\. .*s3://"
    ):
        check_locations(local)
    check_locations(EmbedFacesConfig(manifest=str(tmp_path), output=str(tmp_path), shared_paths=True))  # mounted
    check_locations(EmbedFacesConfig(manifest="s3://b/results", output="s3://b/results", models="s3://b/models"))

    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True}])
    check_locations(local)  # one node: its own folders are every node's
    monkeypatch.setattr(ray, "cluster_resources", lambda: {})
    with pytest.raises(JobFailed, match="head runs no work"):  # an autoscaling cluster before its workers come
        check_locations(local)


def test_a_root_that_holds_another_tools_tables_is_refused_and_an_empty_one_is_marked(caplog, tmp_path):
    theirs = tmp_path / "theirs"
    (theirs / "sales" / "_delta_log").mkdir(parents=True)  # another tool's Delta table
    (theirs / "sales" / "_delta_log" / "00000000000000000000.json").write_text("{}")
    ran = []
    assert _run(["in/", "--output", str(theirs)], lambda c, ctx: ran.append(1)) == 2
    assert not ran and "holds data crossmatch did not write (sales/ (a Delta table))" in caplog.text
    assert not (theirs / "crossmatch-root.json").exists()
    ours = tmp_path / "ours"
    assert _run(["in/", "--output", str(ours)], lambda c, ctx: ran.append(1)) == 0
    assert ran == [1] and (ours / "crossmatch-root.json").exists()
    (ours / "exports.parquet").write_bytes(b"PAR1")  # a file the user left there later: the root stays ours
    assert _run(["in/", "--output", str(ours)], lambda c, ctx: ran.append(2)) == 0


def test_exit_codes_mean_one_thing_an_accounting_mismatch_is_a_bug(caplog, tmp_path):
    def loses_a_row(config, ctx):
        raise AccountingMismatch("accounting mismatch: 3 objects listed but 2 results; nothing was committed")

    assert _run(["in/", "--output", str(tmp_path)], loses_a_row) == 1
    assert "3 objects listed but 2 results" in caplog.text and "a bug: please report it" in caplog.text
