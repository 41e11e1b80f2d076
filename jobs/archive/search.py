"""Exact top-K search at archive scale: the driver coordinates, workers read, search and write.

    prepared = prepare_items(root, "faces", run_id, per_source, staging)   # Ray tasks: items staged as files
    shards = [GalleryShard.remote(files, ...) for files in split(prepared)]  # each reads its own slice
    for each block of query items: a task sends it to every shard, merges their lists, writes its matches rows

1. **Items.** A task per committed data file of the embedding table (their paths come from the Delta log) turns its
   rows into items (key, uri, sha256, id, unit vector) written as a staging file; for one face per source, the
   files' faces are first partitioned by uri, so that a source's faces meet in one task. The driver gets one line per
   file: its path, its item count, the models seen, and the rare invalid embedding (an error row).
2. **Shards.** Each actor reads its share of the staged gallery files itself and keeps the vectors in its device's
   memory (``ExactSearch``); a gallery larger than one node's memory takes more shards. A small gallery
   (``SMALL_GALLERY`` items) starts no actor: each query task reads it and searches it itself (``InTask``).
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
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache, partial

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from jobs.runtime.accounting import write_bucketed
from jobs.runtime.cluster import GPU_ACTOR_CPUS, ensure_ray, shard_plan
from jobs.runtime.gather import gather
from jobs.runtime.output import RowWriter
from jobs.runtime.progress import Progress
from jobs.runtime.slices import balanced, blocks
from ops.io.errors import EmbeddingError
from ops.io.schemas import MATCHES
from ops.io.storage import Store, storage_errors
from ops.io.tables import committed_files, committed_rows
from ops.matching import items
from ops.matching.decisions import BELOW_EVIDENCE, decide, verbal_array
from ops.matching.embeddings import EMBEDDING_TABLES, item_id, item_table, one_model
from ops.matching.search import ExactSearch
from ops.models.device import best_device

log = logging.getLogger("crossmatch")

_COLUMNS = {
    "faces": [
        "uri",
        "sha256",
        "frame_index",
        "face_index",
        "face_size",
        "score",
        "timestamp",
        "track_id",
        "eye_distance",
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
    tracks: bool = False,
) -> Prepared:
    """The items of ``table`` (one run's, or every committed run's) staged under ``staging`` by Ray tasks: one per
    data file; for one face per source, files first partitioned by uri (a source's faces may lie in several files)
    and then a task per partition; the same for faces with ``tracks``, each video's track one item
    (``items.tracked_faces``). Plain tasks: Ray Data's hash shuffle cost seconds more on small clusters (as
    the manifest found)."""
    if table not in EMBEDDING_TABLES:
        raise EmbeddingError(f"table {table!r} holds no embeddings: use one of {', '.join(EMBEDDING_TABLES)}")
    paths, committed = committed_files(root, table, run_id)
    if not paths:
        raise EmbeddingError(f"no committed {table}/ rows under {root.uri}: run `python -m jobs.embed_{table}` first")
    settings = {"table": table, "per_source": per_source, "staging": staging, "through": through}
    if table == "faces" and (per_source or tracks):
        # One clearest face per source is small; every face and track is not: about a data file's rows a partition.
        parts = max(1, min(len(paths), 64 if per_source else 1024))
        partitioned: dict[int, list[str]] = {}
        written = gather(
            partition_faces, [(p, root, committed, parts, staging.join("parts"), per_source) for p in paths]
        )
        for found in written:
            for part, path in found.items():
                partitioned.setdefault(part, []).append(path)
        summaries = gather(stage_partition, [(files, root, settings) for _, files in sorted(partitioned.items())])
    else:
        summaries = gather(stage_file, [(p, root, committed, settings) for p in paths])
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


def partition_faces(
    path: str, root: Store, pairs: set, parts: int, staging: Store, per_source: bool = True
) -> dict[int, str]:
    """One file's faces (with ``per_source``, only each source's clearest of them), written to the partition of
    their uri: {partition: path}."""
    faces = _committed_rows(path, root, pairs, "faces")
    if per_source:
        faces = items.clearest_faces(faces)
    of = np.array([zlib.crc32(u.encode()) % parts for u in faces.column("uri").to_pylist()], np.int64)
    written = {}
    for part in np.unique(of):
        target = staging.join(f"p{part:05d}", f"{uuid.uuid4().hex}.parquet")
        with storage_errors(target.uri), target.open("wb") as f:
            pq.write_table(faces.filter(pa.array(of == part)), f, compression="zstd")
        written[int(part)] = target.path
    return written


def stage_partition(paths: list[str], root: Store, settings: dict) -> dict:
    """A partition's faces (every face of its sources): each source's clearest as an item, or with tracks each
    photo's faces and each video's tracks."""
    faces = pads.dataset(paths, format="parquet", filesystem=root.arrow).to_table()
    faces = items.clearest_faces(faces) if settings["per_source"] else items.tracked_faces(faces)
    return stage_items(faces, **settings)


def stage_file(path: str, root: Store, pairs: set, settings: dict) -> dict:
    return stage_items(_committed_rows(path, root, pairs, settings["table"]), **settings)


def stage_items(rows: pa.Table, table: str, per_source: bool, staging: Store, through: Projection | None) -> dict:
    """Rows as items in one staging file; the driver gets the file, the models and the invalid ones."""
    found, invalid, models = item_table(rows, table, per_source)
    if through is not None:
        found, models = through(found, table, models)
    path = ""
    if found.num_rows:  # sorted by uri bucket: enrolment reads a slice of the uris at a time (jobs.archive.identify)
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
    """One shard of staged galleries, read by the actor itself and held on its device; answers query blocks with
    each query's top K and the names of what it found. ``parts`` names the galleries it holds: a search holds one
    ("all"); a search by difference (``jobs.archive.search_diff``) may also hold the items added since the previous
    run."""

    def __init__(self, parts: dict[str, list[str]], store: Store, precision: str) -> None:
        device = best_device()
        precision = precision if device.type == "cuda" else "fp32"
        self.parts = {name: _Held(_read(paths, store), device, precision) for name, paths in parts.items() if paths}

    def search(self, queries: np.ndarray, k: int, part: str = "all") -> tuple[np.ndarray, np.ndarray, pa.Table]:
        held = self.parts.get(part)
        if held is None:  # this shard got no file of that gallery
            empty = pa.table({c: pa.array([], pa.string()) for c in ("uri", "sha256", "item")})
            return np.zeros((len(queries), 0)), np.zeros((len(queries), 0), np.int64), empty
        return held.search(queries, k)


# A gallery of at most this many items is read by each query task itself (``InTask``): a shard actor is a process to
# start and its imports to pay (about 2 s), while reading a few MB of vectors and searching them takes milliseconds.
SMALL_GALLERY = 4096


@dataclass(frozen=True)
class InTask:
    """A small gallery (``SMALL_GALLERY``) that the query tasks read and search themselves, in place of shard actors:
    its parts' staged files. The same ``GalleryShard`` answers, on the task's CPU, so the lists are the same."""

    parts: tuple[tuple[str, tuple[str, ...]], ...]
    store: Store

    def held(self) -> GalleryShard:
        """The gallery read once per worker process (the blocks of one run share it; staged paths are unique)."""
        return _read_in_task(self)


@lru_cache(maxsize=1)  # the last small gallery this process read
def _read_in_task(gallery: InTask) -> GalleryShard:
    return GalleryShard({name: list(paths) for name, paths in gallery.parts}, gallery.store, "fp32")


class _Held:
    """A gallery in a device's memory, and the names of its items by id."""

    def __init__(self, found: pa.Table, device, precision: str) -> None:
        self.ids = found.column("id").to_numpy()
        self.engine = ExactSearch(_vectors(found), self.ids, device=device, precision=precision)
        self.order = np.argsort(self.ids, kind="stable")
        self.names = found.select(["uri", "sha256", "item"])

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, pa.Table]:
        found = self.engine.search(queries, k)
        flat = found.ids.ravel()
        position = self.order[np.searchsorted(self.ids[self.order], np.maximum(flat, 0))]
        return found.scores, found.ids, self.names.take(pa.array(np.where(flat >= 0, position, 0)))


