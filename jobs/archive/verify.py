"""1:1 verification at archive scale: tasks read the pairs and score them, a chunk each; the driver holds counts.

    chunks = ray.get(stage_pairs.remote(pairs_uri, staging))   # one task streams the pairs table into chunk files
    for each chunk: verify_chunk(...)                          # a task: the embeddings its pairs name, scored, written

A side of a pair is a source uri or an item key (``uri#...``). A face source is every face of a photo and every track
of a video: every pair of their items is scored; the row names the best pair (``query_item``, ``gallery_item``) and
carries its score, and its log-LR is that of "one of these pairs is the same person" (``source_llr``: the mean of the
pairs' likelihood ratios), so more faces do not make a chance match likelier to be accepted; a voice source is its
pooled voice. Each chunk task reads only the embeddings of the sources its pairs name (streamed, filtered by uri),
scores every pair whose sides both have one and writes its ``matches/`` rows; a pair with a side that has none is one
``unmatched_pair`` error row that says why. Every pair ends as exactly one of the two: the driver checks the counts.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from jobs.runtime.cluster import TASK_CPUS
from jobs.runtime.output import RowWriter
from jobs.runtime.progress import Progress
from ops.io.errors import AccountingMismatch, EmbeddingError, JobFailed, StorageError, UnmatchedPair
from ops.io.schemas import MATCHES
from ops.io.storage import Store, resolve, storage_errors
from ops.io.tables import DataFile, error_table
from ops.matching.decisions import BELOW_EVIDENCE, decide, verbal_array
from ops.matching.embeddings import EmbeddingSet, embedding_set, read_committed, through_head

# Pairs per chunk task (``jobs.match --pairs-per-task``): their named embeddings (two sides, every item of a source)
# fit a worker easily.
PAIRS_PER_TASK = 100_000
_UNSCORED = "no embedding (not in the embeddings, no face/speech found, or not a source)"


@dataclass(frozen=True)
class Verifier:
    """What every chunk task needs: where the embeddings are, the model they must come from, the threshold."""

    root: Store
    table: str
    run_id: str | None
    model: tuple[str, str]  # (name, sha256) of the vectors compared: the embedding model's, or the head's
    head: tuple[str, str | None] | None  # (head ref, models root) to compare through, or None
    threshold: float
    threshold_source: str
    job_run_id: str
    job: str
    llr_map: tuple[float, float] | None = None  # (slope, offset): scores as log-LRs, from a calibration record
    min_llr: float = 0.0  # accepted only above this log-LR, where there is one (``ops.matching.decisions``)
    # Where each pair's second side (b) is, when not beside the first: a probe against an archive's item.
    gallery: tuple[Store, str | None] | None = None

    def of_gallery(self) -> Verifier:
        """This verifier reading the second sides' embeddings (the same when they are beside the first's)."""
        if self.gallery is None:
            return self
        return replace(self, root=self.gallery[0], run_id=self.gallery[1], gallery=None)


PAIRS = (("a", "b"),)  # the columns a pairs table must have: one layout here; fused verification takes two


def stage_pairs(
    source: Store, staging: Store, chunk: int = PAIRS_PER_TASK, layouts: tuple[tuple[str, ...], ...] = PAIRS
) -> tuple[list[tuple[str, int]], str | None]:
    """The pairs table (CSV with a header, or Parquet; the columns of the first of ``layouts`` it has) streamed into
    chunk files of at most ``chunk`` pairs. Returns the chunks (path, pairs) and, for a table that cannot be read,
    why. ``source`` is resolved by the driver: a worker has another cwd, and maybe no S3 endpoint of its own."""
    uri = source.uri
    try:
        with source.open("rb") as f:
            return _stage(f, uri, staging, chunk, layouts)
    except (StorageError, OSError) as exc:
        return [], f"cannot read the pairs table {uri}: {exc}"


def check_pairs(uri: str, layouts: tuple[tuple[str, ...], ...] = PAIRS) -> None:
    """Refuse a pairs table that cannot be read, lacks the columns, holds no pair or names relative paths, from its
    first block alone (on the driver, before the cluster starts: a wrong header is said at once); a fault further
    down is found by the staging task, with the row."""
    try:
        with resolve(uri).open("rb") as f:
            batches, _ = _pair_batches(f, uri, layouts)
            first = next(batches, None)
            while first is not None and first.num_rows == 0:
                first = next(batches, None)
    except _BadPairs as exc:
        raise JobFailed(str(exc)) from None
    except (StorageError, OSError) as exc:
        raise JobFailed(f"cannot read the pairs table {uri}: {exc}") from None
    except (pa.ArrowException, UnicodeDecodeError) as exc:
        raise JobFailed(_unreadable(uri, exc)) from None
    if first is None:
        raise JobFailed(f"{uri} has a header but no pairs: one pair of sources or items per row")
    if why := _relative(first):
        raise JobFailed(f"{uri}: {why}")


def _unreadable(uri: str, exc: BaseException) -> str:
    text = str(exc).split("\n")[0]
    if "UTF8" in text or "utf-8" in text.lower() or isinstance(exc, UnicodeDecodeError):
        return f"{uri} is not UTF-8 text ({text}): save it as UTF-8 (Excel: CSV UTF-8)"
    return f"cannot read the pairs table {uri}: {text} (a CSV with a header row, or a Parquet file)"


def _relative(batch: pa.RecordBatch) -> str | None:
    """Why a batch of pairs cannot name archive sources: every side in it is a relative path (sources are named by
    the full uri the manifest gives them). One stray relative side is that pair's error row, not the table's."""
    sides = [side for column in batch.columns for side in column.to_pylist() if side]
    if sides and all(is_relative(side) for side in sides):
        return (
            f"{sides[0]!r} and every other side are relative paths: name each source by its full uri, as the "
            "manifest has it (`python -m jobs.show ROOT --table manifest`)"
        )
    return None


def is_relative(side: str) -> bool:
    """Whether a side of a pair is a relative path: neither an absolute path nor a URI (an item key's uri part)."""
    where = side.rsplit("#", 1)[0] if "#" in side else side
    return not where.startswith("/") and "://" not in where


def _stage(f, uri: str, staging: Store, size: int, layouts) -> tuple[list[tuple[str, int]], str | None]:
    try:
        batches, schema = _pair_batches(f, uri, layouts)
        chunks, held, count = [], [], 0
        for batch in batches:
            held.append(batch)
            count += batch.num_rows
            while count >= size:
                chunk = pa.Table.from_batches(held).combine_chunks()
                chunks.append(_write_chunk(chunk.slice(0, size), staging))
                rest = chunk.slice(size)
                held, count = rest.to_batches(), rest.num_rows
        if count or not chunks:
            chunks.append(_write_chunk(pa.Table.from_batches(held, schema), staging))
    except _BadPairs as exc:
        return [], str(exc)
    except (pa.ArrowException, UnicodeDecodeError) as exc:  # a bad row or a cut file, past the first block
        return [], _unreadable(uri, exc)
    return [c for c in chunks if c[1]], None


class _BadPairs(Exception):
    pass


def _pair_batches(f, uri: str, layouts):
    """Batches of the first layout's columns the open pairs table has (as strings), read as they are needed, and
    their schema."""
    wanted = " or ".join(", ".join(layout) for layout in layouts)
    magic = f.read(4)
    f.seek(0)
    if magic == b"PAR1":
        file = pq.ParquetFile(f)
        names = file.schema_arrow.names
        layout = next((c for c in layouts if set(c) <= set(names)), None)
        if layout is None:
            raise _BadPairs(f"{uri} needs columns {wanted}; it has {names}")
        schema = pa.schema([(c, pa.string()) for c in layout])
        return (b.select(list(layout)).cast(schema) for b in file.iter_batches(columns=list(layout))), schema
    types = {c: pa.string() for layout in layouts for c in layout}
    try:
        reader = pacsv.open_csv(f, convert_options=pacsv.ConvertOptions(column_types=types))
    except pa.ArrowInvalid as exc:  # an empty file, no header, text that is not UTF-8, a bad row in the first block
        if "UTF8" in str(exc):
            raise _BadPairs(_unreadable(uri, exc)) from None
        raise _BadPairs(f"cannot read {uri} as a CSV with a header row of columns {wanted}: {exc}") from None
    layout = next((c for c in layouts if set(c) <= set(reader.schema.names)), None)
    if layout is None:
        raise _BadPairs(f"{uri} needs a header with columns {wanted}; it has {reader.schema.names}")
    schema = pa.schema([(c, pa.string()) for c in layout])
    return (b.select(list(layout)) for b in reader), schema


def _write_chunk(pairs: pa.Table, staging: Store) -> tuple[str, int]:
    target = staging.join(f"{uuid.uuid4().hex}.parquet")
    with storage_errors(target.uri), target.open("wb") as f:
        pq.write_table(pairs, f, compression="zstd")
    return target.path, pairs.num_rows


def verify_chunk(path: str, staging: Store, verifier: Verifier, matches: RowWriter, errors: RowWriter) -> dict:
    """One chunk of pairs scored and decided, its rows and error rows written by this worker. Returns the files
    written, the counts, and a reason when the chunk's embeddings cannot be compared at all."""
    pairs = pq.read_table(path, filesystem=staging.arrow)
    a = [x or "" for x in pairs.column("a").to_pylist()]  # an empty side names nothing: the pair is an error row
    b = [x or "" for x in pairs.column("b").to_pylist()]
    counts = {"pairs": len(a), "accept": 0, "reject": 0, "errors": 0}
    if verifier.gallery is None:  # both sides from one root
        index, invalid, failed = _embeddings(verifier, _named(a + b))
        index_b, invalid_b = index, invalid
    else:  # each side from its own root
        index, invalid, failed = _embeddings(verifier, _named(a))
        index_b, invalid_b, failed_b = _embeddings(verifier.of_gallery(), _named(b))
        failed = failed or failed_b
    if failed:
        return {"files": [], "error_files": [], **counts, "failed": failed}
    scored, unscored = [], []
    for x, y in zip(a, b, strict=True):
        missing = [(s, why) for s, found, why in ((x, index, invalid), (y, index_b, invalid_b)) if s not in found]
        if missing:
            reason = "; ".join(_why_unscored(s, why) for s, why in missing)
            unscored.append(
                {
                    "uri": x,
                    "sha256": None,
                    "error_type": UnmatchedPair.error_type,
                    "message": f"pair ({x}, {y}): {reason}",
                }
            )
        else:
            scored.append(_deciding_pair(index[x], index_b[y]))
    rows = _rows(scored, verifier) if scored else None
    files = matches.write(rows) if rows is not None else []
    error_files = errors.write(error_table(unscored, verifier.job_run_id, verifier.job, "match")) if unscored else []
    decided = rows.column("decision").to_pylist() if rows is not None else []
    counts |= {word: decided.count(word) for word in ("accept", "reject")} | {"errors": len(unscored)}
    counts["below_evidence"] = decided.count(BELOW_EVIDENCE)
    return {"files": files, "error_files": error_files, **counts, "failed": None}


def _named(sides: list[str]) -> list[str]:
    """The items and sources the sides name, and the source of each item (an item is found among its source's)."""
    named = set(sides) - {""}
    return sorted(named | {x.rsplit("#", 1)[0] for x in named})


def _why_unscored(side: str, invalid: dict[str, str]) -> str:
    if not side:
        return "an empty side"
    if is_relative(side):
        return f"{side}: a relative path (sources are named by their full uri, as in the manifest)"
    return f"{side}: {invalid.get(side, _UNSCORED)}"


def _embeddings(verifier: Verifier, uris: list[str], every_face: bool = True) -> tuple[dict, dict, str | None]:
    """{key: [(set, row), ...]} for every source and item of ``uris`` that has an embedding, {key: why not} for the
    invalid ones, and a reason when they come from another model than the job's. A key names one item; a face
    source names every face of a photo and every track of a video (with ``every_face``; else its clearest face)."""
    if not uris:  # nothing named (a fused table's empty modality): pyarrow refuses an empty isin of strings
        return {}, {}, None
    try:
        data = read_committed(verifier.root, verifier.table, verifier.run_id, uris)
    except EmbeddingError:  # the chunk names nothing embedded: each of its pairs is an error row
        return {}, {}, None
    sets = []
    levels = [(True, False), (False, False)] + ([(False, True)] if verifier.table == "faces" else [])
    for per_source, tracks in levels:
        try:
            found = embedding_set(data, verifier.table, per_source, verifier.root.uri, tracks)
        except EmbeddingError as exc:  # mixed models
            return {}, {}, str(exc)
        if verifier.head is not None:
            found = through_head(found, *verifier.head)
        if (found.model_name, found.model_sha256) != verifier.model and found.items:
            return (
                {},
                {},
                (
                    f"{verifier.table}/ under {verifier.root.uri} mixes models {found.model_name} "
                    f"({found.model_sha256[:12]}) and {verifier.model[0]} ({verifier.model[1][:12]}): pass the run id "
                    "of one of them"
                ),
            )
        sets.append(found)
    index = {key: [(s, i)] for s in reversed(sets) for i, key in enumerate(s.items)}
    if verifier.table == "faces" and every_face:
        index |= _by_source(sets[-1])
    invalid = {r["item"]: r["reason"] for s in sets for r in s.invalid}
    return index, invalid, None


def _by_source(found: EmbeddingSet) -> dict[str, list[tuple[EmbeddingSet, int]]]:
    sides: dict[str, list[tuple[EmbeddingSet, int]]] = {}
    for i, uri in enumerate(found.uris):
        sides.setdefault(uri, []).append((found, i))
    return sides


def _deciding_pair(a: list, b: list) -> tuple:
    """Of every item of one side against every item of the other (the faces of two group photos, the tracks of two
    videos), the best-scoring pair, which the row names (the first such pair on a tie), and every pair's score."""
    pairs = [(x, y) for x in a for y in b]
    scores = np.array([_score(*x, *y) for x, y in pairs])
    best = pairs[int(np.argmax(scores))]
    return best[0], best[1], scores


def _score(sa: EmbeddingSet, ia: int, sb: EmbeddingSet, ib: int) -> float:
    return float(np.dot(sa.vectors[ia].astype(np.float64), sb.vectors[ib].astype(np.float64)))


def source_llr(scores: np.ndarray, llr_map: tuple[float, float]) -> float:
    """The log-LR of "one of these face pairs shows the same person" against "none does", every pair as likely to be
    the one: the mean of the pairs' likelihood ratios. One pair: its own log-LR. Many: the best pair's evidence less
    the log of their number, so that two group photos, whose best of a hundred pairs is high by chance, are not
    accepted on it."""
    llr = llr_map[0] * np.asarray(scores, np.float64) + llr_map[1]
    top = llr.max()
    return float(top + np.log(np.exp(llr - top).mean()))


def _rows(scored: list, verifier: Verifier) -> pa.Table:
    scores = np.array([found.max() for _, _, found in scored], np.float32)
    llr = np.array([source_llr(found, verifier.llr_map) for _, _, found in scored]) if verifier.llr_map else None
    n = len(scored)
    side = lambda which, what: [getattr(pair[which][0], what)[pair[which][1]] for pair in scored]  # noqa: E731
    columns = {
        "run_id": [verifier.job_run_id] * n,
        "mode": ["verify"] * n,
        "query_uri": side(0, "uris"),
        "query_sha256": side(0, "sha256"),
        "query_item": side(0, "items"),
        "gallery_uri": side(1, "uris"),
        "gallery_sha256": side(1, "sha256"),
        "gallery_item": side(1, "items"),
        "identity": [None] * n,
        "rank": [1] * n,
        "score": scores,
        "threshold": [verifier.threshold] * n,
        "threshold_source": [verifier.threshold_source] * n,
        "decision": decide(scores, verifier.threshold, llr, verifier.min_llr, "accept", "reject").tolist(),
        "model_name": [verifier.model[0]] * n,
        "model_sha256": [verifier.model[1]] * n,
        "llr": llr.tolist() if llr is not None else [None] * n,
        "verbal": verbal_array(llr) if llr is not None else [None] * n,
    }
    return pa.table(columns, schema=MATCHES)


@dataclass
class Verified:
    """What the chunk tasks wrote and counted."""

    matches: list[DataFile]
    errors: list[DataFile]
    pairs: int
    accept: int
    reject: int
    unmatched: int
    below_evidence: int = 0  # above the threshold on evidence that does not favour "same": not accepted


def verify_archive(
    pairs_uri: str,
    staging: Store,
    verifier,
    matches: RowWriter,
    errors: RowWriter,
    chunk: int = PAIRS_PER_TASK,
    layouts: tuple[tuple[str, ...], ...] = PAIRS,
    score=verify_chunk,
) -> Verified:
    """Every pair of the table scored or reported by tasks (``score``: one chunk, as ``verify_chunk``); the counts
    checked: one row or one error per pair."""
    import ray

    source = resolve(pairs_uri)
    chunks, why = ray.get(ray.remote(num_cpus=TASK_CPUS)(stage_pairs).remote(source, staging, chunk, layouts))
    if why:
        raise JobFailed(why)
    task = ray.remote(num_cpus=1)(score)
    pending = {task.remote(p, staging, verifier, matches, errors): n for p, n in chunks}
    done = Verified([], [], 0, 0, 0, 0)
    progress = Progress("pairs", sum(n for _, n in chunks))
    while pending:
        (ready,), _ = ray.wait(list(pending), num_returns=1)
        found = ray.get(ready)
        if found["failed"]:
            raise JobFailed(found["failed"])
        done.matches += found["files"]
        done.errors += found["error_files"]
        done.pairs += found["pairs"]
        done.accept += found["accept"]
        done.reject += found["reject"]
        done.below_evidence += found.get("below_evidence", 0)
        done.unmatched += found["errors"]
        progress.update(pending.pop(ready))
    staged = sum(n for _, n in chunks)
    scored = done.accept + done.reject + done.below_evidence
    if scored + done.unmatched != staged or done.pairs != staged:
        raise AccountingMismatch(
            f"accounting mismatch: {staged} pairs read, {done.pairs} in the chunks' answers, "
            f"{scored} scored and {done.unmatched} unmatched; nothing was committed, rerun the job"
        )
    return done
