"""Exact top-K search at archive scale: the driver coordinates, workers read, search and write.

    prepared = prepare_items(root, "faces", run_id, per_source, staging)   # Ray tasks: items staged as files
    shards = [GalleryShard.remote(files, ...) for files in split(prepared)]  # each reads its own slice
    for each block of query items: a task sends it to every shard, merges their lists, writes its matches rows

1. **Items.** A task per committed data file of the embedding table (their paths come from the Delta log) turns its
   rows into items (key, uri, sha256, id, unit vector) written as a staging file; for one face per source, the
   files' faces are first partitioned by uri, so that a source's faces meet in one task. The driver gets one line per
   file: its path, its item count, the models seen, and the rare invalid embedding (an error row).
2. **Shards.** Each actor reads its share of the staged gallery files itself and keeps the vectors in its device's
   memory (``ExactSearch``); a gallery larger than one node's memory takes more shards.
3. **Queries.** A task per block of query items (``query_batch`` of one staged file) puts the block in the object
   store once, asks every shard for its top K, merges the lists exactly (score, then item id: the same answer however
   the gallery is cut), names the winners from the shards' answers and writes the block's ``matches/`` rows. The
   driver keeps a bounded number of blocks in flight and hands on data-file descriptions.

The driver holds the file lists and counts, never a vector, an item name or a match row.
"""

from __future__ import annotations

import logging
import uuid
import zlib
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from jobs.accounting import write_bucketed
from jobs.plan import ensure_ray, shard_plan
from jobs.progress import Progress
from jobs.source_job import RowWriter
from ops.io.errors import EmbeddingError
from ops.io.schemas import MATCHES
from ops.io.storage import Store, storage_errors
from ops.io.tables import committed_files, committed_rows
from ops.matching import items
from ops.matching.embeddings import EMBEDDING_TABLES, item_id, item_table, one_model
from ops.matching.search import ExactSearch
from ops.models.device import best_device

log = logging.getLogger("crossmatch")
STAGING = "_staging"  # <root>/_staging/<run_id>/<attempt>/: items between their preparation and the search

_COLUMNS = {
    "faces": [
        "uri",
        "sha256",
        "frame_index",
        "face_index",
        "face_size",
        "score",
        "embedding",
        "model_name",
        "model_sha256",
    ],
    "voices": ["uri", "sha256", "level", "segment_index", "embedding", "model_name", "model_sha256"],
}