@dataclass
class Candidates:
    """Gallery entries found for a block of queries, flat: the query's row in the block, the score, the gallery
    item's id and names (uri, sha256, item; an identity's label as the item)."""

    query: np.ndarray
    score: np.ndarray
    gallery: np.ndarray
    names: pa.Table

    @staticmethod
    def of_answers(answers: list[tuple[np.ndarray, np.ndarray, pa.Table]]) -> Candidates:
        """The shards' answers (scores and ids n x k, names n x k row-major), padding dropped."""
        parts = []
        for scores, ids, names in answers:
            n, k = ids.shape
            found = ids.ravel() >= 0
            query = np.repeat(np.arange(n), k)[found]
            parts.append(Candidates(query, scores.ravel()[found], ids.ravel()[found], names.filter(pa.array(found))))
        return Candidates.concat(parts)

    @staticmethod
    def concat(parts: list[Candidates]) -> Candidates:
        if not parts:
            empty = pa.table({c: pa.array([], pa.string()) for c in ("uri", "sha256", "item")})
            return Candidates(np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64), empty)
        return Candidates(
            np.concatenate([p.query for p in parts]),
            np.concatenate([p.score for p in parts]),
            np.concatenate([p.gallery for p in parts]),
            pa.concat_tables([p.names.select(["uri", "sha256", "item"]) for p in parts]),
        )


