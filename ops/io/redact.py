"""Credentials never leave the process: text bound for a log line, an error row, a commit marker or a message goes
through ``redact`` first."""

from __future__ import annotations

import logging
import os
import re

# Credentials that must never reach a log line, an error row, a commit marker or a message: their values are
# replaced wherever text leaves the process (see redact). Short values are left alone: they would mangle text.
SECRET_VARS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID")
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s]+@")


def redact(text: str) -> str:
    """``text`` with the process's AWS credentials and any user:password@ of a URL replaced by [redacted]."""
    for var in SECRET_VARS:
        value = os.environ.get(var)
        if value and len(value) >= 8:
            text = text.replace(value, "[redacted]")
    return _USERINFO.sub(r"\1[redacted]@", text)


def redact_log_records() -> None:
    """From now on every log record of this process is redacted as it is made, whatever its logger and whoever's
    handler prints it: botocore's request log (its Authorization header names the access key id), Ray's "Unhandled
    error" and Ray Data's failures (a worker's traceback, with the raw error a StorageError was made from), a root
    handler of the process's owner. A formatter on our own handler reaches none of these. Installing it twice adds
    nothing."""
    make = logging.getLogRecordFactory()
    if getattr(make, "redacts", False):
        return

    def redacted(*args, **kwargs) -> logging.LogRecord:
        record = make(*args, **kwargs)
        _redact_record(record)
        return record

    redacted.redacts = True
    logging.setLogRecordFactory(redacted)


def _redact_record(record: logging.LogRecord) -> None:
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a malformed logging call: logging reports it when the record is printed
        return
    if (clean := redact(message)) != message:
        record.msg, record.args = clean, None
    if record.exc_info and not record.exc_text:
        # Formatters print exc_text when it is set, so the traceback is redacted once here for every handler.
        text = logging.Formatter().formatException(record.exc_info)
        if (clean := redact(text)) != text:
            record.exc_text = clean
    if record.stack_info:
        record.stack_info = redact(record.stack_info)
