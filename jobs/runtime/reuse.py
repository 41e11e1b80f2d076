"""Reuse: a source whose content was already embedded by the same models with the same settings is not decoded or
embedded again; its rows are copied from the run that made them, under this run's id.

    previous = reusable_run(root, JOB, key, run_id=...)      # a committed run of the job with the same key
    sources = plan_sources(..., reuse=Reuse(previous, ...))  # jobs.runtime.accounting: reused sources planned out

**The key** (``reuse_key``, kept in each run's summary): the models' names and checkpoint sha256, and every setting
that shapes the rows. A run made before keys existed is never reused.

**What is reused**: by content, not by name. A listed source is reused when the previous run has a per-source row
(``face_sources/``, a ``voices/`` source row) for the same sha256, under any uri: a renamed, copied or unchanged
object. A source that failed before (an error row) is tried again.

**At scale**: a task per data file of the previous run's tables stages its rows in the ledger sorted by a hash of
the content's sha256; a task per slice of the hashes joins the listed sources with the previous per-source rows,
copies the reused sources' rows of every table (this run's id, the listed uri), stages a ``reused`` outcome for
each (the accounting counts it as that source's outcome) and yields the other sources as blocks balanced by size,
the pipeline's input. The driver holds refs and counts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields

import pyarrow as pa
import pyarrow.compute as pc

from jobs.runtime.cluster import TASK_CPUS, shard
from jobs.runtime.gather import gather
from jobs.runtime.output import RowWriter
from jobs.runtime.slices import bucket_slices
from ops.io.schemas import SCHEMA_VERSION
from ops.io.storage import ObjectInfo, Store
from ops.io.tables import DataFile, committed_files, committed_rows, committed_runs

PLANNED = "planned"  # the ledger's kind for the listed sources, by content hash
REUSED = "reused"  # and for each reused source's outcome, by uri (what the accounting reads)
PREVIOUS = "previous"  # <kind>/<table>: the previous run's rows, by content hash


# Settings that never change a row: where things are, how the work is spread, how it is logged. Every other
# field of a job's config (models, frame rates, segment lengths, size limits...) is part of the reuse key.
NOT_SHAPING = frozenset(
    {
        "manifest",
        "manifest_run_id",
        "output",
        "run_id",
        "log_level",
        "shared_paths",
        "models",
        "pool_size",
        "max_actors",
        "gpus_per_actor",
        "in_process_below",
        "batch_size",
        "decode_on",
        "item_timeout",
        "reuse",
    }
)


def reuse_key(config, models: dict[str, str], rows_version: int, device: dict) -> dict:
    """What must be equal for rows to be reused: ``models`` (name -> checkpoint sha256), the job's ``rows_version``
    (bumped by a code change that alters its rows) and the schema version, where the work runs (``device``: CPU or
    GPU inference, which decoder: their floats differ in the last bits) and every setting of the job's config that
    shapes its rows."""
    settings = {f.name: getattr(config, f.name) for f in fields(config) if f.name not in NOT_SHAPING}
    versions = {"rows": rows_version, "schema": SCHEMA_VERSION}
    return {"models": dict(sorted(models.items())), "versions": versions, "device": device, "settings": settings}


def reusable_run(root: Store, job: str, key: dict, field: str = "reuse_key", run_id: str | None = None) -> str | None:
    """A committed run of ``job`` under ``root`` whose summary holds the same key under ``field`` (a reuse key; a
    search key): this run's own committed attempt when it runs again (its rows are read before the new attempt
    replaces it), else of the others the one of the most sources, the newest of those. Not simply the newest: a
    handful of probes embedded by ``jobs.find`` beside an archive's run has the same key, and reusing it would embed
    the whole archive again."""
    found = [m for m in committed_runs(root) if m.get("job") == job and (m.get("summary") or {}).get(field) == key]
    own = [m for m in found if m["run_id"] == run_id]
    if own or not found:
        return own[-1]["run_id"] if own else None
    return max(enumerate(found), key=lambda at: ((at[1]["summary"].get("sources") or 0), at[0]))[1]["run_id"]


@dataclass(frozen=True)
class Reuse:
    """What a job reuses from its previous run: the run, its tables and this run's writer for each, which of them
    holds one row per source (and which of its rows those are), and the job's summary counts of that table's
    rows (the copied rows add to the run's counts as if made again)."""

    run_id: str
    writers: dict[str, RowWriter]
    per_source: str
    per_source_rows: pc.Expression | None
    counts: Callable[[pa.Table], dict]


@dataclass
class Planned:
    """The reuse planning's results: blocks to run, reused outcome files, copied data files and counts."""

    blocks: list = field(default_factory=list)
    reused_paths: list[str] = field(default_factory=list)
    files: list[DataFile] = field(default_factory=list)
    reused: int = 0
    counts: Counter = field(default_factory=Counter)


def plan_reusing(
    root: Store,
    ledger,
    planned: list[str],
    reuse: Reuse,
    columns: list[str],
    cpus: int,
    min_bytes: int,
    sources: int,
) -> Planned:
    """The listed sources (staged by content hash in ``planned``, ``sources`` of them) against the previous run, by
    tasks: one per data file of its tables, then one per slice of the content hashes, cut for the sources and the
    most rows of one previous table (a slice holds its share of every table's rows)."""
    import ray

    calls, tables = [], []
    for table, writer in reuse.writers.items():
        paths, committed = committed_files(root, table, reuse.run_id)
        calls += [(p, root, committed, table, writer.schema.names, ledger) for p in paths]
        tables += [table] * len(paths)
    previous: dict[str, list[str]] = {}
    rows: Counter = Counter()
    for table, (path, count) in zip(tables, gather(stage_previous, calls), strict=True):
        if path:
            previous.setdefault(table, []).append(path)
            rows[table] += count
    task = ray.remote(num_cpus=TASK_CPUS, num_returns="streaming")(reuse_slice)
    generators = [
        task.remote(lo, hi, ledger, planned, previous, reuse, columns, cpus, min_bytes)
        for lo, hi in bucket_slices(sources, max(rows.values(), default=0))
    ]
    done = Planned()
    for generator in generators:
        refs = list(generator)
        summary = ray.get(refs[-1])  # the last thing a slice yields: what it reused
        done.blocks += refs[:-1]
        done.files += summary["files"]
        done.reused += summary["reused"]
        done.counts.update(summary["counts"])
        if summary["path"]:
            done.reused_paths.append(summary["path"])
    return done


def stage_previous(path: str, root: Store, committed: set, table: str, columns: list[str], ledger) -> tuple[str, int]:
    """One data file of the previous run's ``table``, staged by content hash: the staged file and its rows."""
    rows = committed_rows(path, root, committed, columns)
    return (ledger.stage(f"{PREVIOUS}/{table}", rows, by="sha256") if rows.num_rows else ""), rows.num_rows


def reuse_slice(
    lo: int,
    hi: int,
    ledger,
    planned: list[str],
    previous: dict[str, list[str]],
    reuse: Reuse,
    columns: list[str],
    cpus: int,
    min_bytes: int,
) -> Iterator:
    """One slice of the content hashes: the reused sources' rows copied and their outcomes staged; the others
    yielded as blocks balanced by size; then a summary."""
    listed = ledger.read(planned, lo, hi)
    per_source = ledger.read(previous.get(reuse.per_source, []), lo, hi)
    if per_source is not None and reuse.per_source_rows is not None:
        per_source = per_source.filter(reuse.per_source_rows)
    done = set(per_source.column("sha256").to_pylist()) if per_source is not None else set()
    if listed is None:
        yield {"reused": 0, "files": [], "counts": {}, "path": ""}
        return
    hit = pc.is_in(listed.column("sha256"), value_set=pa.array(sorted(done), pa.string()))
    reused, rest = listed.filter(hit), listed.filter(pc.invert(hit))
    files: list[DataFile] = []
    counts: Counter = Counter()
    path = ""
    if reused.num_rows:
        # One earlier source per content to copy from (the first uri), its rows under each listed uri of it.
        origin: dict[str, str] = {}
        earlier = zip(per_source.column("uri").to_pylist(), per_source.column("sha256").to_pylist(), strict=True)
        for uri, sha in sorted(earlier):
            origin.setdefault(sha, uri)
        targets: dict[str, list[str]] = {}
        for uri, sha in zip(reused.column("uri").to_pylist(), reused.column("sha256").to_pylist(), strict=True):
            targets.setdefault(origin[sha], []).append(uri)
        for table, writer in reuse.writers.items():
            rows = ledger.read(previous.get(table, []), lo, hi)
            if rows is None or not rows.num_rows:
                continue
            copied = _copied(rows.drop_columns(["bucket"]), targets, writer.run_id)
            if table == reuse.per_source:
                counts.update(reuse.counts(copied))
            files += writer.write(copied.select(writer.schema.names))
        outcomes = pa.table(
            {
                "key": reused.column("uri"),
                "kind": pa.array([REUSED] * reused.num_rows),
                "uri": reused.column("uri"),
                "sha256": reused.column("sha256"),
            }
        )
        path = ledger.stage(REUSED, outcomes)
    objects = [ObjectInfo(str(i), str(i), int(n), None) for i, n in enumerate(rest.column("size").to_pylist())]
    picked = rest.select(columns)
    for part in shard(objects, cpus, min_bytes) if objects else []:
        yield picked.take(pa.array(sorted(int(o.uri) for o in part)))
    yield {"reused": reused.num_rows, "files": files, "counts": dict(counts), "path": path}


def _copied(rows: pa.Table, targets: dict[str, list[str]], run_id: str) -> pa.Table:
    """The rows of each origin uri, once per listed uri of the same content, as this run's rows."""
    uris = rows.column("uri").to_pylist()
    take, names = [], []
    for i, uri in enumerate(uris):
        for target in targets.get(uri, ()):
            take.append(i)
            names.append(target)
    copied = rows.take(pa.array(take, pa.int64()))
    copied = copied.set_column(copied.schema.get_field_index("uri"), "uri", pa.array(names, pa.string()))
    return copied.set_column(
        copied.schema.get_field_index("run_id"), "run_id", pa.array([run_id] * copied.num_rows, pa.string())
    )
