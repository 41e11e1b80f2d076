"""Results as Delta Lake tables: every engine reads only committed runs, a rerun replaces, deletion erases.

Layout under an output root (a local folder or an S3 prefix)::

    <root>/<table>/_delta_log/...                       each table is a Delta table (delta-rs, no JVM)
    <root>/<table>/data/<run_id>/<attempt>-*.parquet    its data files: zstd Parquet, one run attempt per file
    <root>/runs/                                        a Delta table too: one row per committed run

A run writes data files into each table (workers write their own, the driver only small tables), then commits:
each table's files are appended to its log in one transaction, and last the run's row goes into ``runs`` in one
transaction that replaces the run's earlier row. **A row counts when its (run_id, attempt) is in runs**, so a reader
never sees half a run, also when the driver died between two table commits, and a rerun (a new attempt of the same
run id) replaces the old rows at the instant its runs row lands; the old attempt's rows are then deleted. Any engine
asks for exactly the committed rows with one join, e.g. DuckDB::

    SELECT f.* FROM delta_scan('s3://bucket/out/faces') f SEMI JOIN delta_scan('s3://bucket/out/runs') r
    USING (run_id, attempt)

Each data file holds one attempt of one run, so file statistics (min = max run_id) prune a read to one run's files.
The exact Arrow schema of the schema module (embedding widths, field docs, schema version) is kept in the table's
description, since Delta's own types cannot say ``fixed_size_list<float32>[D]``: data files hold those columns as
Delta's variable-length lists, the width in the field's metadata, so that an engine that takes the types from the
Delta log (Polars refuses a file whose type differs) reads them, and crossmatch's readers cast them back.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import secrets
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from ops.io.errors import CommitError, StorageError, canonical, vocabulary
from ops.io.redact import redact
from ops.io.root import RUN_FOLDERS, STAGING, relative_locations, require_ours
from ops.io.schemas import RUNS, SCHEMA_VERSION, conform, schema_for, stored
from ops.io.storage import Store, storage_errors

log = logging.getLogger("crossmatch")

RUNS_TABLE = "runs"
DATA = "data"  # data files live under <table>/data/<run_id>/
# Row groups of about this much Arrow memory: large enough for fast scans, small enough to stream.
ROW_GROUP_BYTES = 64 << 20
# Files rotate past this much data, so that a big run is a handful of large files rather than thousands of tiny ones.
FILE_BYTES = 512 << 20
# Concurrent commits to one table (two pipelines into one root) conflict now and then: each retried this often.
COMMIT_ATTEMPTS = 8
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


# -- where things are --------------------------------------------------------------------------------------------


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


def open_table(root: Store, table: str, version: int | datetime | None = None):
    """The Delta table ``table`` under ``root`` (at ``version``: a number or a time), or None when there is none.
    A folder holding files but no Delta log is refused: it is not output of this crossmatch."""
    from deltalake import DeltaTable

    store = table_store(root, table)
    with storage_errors(store.uri):
        is_delta = store.join("_delta_log").exists()
        held = [] if is_delta or not store.exists() else store.fs.ls(store.path, detail=False)
        names = {p.rstrip("/").rsplit("/", 1)[-1] for p in held}
        is_delta = is_delta or "_delta_log" in names  # created by a concurrent run since the first look
    if not is_delta:
        # Data files of a first run not committed yet are ours; anything else is not a table we wrote.
        foreign = names - {DATA}
        if foreign:
            raise CommitError(
                f"{store.uri} holds files but is not a Delta table (no _delta_log/): output of an older "
                "crossmatch or of another tool; write to a new output root"
            )
        return None
    for wait in (0.05, 0.1, 0.2, 0.4, None):
        try:
            dt = delta_call(store.uri, DeltaTable, delta_uri(store), storage_options=delta_options(store))
            break
        except StorageError as exc:
            # A concurrent run has made _delta_log/ but not yet put its first commit in it.
            if "no files in log segment" not in str(exc).lower():
                raise
            if wait is None:
                return None
            time.sleep(wait)
    if version is not None:
        delta_call(store.uri, dt.load_as_version, version)
    return dt


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


# -- writing -----------------------------------------------------------------------------------------------------


def write_data_files(
    root: Store, table: str, data: pa.Table, schema: pa.Schema | None, run_id: str, attempt: str
) -> list[DataFile]:
    """Write ``data`` (rows of run ``run_id``) as Parquet data files of ``table`` (one unless it is huge),
    invisible until the run commits them: what a Ray worker calls on its own rows."""
    writer = TableWriter(root, table, run_id, attempt, schema)
    writer.write(data)
    return writer.close()


class TableWriter:
    """Writes one table's rows of one run attempt as zstd Parquet data files with the table's explicit schema."""

    def __init__(self, root: Store, table: str, run_id: str, attempt: str, schema: pa.Schema | None = None) -> None:
        self.root, self.table, self.run_id, self.attempt = root, table, run_id, attempt
        schema = schema or schema_for(table)
        if schema is None:
            raise ValueError(f"table {table} needs an explicit schema (its width depends on the model)")
        self.schema = stored(schema)
        self.file_schema = file_schema(self.schema)
        self.store = table_store(root, table)
        self.files: list[DataFile] = []
        self._pending: list[pa.Table] = []
        self._pending_bytes = 0
        self._writer: pq.ParquetWriter | None = None
        self._sink = None
        self._stats: list[pa.Table] = []

    def write(self, data: pa.Table) -> None:
        """Buffer rows; they reach storage in row groups of about ROW_GROUP_BYTES."""
        if data.num_rows == 0:
            return
        if "attempt" not in data.column_names:
            data = data.append_column("attempt", pa.array([self.attempt] * data.num_rows, pa.string()))
        data = conform(data, self.schema)
        if set(data.column("run_id").unique().to_pylist()) != {self.run_id}:
            raise ValueError(f"rows of another run written into run {self.run_id} of {self.table}")
        self._pending.append(data)
        self._pending_bytes += data.nbytes
        if self._pending_bytes >= ROW_GROUP_BYTES:
            self._flush()

    def close(self) -> list[DataFile]:
        """Write what is buffered and return the files written (none for a table that got no rows)."""
        self._flush()
        if self._writer is not None:
            with storage_errors(self.store.join(self._path).uri):
                self._finish_file()
        return list(self.files)

    def _flush(self) -> None:
        if not self._pending:
            return
        with storage_errors(self.store.uri):
            group = pa.concat_tables(self._pending)
            self._pending, self._pending_bytes = [], 0
            if self._writer is None:
                self._path = f"{DATA}/{self.run_id}/{self.attempt}-{uuid.uuid4().hex[:12]}.parquet"
                self._sink = self.store.join(self._path).open("wb")
                self._writer = pq.ParquetWriter(self._sink, self.file_schema, compression="zstd")
            self._writer.write_table(group.cast(self.file_schema), row_group_size=group.num_rows)
            self._stats.append(_column_stats(group))
            if self._sink.tell() >= FILE_BYTES:
                self._finish_file()

    def _finish_file(self) -> None:
        self._writer.close()
        size = self._sink.tell()
        self._sink.close()
        stats = _merge_stats(self._stats)
        self.files.append(DataFile(self.table, self._path, stats["numRecords"], size, json.dumps(stats)))
        self._writer = self._sink = None
        self._stats = []


def file_schema(schema: pa.Schema) -> pa.Schema:
    """The schema data files are written with: ``schema``, each fixed-size list a list as in the Delta log (Polars
    reads a table by the log's types and refuses a file whose Arrow type says a fixed size), its width in the field's
    metadata for ``exact``."""
    return pa.schema(
        [
            f.with_type(pa.list_(f.type.value_field)).with_metadata(
                (f.metadata or {}) | {LIST_SIZE: str(f.type.list_size).encode()}
            )
            if pa.types.is_fixed_size_list(f.type)
            else f
            for f in schema
        ],
        metadata=schema.metadata,
    )


def exact(data: pa.Table) -> pa.Table:
    """Rows read from data files without the table's schema, each column a data file holds as a list for a
    fixed-size one (``file_schema``) cast back to its width: files written before that hold it fixed already."""
    for i, f in enumerate(data.schema):
        if pa.types.is_list(f.type) and f.metadata and LIST_SIZE in f.metadata:
            fixed = pa.list_(f.type.value_type, int(f.metadata[LIST_SIZE]))
            metadata = {k: v for k, v in f.metadata.items() if k != LIST_SIZE}
            field = f.with_type(fixed).with_metadata(metadata) if metadata else f.with_type(fixed).remove_metadata()
            data = data.set_column(i, field, data.column(i).cast(fixed))
    return data


def _column_stats(data: pa.Table) -> pa.Table:
    """One row: the row count and each scalar column's min, max and null count (Delta's file statistics)."""
    row: dict[str, Any] = {"numRecords": data.num_rows}
    for name, column in zip(data.column_names, data.columns, strict=True):
        kind = column.type
        if pa.types.is_string(kind) or pa.types.is_integer(kind) or pa.types.is_floating(kind):
            bounds = pc.min_max(column)
            row[f"min.{name}"], row[f"max.{name}"] = bounds["min"].as_py(), bounds["max"].as_py()
        if not pa.types.is_nested(kind):
            row[f"null.{name}"] = column.null_count
    return pa.Table.from_pylist([row])


def _merge_stats(parts: list[pa.Table]) -> dict:
    merged: dict[str, Any] = {"numRecords": 0, "minValues": {}, "maxValues": {}, "nullCount": {}}
    for part in parts:
        for key, value in part.to_pylist()[0].items():
            if key == "numRecords":
                merged["numRecords"] += value
                continue
            kind, name = key.split(".", 1)
            if kind == "null":
                merged["nullCount"][name] = merged["nullCount"].get(name, 0) + value
            elif value is not None and not (isinstance(value, float) and not math.isfinite(value)):
                # NaN and infinities have no JSON: delta-rs would drop the file's statistics whole
                target, pick = (merged["minValues"], min) if kind == "min" else (merged["maxValues"], max)
                target[name] = value if name not in target else pick(target[name], value)
    return merged


@dataclass
class OutputRun:
    """One attempt at a run's output under ``root``: tables are written, then committed together or not at all."""

    root: Store
    run_id: str
    job: str
    attempt: str = field(default_factory=new_attempt)
    started_at: datetime = field(default_factory=lambda: _now())
    _writers: dict[str, TableWriter] = field(default_factory=dict)
    _schemas: dict[str, pa.Schema] = field(default_factory=dict)
    _files: dict[str, list[DataFile]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_run_id(self.run_id)

    def staging(self, *parts: str) -> Store:
        """Where this attempt's workers stage what passes between its steps: ``<root>/_staging/<run>/<attempt>/``."""
        return self.root.join(STAGING, self.run_id, self.attempt, *parts)

    def check_writable(self) -> None:
        """Fail now, not after hours of work, when the output root cannot be written."""
        probe = self.root.join(f".write-check-{self.attempt}")
        probe.put_atomic(b"")
        probe.remove_tree()

    def check_schema(self, table: str, schema: pa.Schema) -> None:
        """Refuse now, before any work, a table whose stored schema differs from ``schema`` (another model's
        embedding width, another schema version): a table holds one schema."""
        self._schemas[table] = stored(schema)
        dt = open_table(self.root, table)
        if dt is not None:
            _same_schema(dt, table, stored(schema))

    def write(self, table: str, data: pa.Table, schema: pa.Schema | None = None) -> None:
        """Append rows to ``table`` (invisible to readers until :meth:`commit`); ``schema`` for sized tables."""
        if table == "errors" and "message" in data.column_names:  # exception text can quote credentials
            i = data.column_names.index("message")
            redacted = [redact(m) if m else m for m in data.column(i).to_pylist()]
            data = data.set_column(i, "message", pa.array(redacted, pa.string()))
        if table not in self._writers:
            schema = schema or self._schemas.get(table)
            self._writers[table] = TableWriter(self.root, table, self.run_id, self.attempt, schema)
            self._schemas[table] = self._writers[table].schema
        self._writers[table].write(data)

    def add_files(self, table: str, files: Iterable[DataFile], schema: pa.Schema | None = None) -> None:
        """Data files of ``table`` written by workers (``write_data_file``), to be committed with the run."""
        if schema is not None or table not in self._schemas:
            self._schemas[table] = stored(schema or schema_for(table))
        self._files.setdefault(table, []).extend(f for f in files if f is not None)

    def write_errors(self, rows: list[dict], stage: str | None = None) -> None:
        """Error rows of this job and run: each with uri, sha256, error_type, message and (or ``stage``) stage."""
        if rows:
            self.write("errors", error_table(rows, self.run_id, self.job, stage))

    def commit(self, tables: tuple[str, ...] = (), **info: Any) -> dict:
        """Commit every table of this attempt, then the run's row in ``runs``: from that instant readers see the
        whole run (and no longer an earlier attempt of it); then the earlier attempt's rows are deleted.

        ``tables`` names tables to record even when they got no rows (so an empty errors table is recorded as
        empty rather than missing); ``info`` (config, counts, models) is stored in the runs row."""
        files = {name: writer.close() for name, writer in self._writers.items()}
        for name, extra in self._files.items():
            files.setdefault(name, []).extend(extra)
        for name in tables:
            files.setdefault(name, [])
        schemas = {name: self._schemas.get(name) or stored(schema_for(name)) for name in files}
        for name in sorted(files):  # every table's schema checked before any is committed
            if (dt := open_table(self.root, name)) is not None:
                _same_schema(dt, name, schemas[name])
        for name, fs in sorted(files.items()):
            _transact(self.root, name, schemas[name], fs, lambda _: [], self.run_id, self.attempt)
        summary = {name: {"rows": sum(f.rows for f in fs), "files": len(fs)} for name, fs in sorted(files.items())}
        if isinstance(info.get("config"), dict):  # a root copied elsewhere still names its own tables
            info["config"] = relative_locations(self.root, info["config"])
        record = {
            "run_id": self.run_id,
            "attempt": self.attempt,
            "job": self.job,
            "started_at": self.started_at,
            "committed_at": _now(),
            "schema_version": SCHEMA_VERSION,
            "crossmatch_version": _version(),
            "tables": json.dumps(summary),
            "info": redact(json.dumps(info, default=str)),  # configs can hold URLs with user:password@
        }
        earlier = _run_record(self.root, self.run_id)
        _replace_run_row(self.root, record)
        # Readers now see this attempt only; earlier attempts' files leave the tables (and storage at vacuum).
        stale = set(files) | set(json.loads(earlier["tables"]) if earlier else {})
        for name in sorted(stale):
            try:
                dt = open_table(self.root, name)
                schema = schemas.get(name) or (table_schema(dt) if dt is not None else None)
                if schema is not None:
                    _transact(self.root, name, schema, [], self._superseded, **_ids(record))
            except (StorageError, CommitError) as exc:  # garbage: readers never count it; the next commit retries
                log.warning("earlier attempts of run %s stay in %s for now: %s", self.run_id, name, exc)
        return _as_marker(record)

    def _superseded(self, files: list[dict]) -> list[dict]:
        """This run's files of other attempts, while ``runs`` still names this attempt: an overlapping attempt of
        the same run that committed after this one keeps its files."""
        current = _run_record(self.root, self.run_id)
        if current is None or current["attempt"] != self.attempt:
            return []
        return _of_run(self.run_id, self.attempt)(files)

    def abort(self) -> None:
        """Delete this attempt's data files (best effort: uncommitted files are never read anyway)."""
        names = set(self._writers) | set(self._files)
        self._writers.clear()
        self._files.clear()
        for name in names:
            folder = table_store(self.root, name).join(DATA, self.run_id)
            try:
                for path in folder.fs.ls(folder.path, detail=False):
                    if path.rsplit("/", 1)[-1].startswith(self.attempt):
                        folder.at(path).remove_tree()
            except (FileNotFoundError, StorageError):
                continue


def error_table(rows: list[dict], run_id: str, job: str, stage: str | None = None) -> pa.Table:
    """Error rows as the errors table's rows: each with uri, sha256, error_type, message and stage, named in the
    vocabulary (a name the vocabulary lacks is a bug: kept in the message, never lost)."""
    fields = ("uri", "sha256", "stage", "error_type", "message")
    data = [{"run_id": run_id, "job": job, "stage": stage} | {k: r[k] for k in fields if k in r} for r in rows]
    for row in data:
        name = row["error_type"]
        if name not in vocabulary():
            row["error_type"] = canonical(name)
            row["message"] = f"[{name}] {row.get('message') or ''}"
        if row.get("message"):
            row["message"] = redact(row["message"])
    return pa.Table.from_pylist(data, schema=schema_for("errors"))


def _same_schema(dt, table: str, schema: pa.Schema) -> list[pa.Field]:
    """Refuse a schema other than the table's; returns the nullable columns ``schema`` adds at its end (a newer
    crossmatch's additions: the table is then evolved to hold them, and its earlier rows read them as null)."""
    have = table_schema(dt)
    plain, new = have.remove_metadata(), schema.remove_metadata()
    if plain.equals(new):
        return []
    head = pa.schema(list(new)[: len(plain)])
    added = list(new)[len(plain) :]
    if len(new) > len(plain) and head.equals(plain) and all(f.nullable for f in added):
        return [schema.field(f.name) for f in added]
    differ = [
        f"{f.name}: {have.field(f.name).type if f.name in have.names else 'missing'} here, {f.type} in this run"
        for f in schema
        if f.name not in have.names or have.field(f.name).type != f.type
    ]
    raise CommitError(
        f"table {table} under {dt.table_uri} holds another schema ({'; '.join(differ) or 'column order'}): "
        "another model's width or another version; write to another output root"
    )


def _description(table: str, schema: pa.Schema) -> str:
    """The table description crossmatch keeps: its name, schema version and exact Arrow schema."""
    arrow = base64.b64encode(schema.serialize().to_pybytes()).decode()
    return json.dumps({"crossmatch": table, "schema_version": SCHEMA_VERSION, "arrow_schema": arrow})


def _evolve(dt, store: Store, table: str, schema: pa.Schema, added: list[pa.Field]) -> None:
    """Add ``added`` (nullable columns at the end) to the table: to its Delta schema, which every engine reads
    (earlier files then read them as null), and to the exact Arrow schema in its description. Two commits, each
    skipped when already made (a run that died between them is completed by the next)."""
    delta_names = {f.name for f in dt.schema().fields}
    missing = [f for f in added if f.name not in delta_names]
    if missing:
        dt.alter.add_columns(list(_delta_schema(pa.schema(missing)).fields))
    dt.alter.set_table_description(_description(table, schema))
    log.info("table %s under %s now holds column(s) %s", table, store.uri, ", ".join(f.name for f in added))


def _transact(
    root: Store,
    table: str,
    schema: pa.Schema,
    adds: list[DataFile],
    doomed: Callable[[list[dict]], list[dict]],
    run_id: str,
    attempt: str,
) -> list[dict]:
    """One transaction on ``table`` (created on first use, with the schema in its metadata): ``adds`` appended and
    the current files that ``doomed(files)`` picks removed. Only the log is read and written, never a data file:
    every data file holds one attempt of one run, so replacing or deleting a run is choosing files by their
    statistics. A concurrent commit that wins is waited out and the choice made again. Returns the removed files."""
    from deltalake import CommitProperties
    from deltalake.transaction import AddAction, RemoveAction, create_table_with_add_actions

    store = table_store(root, table)
    now = int(time.time() * 1000)
    added = [AddAction(f.path, f.bytes, {}, now, True, f.stats) for f in adds]
    props = CommitProperties(custom_metadata={"crossmatch.run_id": run_id, "crossmatch.attempt": attempt})
    for attempt_no in range(COMMIT_ATTEMPTS):
        dt = open_table(root, table)
        removed: list[dict] = []
        if dt is not None:
            new_columns = _same_schema(dt, table, schema)
            if new_columns:
                with storage_errors(store.uri):
                    _evolve(dt, store, table, schema, new_columns)
                dt = open_table(root, table)
            with storage_errors(store.uri):
                files = _file_index(dt)
            removed = doomed(files)  # outside the translation of errors: a caller's own exception stays its own
        try:
            with storage_errors(store.uri):
                if dt is None:
                    description = _description(table, schema)
                    create_table_with_add_actions(
                        delta_uri(store),
                        _delta_schema(schema),
                        added,
                        mode="error",  # a concurrent run that created it first: retried as an append
                        name=table,
                        description=description,
                        storage_options=delta_options(store),
                        commit_properties=props,
                    )
                    return []
                gone = [RemoveAction(f["path"], True, now, f["size"], {}) for f in removed]
                if added or gone:
                    dt.create_write_transaction(
                        [*added, *gone], mode="append", schema=_delta_schema(schema), commit_properties=props
                    )
            return removed
        except StorageError as exc:
            # A conflict, or a store that failed in passing (a commit whose answer was lost may have landed: the
            # files to remove are chosen again from the table as it is now, and adding a file twice adds it once).
            if attempt_no + 1 == COMMIT_ATTEMPTS or not (_is_conflict(exc) or _is_transient(exc)):
                raise
            time.sleep(0.05 * 2**attempt_no + secrets.randbelow(50) / 1000)
    return []


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


def _is_conflict(exc: BaseException) -> bool:
    text = f"{exc} {exc.__cause__ or ''}".lower()
    return any(word in text for word in ("conflict", "exists", "version", "concurrent", "transaction"))


def _delta_schema(schema: pa.Schema):
    """The Delta schema of ``schema`` (fixed-size lists become arrays: Delta has no fixed width)."""
    from deltalake import Schema

    plain = pa.schema(
        [
            f.with_type(pa.list_(f.type.value_type)) if pa.types.is_fixed_size_list(f.type) else f
            for f in schema.remove_metadata()
        ]
    )
    return Schema.from_arrow(plain)


def _of_run(run_id: str, keep_attempt: str | None = None) -> Callable[[list[dict]], list[dict]]:
    """Picks the files of run ``run_id`` (but not those of attempt ``keep_attempt``): by their statistics, or by
    their path where a file has none."""

    def picked(f: dict) -> bool:
        if f["run_id"] is not None:
            return f["run_id"] == run_id and f["attempt"] != keep_attempt
        folder = f"{DATA}/{run_id}/"
        return f["path"].startswith(folder) and not (keep_attempt and f["path"].startswith(folder + keep_attempt))

    return lambda files: [f for f in files if picked(f)]


def _replace_run_row(root: Store, record: dict) -> None:
    """The run's row in ``runs``, replacing its earlier one, in one transaction."""
    row = pa.Table.from_pylist([record], schema=RUNS)
    files = write_data_files(root, RUNS_TABLE, row, RUNS, record["run_id"], record["attempt"])
    _transact(root, RUNS_TABLE, RUNS, files, _of_run(record["run_id"], record["attempt"]), **_ids(record))


def _ids(record: dict) -> dict:
    return {"run_id": record["run_id"], "attempt": record["attempt"]}


# -- reading -----------------------------------------------------------------------------------------------------


def committed_runs(root: Store, as_of: datetime | None = None) -> list[dict]:
    """The committed runs under ``root`` (as they were at ``as_of``), oldest commit first: each the runs row with
    ``tables`` parsed and the job's ``info`` (config, summary, models) merged in."""
    dt = open_table(root, RUNS_TABLE)
    if dt is None:
        return []
    if as_of is not None:  # by the commits' own timestamps, the clock that stamped the other table's version too
        stamp = as_of.timestamp() * 1000
        versions = [h["version"] for h in delta_call(dt.table_uri, dt.history) if h["timestamp"] <= stamp]
        if not versions:
            return []
        with storage_errors(dt.table_uri):
            dt.load_as_version(max(versions))
    with storage_errors(dt.table_uri):
        rows = _scan(root, RUNS_TABLE, dt, None, None).to_pylist()
    return [_as_marker(r) for r in sorted(rows, key=lambda r: r["committed_at"])]


def _as_marker(row: dict) -> dict:
    info = json.loads(row["info"]) if isinstance(row["info"], str) else row["info"]
    marker = {k: v for k, v in row.items() if k not in ("info", "tables")}
    for key in ("started_at", "committed_at"):
        if isinstance(marker[key], datetime):
            marker[key] = marker[key].isoformat()
    return marker | {"tables": json.loads(row["tables"])} | info


def _run_record(root: Store, run_id: str) -> dict | None:
    dt = open_table(root, RUNS_TABLE)
    if dt is None:
        return None
    rows = _scan(root, RUNS_TABLE, dt, None, pc.field("run_id") == run_id).to_pylist()
    return rows[0] if rows else None


def read_table(
    root: Store,
    table: str,
    run_id: str | None = None,
    columns: list[str] | None = None,
    version: int | None = None,
    filter: pc.Expression | None = None,
    limit: int | None = None,
) -> pa.Table:
    """The committed rows of ``table`` under ``root`` (one run's, or every committed run's), only ``columns``
    (default all but ``attempt``), only the files that can hold those runs' rows. ``version`` reads the table as
    it was at that Delta version, with the runs committed at that time; ``limit`` stops after that many rows."""
    dt = open_table(root, table, version)
    at = None
    if dt is not None and version is not None:
        at = datetime.fromtimestamp(dt.history(1)[0]["timestamp"] / 1000, UTC)
    runs = _runs(root, run_id, at)
    schema = table_schema(dt) if dt is not None else schema_for(table)
    wanted = columns or [n for n in (schema.names if schema is not None else []) if n != "attempt"]
    if dt is None or not runs:
        if schema is None:  # a sized table nobody wrote: no columns to promise
            return pa.table({})
        return stored(schema).empty_table().select(wanted)
    committed = pc.field("run_id").isin([r["run_id"] for r in runs]) & pc.field("attempt").isin(
        [r["attempt"] for r in runs]
    )
    pairs = {(r["run_id"], r["attempt"]) for r in runs}
    if filter is not None:
        committed = committed & filter
    needed = list(dict.fromkeys([*wanted, "run_id", "attempt"]))
    rows = _scan(
        root, table, dt, needed, committed, keep=lambda lo, hi: any(lo <= rid <= hi for rid, _ in pairs), limit=limit
    )
    if len(runs) > 1:  # isin on each column admits (run a, attempt of run b): keep exact pairs
        keys = pc.binary_join_element_wise(rows.column("run_id"), rows.column("attempt"), "\x00")
        rows = rows.filter(pc.is_in(keys, pa.array([f"{a}\x00{b}" for a, b in pairs])))
    return rows.select(wanted)


def iter_table(
    root: Store,
    table: str,
    run_id: str | None = None,
    columns: list[str] | None = None,
    filter: pc.Expression | None = None,
    batch_rows: int = 65_536,
) -> Iterator[pa.Table]:
    """The committed rows of ``table`` (one run's, or every committed run's) a batch at a time, only ``columns``
    and the rows ``filter`` keeps: a reader that counts or picks holds one batch, not the table."""
    dt, paths, pairs = _committed(root, table, run_id)
    if not paths:
        return
    wanted = columns or [n for n in table_schema(dt).names if n != "attempt"]
    keys = pc.binary_join_element_wise(pc.field("run_id"), pc.field("attempt"), "\x00")
    committed = pc.is_in(keys, pa.array(sorted(f"{a}\x00{b}" for a, b in pairs)))
    if filter is not None:
        committed = committed & filter
    dataset = pads.dataset(paths, schema=table_schema(dt), format="parquet", filesystem=root.arrow)
    try:
        # Little read-ahead: pyarrow's default (16 batches, 4 files) held ~300 MB of a 1M-row manifest's labels.
        batches = dataset.to_batches(
            columns=wanted, filter=committed, batch_size=batch_rows, batch_readahead=1, fragment_readahead=1
        )
        for batch in batches:
            if batch.num_rows:
                yield pa.Table.from_batches([batch])
    except (FileNotFoundError, OSError) as exc:
        raise CommitError(f"a committed file of {table} under {root.uri} cannot be read: {exc}") from exc


def committed_files(root: Store, table: str, run_id: str | None = None) -> tuple[list[str], set[tuple[str, str]]]:
    """Where the committed rows of ``table`` (one run's, or every committed run's) are, for workers to read
    themselves: the paths (as ``root.arrow`` names them) of the current data files that can hold them, and the
    committed (run_id, attempt) pairs whose rows are wanted. Reads the log alone, never a data file."""
    _, paths, pairs = _committed(root, table, run_id)
    return paths, pairs


def committed_file_rows(root: Store, table: str, run_id: str | None = None) -> tuple[list[tuple[str, int]], set]:
    """As ``committed_files``, each path with its row count from the log (every attempt's rows it holds: at least
    the committed ones), for cutting a large file's work into parts before any file is read."""
    dt, _, pairs = _committed(root, table, run_id)
    if dt is None or not pairs:
        return [], pairs
    store = table_store(root, table)
    wanted = [f for f in _file_index(dt) if f["run_id"] is None or (f["run_id"], f["attempt"]) in pairs]
    return [(store.join(f["path"]).path, int(f["rows"] or 0)) for f in wanted], pairs


def committed_rows(
    path: str,
    root: Store,
    pairs: set[tuple[str, str]],
    columns: list[str],
    filter: pc.Expression | None = None,
    schema: pa.Schema | None = None,
) -> pa.Table:
    """A data file's rows of the committed (run_id, attempt) ``pairs`` (``committed_files``), only ``columns`` and
    the rows ``filter`` keeps: what a worker reads of the file it was handed (a file may hold an attempt that never
    committed). With the table's ``schema``, a column added after the file was written is read as nulls."""
    keys = pc.binary_join_element_wise(pc.field("run_id"), pc.field("attempt"), "\x00")
    wanted = pc.is_in(keys, pa.array(sorted(f"{a}\x00{b}" for a, b in pairs), pa.string()))
    if filter is not None:
        wanted = wanted & filter
    try:
        data = pads.dataset(path, format="parquet", filesystem=root.arrow)
        present = [c for c in columns if schema is None or c in data.schema.names]
        rows = exact(data.to_table(columns=present, filter=wanted))
    except (FileNotFoundError, OSError) as exc:
        raise CommitError(f"a committed data file {path} under {root.uri} cannot be read: {exc}") from exc
    if len(present) == len(columns):
        return rows
    return pa.table(
        {c: rows.column(c) if c in present else pa.nulls(rows.num_rows, schema.field(c).type) for c in columns}
    )


def _committed(root: Store, table: str, run_id: str | None):
    """The table (None when nobody wrote it), the paths of its files that can hold the committed rows, and the
    committed (run_id, attempt) pairs."""
    dt = open_table(root, table)
    pairs = {(r["run_id"], r["attempt"]) for r in _runs(root, run_id)}
    if dt is None or not pairs:
        return dt, [], pairs
    store = table_store(root, table)
    paths = [
        store.join(f["path"]).path
        for f in _file_index(dt)
        if f["run_id"] is None or (f["run_id"], f["attempt"]) in pairs
    ]
    return dt, paths, pairs


def _runs(root: Store, run_id: str | None, as_of: datetime | None = None) -> list[dict]:
    """The committed runs (at ``as_of``), or the one ``run_id`` names: an error when it is not committed."""
    runs = committed_runs(root, as_of)
    if run_id is not None:
        runs = [r for r in runs if r["run_id"] == run_id]
        if not runs:
            raise CommitError(f"no committed run {run_id!r} under {root.uri}")
    return runs


def _scan(root: Store, table: str, dt, columns, filter, keep=None, limit: int | None = None) -> pa.Table:
    """Rows of the table's current files through pyarrow on the project's own filesystem, pruned by the files'
    run_id bounds (``keep(lo, hi)``) before any is opened."""
    schema = table_schema(dt)
    actions = pa.table(dt.get_add_actions(flatten=True))
    paths = actions.column("path").to_pylist()
    if keep is not None and "min.run_id" in actions.column_names:
        lo, hi = actions.column("min.run_id").to_pylist(), actions.column("max.run_id").to_pylist()
        paths = [p for p, a, b in zip(paths, lo, hi, strict=True) if a is None or keep(a, b)]
    store = table_store(root, table)
    if not paths:
        return schema.empty_table().select(columns) if columns else schema.empty_table()
    try:
        dataset = pads.dataset(
            [store.join(p).path for p in paths], schema=schema, format="parquet", filesystem=root.arrow
        )
        if limit is not None:
            return dataset.head(limit, columns=columns, filter=filter)
        return dataset.to_table(columns=columns, filter=filter)
    except (FileNotFoundError, OSError) as exc:
        raise CommitError(f"a committed file of {table} under {root.uri} cannot be read: {exc}") from exc


# -- deleting and compacting -------------------------------------------------------------------------------------


def tables_under(root: Store) -> list[str]:
    """The names of the Delta tables under ``root``."""
    try:
        folders = [p.rstrip("/").rsplit("/", 1)[-1] for p in root.fs.ls(root.path, detail=False)]
    except FileNotFoundError:
        return []
    return sorted(f for f in folders if root.join(f, "_delta_log").exists())


def delete_run(root: Store, run_id: str, dry_run: bool = False) -> list[str]:
    """Erase everything a run wrote under ``root``: its runs row first (readers stop seeing it at once), then its
    files in every table (removed from the table in one transaction each, then deleted from storage for real:
    earlier table versions that listed them can no longer be read, the material is gone), then
    ``<folder>/<run_id>/`` below the run folders crossmatch writes (``ops.io.root.RUN_FOLDERS``: styled images,
    report, checkpoints), never below another's folder. Refuses a root that is not crossmatch's. Returns the URIs
    removed (or that would be). Safe to repeat: an interrupted deletion is finished by the next one."""
    check_run_id(run_id)
    require_ours(root)
    doomed: list[str] = []
    tables = tables_under(root)
    for table in sorted(tables, key=lambda t: t != RUNS_TABLE):  # runs first
        dt = open_table(root, table)
        store = table_store(root, table)
        held = _of_run(run_id)(_file_index(dt)) if dt is not None else []
        if not dry_run and held:
            held = _transact(root, table, table_schema(dt), [], _of_run(run_id), run_id, "delete")
        for path in [f["path"] for f in held]:
            target = store.join(path)
            if target.exists():
                doomed.append(target.uri)
                if not dry_run:
                    target.remove_tree()
        orphans = store.join(DATA, run_id)  # attempts never committed, and anything else left of the run
        if orphans.exists():
            doomed.append(orphans.uri)
            if not dry_run:
                orphans.remove_tree()
    for folder in sorted(set(RUN_FOLDERS) - set(tables)):
        if (target := root.join(folder, run_id)).exists():
            doomed.append(target.uri)
            if not dry_run:
                target.remove_tree()
    return doomed


def compact(root: Store, table: str, retain_hours: float = 168.0) -> dict:
    """Merge each run's small files of ``table`` into one (a run of many small appends, a job of many workers),
    one transaction per run, then delete from storage the files no table version younger than ``retain_hours``
    reads, orphans of killed attempts included (Delta vacuum: files of a job still running that are older than
    ``retain_hours`` would go too, so jobs.compact keeps at least an hour). Returns what was done."""
    dt = open_table(root, table)
    if dt is None:
        raise CommitError(f"no table {table} under {root.uri}")
    schema = table_schema(dt)
    by_run: dict[tuple[str, str], list[dict]] = {}
    for f in _file_index(dt):
        if f["run_id"] is not None:
            by_run.setdefault((f["run_id"], f["attempt"]), []).append(f)
    merged = 0
    store = table_store(root, table)
    for (run_id, attempt), files in sorted(by_run.items()):
        if len(files) < 2:
            continue
        paths = [store.join(f["path"]).path for f in files]
        with storage_errors(store.uri):
            rows = pads.dataset(paths, schema=schema, format="parquet", filesystem=root.arrow).to_table()
        writer = TableWriter(root, table, run_id, attempt, schema)
        writer.write(rows)
        written = writer.close()
        chosen = {f["path"] for f in files}
        try:
            _transact(root, table, schema, written, lambda now, c=chosen: _all_or_raise(now, c), run_id, attempt)
        except _Vanished:  # a deletion or a rerun took the run's files meanwhile: its rows must not come back
            for f in written:
                store.join(f.path).remove_tree()
            continue
        merged += len(files)
    with storage_errors(store.uri):
        dt = open_table(root, table)
        removed = dt.vacuum(
            retention_hours=math.ceil(retain_hours), dry_run=False, enforce_retention_duration=False, full=True
        )
    return {"table": table, "files_merged": merged, "vacuumed": len(removed)}


class _Vanished(Exception):
    """Files a compaction merged left the table before it could commit."""


def _all_or_raise(files: list[dict], chosen: set[str]) -> list[dict]:
    present = [f for f in files if f["path"] in chosen]
    if len(present) != len(chosen):
        raise _Vanished(sorted(chosen - {f["path"] for f in present}))
    return present


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("crossmatch")
    except PackageNotFoundError:
        return "unknown"


def _now() -> datetime:
    return datetime.now(UTC)


__all__ = [
    "CommitError",
    "DataFile",
    "OutputRun",
    "TableWriter",
    "check_run_id",
    "committed_runs",
    "compact",
    "delete_run",
    "error_table",
    "open_table",
    "read_table",
    "write_data_files",
]
