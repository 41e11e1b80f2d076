"""Identification at archive scale: identities enrolled by workers, then probes searched against them as a search is.

    gallery = prepare_items(root, "faces", run_id, True, staging)            # items, sorted by uri bucket
    enrolled = enrol(root, gallery, labels, manifest_run, same_set, staging)  # tasks: identities and probes staged
    search_sets(probes, identities, previous, how)                         # as search (jobs.archive.search_diff)

1. **Labels** (one manifest run's, or a CSV of uri,label) are staged in a ledger sorted by uri bucket: a task per
   manifest data file (the CSV by one task).
2. **Join.** A task per slice of uris joins the slice's gallery items with their labels: a labelled item adds its
   unit vector to its identity's partial sum (staged sorted by the label's bucket, so that an identity's partial
   sums meet in one task); with one table for both, an unlabelled item is a probe (staged as an item file). A source
   given two identities fails the job: enrolment must not guess.
3. **Centroids.** A task per slice of labels adds up each identity's partial sums (in a fixed order, in float64)
   into the mean of its sources' unit vectors, made unit: one-shot or few-shot enrolment. They are staged as gallery
   items (item = the identity, no uri) that shard actors read like any gallery.

The driver holds file lists and counts, never a label, a vector or an identity.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from jobs.archive.search import Prepared
from jobs.runtime.accounting import Ledger, write_bucketed
from jobs.runtime.gather import gather
from jobs.runtime.slices import bucket_slices
from ops.io.errors import EmbeddingError
from ops.io.storage import Store, resolve
from ops.io.tables import committed_files, committed_rows
from ops.matching.embeddings import item_id, labels_csv
from ops.matching.vectors import normalise

log = logging.getLogger("crossmatch")
LABELS, SUMS = "labels", "sums"  # the ledger's kinds: uri -> label, and partial sums per identity


@dataclass
class Enrolled:
    """What enrolment staged: the identities as gallery items, the probes (the unlabelled gallery items, when one
    table is both), and how many sources were enrolled."""

    identities: Prepared
    probes: Prepared
    enrolled_sources: int


def enrol(
    root: Store,
    gallery: Prepared,
    labels: str | None,
    manifest_run: str,
    same_set: bool,
    staging: Store,
    pool: Prepared | None = None,
) -> Enrolled:
    """Identities from ``gallery``'s labelled items (labels from the CSV ``labels``, else ``manifest_run`` under
    ``root``); with ``same_set``, the unlabelled sources' items of ``pool`` (default: the gallery's) become the
    probes: every face of a photo and every track of a video, while a labelled source enrols one face."""
    import ray

    ledger = Ledger(staging.join("ledger"))
    where = labels or f"manifest run {manifest_run}"
    if labels:
        staged = ray.get(ray.remote(stage_csv).remote(resolve(labels), ledger))  # the driver's cwd and endpoint
        if staged["conflict"]:
            raise EmbeddingError(
                f"{where} gives {staged['conflict'][0]} two identities: {', '.join(staged['conflict'][1:])}"
            )
        label_paths = [staged["path"]] if staged["path"] else []
    else:
        paths, pairs = committed_files(root, "manifest", manifest_run)
        label_paths = [p for p in gather(stage_manifest_labels, [(p, root, pairs, ledger) for p in paths]) if p]
    log.info("labels from %s under %s", where, root.uri)
    slices = bucket_slices(len(gallery))
    item_paths = [path for path, _ in gallery.files]
    pool_paths = [path for path, _ in (pool if pool is not None else gallery).files]
    probes_at = staging.join("probes")
    joined = gather(
        join_slice, [(lo, hi, item_paths, label_paths, ledger, same_set, probes_at, pool_paths) for lo, hi in slices]
    )
    conflicts = [j["conflict"] for j in joined if j["conflict"]]
    if conflicts:
        uri, a, b = min(conflicts)
        raise EmbeddingError(f"{where} gives {uri} two identities: {a}, {b}")
    enrolled = sum(j["enrolled"] for j in joined)
    probes = Prepared(files=sorted((j["probes"], j["probe_count"]) for j in joined if j["probe_count"]))
    probes.models, probes.dim = gallery.models, gallery.dim
    sums = [j["sums"] for j in joined if j["sums"]]
    made = gather(
        centroid_slice, [(lo, hi, sums, ledger, staging.join("identities")) for lo, hi in bucket_slices(enrolled)]
    )
    identities = Prepared(files=sorted((m["path"], m["rows"]) for m in made if m["rows"]))
    identities.models, identities.dim = gallery.models, gallery.dim
    return Enrolled(identities, probes, enrolled)


def stage_manifest_labels(path: str, root: Store, pairs: set, ledger: Ledger) -> str:
    """One manifest data file's labelled sources, staged (uri, label)."""
    labelled = pc.is_valid(pc.field("label")) & (pc.field("label") != "")
    rows = committed_rows(path, root, pairs, ["uri", "label"], labelled)
    return ledger.stage(LABELS, rows) if rows.num_rows else ""


