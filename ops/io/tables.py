"""Committed Parquet output: readers see a run's tables whole, or not at all, and a rerun replaces, never duplicates.

Layout under an output root (a local folder or an S3 prefix)::

    <root>/<table>/<run_id>/<attempt>/part-00000.parquet   data files, written first (the staging prefix)
    <root>/_commits/<run_id>.json                          the commit marker, written last, in one atomic put

A marker lists every data file of every table of the run with its row count. Readers read exactly the files that
markers list, so the files of an attempt that failed, or of one still running, are never read. A rerun with the
same run id writes a new attempt and replaces the marker in one put; the superseded attempts are then deleted.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from ops.io.errors import CommitError, canonical, vocabulary
from ops.io.redact import redact
from ops.io.schemas import SCHEMA_VERSION, conform, schema_for
from ops.io.storage import Store, storage_errors

COMMITS = "_commits"
MARKER_FORMAT = "crossmatch.commit/1"
# Row groups of about this much Arrow memory: large enough for fast scans, small enough to stream.
ROW_GROUP_BYTES = 64 << 20
# Files rotate past this much data, so that a big run is a handful of large files rather than thousands of tiny ones.
FILE_BYTES = 512 << 20
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class DataFile:
    """One committed Parquet file: ``path`` is relative to the output root."""

    table: str
    path: str
    rows: int
    bytes: int


def commit_marker(root: Store, run_id: str) -> Store:
    """Where run ``run_id``'s commit marker lives under ``root``."""
    return root.join(COMMITS, f"{run_id}.json")


def check_run_id(run_id: str) -> str:
    """Run ids become object keys: letters, digits, '.', '_' and '-' only."""
    if not _RUN_ID.match(run_id or ""):
        raise ValueError(f"invalid run id {run_id!r}: use 1-128 letters, digits, '.', '_' or '-'")
    return run_id


class TableWriter:
    """Writes one table of one attempt as zstd Parquet parts with the table's explicit schema."""

    def __init__(self, root: Store, table: str, run_id: str, attempt: str, schema: pa.Schema | None = None) -> None:
        self.root, self.table = root, table
        self.schema = schema or schema_for(table)
        if self.schema is None:
            raise ValueError(f"table {table} needs an explicit schema (its width depends on the model)")
        self.prefix = f"{table}/{run_id}/{attempt}"
        self.files: list[DataFile] = []
        self._pending: list[pa.Table] = []
        self._pending_bytes = 0
        self._writer: pq.ParquetWriter | None = None
        self._sink = None
        self._file_rows = 0
        self._file_bytes = 0

    def write(self, data: pa.Table) -> None:
        """Buffer rows; they reach storage in row groups of about ROW_GROUP_BYTES."""
        if data.num_rows == 0:
            return
        data = conform(data, self.schema)
        self._pending.append(data)
        self._pending_bytes += data.nbytes
        if self._pending_bytes >= ROW_GROUP_BYTES:
            self._flush()

    def close(self) -> list[DataFile]:
        """Write what is buffered and return the files written (none for a table that got no rows)."""
        self._flush()
        self._close_file()
        return list(self.files)

    def _flush(self) -> None:
        if not self._pending:
            return
        with storage_errors(self.root.join(self.prefix).uri):
            self._write_group()

    def _write_group(self) -> None:
        group = pa.concat_tables(self._pending)
        self._pending, self._pending_bytes = [], 0
        if self._writer is None:
            path = f"{self.prefix}/part-{len(self.files):05d}.parquet"
            self._sink = self.root.join(path).open("wb")
            self._writer = pq.ParquetWriter(self._sink, self.schema, compression="zstd")
            self._path = path
        self._writer.write_table(group, row_group_size=group.num_rows)
        self._file_rows += group.num_rows
        self._file_bytes += group.nbytes
        if self._file_bytes >= FILE_BYTES:
            self._close_file()

    def _close_file(self) -> None:
        if self._writer is None:
            return
        with storage_errors(self.root.join(self._path).uri):
            self._finish_file()

    def _finish_file(self) -> None:
        self._writer.close()
        size = self._sink.tell()
        self._sink.close()
        self.files.append(DataFile(self.table, self._path, self._file_rows, size))
        self._writer = self._sink = None
        self._file_rows = self._file_bytes = 0


