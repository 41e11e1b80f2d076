"""Search by difference: a match run whose previous run (same key) is committed searches only what changed, and its
rows equal a full search's.

    previous = stage_previous(root, run_id, ledger)                       # tasks: its items and rows, by bucket
    sets = diff_set(prepared, side, previous, ...)                        # tasks: a slice of the items each
    files, rows, unknown, counts = search_sets(queries, gallery, ...)     # added queries in full, kept ones merged

**What each run records.** Every search, identify and crossmatch run writes its item sets to ``match_items/``: the
side, each item's key, source uri and content hash, and the hash of the unit vector it searched (an identity's
centroid for identify). The vector's hash is what makes the difference safe: an item whose model, settings,
projection or enrolment changed has another vector, so it counts as changed whatever its name.

**What changed.** A task per slice of the buckets (of the uri; of the label for identities) compares its items with
the previous run's by item key and vector hash: an item is *kept*, *added* (new, or its vector changed) or
*removed* (gone, or its vector changed).

**Exactly a full search's answer.** A kept query's previous top K over the previous gallery stays its top K over
that gallery less the removed items when none of its K was removed; its new list is then that list merged with its
top K over the added items alone, ordered as every search orders (stored score, then gallery id). A kept query whose
previous list held a removed item is searched again in full (what followed its K-th is unknown), as is every added
query. The previous rows are read by the merging tasks a slice of the query uris at a time; the driver holds paths
and counts.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from jobs.archive.search import (
    Candidates,
    Prepared,
    Search,
    ask,
    close_shards,
    match_rows,
    open_shards,
    run_windowed,
    search_block,
)
from jobs.runtime.accounting import Ledger, write_bucketed
from jobs.runtime.gather import gather
from jobs.runtime.output import RowWriter
from jobs.runtime.slices import blocks, bucket_slices
from ops.io.schemas import MATCH_ITEMS, SCHEMA_VERSION
from ops.io.storage import Store, storage_errors
from ops.io.tables import DataFile, committed_files, committed_rows
from ops.matching.embeddings import item_id

log = logging.getLogger("crossmatch")
ROWS_VERSION = 1  # bump when a code change alters the rows a match run makes: no earlier run is merged from then
PREVIOUS_ROWS = "previous_rows"  # the ledger's kind for the previous run's rows, by query uri
_ROW_COLUMNS = ["query_uri", "query_item", "gallery_uri", "gallery_sha256", "gallery_item", "identity", "score"]


def search_key(mode: str, table: str, per_source: bool, k: int, same_set: bool, model: tuple) -> dict:
    """What must be equal for a previous match run's rows to be merged from: the kind of search, how many are kept,
    and the model. Not the threshold (decisions are made again from the stored scores), nor where the embeddings
    are or which runs of them (items are compared by key and vector: another archive's are all added)."""
    return {
        "mode": mode,
        "table": table,
        "per_source": per_source,
        "k": k,
        "same_set": same_set,
        "model": list(model),
        "versions": {"rows": ROWS_VERSION, "schema": SCHEMA_VERSION},
    }


@dataclass(frozen=True)
class Previous:
    """The previous run's item sets (side -> staged files, by bucket) and rows (staged by query uri bucket)."""

    run_id: str
    items: dict[str, list[str]]
    rows: list[str]


def stage_previous(root: Store, run_id: str, by: dict[str, str], ledger: Ledger) -> Previous:
    """The previous run's ``match_items/`` of each side (bucketed by ``by[side]``) and its ``matches/`` rows, staged
    by tasks: one per data file."""
    item_paths, pairs = committed_files(root, "match_items", run_id)
    row_paths, row_pairs = committed_files(root, "matches", run_id)
    calls = [(p, root, pairs, ledger, by) for p in item_paths] + [(p, root, row_pairs, ledger, None) for p in row_paths]
    staged = gather(stage_previous_file, calls)
    items: dict[str, list[str]] = {side: [] for side in by}
    rows: list[str] = []
    for found in staged:
        rows += found.pop(PREVIOUS_ROWS, [])
        for side, path in found.items():
            items[side].append(path)
    return Previous(run_id, items, rows)


def stage_previous_file(path: str, root: Store, pairs: set, ledger: Ledger, by: dict[str, str] | None) -> dict:
    """One data file of the previous run: item rows staged per side (``by``), or match rows (``by`` None)."""
    if by is None:
        rows = committed_rows(path, root, pairs, _ROW_COLUMNS)
        return {PREVIOUS_ROWS: [ledger.stage(PREVIOUS_ROWS, rows, by="query_uri")]} if rows.num_rows else {}
    rows = committed_rows(path, root, pairs, ["side", "item", "uri", "sha256", "vector_sha256"])
    staged = {}
    for side, column in by.items():
        mine = rows.filter(pc.equal(rows.column("side"), side))
        if mine.num_rows:
            staged[side] = ledger.stage(f"items-{side}", mine.drop_columns(["side"]), by=column)
    return staged


@dataclass
class ItemSet:
    """One staged item set, recorded in ``match_items/``, and what it is against the previous run's: the added
    items (a set to search or to hold on shards), the kept ones per slice, the removed ones' ids."""

    prepared: Prepared
    side: str
    records: list[DataFile] = field(default_factory=list)
    added: Prepared = field(default_factory=Prepared)
    kept: list[tuple[int, int, str, int]] = field(default_factory=list)  # lo, hi, staged file, items
    removed: list[str] = field(default_factory=list)
    removed_count: int = 0
    compared: bool = False  # False: no previous run, everything is added

    @property
    def kept_count(self) -> int:
        return sum(n for *_, n in self.kept)


def diff_set(
    prepared: Prepared,
    side: str,
    previous: Previous | None,
    store: Store,
    staging: Store,
    writer: RowWriter,
    identities: bool = False,
) -> ItemSet:
    """``prepared`` recorded as ``side`` and compared with the previous run's ``side`` (tasks, a slice each)."""
    paths = [p for p, _ in prepared.files]
    before = previous.items.get(side, []) if previous else None
    slices = bucket_slices(len(prepared))
    done = gather(
        diff_slice, [(lo, hi, paths, before, Ledger(staging), side, writer, staging, identities) for lo, hi in slices]
    )
    found = ItemSet(prepared, side, compared=previous is not None)
    for (lo, hi), d in zip(slices, done, strict=True):
        found.records += d["records"]
        if d["added"][1]:
            found.added.files.append(d["added"])
        if d["kept"][1]:
            found.kept.append((lo, hi, *d["kept"]))
        if d["removed"][1]:
            found.removed.append(d["removed"][0])
            found.removed_count += d["removed"][1]
    found.added.files.sort()
    found.added.models, found.added.dim = prepared.models, prepared.dim
    if previous is None:
        found.added = prepared
    return found


def vector_hashes(table: pa.Table) -> list[str]:
    """The sha256 of each item's unit vector as searched (float32, little-endian)."""
    column = table.column("vector").combine_chunks()
    flat = np.asarray(column.flatten().to_numpy(zero_copy_only=False), "<f4").reshape(table.num_rows, -1)
    return [hashlib.sha256(v.tobytes()).hexdigest() for v in flat]


def diff_slice(
    lo: int,
    hi: int,
    paths: list[str],
    before: list[str] | None,
    ledger: Ledger,
    side: str,
    writer: RowWriter,
    staging: Store,
    identities: bool,
) -> dict:
    """A slice's items recorded, and (``before``: the previous run's staged items of the side) split into added
    and kept items (staged files) and removed ids (a staged file)."""
    none = ("", 0)
    found = {"records": [], "added": none, "kept": none, "removed": none}
    now = ledger.read(paths, lo, hi)
    if now is not None and now.num_rows:
        hashes = pa.array(vector_hashes(now), pa.string())
        record = {"run_id": pa.array([writer.run_id] * now.num_rows), "side": pa.array([side] * now.num_rows)}
        record |= {c: now.column(c) for c in ("item", "uri", "sha256")}
        found["records"] = writer.write(pa.table(record | {"vector_sha256": hashes}, schema=MATCH_ITEMS))
        # Kept: the same item with the same source content and the same vector (a rewritten source whose vector
        # came out equal still changes its rows' gallery_sha256, so it counts as changed).
        keys = _keys(now.column("item"), now.column("sha256"), hashes)
    else:
        now, keys = None, pa.array([], pa.string())
    if before is None:
        return found
    old = ledger.read(before, lo, hi, ["item", "sha256", "vector_sha256"]) if before else None
    old_keys = (
        _keys(old.column("item"), old.column("sha256"), old.column("vector_sha256"))
        if old is not None
        else pa.array([], pa.string())
    )
    if now is not None:
        known = pc.is_in(keys, value_set=old_keys).to_numpy(zero_copy_only=False)
        now = now.drop_columns(["bucket"])
        found["added"] = _stage(now.filter(pa.array(~known)), staging.join("added"), identities)
        found["kept"] = _stage(now.filter(pa.array(known)), staging.join("kept"), identities)
    if old is not None and old.num_rows:
        gone = old.filter(pc.invert(pc.is_in(old_keys, value_set=keys)))
        prefix = "identity:" if identities else ""
        ids = pa.array([item_id(prefix + i) for i in gone.column("item").to_pylist()], pa.int64())
        if len(ids):
            target = staging.join("removed", f"{uuid.uuid4().hex}.parquet")
            with storage_errors(target.uri), target.open("wb") as f:
                pq.write_table(pa.table({"id": ids}), f)
            found["removed"] = (target.path, len(ids))
    return found


def _keys(*columns: pa.Array | pa.ChunkedArray) -> pa.Array:
    joined = pc.binary_join_element_wise(
        *(pa.chunked_array([c]) if isinstance(c, pa.Array) else c for c in columns), "\x00"
    )
    return joined.combine_chunks() if isinstance(joined, pa.ChunkedArray) else joined


def _stage(items: pa.Table, folder: Store, identities: bool) -> tuple[str, int]:
    """Items as a staged file sorted by bucket (shards, query blocks and merging slices read it)."""
    if not items.num_rows:
        return "", 0
    target = folder.join(f"{uuid.uuid4().hex}.parquet")
    write_bucketed(items, target, "item" if identities else "uri")
    return target.path, items.num_rows


def search_sets(
    queries: ItemSet, gallery: ItemSet, previous: Previous | None, how: Search
) -> tuple[list, int, int, dict]:
    """Every query's top ``keep`` over the gallery as ``matches/`` rows: added queries searched in full, kept ones
    merged with the previous run's rows (or searched in full when their list lost an item). Returns the data files,
    rows, unknowns and counts (queries searched, merged; gallery items added, removed)."""
    import ray

    # One set of shard actors: the whole gallery when some query is searched in full, and the added items when
    # kept queries merge (two sets could each want every GPU and wait on each other).
    full = len(queries.added) > 0 or (gallery.removed_count > 0 and queries.kept_count > 0)
    parts = {"all": gallery.prepared if full else Prepared()}
    parts["added"] = gallery.added if queries.kept else Prepared()
    shards = open_shards(parts, how)
    try:
        calls = []
        block = ray.remote(num_cpus=0)(search_block)  # no CPU: see jobs.archive.search.search_archive
        for path, n in queries.added.files:
            for a, b in blocks(n, how.layout.query_batch):
                calls.append((partial(block.remote, path, a, b, shards, how), b - a))
        merge = ray.remote(num_cpus=0)(merge_slice)
        ledger = Ledger(how.store)
        prefix = "identity:" if how.mode == "identify" else ""
        for lo, hi, path, n in queries.kept:
            rows = previous.rows if previous else []
            calls.append((partial(merge.remote, lo, hi, path, rows, gallery.removed, shards, ledger, prefix, how), n))
        results = run_windowed(calls, 2 * max(1, len(shards)) + 2, len(queries.prepared))
    finally:
        close_shards(shards)
    files, rows, unknown, searched = [], 0, 0, 0
    for written, count, unknowns, full in results:
        files += written
        rows += count
        unknown += unknowns
        searched += full
    counts = {
        "queries_searched": searched,
        "queries_merged": len(queries.prepared) - searched,
        "gallery_added": len(gallery.added) if gallery.compared else None,
        "gallery_removed": gallery.removed_count if gallery.compared else None,
    }
    return files, rows, unknown, counts


def merge_slice(
    lo: int,
    hi: int,
    path: str,
    row_paths: list[str],
    removed_paths: list[str],
    shards: list,
    ledger: Ledger,
    prefix: str,
    how: Search,
) -> tuple[list, int, int, int]:
    """A slice's kept queries: each one's previous list merged with its top K over the added items, or, when its
    list held a removed item, searched in full. Returns the data files, rows, unknowns and queries searched."""
    queries = pq.read_table(path, filesystem=how.store.arrow)
    removed = np.concatenate(
        [np.zeros(0, np.int64)]
        + [pq.read_table(p, filesystem=how.store.arrow).column("id").to_numpy() for p in removed_paths]
    )
    before = ledger.read(row_paths, lo, hi, _ROW_COLUMNS)
    at = pc.index_in(before.column("query_item"), value_set=queries.column("item")) if before is not None else None
    if before is not None and before.num_rows:
        mine = pc.is_valid(at)
        before, at = before.filter(mine), at.filter(mine).to_numpy(zero_copy_only=False).astype(np.int64)
    else:
        before, at = None, np.zeros(0, np.int64)
    if before is not None:
        gallery_items = before.column("identity" if prefix else "gallery_item").to_pylist()
        ids = np.array([item_id(prefix + g) for g in gallery_items], np.int64)
    else:
        ids = np.zeros(0, np.int64)
    stale = np.zeros(queries.num_rows, bool)
    stale[at[np.isin(ids, removed)]] = True
    files, rows, unknown = [], 0, 0
    # Kept queries whose lists are whole: the previous rows (re-indexed among them) and the added items' top K.
    clean = queries.filter(pa.array(~stale))
    position = np.cumsum(~stale) - 1
    keep_rows = ~stale[at]
    if before is not None:
        names = (
            pa.table(
                {"uri": pa.array([""] * before.num_rows), "sha256": pa.array([""] * before.num_rows)}
            ).append_column("item", before.column("identity"))
            if prefix
            else before.select(["gallery_uri", "gallery_sha256", "gallery_item"]).rename_columns(
                ["uri", "sha256", "item"]
            )
        )
        carried = Candidates(
            position[at[keep_rows]],
            before.column("score").to_numpy(zero_copy_only=False)[keep_rows].astype(np.float64),
            ids[keep_rows],
            names.filter(pa.array(keep_rows)),
        )
    else:
        carried = Candidates.concat([])
    for a, b in blocks(clean.num_rows, how.layout.query_batch):
        chunk = clean.slice(a, b - a)
        mine = (carried.query >= a) & (carried.query < b)
        old = Candidates(
            carried.query[mine] - a, carried.score[mine], carried.gallery[mine], carried.names.filter(pa.array(mine))
        )
        found = Candidates.concat([old, ask(shards, chunk, how.k, "added")])
        written, count, unknowns = _write(chunk, found, how)
        files, rows, unknown = files + written, rows + count, unknown + unknowns
    # Kept queries that lost an item of their list: searched in full.
    again = queries.filter(pa.array(stale))
    for a, b in blocks(again.num_rows, how.layout.query_batch):
        chunk = again.slice(a, b - a)
        written, count, unknowns = _write(chunk, ask(shards, chunk, how.k), how)
        files, rows, unknown = files + written, rows + count, unknown + unknowns
    return files, rows, unknown, again.num_rows


def _write(queries: pa.Table, found: Candidates, how: Search) -> tuple[list, int, int]:
    rows, unknown = match_rows(queries, found, how.keep, how.same_set, how.fields, how.mode)
    return how.writer.write(rows), rows.num_rows, unknown
