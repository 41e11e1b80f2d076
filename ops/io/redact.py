"""Credentials never leave the process: text bound for a log line, an error row, a commit marker or a message goes
through ``redact`` first."""

from __future__ import annotations

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
