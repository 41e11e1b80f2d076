"""Where a root's tables are and how delta-rs is called: run ids, data files, table stores, retries."""

from __future__ import annotations

import atexit
import base64
import gc
import json
import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from ops.io.errors import CommitError, StorageError
from ops.io.schemas import SCHEMA_VERSION
from ops.io.storage import Store, storage_errors

log = logging.getLogger("crossmatch")


RUNS_TABLE = "runs"


DATA = "data"  # data files live under <table>/data/<run_id>/


# A fixed-size list column's width, in its field's metadata in data files, which hold it as a list (see file_schema).
LIST_SIZE = b"crossmatch.list_size"


_RUN_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def check_run_id(run_id: str) -> str:
    """Run ids become object keys and SQL literals: letters, digits, '.', '_' and '-' only, 1-128 of them."""
    if (
        not isinstance(run_id, str)
        or not 0 < len(run_id) <= 128
        or not set(run_id) <= _RUN_ID_CHARS
        or not run_id[0].isalnum()
    ):
        raise ValueError(f"invalid run id {run_id!r}: use 1-128 letters, digits, '.', '_' or '-'")
    return run_id


def new_attempt() -> str:
    return _now().strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


@dataclass(frozen=True)
class DataFile:
    """One Parquet data file written into a table, not yet committed: ``path`` is relative to the table folder.
    Small and picklable: what a worker hands the driver instead of its rows."""

    table: str
    path: str
    rows: int
    bytes: int
    stats: str  # Delta statistics (JSON): row count, min, max and null count of the scalar columns


def table_store(root: Store, table: str) -> Store:
    return root.join(table)


def delta_uri(store: Store) -> str:
    return store.path if store.scheme == "file" else f"s3://{store.path}"


