from ops.io.errors import StorageError
from ops.io.redact import redact


def test_redact_removes_credentials_and_url_passwords(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t/Key+value")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "token-0123456789")
    text = "failed with s3cr3t/Key+value and token-0123456789 at https://alice:pw@minio.local:9000/b"
    assert redact(text) == "failed with [redacted] and [redacted] at https://[redacted]@minio.local:9000/b"
    assert redact("s3://bucket/key and /plain/path") == "s3://bucket/key and /plain/path"


def test_a_storage_error_redacts_its_own_message(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t/Key+value")
    assert str(StorageError("denied with s3cr3t/Key+value")) == "denied with [redacted]"