@dataclass
class Prepared:
    """A staged item set: its files (path, items), models, dimension and the invalid items set aside."""

    files: list[tuple[str, int]] = field(default_factory=list)
    models: set[tuple[str, str]] = field(default_factory=set)
    dim: int | None = None
    invalid: list[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return sum(n for _, n in self.files)


@dataclass(frozen=True)
class Projection:
    """A trained model the items pass through in the staging tasks: a face head (``jobs.train_face``), or one branch
    of a joint voice-face model (``jobs.train_crossmodal``), whose items become whole sources as ``uri#voice`` or
    ``uri#face``."""

    ref: str
    models_root: str | None = None
    branch: str | None = None  # "voice" or "face": that branch of a joint model; None: a face head

    def __call__(self, found: pa.Table, table: str, models: set) -> tuple[pa.Table, set]:
        if self.branch is None:
            return _through_head(found, models, self.ref, self.models_root)
        return _through_joint(found, models, self, table)


def prepare_items(
    root: Store,
    table: str,
    run_id: str | None,
    per_source: bool,
    staging: Store,
    through: Projection | None = None,
) -> Prepared:
    """The items of ``table`` (one run's, or every committed run's) staged under ``staging`` by Ray tasks: one per
    data file; for one face per source, files first partitioned by uri (a source's faces may lie in several files)
    and then a task per partition. Plain tasks: Ray Data's hash shuffle cost seconds more on small clusters (as
    the manifest found)."""
    import ray

    if table not in EMBEDDING_TABLES:
        raise EmbeddingError(f"table {table!r} holds no embeddings: use one of {', '.join(EMBEDDING_TABLES)}")
    paths, committed = committed_files(root, table, run_id)
    if not paths:
        raise EmbeddingError(f"no committed {table}/ rows under {root.uri}: run `python -m jobs.embed_{table}` first")
    settings = {"table": table, "per_source": per_source, "staging": staging, "through": through}
    if table == "faces" and per_source:
        parts = max(1, min(len(paths), 64))
        split_task = ray.remote(num_cpus=0.5)(partition_faces)
        partitioned: dict[int, list[str]] = {}
        for found in ray.get([split_task.remote(p, root, committed, parts, staging.join("parts")) for p in paths]):
            for part, path in found.items():
                partitioned.setdefault(part, []).append(path)
        task = ray.remote(num_cpus=0.5)(stage_partition)
        summaries = ray.get([task.remote(files, root, settings) for _, files in sorted(partitioned.items())])
    else:
        task = ray.remote(num_cpus=0.5)(stage_file)
        summaries = ray.get([task.remote(p, root, committed, settings) for p in paths])
    prepared = Prepared()
    for summary in summaries:
        if summary["rows"]:
            prepared.files.append((summary["path"], summary["rows"]))
        prepared.models |= summary["models"]
        prepared.invalid += summary["invalid"]
        prepared.dim = prepared.dim or summary["dim"]
    if not prepared.files and not prepared.invalid and not prepared.models:
        raise EmbeddingError(f"no committed {table}/ rows under {root.uri}: run `python -m jobs.embed_{table}` first")
    prepared.files.sort()  # a fixed order: shards and query blocks are cut the same way each run
    return prepared


def _committed_rows(path: str, root: Store, pairs: set[tuple[str, str]], table: str) -> pa.Table:
    return committed_rows(path, root, pairs, _COLUMNS[table])


def partition_faces(path: str, root: Store, pairs: set, parts: int, staging: Store) -> dict[int, str]:
    """One file's faces, each source's clearest of them, written to the partition of its uri: {partition: path}."""
    faces = items.clearest_faces(_committed_rows(path, root, pairs, "faces"))
    of = np.array([zlib.crc32(u.encode()) % parts for u in faces.column("uri").to_pylist()], np.int64)
    written = {}
    for part in np.unique(of):
        target = staging.join(f"p{part:05d}", f"{uuid.uuid4().hex}.parquet")
        with storage_errors(target.uri), target.open("wb") as f:
            pq.write_table(faces.filter(pa.array(of == part)), f, compression="zstd")
        written[int(part)] = target.path
    return written


def stage_partition(paths: list[str], root: Store, settings: dict) -> dict:
    """A partition's faces (every face of its sources): each source's clearest as an item."""
    faces = items.clearest_faces(pads.dataset(paths, format="parquet", filesystem=root.arrow).to_table())
    return stage_items(faces, **settings)


def stage_file(path: str, root: Store, pairs: set, settings: dict) -> dict:
    return stage_items(_committed_rows(path, root, pairs, settings["table"]), **settings)


def stage_items(rows: pa.Table, table: str, per_source: bool, staging: Store, through: Projection | None) -> dict:
    """Rows as items in one staging file; the driver gets the file, the models and the invalid ones."""
    found, invalid, models = item_table(rows, table, per_source)
    if through is not None:
        found, models = through(found, table, models)
    path = ""
    if found.num_rows:  # sorted by uri bucket: enrolment reads a slice of the uris at a time (jobs.archive_identify)
        target = staging.join(f"{uuid.uuid4().hex}.parquet")
        write_bucketed(found, target)
        path = target.path
    dim = found.schema.field("vector").type.list_size if found.num_rows else None
    return {"path": path, "rows": found.num_rows, "dim": dim, "models": models, "invalid": invalid}


def _through_head(found: pa.Table, models: set, head_ref: str, models_root: str | None) -> tuple[pa.Table, set]:
    """Items mapped by a trained projection head (refused when it was trained on another backbone)."""
    from ops.matching.embeddings import EmbeddingSet, through_head

    (name, sha) = one_model(models, "items", "this worker")
    vectors = _vectors(found)
    mapped = through_head(EmbeddingSet([], [], [], vectors, name, sha, []), head_ref, models_root)
    width = mapped.vectors.shape[1]
    flat = pa.array(np.ascontiguousarray(mapped.vectors, np.float32).ravel(), pa.float32())
    found = found.set_column(4, "vector", pa.FixedSizeListArray.from_arrays(flat, width))
    return found, {(mapped.model_name, mapped.model_sha256)}


def _through_joint(found: pa.Table, models: set, joint: Projection, table: str) -> tuple[pa.Table, set]:
    """Items mapped by one branch of a joint model, keyed ``uri#<branch>``. Items of another backbone than the one
    it was trained on pass unmapped, under their own model: the driver sees the mix and names it."""
    from ops.matching.heads import project
    from ops.models import catalogue

    model = catalogue.load(joint.ref, joint.models_root, expect="voice-face-model")
    expected = model.card["inputs"][table]
    if models != {(expected["model_name"], expected["model_sha256"])}:
        return found, models
    if not found.num_rows:  # a file of invalid embeddings only
        return found, {(model.name, model.sha256)}
    vectors = project(getattr(catalogue.build(model), joint.branch), _vectors(found)).numpy()
    keys = [items.modality_key(u, joint.branch) for u in found.column("uri").to_pylist()]
    mapped = pa.table(
        {
            "item": keys,
            "uri": found.column("uri"),
            "sha256": found.column("sha256"),
            "id": pa.array([item_id(k) for k in keys], pa.int64()),
            "vector": pa.FixedSizeListArray.from_arrays(
                pa.array(np.ascontiguousarray(vectors, np.float32).ravel(), pa.float32()), vectors.shape[1]
            ),
        }
    )
    return mapped, {(model.name, model.sha256)}


def _vectors(found: pa.Table) -> np.ndarray:
    column = found.column("vector").combine_chunks()
    flat = np.asarray(column.flatten().to_numpy(zero_copy_only=False), np.float32)
    return flat.reshape(found.num_rows, -1) if found.num_rows else np.zeros((0, 0), np.float32)


def _read(paths: list[str], store: Store) -> pa.Table:
    return pads.dataset(paths, format="parquet", filesystem=store.arrow).to_table()


class GalleryShard:
    """One shard of a staged gallery, read by the actor itself and held on its device; answers query blocks with
    each query's top K and the names of what it found."""

    def __init__(self, paths: list[str], store: Store, precision: str) -> None:
        found = _read(paths, store)
        device = best_device()
        self.ids = found.column("id").to_numpy()
        self.engine = ExactSearch(
            _vectors(found), self.ids, device=device, precision=precision if device.type == "cuda" else "fp32"
        )
        self.order = np.argsort(self.ids, kind="stable")
        self.names = found.select(["uri", "sha256", "item"])

    def __len__(self) -> int:
        return len(self.ids)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, pa.Table]:
        found = self.engine.search(queries, k)
        flat = found.ids.ravel()
        position = self.order[np.searchsorted(self.ids[self.order], np.maximum(flat, 0))]
        return found.scores, found.ids, self.names.take(pa.array(np.where(flat >= 0, position, 0)))