def stage_csv(labels: Store, ledger: Ledger) -> dict:
    """A CSV of uri,label, staged (each pair once); a uri given two labels is returned as the conflict."""
    found: dict[str, str] = {}
    for row in labels_csv(labels):
        if row["label"] and found.setdefault(row["uri"], row["label"]) != row["label"]:
            return {"path": "", "conflict": (row["uri"], *sorted((found[row["uri"]], row["label"])))}
    if not found:
        return {"path": "", "conflict": None}
    table = pa.table({"uri": pa.array(list(found), pa.string()), "label": pa.array(list(found.values()), pa.string())})
    return {"path": ledger.stage(LABELS, table), "conflict": None}


def join_slice(
    lo: int,
    hi: int,
    item_paths: list[str],
    label_paths: list[str],
    ledger: Ledger,
    same_set: bool,
    probes: Store,
    pool_paths: list[str] | None = None,
) -> dict:
    """A slice of the uris: its labelled items summed per identity, the unlabelled sources' items of the pool
    (default: the same items) staged as probes."""
    none = {"conflict": None, "enrolled": 0, "sums": "", "probes": "", "probe_count": 0}
    items = ledger.read(item_paths, lo, hi)
    pool = items if pool_paths is None else ledger.read(pool_paths, lo, hi)
    labels = ledger.read(label_paths, lo, hi, ["uri", "label"])
    if not (items is not None and items.num_rows) and not (pool is not None and pool.num_rows):
        return none  # (a slice whose clearest faces are all invalid may still hold valid faces and tracks: probes)
    by_uri: dict[str, str] = {}
    if labels is not None:
        for uri, label in zip(labels.column("uri").to_pylist(), labels.column("label").to_pylist(), strict=True):
            if by_uri.setdefault(uri, label) != label:
                return none | {"conflict": (uri, *sorted((by_uri[uri], label)))}
    uris = items.column("uri").to_pylist() if items is not None else []
    labelled = np.array([u in by_uri for u in uris], bool)
    out = dict(none)
    unlabelled = np.array([u not in by_uri for u in pool.column("uri").to_pylist()], bool) if pool is not None else None
    if same_set and unlabelled is not None and unlabelled.any():
        rest = pool.filter(pa.array(unlabelled)).drop_columns(["bucket"])
        target = probes.join(f"{uuid.uuid4().hex}.parquet")
        write_bucketed(rest, target)  # by uri, as every staged item file: a search by difference reads slices
        out |= {"probes": target.path, "probe_count": rest.num_rows}
    if labelled.any():
        vectors = _vectors(items.filter(pa.array(labelled))).astype(np.float64)
        names = [by_uri[u] for u, keep in zip(uris, labelled, strict=True) if keep]
        order = np.argsort(np.array(names, dtype=object), kind="stable")
        unique, first = np.unique(np.array(names, dtype=object)[order], return_index=True)
        sums = np.add.reduceat(vectors[order], first, axis=0)
        counts = np.diff(np.append(first, len(names)))
        table = pa.table(
            {
                "label": pa.array([str(u) for u in unique], pa.string()),
                "slice": pa.array([lo] * len(unique), pa.int32()),
                "sum": pa.FixedSizeListArray.from_arrays(pa.array(sums.ravel(), pa.float64()), sums.shape[1]),
                "count": pa.array(counts, pa.int64()),
            }
        )
        out |= {"enrolled": int(labelled.sum()), "sums": ledger.stage(SUMS, table, by="label")}
    return out


def centroid_slice(lo: int, hi: int, sum_paths: list[str], ledger: Ledger, identities: Store) -> dict:
    """A slice of the identities: each one's partial sums added in a fixed order, as a unit gallery item."""
    sums = ledger.read(sum_paths, lo, hi)
    if sums is None or sums.num_rows == 0:
        return {"path": "", "rows": 0}
    sums = sums.sort_by([("label", "ascending"), ("slice", "ascending")])
    names = np.array(sums.column("label").to_pylist(), dtype=object)
    unique, first = np.unique(names, return_index=True)
    vectors = _vectors(sums, "sum").astype(np.float64)
    total = np.add.reduceat(vectors, first, axis=0)
    counts = np.add.reduceat(sums.column("count").to_numpy(), first)
    centroids = normalise(total.astype(np.float32))  # the mean's direction: the sum's
    labels = [str(u) for u in unique]
    table = pa.table(
        {
            "uri": pa.array([""] * len(labels), pa.string()),
            "sha256": pa.array([""] * len(labels), pa.string()),
            "item": pa.array(labels, pa.string()),
            "id": pa.array([item_id(f"identity:{label}") for label in labels], pa.int64()),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(centroids.ravel(), pa.float32()), centroids.shape[1]),
            "members": pa.array(counts, pa.int64()),
        }
    )
    target = identities.join(f"{uuid.uuid4().hex}.parquet")
    write_bucketed(table, target, by="item")  # identities have no uri: a search by difference slices by label
    return {"path": target.path, "rows": table.num_rows}


def _vectors(table: pa.Table, column: str = "vector") -> np.ndarray:
    flat = table.column(column).combine_chunks()
    values = np.asarray(flat.flatten().to_numpy(zero_copy_only=False))
    return values.reshape(table.num_rows, -1)