@dataclass
class OutputRun:
    """One attempt at a run's output under ``root``: tables are written, then committed together or not at all."""

    root: Store
    run_id: str
    job: str
    attempt: str = field(default_factory=lambda: _now().strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3))
    started_at: datetime = field(default_factory=lambda: _now())
    _writers: dict[str, TableWriter] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_run_id(self.run_id)

    def check_writable(self) -> None:
        """Fail now, not after hours of work, when the output root cannot be written."""
        probe = self.root.join(COMMITS, f".write-check-{self.attempt}")
        probe.put_atomic(b"")
        probe.remove_tree()

    def write(self, table: str, data: pa.Table, schema: pa.Schema | None = None) -> None:
        """Append rows to ``table`` (invisible to readers until :meth:`commit`); ``schema`` for sized tables."""
        if table == "errors" and "message" in data.column_names:  # exception text can quote credentials
            i = data.column_names.index("message")
            redacted = [redact(m) if m else m for m in data.column(i).to_pylist()]
            data = data.set_column(i, "message", pa.array(redacted, pa.string()))
        if table not in self._writers:
            self._writers[table] = TableWriter(self.root, table, self.run_id, self.attempt, schema)
        self._writers[table].write(data)

    def write_errors(self, rows: list[dict], stage: str | None = None) -> None:
        """Error rows of this job and run: each with uri, sha256, error_type, message and (or ``stage``) stage."""
        if rows:
            fields = ("uri", "sha256", "stage", "error_type", "message")
            data = [
                {"run_id": self.run_id, "job": self.job, "stage": stage} | {k: r[k] for k in fields if k in r}
                for r in rows
            ]
            for row in data:  # every failure has one name, the same in every job (ops.io.errors)
                name = row["error_type"]
                if name not in vocabulary():  # a name the vocabulary lacks is a bug: kept in the message, never lost
                    row["error_type"] = canonical(name)
                    row["message"] = f"[{name}] {row.get('message') or ''}"
            self.write("errors", pa.Table.from_pylist(data, schema=schema_for("errors")))

    def commit(self, tables: tuple[str, ...] = (), **info: Any) -> dict:
        """Make every table of this attempt visible in one atomic put, then delete superseded attempts.

        ``tables`` names tables to list even when they got no rows (so an empty errors table is recorded as
        empty rather than missing); ``info`` (config, counts) is stored in the marker for traceability.
        """
        for table in tables:
            self._writers.setdefault(table, TableWriter(self.root, table, self.run_id, self.attempt))
        files = {name: writer.close() for name, writer in self._writers.items()}
        marker = {
            "format": MARKER_FORMAT,
            "run_id": self.run_id,
            "job": self.job,
            "attempt": self.attempt,
            "started_at": self.started_at.isoformat(),
            "committed_at": _now().isoformat(),
            "schema_version": SCHEMA_VERSION,
            "tables": {
                name: {"rows": sum(f.rows for f in fs), "files": [asdict(f) for f in fs]}
                for name, fs in sorted(files.items())
            },
            **info,
        }
        text = redact(json.dumps(marker, indent=1, default=str))  # configs can hold URLs with user:password@
        commit_marker(self.root, self.run_id).put_atomic(text.encode())
        self._remove_superseded()
        return marker

    def abort(self) -> None:
        """Delete this attempt's files (best effort: uncommitted files are never read anyway)."""
        for name in list(self._writers):
            self.root.join(name, self.run_id, self.attempt).remove_tree()
        self._writers.clear()

    def _remove_superseded(self) -> None:
        # Only this run's other attempts: they are no longer referenced by any marker.
        for name in self._writers:
            run_dir = self.root.join(name, self.run_id)
            try:
                paths = run_dir.fs.ls(run_dir.path, detail=False)
            except FileNotFoundError:  # a table that got no rows in any attempt
                continue
            for path in paths:
                if path.rstrip("/").rsplit("/", 1)[-1] != self.attempt:
                    run_dir.at(path).remove_tree()