def search_block(
    path: str,
    start: int,
    stop: int,
    store: Store,
    shards: list,
    k: int,
    keep: int,
    same_set: bool,
    fields: dict,
    writer: RowWriter,
    mode: str = "search",
) -> tuple[list, int, int]:
    """Query items ``start:stop`` of one staged file against every shard: merged top lists (a query found in its
    own gallery skipped, ``keep`` ranks kept), its matches rows written by this worker. In ``identify`` mode the
    gallery items are enrolled identities: each row names the identity, and rank 1 decides (the identity, or
    ``unknown`` below ``fields["threshold"]``); in ``crossmatch`` mode each row is accepted or rejected at it, when
    there is one. Returns the data files, the row count and the unknowns."""
    import ray

    queries = pq.read_table(path, filesystem=store.arrow).slice(start, stop - start)
    vectors = ray.put(_vectors(queries))
    answers = ray.get([s.search.remote(vectors, k) for s in shards])
    n = queries.num_rows
    scores = np.concatenate([a[0] for a in answers], axis=1)
    ids = np.concatenate([a[1] for a in answers], axis=1)
    width = ids.shape[1]
    # lexsort sorts by its last key first: score descending, then id ascending; padding (-inf, -1) sinks last.
    order = np.lexsort((np.where(ids < 0, np.iinfo(np.int64).max, ids), -scores), axis=1)
    chosen_ids = np.take_along_axis(ids, order, 1)
    chosen_scores = np.take_along_axis(scores, order, 1)
    # Where each chosen entry's name is: answer s holds n x k names row-major.
    shard_of, rank_in = order // k, order % k
    name_at = shard_of * n * k + np.arange(n)[:, None] * k + rank_in
    q_ids = queries.column("id").to_numpy()
    kept = chosen_ids >= 0
    if same_set:
        kept &= chosen_ids != q_ids[:, None]
    rank = np.cumsum(kept, axis=1)
    kept &= rank <= keep
    q = np.repeat(np.arange(n), width).reshape(n, width)[kept]
    names = pa.concat_tables([a[2] for a in answers]).take(pa.array(name_at[kept]))
    rows = len(q)
    qt = queries.take(pa.array(q))
    table = {
        "mode": pa.array([mode] * rows),
        "query_uri": qt.column("uri"),
        "query_sha256": qt.column("sha256"),
        "query_item": qt.column("item"),
        "rank": pa.array(rank[kept], pa.int32()),
        "score": pa.array(chosen_scores[kept], pa.float32()),
    }
    unknown = 0
    if mode == "identify":
        first = rank[kept] == 1
        clears = chosen_scores[kept] >= fields["threshold"]
        identity = names.column("item")
        table["identity"] = identity
        table["decision"] = pc.if_else(pa.array(first & clears), identity, pc.if_else(pa.array(first), "unknown", None))
        unknown = int((first & ~clears).sum())
    else:
        table |= {"gallery_" + c: names.column(c) for c in ("uri", "sha256", "item")}
    if mode == "crossmatch" and fields["threshold"] is not None:
        table["decision"] = pc.if_else(pa.array(chosen_scores[kept] >= fields["threshold"]), "accept", "reject")
    table |= {name: pa.array([value] * rows) for name, value in fields.items()}
    for f in MATCHES:
        if f.name not in table:
            table[f.name] = pa.nulls(rows, f.type)
    data = pa.table({f.name: table[f.name] for f in MATCHES}).cast(MATCHES)
    return writer.write(data), rows, unknown


