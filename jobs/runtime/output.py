"""The skeleton every job over an archive's sources shares (manifest, embed_faces, embed_voices, stylize).

    job = SourceJob(ctx, config, {"faces": schema})      # the output run, checked writable before any work
    writer = job.row_writer("faces")                       # Ray workers write the rows (RowWriter), hand on files
    job.add_settled(files, errors_by_type)                 # what they wrote, once accounted (runtime/accounting.py)
    job.write("runs_of_a_few_rows", rows)                  # small tables, from the driver
    return job.commit(summary, "12 sources: ...")          # errors and errors_by_type added, one closing log line

A job's own code is then what it does to a source; where its rows go, how failures are named and counted, and
what it says when it commits are the same everywhere.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass

import pyarrow as pa
import pyarrow.compute as pc

from jobs.runtime.cli import JobConfig
from jobs.runtime.launch import JobContext
from ops.io.errors import JobFailed, describe, error_type
from ops.io.schemas import schema_for
from ops.io.storage import Store
from ops.io.tables import DataFile, OutputRun, committed_runs, read_table, table_store, write_data_files


class SourceJob:
    """One job's output run: its result tables (listed in the commit even when empty), its error rows counted by
    type, and the commit with the closing log line."""

    def __init__(self, ctx: JobContext, config: JobConfig, tables: dict[str, pa.Schema]) -> None:
        self.ctx, self.config, self.tables = ctx, config, dict(tables)
        self.out = OutputRun(ctx.output, ctx.run_id, ctx.job)
        self.out.check_writable()  # fail now, not after hours of work
        for name, schema in self.tables.items():  # a table of another model's width is refused now, too
            self.out.check_schema(name, schema)
        self.errors_by_type: Counter[str] = Counter()

    def write(self, table: str, data: pa.Table) -> None:
        """Rows of one of the job's tables (invisible until the commit)."""
        self.out.write(table, data, self.tables[table])

    def add_files(self, table: str, files: list[DataFile]) -> None:
        """Data files of one of the job's tables that Ray workers wrote (``write_rows``), committed with the run."""
        self.out.add_files(table, files, self.tables[table])

    def row_writer(self, table: str) -> RowWriter:
        """Where the job's workers write rows of one of its tables (or its errors) for this run attempt."""
        schema = self.tables[table] if table != "errors" else schema_for("errors")
        return RowWriter(self.ctx.output, table, schema, self.ctx.run_id, self.out.attempt)

    def add_settled(self, files: list[DataFile], errors_by_type: Counter) -> None:
        """Data files the workers wrote (of the job's tables and its errors) and the error rows among them, by
        type (see jobs.runtime.accounting)."""
        for file in files:
            self.out.add_files(file.table, [file], self.tables.get(file.table) or schema_for(file.table))
        self.errors_by_type.update(errors_by_type)

    def write_errors(self, rows: list[dict], stage: str | None = None) -> None:
        """Error rows (uri, sha256, error_type, message, stage), each type from the vocabulary (ops.io.errors)."""
        self.out.write_errors(rows, stage)
        self.errors_by_type.update(r["error_type"] for r in rows)

    def commit(self, summary: dict, headline: str | None = None) -> dict:
        """Commit every table at once; the summary gains ``errors`` and ``errors_by_type``. Logs ``headline`` (what
        the run found) and where the run was committed."""
        summary = summary | {"errors": sum(self.errors_by_type.values()), "errors_by_type": dict(self.errors_by_type)}
        marker = self.out.commit(tables=(*self.tables, "errors"), config=asdict(self.config), summary=summary)
        if headline:
            self.ctx.log.info("%s", headline)
        tables = ", ".join(f"{name}/" for name in [*self.tables, "errors"])
        where = table_store(self.ctx.output, "runs").uri
        self.ctx.log.info("committed run %s: %s (tables %s)", self.ctx.run_id, where, tables)
        return marker


# Rows a worker gathers before it writes a data file: files of tens of MB for embedding tables, a few per run per
# worker rather than one per batch.
WRITE_ROWS = 50_000


@dataclass(frozen=True)
class RowWriter:
    """Where a job's workers write rows: a table of the run's attempt. Picklable: it travels to the Ray workers,
    which write data files and hand the driver only their descriptions (``file_row``), never the rows."""

    root: Store
    table: str
    schema: pa.Schema
    run_id: str
    attempt: str

    def write(self, rows: pa.Table) -> list[DataFile]:
        return write_data_files(self.root, self.table, rows, self.schema, self.run_id, self.attempt)


def file_row(file: DataFile) -> str:
    """A data file's description as one string column value, for a worker's output rows."""
    return json.dumps(asdict(file))


def parse_file_row(text: str) -> DataFile:
    return DataFile(**json.loads(text))


def error_row(exc: BaseException, stage: str, **fields) -> dict:
    """An error row for one source that failed with ``exc``: its name in the vocabulary and its message."""
    return fields | {"kind": "error", "stage": stage, "error_type": error_type(exc), "message": describe(exc)}


SOURCE_COLUMNS = ["uri", "sha256", "size", "media_category", "media_kind"]


def manifest_sources(root: Store, run_id: str | None, categories: tuple[str, ...]) -> tuple[pa.Table, int]:
    """The committed manifest's rows of these media categories (only the columns a job plans with), by uri, and how
    many rows the committed manifest has."""
    runs = [r for r in committed_runs(root) if "manifest" in r["tables"] and run_id in (None, r["run_id"])]
    total = sum(r["tables"]["manifest"]["rows"] for r in runs)
    if total == 0:
        raise JobFailed(f"no committed manifest under {root.uri}: run `python -m jobs.manifest` first")
    wanted = pc.field("media_category").isin(list(categories))
    sources = read_table(root, "manifest", run_id=run_id, columns=SOURCE_COLUMNS, filter=wanted).sort_by("uri")
    uris = sources.column("uri").to_pylist()
    if len(set(uris)) != len(uris):
        raise JobFailed(f"the manifest under {root.uri} lists a uri twice: pass --manifest-run-id")
    return sources, total