def delete_run(root: Store, run_id: str, dry_run: bool = False) -> list[str]:
    """Delete everything a run wrote under ``root``: its commit marker first (readers stop seeing the run at once),
    then ``<folder>/<run_id>/`` below every top-level folder (each table's attempts, committed or not, and the
    run's side outputs: styled images, report, checkpoints). Returns the URIs removed (or that would be). Safe to
    repeat: an interrupted deletion is finished by the next one."""
    check_run_id(run_id)
    doomed = []
    marker = commit_marker(root, run_id)
    if marker.exists():
        doomed.append(marker)
    try:
        folders = [p.rstrip("/").rsplit("/", 1)[-1] for p in root.fs.ls(root.path, detail=False)]
    except FileNotFoundError:
        folders = []
    for folder in sorted(folders):
        if folder != COMMITS and (target := root.join(folder, run_id)).exists():
            doomed.append(target)
    if not dry_run:
        for target in doomed:  # the marker first
            target.remove_tree()
    return [t.uri for t in doomed]


def committed_runs(root: Store) -> list[dict]:
    """The commit markers under ``root``, oldest commit first."""
    commits = root.join(COMMITS)
    try:
        names = [p for p in commits.fs.ls(commits.path, detail=False) if p.endswith(".json")]
    except FileNotFoundError:
        return []
    markers = [json.loads(root.at(p).read_bytes()) for p in names]
    markers = [m for m in markers if m.get("format") == MARKER_FORMAT]
    return sorted(markers, key=lambda m: m["committed_at"])


def committed_files(root: Store, table: str, run_id: str | None = None) -> list[DataFile]:
    """The data files of ``table`` that commits list (of one run, or of every committed run)."""
    runs = committed_runs(root)
    if run_id is not None:
        runs = [m for m in runs if m["run_id"] == run_id]
        if not runs:
            raise CommitError(f"no committed run {run_id!r} under {root.uri}")
    files = []
    for marker in runs:
        if marker.get("schema_version", 0) > SCHEMA_VERSION:
            raise CommitError(
                f"run {marker['run_id']} under {root.uri} was written with schema version "
                f"{marker['schema_version']}, newer than this crossmatch ({SCHEMA_VERSION}): upgrade to read it"
            )
        entry = marker["tables"].get(table)
        if entry:
            files.extend(DataFile(**f) for f in entry["files"])
    return files


def read_table(root: Store, table: str, run_id: str | None = None, columns: list[str] | None = None) -> pa.Table:
    """The committed rows of ``table`` under ``root`` (one run's, or every committed run's)."""
    schema = schema_for(table)  # None for sized tables: the files' own schema (all of one width, or an error)
    files = committed_files(root, table, run_id)
    if not files:
        empty = (schema or pa.schema([])).empty_table()
        return empty.select(columns) if columns and schema else empty
    paths = [root.join(f.path).path for f in files]
    try:
        dataset = pads.dataset(paths, schema=schema, format="parquet", filesystem=root.arrow)
        return dataset.to_table(columns=columns)
    except (FileNotFoundError, OSError) as exc:
        raise CommitError(f"a committed file of {table} under {root.uri} cannot be read: {exc}") from exc


def _now() -> datetime:
    return datetime.now(UTC)


__all__ = [
    "CommitError",
    "commit_marker",
    "DataFile",
    "OutputRun",
    "TableWriter",
    "check_run_id",
    "committed_files",
    "committed_runs",
    "read_table",
]
