"""Keeping a root tidy: a run deleted from every table, a table's files compacted and vacuumed."""

from __future__ import annotations

import math

import pyarrow.dataset as pads

from ops.io.errors import CommitError
from ops.io.root import RUN_FOLDERS, require_ours
from ops.io.storage import Store, storage_errors
from ops.io.tables.commit import _of_run, _transact
from ops.io.tables.files import TableWriter
from ops.io.tables.location import DATA, RUNS_TABLE, _file_index, check_run_id, open_table, table_schema, table_store


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