def split(files: list[tuple[str, int]], n: int) -> list[list[str]]:
    """Files into ``n`` shards of about equal item counts (largest first, each to the lightest shard)."""
    loads, shards = [0] * n, [[] for _ in range(n)]
    for path, rows in sorted(files, key=lambda f: (-f[1], f[0])):
        i = int(np.argmin(loads))
        shards[i].append(path)
        loads[i] += rows
    return [s for s in shards if s]


def search_archive(
    queries: Prepared,
    gallery: Prepared,
    store: Store,
    k: int,
    keep: int,
    same_set: bool,
    fields: dict,
    writer: RowWriter,
    shards: int | None,
    gpus_per_shard: float | None,
    precision: str,
    query_batch: int,
    mode: str = "search",
) -> tuple[list, int, int]:
    """Every query item's top ``keep`` over the gallery, written as ``matches/`` rows by workers (``mode``: see
    ``search_block``): returns the data files, the row count and the unknowns."""
    ensure_ray()
    import ray

    n_shards, per_shard = shard_plan(shards, gpus_per_shard, len(gallery.files))
    actor = ray.remote(num_gpus=per_shard, num_cpus=0.5 if per_shard else 1)(GalleryShard)
    held = [actor.remote(paths, store, precision) for paths in split(gallery.files, n_shards)]
    log.info("%d gallery items in %d shard(s), %g GPU each", len(gallery), len(held), per_shard)
    # Block tasks ask for no CPU: they wait on the shards most of their life, the window bounds how many run, and
    # a CPU they held could be the one a CPU shard needs (shards on every CPU would leave them waiting forever).
    task = ray.remote(num_cpus=0)(search_block)
    blocks = [(p, a, min(a + query_batch, n)) for p, n in queries.files for a in range(0, n, query_batch)]
    window, pending, files, rows, unknown = 2 * len(held) + 2, {}, [], 0, 0
    progress = Progress("queries", len(queries))
    try:
        for i, (path, a, b) in enumerate(blocks):
            pending[task.remote(path, a, b, store, held, k, keep, same_set, fields, writer, mode)] = b - a
            while len(pending) >= window or (pending and i == len(blocks) - 1):
                (done,), _ = ray.wait(list(pending), num_returns=1)
                written, count, unknowns = ray.get(done)
                files += written
                rows += count
                unknown += unknowns
                progress.update(pending.pop(done))
    finally:
        for s in held:
            ray.kill(s)
    return files, rows, unknown
