"""How every job that commits writes its run: one writer of runs (``JobOutput``), whatever the job does.

A run is written in one way: the output root checked writable and each declared table's schema checked before any
work, rows written by the driver or by Ray workers (``RowWriter``), then one commit of every table and the run's row
in ``runs``, and one closing log line that says where it landed. ::

    job = JobOutput(ctx, config, {"faces": schema}, errors="counted")  # checked writable before any work
    writer = job.row_writer("faces")                       # Ray workers write the rows (RowWriter), hand on files
    job.add_settled(files, errors_by_type)                 # what they wrote, once accounted (runtime/accounting.py)
    job.write("runs_of_a_few_rows", rows)                  # small tables, from the driver
    return job.commit(summary, "12 sources: ...")          # the headline, then "committed run ..." once

What a job declares decides what its runs row says, so that every job's row keeps its shape:

- ``tables``: the job's own tables, listed in the commit even when empty; a table written without being declared
  (a mode's side table) is committed when it gets rows or files. A job with no tables of its own (report, pipeline)
  declares none.
- ``errors``: ``"counted"`` (the jobs over sources) lists ``errors/`` and adds ``errors`` and ``errors_by_type`` to
  the summary; ``"table"`` lists ``errors/`` and leaves the count to the job's own summary; ``None`` (the default):
  no errors table unless error rows are written.
- ``root``: where the run goes when it is not ``ctx.output``.
- ``commit(..., stages=...)`` for a job that composes others, ``model_card=`` for a trained model.

A job's own code is then what it does; where its rows go, how failures are named and counted, and what it says
when it commits are the same everywhere.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc

from jobs.runtime.cli import JobConfig
from jobs.runtime.launch import JobContext
from ops.io.errors import JobFailed, describe, error_type
from ops.io.schemas import schema_for
from ops.io.storage import Store
from ops.io.tables import DataFile, OutputRun, committed_runs, read_table, table_store, write_data_files

ErrorRows = Literal["counted", "table"]


class JobOutput:
    """One job's output run: its declared tables (listed in the commit even when empty), its error rows (counted by
    type), and the commit with the closing log line."""

    def __init__(
        self,
        ctx: JobContext,
        config: JobConfig,
        tables: dict[str, pa.Schema] | None = None,
        *,
        errors: ErrorRows | None = None,
        root: Store | None = None,
    ) -> None:
        self.ctx, self.config, self.tables, self.errors = ctx, config, dict(tables or {}), errors
        self.root = root or ctx.output
        self.out = OutputRun(self.root, ctx.run_id, ctx.job)
        self.out.check_writable()  # fail now, not after hours of work
        for name, schema in self.tables.items():  # a table of another model's width is refused now, too
            self.out.check_schema(name, schema)
        self.errors_by_type: Counter[str] = Counter()

    @property
    def run_id(self) -> str:
        return self.out.run_id

    @property
    def attempt(self) -> str:
        """This attempt of the run: a rerun's rows replace an earlier attempt's only once it commits."""
        return self.out.attempt

    def staging(self, *parts: str) -> Store:
        """Where this attempt's workers stage what passes between its steps (``OutputRun.staging``)."""
        return self.out.staging(*parts)

    def schema(self, table: str) -> pa.Schema:
        """The schema of one of the job's tables: as declared, else the schema module's (errors, match_items)."""
        schema = self.tables.get(table) or schema_for(table)
        if schema is None:  # a sized table (faces, voices) has no one schema: its width is the job's to say
            raise KeyError(f"table {table!r} has an embedding width: declare it with its schema")
        return schema

    def write(self, table: str, data: pa.Table) -> None:
        """Rows of one of the job's tables (invisible until the commit)."""
        self.out.write(table, data, self.schema(table))

    def add_files(self, table: str, files: list[DataFile]) -> None:
        """Data files of one of the job's tables that Ray workers wrote (``row_writer``), committed with the run."""
        self.out.add_files(table, files, self.schema(table))

    def row_writer(self, table: str) -> RowWriter:
        """Where the job's workers write rows of one of its tables (or its errors) for this run attempt."""
        return RowWriter(self.root, table, self.schema(table), self.run_id, self.attempt)

    def add_settled(self, files: list[DataFile], errors_by_type: Counter) -> None:
        """Data files the workers wrote (of the job's tables and its errors) and the error rows among them, by
        type (see jobs.runtime.accounting)."""
        for file in files:
            self.out.add_files(file.table, [file], self.schema(file.table))
        self.errors_by_type.update(errors_by_type)

    def write_errors(self, rows: list[dict], stage: str | None = None) -> None:
        """Error rows (uri, sha256, error_type, message, stage), each type from the vocabulary (ops.io.errors)."""
        self.out.write_errors(rows, stage)
        self.errors_by_type.update(r["error_type"] for r in rows)

    def commit(
        self, summary: dict, headline: str | None = None, *, stages: dict | None = None, model_card: dict | None = None
    ) -> dict:
        """Commit every table at once, with the config, ``stages`` (a composing job's), the summary (with
        ``errors`` and ``errors_by_type`` when counted) and ``model_card`` (a trained model's) in the runs row.
        Logs ``headline`` (what the run found), then where the run was committed: the job's closing line."""
        tables = (*self.tables, "errors") if self.errors else tuple(self.tables)
        if self.errors == "counted":
            counted = {"errors": sum(self.errors_by_type.values()), "errors_by_type": dict(self.errors_by_type)}
            summary = summary | counted
        # The keys in the order each job stored them before it committed through here: the runs rows keep their text.
        info: dict = {"config": asdict(self.config)}
        if stages is not None:
            info["stages"] = stages
        info["summary"] = summary
        if model_card is not None:
            info["model_card"] = model_card
        marker = self.out.commit(tables=tables, **info)
        if headline:
            self.ctx.log.info("%s", headline)
        names = [*tables, *sorted(set(marker["tables"]) - set(tables))]
        where = table_store(self.root, "runs").uri
        shown = f" (tables {', '.join(f'{name}/' for name in names)})" if names else ""
        self.ctx.log.info("committed run %s: %s%s", self.run_id, where, shown)
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
