"""Reading committed rows: only runs in the runs table, only their files, by column and filter."""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Iterator
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from ops.io.errors import CommitError
from ops.io.schemas import schema_for, stored
from ops.io.storage import Store, storage_errors
from ops.io.tables.files import exact
from ops.io.tables.location import RUNS_TABLE, _file_index, delta_call, open_table, table_schema, table_store


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
        dt = open_table(root, RUNS_TABLE, max(versions))  # a table of its own: the shared one stays the latest
    with storage_errors(dt.table_uri):
        rows = _runs_rows(root, dt)
    return [_as_marker(r) for r in sorted(rows, key=lambda r: r["committed_at"])]


# A data file is never rewritten (it holds one attempt of one run under a name of its own), so the runs table's
# rows are read once per process and file: a job looks at the runs table hundreds of times (every stage, every
# reuse and reviews lookup), and each look then reads only the files committed since, not every run's file again
# (on S3, two requests per run per look). Bounded: the rows of this many files at most, the oldest looked at dropped.
_RUN_FILES: OrderedDict[tuple[str, str], list[dict]] = OrderedDict()
_RUN_FILES_MOST = 20_000
_RUN_FILES_LOCK = threading.Lock()


def _runs_rows(root: Store, dt) -> list[dict]:
    """The rows of the runs table's current files (``dt``'s version), each file read once per process."""
    schema = table_schema(dt)
    shape = schema.to_string()  # a file's rows read under an evolved schema gain the new columns: read again
    store = table_store(root, RUNS_TABLE)
    stores = [store.join(p) for p in pa.table(dt.get_add_actions(flatten=True))["path"].to_pylist()]
    files = {f.uri: f.path for f in stores}
    keys = [(uri, shape) for uri in files]
    with _RUN_FILES_LOCK:
        found = {k: _RUN_FILES[k] for k in keys if k in _RUN_FILES}
        for k in found:
            _RUN_FILES.move_to_end(k)
    for key in (k for k in keys if k not in found):
        try:
            dataset = pads.dataset([files[key[0]]], schema=schema, format="parquet", filesystem=root.arrow)
            found[key] = dataset.to_table().to_pylist()
        except (FileNotFoundError, OSError) as exc:
            raise CommitError(f"a committed file of {RUNS_TABLE} under {root.uri} cannot be read: {exc}") from exc
        with _RUN_FILES_LOCK:
            _RUN_FILES[key] = found[key]
            while len(_RUN_FILES) > _RUN_FILES_MOST:
                _RUN_FILES.popitem(last=False)
    return [dict(row) for key in keys for row in found[key]]


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
    with storage_errors(dt.table_uri):
        rows = [r for r in _runs_rows(root, dt) if r["run_id"] == run_id]
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
