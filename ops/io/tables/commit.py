"""Committing a run: its tables' files appended in one transaction each, then its runs row, atomically."""

from __future__ import annotations

import base64
import json
import logging
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pyarrow as pa

from ops.io.errors import CommitError, StorageError, canonical, vocabulary
from ops.io.redact import redact
from ops.io.root import STAGING, relative_locations
from ops.io.schemas import RUNS, SCHEMA_VERSION, schema_for, stored
from ops.io.storage import Store, storage_errors
from ops.io.tables.files import TableWriter, write_data_files
from ops.io.tables.location import (
    DATA,
    RUNS_TABLE,
    DataFile,
    _file_index,
    _is_transient,
    _now,
    _version,
    check_run_id,
    delta_options,
    delta_uri,
    new_attempt,
    open_table,
    table_schema,
    table_store,
)
from ops.io.tables.read import _as_marker, _run_record

log = logging.getLogger("crossmatch")


# Concurrent commits to one table (two pipelines into one root) conflict now and then: each retried this often.
COMMIT_ATTEMPTS = 8
# Every this many commits a table gets a checkpoint, so that opening it reads the checkpoint and the commits since,
# not every commit ever made (the runs table gains one per run and is opened many times by every job).
CHECKPOINT_EVERY = 10


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


def _checkpoint(dt, store: Store) -> None:
    """A checkpoint of the table as it is now (this commit and any concurrent one). Only a shortcut for readers:
    a store that fails it leaves the table as it was, readable commit by commit."""
    try:
        with storage_errors(store.uri):
            dt.update_incremental()  # the table object still holds the version read before this commit
            dt.create_checkpoint()
    except StorageError as exc:
        log.warning("%s: no checkpoint this time (%s); the table reads as before", store.uri, redact(str(exc))[:200])


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
                    if (dt.version() + 1) % CHECKPOINT_EVERY == 0:
                        _checkpoint(dt, store)
            return removed
        except StorageError as exc:
            # A conflict, or a store that failed in passing (a commit whose answer was lost may have landed: the
            # files to remove are chosen again from the table as it is now, and adding a file twice adds it once).
            if attempt_no + 1 == COMMIT_ATTEMPTS or not (_is_conflict(exc) or _is_transient(exc)):
                raise
            time.sleep(0.05 * 2**attempt_no + secrets.randbelow(50) / 1000)
    return []


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