def delta_options(store: Store) -> dict[str, str]:
    """delta-rs storage options for ``store``: its endpoint and encryption; credentials come from the same AWS
    chain as every other client (environment, profile, instance role), read by delta-rs itself."""
    if store.scheme != "s3":
        return {}
    import os

    options = {"AWS_REGION": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"}
    if store.endpoint_url:
        options["AWS_ENDPOINT_URL"] = store.endpoint_url
        if store.endpoint_url.startswith("http://"):
            options["AWS_ALLOW_HTTP"] = "true"
    if store.sse:
        options["AWS_SERVER_SIDE_ENCRYPTION"] = store.sse[0]
        if store.sse[1]:
            options["AWS_SSE_KMS_KEY_ID"] = store.sse[1]
    return options


# A table opened in this process is kept and brought up to date by reading only the commits made since, not opened
# again (a listing, the last checkpoint and every commit since it, each read twice by delta-rs: about 15 requests on
# S3, a third of a second): a job looks at the runs table and the tables it writes dozens of times. Each look first
# checks that the newest commit the kept table read is still the one in the store (its size and ETag or mtime: one
# request), so a table removed since, or removed and made again, is opened afresh; then reads what came after it
# (two requests when nothing did). Time travel opens a table of its own, never this one. Bounded: a large table's
# state is its file list.
_OPENED: OrderedDict[tuple, tuple[Any, tuple | None]] = OrderedDict()  # key -> (table, stamp of its newest commit)
_OPENED_MOST = 16
_OPENED_LOCK = threading.Lock()


def _drop_opened() -> None:
    """The kept tables freed before the interpreter tears down, the cycles holding them too: an S3 table freed
    during finalization aborted a process now and then ("terminate called without an active exception", 1 exit in
    16), after a job that had succeeded."""
    _OPENED.clear()
    gc.collect()


atexit.register(_drop_opened)


def open_table(root: Store, table: str, version: int | datetime | None = None):
    """The Delta table ``table`` under ``root`` (at ``version``: a number or a time), or None when there is none.
    A folder holding files but no Delta log is refused: it is not output of this crossmatch. The latest version is
    shared within the process (see _OPENED): a caller that wants another version asks for it here."""
    store = table_store(root, table)
    key = (store.uri, tuple(sorted(delta_options(store).items())))
    if version is None and (dt := _kept(store, key)) is not None:
        return dt
    if not _is_delta(store):
        return None
    dt = _open(store)
    if dt is None:
        return None
    if version is not None:
        delta_call(store.uri, dt.load_as_version, version)
        return dt
    with _OPENED_LOCK:
        _OPENED[key] = (dt, _stamp(store, dt.version()))
        while len(_OPENED) > _OPENED_MOST:
            _OPENED.popitem(last=False)
    return dt


def _kept(store: Store, key: tuple):
    """The kept table brought up to date, or None (and no longer kept) when its newest commit is not in the store
    as it was read: removed, made again, or the log cleaned up since."""
    with _OPENED_LOCK:
        dt, stamp = _OPENED.pop(key, (None, None))
        if dt is None or stamp is None or _stamp(store, dt.version()) != stamp:
            return None
        try:
            seen = dt.version()
            delta_call(store.uri, dt.update_incremental)
        except StorageError:
            return None
        _OPENED[key] = (dt, stamp if dt.version() == seen else _stamp(store, dt.version()))
        return dt


def _stamp(store: Store, version: int) -> tuple | None:
    """What tells the commit file of ``version`` apart from any other under its name: size and ETag (S3) or
    modification time (a folder). None when there is none."""
    commit = store.join("_delta_log", f"{version:020d}.json")
    try:
        with storage_errors(commit.uri):
            info = commit.fs.info(commit.path)
    except (FileNotFoundError, StorageError):
        return None
    return (info.get("size"), info.get("ETag") or info.get("mtime") or info.get("LastModified"))


def _is_delta(store: Store) -> bool:
    """Whether ``store`` is a Delta table (False when there is nothing there, or only a first run's data files not
    committed yet); a folder holding anything else is refused."""
    with storage_errors(store.uri):
        if store.join("_delta_log").exists():
            return True
        held = [] if not store.exists() else store.fs.ls(store.path, detail=False)
    names = {p.rstrip("/").rsplit("/", 1)[-1] for p in held}
    if "_delta_log" in names:  # created by a concurrent run since the first look
        return True
    # Data files of a first run not committed yet are ours; anything else is not a table we wrote.
    if names - {DATA}:
        raise CommitError(
            f"{store.uri} holds files but is not a Delta table (no _delta_log/): output of an older "
            "crossmatch or of another tool; write to a new output root"
        )
    return False


def _open(store: Store):
    from deltalake import DeltaTable

    for wait in (0.05, 0.1, 0.2, 0.4, None):
        try:
            return delta_call(store.uri, DeltaTable, delta_uri(store), storage_options=delta_options(store))
        except StorageError as exc:
            # A concurrent run has made _delta_log/ but not yet put its first commit in it.
            if "no files in log segment" not in str(exc).lower():
                raise
            if wait is None:
                return None
            time.sleep(wait)
    return None


# What delta-rs reports when the store failed a request in passing. It retries a request that gets no answer or a
# 5xx itself, but not one whose answer stops short of its length: tried again here.
_TRANSIENT = ("body error", "body from connection", "end of file before", "connection reset", "connection closed")


def delta_call(uri: str, fn: Callable, *args, **kwargs):
    """A delta-rs call on the table at ``uri``, its errors translated, tried again after a transient failure."""
    for wait in (0.1, 0.4, 1.6, None):
        try:
            with storage_errors(uri):
                return fn(*args, **kwargs)
        except StorageError as exc:
            if wait is None or not _is_transient(exc):
                raise
            log.info("%s: a transient storage failure, tried again in %.1f s (%s)", uri, wait, _first_line(exc))
            time.sleep(wait)
    raise AssertionError("unreachable")


def _is_transient(exc: BaseException) -> bool:
    text = f"{exc} {exc.__cause__ or ''}".lower()
    return any(words in text for words in _TRANSIENT)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__


def table_schema(dt) -> pa.Schema:
    """The exact Arrow schema a crossmatch table was created with (kept in its description)."""
    described = json.loads(dt.metadata().description or "{}")
    if "arrow_schema" not in described:
        raise CommitError(f"{dt.table_uri} is a Delta table, but not one crossmatch wrote (no schema in its metadata)")
    if described.get("schema_version", 0) > SCHEMA_VERSION:
        raise CommitError(
            f"{dt.table_uri} was written with schema version {described['schema_version']}, newer than this "
            f"crossmatch ({SCHEMA_VERSION}): upgrade to read it"
        )
    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(described["arrow_schema"])))


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("crossmatch")
    except PackageNotFoundError:
        return "unknown"


def _now() -> datetime:
    return datetime.now(UTC)


def _file_index(dt) -> list[dict]:
    """The table's current files: path, size, and the run and attempt their rows belong to (None when the file's
    statistics do not say one run attempt: not a file this crossmatch wrote)."""
    actions = pa.table(dt.get_add_actions(flatten=True))
    if not actions.num_rows:
        return []
    names = actions.column_names

    def column(name: str) -> list:
        return actions.column(name).to_pylist() if name in names else [None] * actions.num_rows

    files = []
    for path, size, rows, r0, r1, a0, a1 in zip(
        column("path"),
        column("size_bytes"),
        column("num_records"),
        column("min.run_id"),
        column("max.run_id"),
        column("min.attempt"),
        column("max.attempt"),
        strict=True,
    ):
        one = r0 is not None and r0 == r1 and a0 == a1
        run, attempt = (r0, a0) if one else (None, None)
        files.append({"path": path, "size": size, "rows": rows, "run_id": run, "attempt": attempt})
    return files
