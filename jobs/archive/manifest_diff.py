"""A manifest by difference: a new snapshot of an archive reads only the objects that changed since the last one.

    previous = previous_manifest(root, archive, glob, run_id)      # the newest committed manifest of the archive
    diff = diff_archive(listing, previous, root, ledger, carry)     # tasks, a slice of the uris each
    # then the hashing tasks read diff.blocks only, as a full run reads every object

1. **Staging.** A task per listing block and a task per data file of the previous manifest stage their rows in a
   ledger, sorted by a hash of the uri (``jobs.runtime.accounting.Ledger``).
2. **Joining.** A task per slice of the uris joins the two. An object listed with the same size, modification
   time and etag (S3's ETag; a local file's inode and ctime, which ``cp -p`` and ``rsync -a`` cannot set back) as
   before carries its row over unread (its label taken again from its path), unless it was last modified
   within ``RACY_SECONDS`` of the moment the previous snapshot began: a rewrite in the same second as that listing
   would keep its time and size, so such an object is read again (as git re-hashes "racily clean" files). Every other
   listed object is hashed: new, changed, or unsure. An object of the previous snapshot no longer listed is a
   ``removed`` row of ``changes/``. The slice's objects to hash leave as blocks balanced by size, in the object store.
3. **Hashing** (``jobs.manifest.hash_objects``) writes the ``new`` and ``modified`` rows of ``changes/``: an object
   read again whose content did not change is not a change.

The carried rows are staged beside the hashed ones, so the duplicate pass and the data files it writes are the same
as a full run's: every manifest run is a whole snapshot, and no reader has to know it was made by difference.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc

from jobs.runtime.accounting import Ledger
from jobs.runtime.cluster import TASK_CPUS, shard
from jobs.runtime.gather import gather
from jobs.runtime.output import RowWriter
from jobs.runtime.slices import bucket_slices
from ops.io.root import locate
from ops.io.schemas import CHANGES, MANIFEST
from ops.io.storage import ObjectInfo, Store, glob_regex, resolve
from ops.io.tables import committed_files, committed_rows, committed_runs

RACY_SECONDS = 2  # an object modified this close to the previous listing's start is read again
LISTED, PREVIOUS = "listed", "previous"
_PREVIOUS_COLUMNS = [f.name for f in MANIFEST if f.name not in ("run_id", "duplicate_of")]
# What the listing tasks hand on: each object's path, uri, time and size.
LISTING = pa.schema(
    [
        ("relpath", pa.string()),
        ("uri", pa.string()),
        ("modified", pa.timestamp("ms", tz="UTC")),
        ("etag", pa.string()),
        ("size", pa.int64()),
    ]
)


@dataclass(frozen=True)
class CarryOver:
    """What the joining tasks take from the manifest job: this run's id and staging folder, the partitions of the
    content hashes its rows are staged in (by ``stage_rows``, the job's own staging, so that carried rows meet the
    hashed ones in the duplicate pass), the label pattern taken again from each path, the writer of ``changes/``,
    and how to cut the objects to hash into blocks (``workers``, ``min_bytes``). Frozen: it travels to every task."""

    run_id: str
    staging: Store
    partitions: int
    labels: str | None  # the --label-pattern
    changes: RowWriter
    stage_rows: Callable[[pa.Table, Store, int], list[dict]]
    workers: int
    min_bytes: int


@dataclass(frozen=True)
class Previous:
    """The snapshot compared with: its run id and when it began listing."""

    run_id: str
    started_at: datetime


def previous_manifest(root: Store, archive: str, glob: str) -> Previous | None:
    """The newest committed manifest run of the same archive and glob under ``root`` (this run's own committed
    attempt, when it runs again: its rows are read before the new attempt replaces it)."""
    archive = resolve(archive, root.endpoint_url).uri
    found = [
        m
        for m in committed_runs(root)
        if m.get("job") == "manifest"
        and locate(root, (m.get("config") or {}).get("archive")).uri == archive
        and (m.get("config") or {}).get("glob", "**") == glob
    ]
    if not found:
        return None
    newest = found[-1]  # committed_runs is oldest commit first
    return Previous(newest["run_id"], datetime.fromisoformat(str(newest["started_at"])))


@dataclass
class Diff:
    """What the joining tasks found: blocks to hash (object refs) and counts."""

    blocks: list = field(default_factory=list)
    to_hash: int = 0
    to_hash_bytes: int = 0
    carried: int = 0
    removed: int = 0
    staged: list[dict] = field(default_factory=list)  # the carried rows' staged files, as hash_objects reports them
    files: list = field(default_factory=list)  # data files of changes/ (the removed objects)


def diff_archive(
    blocks: list,
    objects: int,
    previous: Previous,
    root: Store,
    ledger: Ledger,
    carry: CarryOver,
    full: bool = False,
) -> Diff:
    """The listing (blocks of relpath, uri, modified, size) against the previous snapshot, by tasks. ``carry``:
    what carrying rows over needs, and how to cut the blocks to hash; ``full``: every listed object is read again
    (the diff still finds the removed ones)."""
    import ray

    listed = gather(stage_listed, [(block, ledger) for block in blocks])
    paths, committed = committed_files(root, "manifest", previous.run_id)
    before = gather(stage_previous, [(p, root, committed, ledger) for p in paths])
    task = ray.remote(num_cpus=TASK_CPUS, num_returns="streaming")(diff_slice)
    generators = [
        task.remote(lo, hi, ledger, listed, before, previous, carry, full) for lo, hi in bucket_slices(objects)
    ]
    diff = Diff()
    for generator in generators:
        refs = list(generator)
        summary = ray.get(refs[-1])  # the last thing a joining task yields: what it found
        diff.blocks += refs[:-1]
        diff.to_hash += summary["to_hash"]
        diff.to_hash_bytes += summary["to_hash_bytes"]
        diff.carried += summary["carried"]
        diff.removed += summary["removed"]
        diff.staged += summary["staged"]
        diff.files += summary["files"]
    return diff


def stage_listed(block: pa.Table, ledger: Ledger) -> str:
    return ledger.stage(LISTED, block)


def stage_previous(path: str, root: Store, committed: set, ledger: Ledger) -> str:
    return ledger.stage(PREVIOUS, committed_rows(path, root, committed, _PREVIOUS_COLUMNS, schema=MANIFEST))


def diff_slice(
    lo: int,
    hi: int,
    ledger: Ledger,
    listed: list[str],
    before: list[str],
    previous: Previous,
    carry: CarryOver,
    full: bool,
) -> Iterator[pa.Table | dict]:
    """One slice of the uris: carried rows staged for the duplicate pass, removed objects written to ``changes/``,
    the objects to hash yielded as blocks balanced by size, then a summary."""
    now = ledger.read(listed, lo, hi)
    now = LISTING.empty_table() if now is None else now.select(LISTING.names)
    then = ledger.read(before, lo, hi)
    then = (MANIFEST.empty_table() if then is None else then).select(_PREVIOUS_COLUMNS)
    then = then.rename_columns([f"previous_{c}" for c in _PREVIOUS_COLUMNS])
    joined = now.join(then, "uri", "previous_uri", join_type="left outer")
    racy = pa.scalar(previous.started_at - timedelta(seconds=RACY_SECONDS), pa.timestamp("ms", tz="UTC"))
    column = joined.column
    unchanged = [
        pc.is_valid(column("previous_sha256")),
        pc.equal(column("size"), column("previous_size")),
        pc.equal(column("modified"), column("previous_modified")),
        pc.less(column("previous_modified"), racy),
        pc.equal(column("etag"), column("previous_etag")),  # none on either side: read again
    ]
    same = pc.fill_null(functools.reduce(pc.and_kleene, unchanged), False)
    if full:
        same = pa.array([False] * joined.num_rows)
    carried, to_hash = joined.filter(same), joined.filter(pc.invert(same))
    staged = carry.stage_rows(_carried_rows(carried, carry), carry.staging, carry.partitions)

    gone = then.filter(pc.invert(pc.is_in(then.column("previous_uri"), value_set=now.column("uri"))))
    files = []
    if gone.num_rows:
        changes = pa.table(
            {
                "run_id": [carry.run_id] * gone.num_rows,
                "uri": gone.column("previous_uri"),
                "change": ["removed"] * gone.num_rows,
                "sha256": pa.nulls(gone.num_rows, pa.string()),
                "previous_sha256": gone.column("previous_sha256"),
                "previous_run_id": [previous.run_id] * gone.num_rows,
            },
            schema=CHANGES,
        )
        files = carry.changes.write(changes)

    objects = [
        ObjectInfo(uri, rel, size, modified, etag)
        for uri, rel, size, modified, etag in zip(
            *(to_hash.column(c).to_pylist() for c in ("uri", "relpath", "size", "modified", "etag")), strict=True
        )
    ]
    known = dict(zip(to_hash.column("uri").to_pylist(), to_hash.column("previous_sha256").to_pylist(), strict=True))
    for part in shard(objects, carry.workers, carry.min_bytes) if objects else []:
        yield pa.table(
            {
                "relpath": [o.relpath for o in part],
                "uri": [o.uri for o in part],
                "modified": pa.array([o.modified for o in part], pa.timestamp("ms", tz="UTC")),
                "etag": pa.array([o.etag for o in part], pa.string()),
                "previous_sha256": pa.array([known[o.uri] for o in part], pa.string()),
            }
        )
    yield {
        "to_hash": len(objects),
        "to_hash_bytes": sum(o.size for o in objects),
        "carried": carried.num_rows,
        "removed": gone.num_rows,
        "staged": staged,
        "files": files,
    }


def _carried_rows(carried: pa.Table, carry: CarryOver) -> pa.Table:
    """The previous snapshot's rows of unchanged objects, as this run's: its run id, the listing's path and time,
    the label taken from the path again (the label pattern may have changed)."""
    matcher = glob_regex(carry.labels) if carry.labels else None
    relpaths = carried.column("relpath").to_pylist()
    labels = [(m.group("label") if (m := matcher.fullmatch(r)) else None) for r in relpaths] if matcher else None
    columns = {c: carried.column(f"previous_{c}") for c in _PREVIOUS_COLUMNS if c not in ("uri", "relpath")}
    columns |= {
        "run_id": pa.array([carry.run_id] * carried.num_rows, pa.string()),
        "uri": carried.column("uri"),
        "relpath": carried.column("relpath"),
        "modified": carried.column("modified"),
        "etag": carried.column("etag"),
        "label": pa.array(labels or [None] * carried.num_rows, pa.string()),
    }
    return pa.table(columns)


def writer_of_changes(root: Store, run_id: str, attempt: str) -> RowWriter:
    return RowWriter(root, "changes", CHANGES, run_id, attempt)