def match_rows(
    queries: pa.Table, found: Candidates, keep: int, same_set: bool, fields: dict, mode: str
) -> tuple[pa.Table, int]:
    """Each query's best ``keep`` candidates as ``matches/`` rows (a query found in its own gallery skipped), and the
    number of unknowns. Ordered as every search orders: by the score as stored (float32) descending, then by the
    gallery id, so that lists merged from a previous run's rows (``jobs.archive.search_diff``) rank exactly as a full
    search; a decision compares the stored score with the threshold, as a reader of the table would. In
    ``identify`` mode the gallery items are enrolled identities: each row names the identity, and rank 1 decides
    (the identity, or ``unknown`` below ``fields["threshold"]``); in ``crossmatch`` mode each row is accepted or
    rejected at the threshold, in ``search`` mode a match or not, when there is one. A score that clears the
    threshold on a log-LR not above ``fields["min_llr"]`` is ``BELOW_EVIDENCE`` (``ops.matching.decisions``)."""
    score = found.score.astype(np.float32)
    q_ids = queries.column("id").to_numpy()
    order = np.lexsort((found.gallery, -score, found.query))
    if same_set:
        order = order[found.gallery[order] != q_ids[found.query[order]]]
    q = found.query[order]
    starts = np.flatnonzero(np.r_[True, q[1:] != q[:-1]]) if len(q) else np.zeros(0, np.int64)
    rank = np.arange(len(q)) - np.repeat(starts, np.diff(np.r_[starts, len(q)])) + 1
    kept = rank <= keep
    order, q, rank = order[kept], q[kept], rank[kept]
    chosen = score[order]
    names = found.names.take(pa.array(order, pa.int64()))
    rows = len(q)
    qt = queries.take(pa.array(q, pa.int64()))
    table = {
        "mode": pa.array([mode] * rows),
        "query_uri": qt.column("uri"),
        "query_sha256": qt.column("sha256"),
        "query_item": qt.column("item"),
        "rank": pa.array(rank, pa.int32()),
        "score": pa.array(chosen, pa.float32()),
    }
    unknown = 0
    threshold = fields.get("threshold")
    llr_map = fields.get("llr_map")  # (slope, offset) of the calibration record, when one was given
    llr = llr_map[0] * chosen.astype(np.float64) + llr_map[1] if llr_map is not None else None
    min_llr = fields.get("min_llr", 0.0)
    if mode == "identify":
        first = rank == 1
        identity = names.column("item")
        table["identity"] = identity
        decided = decide(chosen, threshold, llr, min_llr, np.asarray(identity.to_pylist(), object), "unknown")
        table["decision"] = pa.array(np.where(first, decided, None).tolist(), pa.string())
        # Not identified: below the threshold, or above it on evidence that does not favour the identity.
        unknown = int((first & np.isin(decided, ["unknown", BELOW_EVIDENCE])).sum())
    else:
        table |= {"gallery_" + c: names.column(c) for c in ("uri", "sha256", "item")}
        words = ("accept", "reject") if mode == "crossmatch" else ("match", "no match")
        table["decision"] = pa.array(decide(chosen, threshold, llr, min_llr, *words).tolist(), pa.string())
    if llr is not None:
        table["llr"] = pa.array(llr, pa.float64())
        table["verbal"] = pa.array(verbal_array(llr), pa.string())
    table |= {name: pa.array([value] * rows) for name, value in fields.items() if name in MATCHES.names}
    for f in MATCHES:
        if f.name not in table:
            table[f.name] = pa.nulls(rows, f.type)
    return pa.table({f.name: table[f.name] for f in MATCHES}).cast(MATCHES), unknown


def search_block(path: str, start: int, stop: int, shards: list, how: Search) -> tuple[list, int, int, int]:
    """Query items ``start:stop`` of one staged file against every shard: each query's lists merged exactly and
    written as its ``matches/`` rows by this worker (``match_rows``). Returns the data files, the row count, the
    unknowns and the queries searched."""
    queries = pq.read_table(path, filesystem=how.store.arrow).slice(start, stop - start)
    rows, unknown = match_rows(queries, ask(shards, queries, how.k), how.keep, how.same_set, how.fields, how.mode)
    return how.writer.write(rows), rows.num_rows, unknown, queries.num_rows


def ask(shards: list, queries: pa.Table, k: int, part: str = "all") -> Candidates:
    """Every shard's top ``k`` in its gallery ``part`` for these queries (the block put in the object store once)."""
    import ray

    if not shards or not queries.num_rows:
        return Candidates.concat([])
    if isinstance(shards[0], InTask):
        return Candidates.of_answers([shards[0].held().search(_vectors(queries), k, part)])
    vectors = ray.put(_vectors(queries))
    return Candidates.of_answers(ray.get([s.search.remote(vectors, k, part) for s in shards]))


