"""Face and voice evidence together at archive scale: fused verification and identification by tasks.

    verify_archive(pairs, staging, evidence, rows, errors, layouts=FUSED_PAIRS, score=fuse_chunk)
    identify_fused(evidence, gallery, labels, manifest_run, queries, same_set, k, staging, rows)

Both score with a fused calibration record (``jobs.calibrate --fuse``): each modality's cosine becomes a log-LR
through its calibration, the two are fused (sum, or the trained linear fusion) and the result is decided at the
record's threshold for the target false accept rate. Where a side has one modality only, that modality's log-LR is
the evidence and its own threshold decides; the row's ``modalities`` says which. Where neither modality can be
compared, the pair or probe is an error row that says why for each.

Verification takes a pairs table with columns ``a_face, a_voice, b_face, b_voice`` (a source uri or an item key
each; empty where a side has none) or ``a, b`` (sources with both, as videos are). Identification enrols each label
of the gallery with the mean of its sources' faces and the mean of its voices (one task; the driver holds neither),
then scores every source of the queries that has a face or a voice against every identity, a slice of sources per
task (uris staged by bucket, so a source's face and voice meet in one task), top K by fused log-LR.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from jobs.archive.verify import Verifier, _embeddings
from jobs.runtime.accounting import Ledger
from jobs.runtime.gather import add_up, gather
from jobs.runtime.output import RowWriter
from jobs.runtime.slices import bucket_slices
from ops.io.errors import JobFailed, UnmatchedPair
from ops.io.schemas import EVIDENCE
from ops.io.storage import Store, resolve, storage_errors
from ops.io.tables import DataFile, committed_files, committed_rows, error_table
from ops.matching.decisions import BELOW_EVIDENCE
from ops.matching.embeddings import read_labels
from ops.matching.fusion import Fusion
from ops.matching.vectors import normalise

FUSED_PAIRS = (("a_face", "a_voice", "b_face", "b_voice"), ("a", "b"))
_NONE = "no embedding (not in the embeddings, no face/speech found, or not a source)"


@dataclass(frozen=True)
class Evidence:
    """What every task needs: where each modality's embeddings are (and their model), the calibration record's
    maps and thresholds."""

    faces: Verifier
    voices: Verifier
    fusion: Fusion
    method: str  # "sum" or "linear"
    thresholds: dict  # log-LR thresholds: "fused", "face", "voice"
    calibration: str  # the record's uri
    job_run_id: str
    job: str
    min_llr: float = 0.0  # accepted or identified only above this log-LR too (``ops.matching.decisions``)

    def llrs(self, face: np.ndarray, voice: np.ndarray) -> tuple[np.ndarray, ...]:
        """Per-modality and fused log-LRs, the threshold that applies and the modalities used, for cosine scores
        (NaN: that modality cannot be compared)."""
        by = self.fusion.llrs(face, voice)
        fused = by[f"fused {self.method}"]
        has_face, has_voice = ~np.isnan(face), ~np.isnan(voice)
        llr = np.where(has_face & has_voice, fused, np.where(has_face, by["face"], by["voice"]))
        t = self.thresholds
        threshold = np.where(has_face & has_voice, t["fused"], np.where(has_face, t["face"], t["voice"]))
        modalities = np.where(has_face & has_voice, "face+voice", np.where(has_face, "face", "voice"))
        return by["face"], by["voice"], llr, threshold, modalities

    def provenance(self, n: int) -> dict:
        return {
            "run_id": [self.job_run_id] * n,
            "face_model_name": [self.faces.model[0]] * n,
            "face_model_sha256": [self.faces.model[1]] * n,
            "voice_model_name": [self.voices.model[0]] * n,
            "voice_model_sha256": [self.voices.model[1]] * n,
            "calibration": [self.calibration] * n,
        }


def _nullable(values: np.ndarray) -> list:
    return [None if np.isnan(v) else float(v) for v in values]


# -- verification ------------------------------------------------------------------------------------------------


def _scored(sides: dict[str, list[str]], found: dict, n: int) -> tuple[dict, dict, list[dict]]:
    """Each pair's face and voice scores (NaN where a side has none), the embeddings each side was scored by, and
    an ``unmatched_pair`` error row for each pair with no modality both sides have, saying why."""
    scores = {m: np.full(n, np.nan) for m in ("face", "voice")}
    picked: dict[str, list] = {f"{s}_{m}": [None] * n for s in ("a", "b") for m in ("face", "voice")}
    unscored = []
    for i in range(n):
        why = []
        for m in ("face", "voice"):
            index, invalid, _ = found[m]
            x, y = sides[f"a_{m}"][i], sides[f"b_{m}"][i]
            if x in index and y in index:
                (sa, ia), (sb, ib) = index[x][0], index[y][0]
                scores[m][i] = float(np.dot(sa.vectors[ia].astype(np.float64), sb.vectors[ib].astype(np.float64)))
                picked[f"a_{m}"][i], picked[f"b_{m}"][i] = (sa, ia), (sb, ib)
            else:
                missing = [s for s in (x, y) if s not in index]
                why.append(
                    f"{m}: " + "; ".join(f"{s}: {invalid.get(s, _NONE)}" if s else "none named" for s in missing)
                )
        if np.isnan(scores["face"][i]) and np.isnan(scores["voice"][i]):
            a_name = sides["a_face"][i] or sides["a_voice"][i]
            b_name = sides["b_face"][i] or sides["b_voice"][i]
            unscored.append(
                {
                    "uri": a_name,
                    "sha256": None,
                    "error_type": UnmatchedPair.error_type,
                    "message": f"pair ({a_name}, {b_name}) has no modality to compare: {' | '.join(why)}",
                }
            )
    return scores, picked, unscored


def fuse_chunk(path: str, staging: Store, evidence: Evidence, rows: RowWriter, errors: RowWriter) -> dict:
    """One chunk of pairs scored by face, voice or both, decided and written by this worker (as ``verify_chunk``)."""
    pairs = pq.read_table(path, filesystem=staging.arrow)
    column = lambda name: [x or "" for x in pairs.column(name).to_pylist()]  # noqa: E731
    if "a" in pairs.column_names:  # sources with both modalities: each side names its face and its voice
        a, b = column("a"), column("b")
        sides = {"a_face": a, "a_voice": a, "b_face": b, "b_voice": b}
    else:
        sides = {name: column(name) for name in FUSED_PAIRS[0]}
    counts = {"pairs": pairs.num_rows, "accept": 0, "reject": 0, "errors": 0}
    found = {}
    for modality, verifier in (("face", evidence.faces), ("voice", evidence.voices)):
        named = (set(sides[f"a_{modality}"]) | set(sides[f"b_{modality}"])) - {""}
        # A source is one face here (its clearest): the fused calibration scored sources so.
        found[modality] = _embeddings(verifier, sorted(named | {x.rsplit("#", 1)[0] for x in named}), False)
        if found[modality][2]:
            return {"files": [], "error_files": [], **counts, "failed": found[modality][2]}
    scores, picked, unscored = _scored(sides, found, pairs.num_rows)
    keep = np.flatnonzero(~(np.isnan(scores["face"]) & np.isnan(scores["voice"])))
    files = []
    if len(keep):
        face_llr, voice_llr, llr, threshold, modalities = evidence.llrs(scores["face"][keep], scores["voice"][keep])
        decision = _decide(llr, threshold, evidence.min_llr, "accept", "reject")
        side = lambda name, what: [  # noqa: E731
            None if picked[name][i] is None else getattr(picked[name][i][0], what)[picked[name][i][1]] for i in keep
        ]
        n = len(keep)
        table = {
            "mode": ["verify"] * n,
            "query": [sides["a_face"][i] or sides["a_voice"][i] for i in keep],
            "query_face_item": side("a_face", "items"),
            "query_face_sha256": side("a_face", "sha256"),
            "query_voice_item": side("a_voice", "items"),
            "query_voice_sha256": side("a_voice", "sha256"),
            "gallery": [sides["b_face"][i] or sides["b_voice"][i] for i in keep],
            "gallery_face_item": side("b_face", "items"),
            "gallery_face_sha256": side("b_face", "sha256"),
            "gallery_voice_item": side("b_voice", "items"),
            "gallery_voice_sha256": side("b_voice", "sha256"),
            "rank": [1] * n,
            "modalities": modalities.tolist(),
            "face_score": _nullable(scores["face"][keep]),
            "voice_score": _nullable(scores["voice"][keep]),
            "face_llr": _nullable(face_llr),
            "voice_llr": _nullable(voice_llr),
            "llr": llr.tolist(),
            "llr_threshold": threshold.tolist(),
            "decision": decision.tolist(),
        }
        files = rows.write(pa.table(table | evidence.provenance(n), schema=EVIDENCE))
        counts |= {word: int((decision == word).sum()) for word in ("accept", "reject")}
        counts["below_evidence"] = int((decision == BELOW_EVIDENCE).sum())
    error_files = errors.write(error_table(unscored, evidence.job_run_id, evidence.job, "match")) if unscored else []
    counts["errors"] = len(unscored)
    return {"files": files, "error_files": error_files, **counts, "failed": None}


def _decide(llr: np.ndarray, threshold: np.ndarray, min_llr: float, positive: str, negative: str) -> np.ndarray:
    """The fused decision (``ops.matching.decisions``, on log-LRs): ``positive`` at or above the record's log-LR
    threshold and above ``min_llr``; ``BELOW_EVIDENCE`` at or above the threshold only; ``negative`` below it."""
    clears = llr >= threshold
    out = np.full(len(llr), negative, dtype=object)
    out[clears] = np.where(llr[clears] > min_llr, positive, BELOW_EVIDENCE)
    return out


# -- identification ----------------------------------------------------------------------------------------------


def enrol_both(evidence: Evidence, labels_csv: Store | None, manifest_run: str | None, staging: Store) -> dict:
    """Each gallery label's identity: the unit mean of its sources' faces and of their voices (either may be
    missing), staged as one file; and the enrolled uris (not probes when the gallery is also the queries). One task:
    it holds the labelled sources, never the archive."""
    labels = read_labels(evidence.faces.root, labels_csv, manifest_run)
    identities: dict[str, dict] = {}
    contributed: set[str] = set()  # the sources enrolled: a face, a voice or both
    for modality, verifier in (("face", evidence.faces), ("voice", evidence.voices)):
        index, _, failed = _embeddings(verifier, sorted(labels), False)
        if failed:
            return {"failed": failed}
        for uri, label in labels.items():
            if uri in index:
                found, row = index[uri][0]
                entry = identities.setdefault(label, {"face": [], "voice": []})
                entry[modality].append(found.vectors[row].astype(np.float64))
                contributed.add(uri)
    if not identities:
        return {"path": None, "identities": 0, "enrolled": 0, "uris_path": None, "failed": None}

    def centroid(vectors: list) -> list | None:
        return normalise(np.sum(vectors, axis=0)[None])[0].tolist() if vectors else None

    names = sorted(identities)
    table = pa.table(
        {
            "identity": names,
            "face": [centroid(identities[n]["face"]) for n in names],
            "voice": [centroid(identities[n]["voice"]) for n in names],
            "face_sources": [len(identities[n]["face"]) for n in names],
            "voice_sources": [len(identities[n]["voice"]) for n in names],
        }
    )
    path = staging.join("identities.parquet")
    uris_path = staging.join("enrolled.parquet")
    with storage_errors(path.uri):
        with path.open("wb") as f:
            pq.write_table(table, f)
        with uris_path.open("wb") as f:
            pq.write_table(pa.table({"uri": sorted(labels)}), f)
    enrolled = len(contributed)
    return {
        "path": path.path,
        "identities": len(names),
        "enrolled": enrolled,
        "uris_path": uris_path.path,
        "failed": None,
    }


def stage_probe_uris(path: str, root: Store, pairs: set, ledger: Ledger) -> str | None:
    """The distinct source uris of one committed data file of an embedding table, staged by bucket."""
    uris = committed_rows(path, root, pairs, ["uri"]).column("uri").unique()
    if not len(uris):
        return None
    return ledger.stage("probes", pa.table({"uri": uris}))


def identify_slice(
    lo: int,
    hi: int,
    probe_paths: list[str],
    ledger: Ledger,
    evidence: Evidence,
    identities_path: str,
    enrolled_path: str | None,
    k: int,
    rows: RowWriter,
    errors: RowWriter,
) -> dict:
    """The probes of buckets [lo, hi) (sources with a face or a voice, enrolled ones left out), scored against every
    identity, the top ``k`` by log-LR written; a probe that shares no modality with any identity is an error row."""
    staged = ledger.read(probe_paths, lo, hi, ["uri"])
    uris = sorted(set(staged.column("uri").to_pylist())) if staged is not None else []
    fs = ledger.folder.arrow  # the staged identities and enrolled uris lie beside the ledger, under the output root
    if enrolled_path and uris:
        enrolled = set(pq.read_table(enrolled_path, filesystem=fs).column("uri").to_pylist())
        uris = [u for u in uris if u not in enrolled]
    counts = {"probes": len(uris), "rows": 0, "unknown": 0, "errors": 0}
    if not uris:
        return {"files": [], "error_files": [], **counts, "failed": None}
    identities = pq.read_table(identities_path, filesystem=fs)
    names = identities.column("identity").to_pylist()
    vectors, probes = {}, {}
    for modality, verifier in (("face", evidence.faces), ("voice", evidence.voices)):
        gallery = identities.column(modality).to_pylist()
        dim = next((len(v) for v in gallery if v is not None), 0)
        vectors[modality] = np.array([v if v is not None else [np.nan] * dim for v in gallery], np.float64)
        vectors[modality] = vectors[modality].reshape(len(gallery), dim)
        index, _, failed = _embeddings(verifier, uris, False)
        if failed:
            return {"files": [], "error_files": [], **counts, "failed": failed}
        probes[modality] = index
    files, unscored, tables = [], [], []
    for start in range(0, len(uris), PROBE_BLOCK):  # a block at a time: P x N matrices stay small
        block = uris[start : start + PROBE_BLOCK]
        scores = {m: _block_scores(block, probes[m], vectors[m], len(names)) for m in ("face", "voice")}
        face_llr, voice_llr, llr, threshold, modalities = evidence.llrs(scores["face"], scores["voice"])
        for i, uri in enumerate(block):
            usable = np.flatnonzero(~np.isnan(llr[i]))
            if not len(usable):
                has = [m for m in ("face", "voice") if uri in probes[m]]
                unscored.append(
                    {
                        "uri": uri,
                        "sha256": None,
                        "error_type": UnmatchedPair.error_type,
                        "message": f"probe {uri} has {' and '.join(has) or 'neither a face nor a voice'}; no "
                        "identity was enrolled with it",
                    }
                )
                continue
            top = usable[np.argsort(-llr[i, usable], kind="stable")[:k]]
            found = (scores, face_llr, voice_llr, llr, threshold, modalities)
            tables.append(_probe_rows(evidence, uri, probes, names, top, found, i))
            counts["unknown"] += tables[-1]["decision"][0] in ("unknown", BELOW_EVIDENCE)  # not identified
    if tables:
        merged = {key: [v for t in tables for v in t[key]] for key in tables[0]}
        n = len(merged["rank"])
        files = rows.write(pa.table(merged | evidence.provenance(n), schema=EVIDENCE))
        counts["rows"] = n
    error_files = errors.write(error_table(unscored, evidence.job_run_id, evidence.job, "match")) if unscored else []
    counts["errors"] = len(unscored)
    return {"files": files, "error_files": error_files, **counts, "failed": None}


PROBE_BLOCK = 1024


def _block_scores(block: list[str], found: dict, gallery: np.ndarray, identities: int) -> np.ndarray:
    """Cosines (probes x identities) of one modality; NaN where the probe or the identity has none."""
    if gallery.shape[1] == 0:  # no identity was enrolled with this modality
        return np.full((len(block), identities), np.nan)
    q = np.full((len(block), gallery.shape[1]), np.nan)
    for i, uri in enumerate(block):
        if uri in found:
            vectors, row = found[uri][0]
            q[i] = vectors.vectors[row]
    return q @ gallery.T


def _probe_rows(evidence, uri, probes, names, top, found, i) -> dict:
    scores, face_llr, voice_llr, llr, threshold, modalities = found

    def probe(modality: str, what: str):
        if uri not in probes[modality]:
            return None
        found, row = probes[modality][uri][0]
        return getattr(found, what)[row]

    n = len(top)
    first = _decide(llr[i, top[:1]], threshold[i, top[:1]], evidence.min_llr, names[top[0]], "unknown")[0]
    decision = [first] + [None] * (n - 1)
    return {
        "mode": ["identify"] * n,
        "query": [uri] * n,
        "query_face_item": [probe("face", "items")] * n,
        "query_face_sha256": [probe("face", "sha256")] * n,
        "query_voice_item": [probe("voice", "items")] * n,
        "query_voice_sha256": [probe("voice", "sha256")] * n,
        "gallery": [names[j] for j in top],
        "gallery_face_item": [None] * n,
        "gallery_face_sha256": [None] * n,
        "gallery_voice_item": [None] * n,
        "gallery_voice_sha256": [None] * n,
        "rank": list(range(1, n + 1)),
        "modalities": [str(modalities[i, j]) for j in top],
        "face_score": _nullable(scores["face"][i, top]),
        "voice_score": _nullable(scores["voice"][i, top]),
        "face_llr": _nullable(face_llr[i, top]),
        "voice_llr": _nullable(voice_llr[i, top]),
        "llr": [float(llr[i, j]) for j in top],
        "llr_threshold": [float(threshold[i, j]) for j in top],
        "decision": decision,
    }


@dataclass
class Identified:
    rows: list[DataFile]
    errors: list[DataFile]
    identities: int
    enrolled: int
    probes: int
    unknown: int
    unmatched: int


def identify_fused(
    evidence: Evidence,
    queries: Evidence,
    labels_csv: str | None,
    manifest_run: str | None,
    same_set: bool,
    k: int,
    staging: Store,
    rows: RowWriter,
    errors: RowWriter,
) -> Identified:
    """Identities enrolled from ``evidence``'s roots (the gallery), probes from ``queries``' roots, by tasks."""
    import ray

    labels = resolve(labels_csv) if labels_csv else None  # here: the driver's cwd and S3 endpoint, not the worker's
    enrolled = ray.get(ray.remote(num_cpus=1)(enrol_both).remote(evidence, labels, manifest_run, staging))
    if enrolled.get("failed"):
        raise JobFailed(enrolled["failed"])
    if not enrolled["identities"]:
        raise JobFailed(
            f"no labelled source under {evidence.faces.root.uri} has a face or a voice: label the gallery "
            "(the manifest's --label-pattern, or --labels uri,label)"
        )
    ledger = Ledger(staging.join("ledger"))
    calls = []
    for verifier in (queries.faces, queries.voices):
        paths, pairs = committed_files(verifier.root, verifier.table, verifier.run_id)
        calls += [(p, verifier.root, pairs, ledger) for p in paths]
    probe_paths = [p for p in gather(stage_probe_uris, calls) if p]
    staged_uris = sum(pq.read_metadata(p, filesystem=ledger.folder.arrow).num_rows for p in probe_paths)
    enrolled_path = enrolled["uris_path"] if same_set else None
    found = gather(
        identify_slice,
        [
            (lo, hi, probe_paths, ledger, queries, enrolled["path"], enrolled_path, k, rows, errors)
            for lo, hi in bucket_slices(staged_uris)
        ],
        cpus=1,
    )
    failed = next((f["failed"] for f in found if f["failed"]), None)
    if failed:
        raise JobFailed(failed)
    total = add_up(found, {"files": [], "error_files": [], "probes": 0, "unknown": 0, "errors": 0})
    return Identified(
        rows=total["files"],
        errors=total["error_files"],
        identities=enrolled["identities"],
        enrolled=enrolled["enrolled"],
        probes=total["probes"],
        unknown=total["unknown"],
        unmatched=total["errors"],
    )
