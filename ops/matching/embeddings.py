"""Embedding sets for matching: rows of a committed ``faces/`` or ``voices/`` table as normalised vectors with keys.

An item is what a score is about (``ops.matching.items``): a face, a speech segment or a whole source (its pooled
voice, or its clearest face). Sets refuse to mix models: the provenance columns of
every row must name one model and checkpoint. Rows whose vectors are NaN, infinite or zero are set aside with a
reason, never dropped silently.
"""

from __future__ import annotations

import csv
import hashlib
import heapq
import io
import logging
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ops.io.errors import EmbeddingError
from ops.io.storage import Store, resolve
from ops.io.tables import committed_runs, iter_table, read_table
from ops.matching import items
from ops.matching.vectors import invalid_rows, normalise

log = logging.getLogger("crossmatch")

EMBEDDING_TABLES = ("faces", "voices")


@dataclass
class EmbeddingSet:
    uris: list[str]
    sha256: list[str]
    items: list[str]
    vectors: np.ndarray  # (N, D) float32, unit rows
    model_name: str
    model_sha256: str
    invalid: list[dict]  # {uri, sha256, item, reason} of rows set aside

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    def __len__(self) -> int:
        return len(self.items)

    def take(self, index: np.ndarray) -> EmbeddingSet:
        index = np.asarray(index, np.int64)
        return EmbeddingSet(
            [self.uris[i] for i in index],
            [self.sha256[i] for i in index],
            [self.items[i] for i in index],
            self.vectors[index],
            self.model_name,
            self.model_sha256,
            [],
        )


def read_embeddings(
    root: Store, table: str, run_id: str | None = None, per_source: bool = False, uris: list[str] | None = None
) -> EmbeddingSet:
    """The committed embeddings of ``table`` under ``root`` (only these sources' when ``uris`` is given): every face
    or speech segment, or with ``per_source`` one item per source (a voice source's pooled embedding; an image or
    video's clearest face: the largest, then the most confident)."""
    return embedding_set(read_committed(root, table, run_id, uris), table, per_source, root.uri)


def read_committed(root: Store, table: str, run_id: str | None = None, uris: list[str] | None = None) -> pa.Table:
    """The committed rows of embedding table ``table``; an error that says which job to run when there are none."""
    if table not in EMBEDDING_TABLES:
        raise EmbeddingError(f"table {table!r} holds no embeddings: use one of {', '.join(EMBEDDING_TABLES)}")
    if uris is None:
        data = read_table(root, table, run_id=run_id)
    else:  # a few sources of a large table: streamed, so that only theirs are ever held
        wanted = pc.field("uri").isin(uris)
        found = list(iter_table(root, table, run_id, filter=wanted))
        data = pa.concat_tables(found) if found else read_table(root, table, run_id=run_id, limit=0)
    if data.num_rows == 0:
        raise EmbeddingError(f"no committed {table}/ rows under {root.uri}: run `python -m jobs.embed_{table}` first")
    return data