def split(files: list[tuple[str, int]], n: int) -> list[list[str]]:
    """Files (path, items) into ``n`` shards of about equal item counts: their paths (``slices.balanced``)."""
    return [[path for path, _ in share] for share in balanced(files, n, lambda f: f[1], lambda f: f[0])]


QUERY_BATCH = 8192  # queries a block task sends to every shard at once (``jobs.match --query-batch``)


@dataclass(frozen=True, kw_only=True)
class ShardLayout:
    """How the gallery sits on shard actors (``open_shards``) and how many queries a block task sends them."""

    shards: int | None = None  # None: one per GPU, else one on CPUs (``jobs.runtime.cluster.shard_plan``)
    gpus_per_shard: float | None = None  # None: 1 when the cluster has GPUs
    precision: str = "fp32"  # of the CUDA products: fp32, fp16 or bf16 (the exact re-scoring keeps results equal)
    query_batch: int = QUERY_BATCH


@dataclass(frozen=True, kw_only=True)
class Search:
    """How a run searches: K asked of the shards and the ranks kept, whether the queries are the gallery (a query
    found in its own gallery is skipped) and the ``mode`` (see ``match_rows``); where its staged files are, its rows'
    fields and their writer; the shard layout. Frozen and picklable: it travels to every block task."""

    k: int
    keep: int
    same_set: bool
    mode: str = "search"
    store: Store
    fields: dict
    writer: RowWriter
    layout: ShardLayout = ShardLayout()


def open_shards(galleries: dict[str, Prepared], how: Search) -> list:
    """Shard actors holding ``galleries`` (part name -> staged items), each reading its share of every part."""
    import ray

    galleries = {name: g for name, g in galleries.items() if g.files}
    if not galleries:
        return []
    layout = how.layout
    sizes = ", ".join(f"{len(g)} {name}" for name, g in galleries.items())
    if layout.shards is None and layout.gpus_per_shard is None and sum(map(len, galleries.values())) <= SMALL_GALLERY:
        log.info("gallery items (%s) read by each query task: no shard actors for at most %d", sizes, SMALL_GALLERY)
        return [InTask(tuple((name, tuple(path for path, _ in g.files)) for name, g in galleries.items()), how.store)]
    n_shards, per_shard = shard_plan(
        layout.shards, layout.gpus_per_shard, max(len(g.files) for g in galleries.values())
    )
    shares = {name: split(g.files, n_shards) for name, g in galleries.items()}
    n_shards = max(len(s) for s in shares.values())
    actor = ray.remote(num_gpus=per_shard, num_cpus=GPU_ACTOR_CPUS if per_shard else 1)(GalleryShard)
    held = [
        actor.remote({name: s[i] if i < len(s) else [] for name, s in shares.items()}, how.store, layout.precision)
        for i in range(n_shards)
    ]
    log.info("gallery items (%s) in %d shard(s), %g GPU each", sizes, len(held), per_shard)
    return held


def close_shards(held: list) -> None:
    import ray

    for s in held:
        if not isinstance(s, InTask):
            ray.kill(s)


def run_windowed(calls: list[tuple[Callable[[], object], int]], window: int, total: int, what: str = "queries") -> list:
    """Submit ``calls`` (a function that submits a task, and the queries it covers) keeping at most ``window`` in
    flight; their results, with progress over ``total``."""
    import ray

    pending, results = {}, []
    progress = Progress(what, total)
    for i, (submit, weight) in enumerate(calls):
        pending[submit()] = weight
        while len(pending) >= window or (pending and i == len(calls) - 1):
            (done,), _ = ray.wait(list(pending), num_returns=1)
            results.append(ray.get(done))
            progress.update(pending.pop(done))
    return results


def search_archive(queries: Prepared, gallery: Prepared, how: Search) -> tuple[list, int, int]:
    """Every query item's top ``how.keep`` over the gallery, written as ``matches/`` rows by workers (see
    ``match_rows``): returns the data files, the row count and the unknowns."""
    ensure_ray()
    import ray

    held = open_shards({"all": gallery}, how)
    # Block tasks ask for no CPU: they wait on the shards most of their life, the window bounds how many run, and
    # a CPU they held could be the one a CPU shard needs (shards on every CPU would leave them waiting forever).
    task = ray.remote(num_cpus=0)(search_block)
    calls = [
        (partial(task.remote, path, a, b, held, how), b - a)
        for path, n in queries.files
        for a, b in blocks(n, how.layout.query_batch)
    ]
    try:
        results = run_windowed(calls, 2 * len(held) + 2, len(queries))
    finally:
        close_shards(held)
    return [f for r in results for f in r[0]], sum(r[1] for r in results), sum(r[2] for r in results)
