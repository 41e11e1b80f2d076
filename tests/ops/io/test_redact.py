import io
import logging

from ops.io.errors import StorageError
from ops.io.redact import redact, redact_log_records


def test_redact_removes_credentials_and_url_passwords(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t/Key+value")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "token-0123456789")
    text = "failed with s3cr3t/Key+value and token-0123456789 at https://alice:pw@minio.local:9000/b"
    assert redact(text) == "failed with [redacted] and [redacted] at https://[redacted]@minio.local:9000/b"
    assert redact("s3://bucket/key and /plain/path") == "s3://bucket/key and /plain/path"


def test_a_storage_error_redacts_its_own_message(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t/Key+value")
    assert str(StorageError("denied with s3cr3t/Key+value")) == "denied with [redacted]"


def test_every_log_record_is_redacted_whichever_logger_and_handler(monkeypatch):
    """A library's log record printed by a handler that is not ours (the process owner's, Ray's): its message, its
    arguments and its traceback are redacted all the same; a record without a credential keeps its arguments."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE0123")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t/Key+value")
    logger, out = logging.getLogger("a.library"), io.StringIO()  # botocore's, say, printed by someone else's handler
    logger.addHandler(logging.StreamHandler(out))
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    make = logging.getLogRecordFactory()
    try:
        redact_log_records()
        installed = logging.getLogRecordFactory()
        redact_log_records()
        assert logging.getLogRecordFactory() is installed  # twice is once
        logger.debug("Sending http request: headers=%s", {"Authorization": b"Credential=AKIDEXAMPLE0123/2026"})
        try:
            raise OSError("Error performing GET https://alice:pw@minio.local/b/k signed with s3cr3t/Key+value")
        except OSError:
            logger.exception("request failed")
        kept = logger.makeRecord("a.library", logging.INFO, "f", 1, "%d files", (3,), None)
    finally:
        logging.setLogRecordFactory(make)
    shown = out.getvalue()
    assert "AKIDEXAMPLE0123" not in shown and "alice:pw" not in shown and "s3cr3t" not in shown
    assert "Credential=[redacted]/2026" in shown and "GET https://[redacted]@minio.local/b/k" in shown
    assert "signed with [redacted]" in shown and "Traceback" in shown
    assert (kept.msg, kept.args) == ("%d files", (3,))