def embedding_set(data: pa.Table, table: str, per_source: bool, where: str, tracks: bool = False) -> EmbeddingSet:
    """An embedding set from rows already read (see ``read_embeddings``); ``where`` names them in errors. With
    ``tracks``, a video's faces are one item per track (``items.tracked_faces``)."""
    if table == "faces" and per_source:
        data = items.clearest_faces(data)
    elif table == "faces" and tracks:
        data = items.tracked_faces(data)
    found, invalid, models = item_table(data, table, per_source)
    model = one_model(models, table, where)
    vectors = found.column("vector")
    dim = vectors.type.list_size if pa.types.is_fixed_size_list(vectors.type) else None
    flat = np.asarray(vectors.combine_chunks().flatten().to_numpy(zero_copy_only=False), np.float32)
    width = dim or (len(flat) // found.num_rows if found.num_rows else _width(data))
    return EmbeddingSet(
        found.column("uri").to_pylist(),
        found.column("sha256").to_pylist(),
        found.column("item").to_pylist(),
        flat.reshape(found.num_rows, width),
        model[0],
        model[1],
        invalid,
    )


def item_id(key: str) -> int:
    """A 63-bit id from an item key: the same in every shard and order, so that ties between equal scores fall
    the same way however a gallery is cut."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") >> 1


def item_table(data: pa.Table, table: str, per_source: bool) -> tuple[pa.Table, list[dict], set[tuple[str, str]]]:
    """The items of rows of an embedding table (faces already one per source when ``per_source``): the valid ones
    as rows of item key, uri, sha256, ``item_id`` and unit vector (a fixed-size list), the invalid ones as {uri,
    sha256, item, reason}, and the (model name, sha256) pairs seen. Row by row: a worker can do it to any part."""
    if table == "voices":
        data = data.filter(pc.equal(data.column("level"), "source" if per_source else "segment"))
        data = data.filter(pc.is_valid(data.column("embedding")))  # no_speech sources: nothing to match
    models = set(zip(data.column("model_name").to_pylist(), data.column("model_sha256").to_pylist(), strict=True))
    raw = np.asarray(data.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False), np.float32)
    raw = raw.reshape(data.num_rows, -1) if data.num_rows else np.zeros((0, _width(data)), np.float32)
    uris, shas = data.column("uri").to_pylist(), data.column("sha256").to_pylist()
    names = uris if per_source else items.keys(data, table)
    bad = invalid_rows(raw)
    invalid = [
        {"uri": uris[i], "sha256": shas[i], "item": names[i], "reason": "the embedding is NaN, infinite or zero"}
        for i in np.flatnonzero(bad)
    ]
    keep = np.flatnonzero(~bad)
    unit = normalise(raw[keep]) if len(keep) else np.zeros((0, raw.shape[1]), np.float32)
    found = pa.table(
        {
            "item": [names[i] for i in keep],
            "uri": [uris[i] for i in keep],
            "sha256": [shas[i] for i in keep],
            "id": pa.array([item_id(names[i]) for i in keep], pa.int64()),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(unit.ravel(), pa.float32()), unit.shape[1]),
        }
    )
    return found, invalid, models


def one_model(models: set[tuple[str, str]], table: str, where: str) -> tuple[str, str]:
    """The one model of a set of embeddings: scores between two models' vectors mean nothing."""
    if len(models) > 1:
        raise EmbeddingError(
            f"{table}/ under {where} mixes models {', '.join(f'{n} ({s[:12]})' for n, s in sorted(models))}: "
            "pass the run id of one of them"
        )
    if not models:
        raise EmbeddingError(f"{table}/ under {where} has no embeddings to match")
    return next(iter(models))


def _width(data: pa.Table) -> int:
    kind = data.schema.field("embedding").type
    return kind.list_size if pa.types.is_fixed_size_list(kind) else 0


def check_comparable(a: EmbeddingSet, b: EmbeddingSet) -> None:
    """Scores only mean something between embeddings of one model: same name, checkpoint and dimension."""
    if (a.model_name, a.model_sha256) != (b.model_name, b.model_sha256) or a.dim != b.dim:
        raise EmbeddingError(
            f"cannot compare {a.model_name} ({a.model_sha256[:12]}, {a.dim}-d) with {b.model_name} "
            f"({b.model_sha256[:12]}, {b.dim}-d) embeddings: match sets made by the same model"
        )


def read_labels(
    root: Store,
    labels: str | Store | None = None,
    manifest_run_id: str | None = None,
    for_run: str | None = None,
    sample: int | None = None,
) -> dict[str, str]:
    """Identity labels by source uri: from a CSV with columns uri and label, else from one manifest run under
    ``root``: ``manifest_run_id``, else the one the embeddings run ``for_run`` was made from, else the newest (a
    root that keeps nightly manifests of other archives must not mix their labels into this one's; the log says
    which). A source given two identities is refused: enrolment must not guess. With ``sample``, only that many
    labelled sources, those whose uri hashes lowest (the same ones whatever the order the rows come in), read a
    batch at a time: what a calibration samples, without holding every label of the archive."""
    kept = _Sample(sample)
    if not labels:
        run = manifest_run_id or manifest_of(root, for_run) or newest_manifest_run(root)
        log.info("labels from manifest run %s under %s", run, root.uri)
        where = f"manifest run {run}"
        labelled = pc.is_valid(pc.field("label")) & (pc.field("label") != "")
        for batch in iter_table(root, "manifest", run, columns=["uri", "label"], filter=labelled):
            kept.add(zip(batch.column("uri").to_pylist(), batch.column("label").to_pylist(), strict=True), where)
        return kept.found
    kept.add(((row["uri"], row["label"]) for row in labels_csv(labels)), getattr(labels, "uri", labels))
    return kept.found


def labels_csv(uri: str | Store) -> csv.DictReader:
    """The rows of a labels CSV (columns uri and label), as a spreadsheet saves it: UTF-8 with or without a byte
    order mark (Excel's "CSV UTF-8"); anything else refused with the fix. A worker is given the Store the driver
    resolved (its cwd, its S3 endpoint and options), not the string."""
    source = uri if isinstance(uri, Store) else resolve(uri)
    uri = source.uri
    try:
        text = source.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise EmbeddingError(f"{uri} is not UTF-8 text ({exc}): save it as UTF-8 (Excel: CSV UTF-8)") from None
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or not {"uri", "label"} <= set(reader.fieldnames):
        raise EmbeddingError(f"{uri} needs a header with columns uri and label; it has {reader.fieldnames or []}")
    return reader


class _Sample:
    """Labels as they stream by: all of them, or the ``size`` whose uri hashes lowest (a max-heap of that size)."""

    def __init__(self, size: int | None) -> None:
        self.size, self.found, self.heap = size, {}, []

    def add(self, pairs, where: str) -> None:
        for uri, label in pairs:
            if uri in self.found:
                if self.found[uri] != label:
                    raise EmbeddingError(f"{where} gives {uri} two identities: {self.found[uri]}, {label}")
                continue
            if self.size is None:
                self.found[uri] = label
                continue
            rank = -int.from_bytes(hashlib.sha256(uri.encode()).digest()[:8], "big")
            if len(self.heap) < self.size:
                heapq.heappush(self.heap, (rank, uri))
                self.found[uri] = label
            elif rank > self.heap[0][0]:
                _, dropped = heapq.heappushpop(self.heap, (rank, uri))
                del self.found[dropped]
                self.found[uri] = label


def manifest_of(root: Store, run_id: str | None) -> str | None:
    """The manifest run an embeddings run was made from, when it says: the one its job was given, or its own
    (synthetic runs commit their manifest with their embeddings)."""
    if run_id is None:
        return None
    for marker in committed_runs(root):
        if marker["run_id"] == run_id:
            if "manifest" in marker["tables"]:
                return run_id
            return (marker.get("config") or {}).get("manifest_run_id")
    return None


def newest_manifest_run(root: Store) -> str:
    runs = [r["run_id"] for r in committed_runs(root) if "manifest" in r["tables"]]
    if not runs:
        raise EmbeddingError(f"no labels: no committed manifest under {root.uri}, and no --labels CSV given")
    return runs[-1]  # committed_runs: oldest commit first


def through_head(data: EmbeddingSet, head_ref: str, models: str | None = None, device: str = "cpu") -> EmbeddingSet:
    """``data`` mapped by a trained projection head (``jobs.train_face``): the same items, the head's vectors, the
    head's name and sha256 as their model. Refused when the head was trained on another backbone's embeddings."""
    from ops.matching.heads import project
    from ops.models import catalogue

    head = catalogue.load(head_ref, models, expect="face-head")
    expected = head.card["input"]
    if (data.model_name, data.model_sha256) != (expected["model_name"], expected["model_sha256"]):
        raise EmbeddingError(
            f"{head.name} was trained on {expected['model_name']} ({expected['model_sha256'][:12]}) embeddings, "
            f"not {data.model_name} ({data.model_sha256[:12]})"
        )
    vectors = project(catalogue.build(head, device), data.vectors).numpy()
    return EmbeddingSet(data.uris, data.sha256, data.items, vectors, head.name, head.sha256, data.invalid)


def identity_of(root: Store, run_id: str) -> dict[tuple[str, str], str]:
    """(item, sha256) -> identity, for every member of an identities run."""
    rows = read_table(root, "identities", run_id, ["item", "sha256", "identity"])
    return {
        (n, s): i for n, s, i in zip(*(rows.column(c).to_pylist() for c in ("item", "sha256", "identity")), strict=True)
    }
