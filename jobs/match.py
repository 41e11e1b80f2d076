"""jobs.match: exact top-K search, 1:1 verification and 1:K identification over committed embeddings.

    python -m jobs.match search   [--queries out/results] [--gallery ROOT] [--table faces|voices] [--k 10]
    python -m jobs.match verify   --pairs pairs.csv [--queries out/results] [--gallery ROOT] [--calibration URI]
    python -m jobs.match identify [--gallery ROOT] [--queries ROOT] [--labels labels.csv] [--k 5]
    python -m jobs.match crossmatch --joint-model NAME [--queries VOICES_ROOT] [--gallery FACES_ROOT] [--k 10]
    python -m jobs.match verify|identify --fuse --calibration FUSED_RECORD [...]

search: every query item against every gallery item, top K per query, on gallery shards held by actors (pinned to
GPUs with --gpus-per-shard; the gallery stays in device memory across query batches). verify: a pairs table
(columns ``a`` and ``b``: source uris or item keys; ``b`` from --gallery when given, as a probe against an
archive's item) scored and decided at a threshold. identify: identities enrolled
from the gallery's labels (the manifest's, or --labels uri,label), one or more sources each, averaged; each probe
gets its top-K identities and, at rank 1, the identity or ``unknown`` when below the threshold (open set).
crossmatch: through a joint voice-face model (jobs.train_crossmodal), every source's voice ranks every source's face
and every face ranks every voice (items ``uri#voice`` and ``uri#face``; a video's own face is a candidate like any
other). Thresholds come from --threshold, else a calibration record (jobs.calibrate), else the model card, else the job
refuses. Everything lands in ``matches/``; pairs or probes that cannot be scored land in ``errors/`` with a reason.
Search, identify and crossmatch record the items they compared in ``match_items/``, and a run after an earlier one
with the same settings searches only what changed, merging the rest (``jobs.archive.search_diff``; --no-reuse:
everything).
verify and identify with --fuse compare faces and voices together (``jobs.archive.fuse``): each side's face and voice
(a pairs table's ``a_face, a_voice, b_face, b_voice``, or sources with both as ``a, b``; identify: every source of the
queries against identities enrolled with the mean of their faces and of their voices), scored as calibrated
log-likelihood ratios by a fused calibration record (``jobs.calibrate --fuse``) and decided at its threshold; one
modality alone where a side lacks the other, as the row says. Those rows land in ``evidence/``.
"""

from __future__ import annotations

import json
import sys
import textwrap
from dataclasses import dataclass, field

import pyarrow.compute as pc

from jobs.archive.fuse import FUSED_PAIRS, Evidence, fuse_chunk, identify_fused
from jobs.archive.identify import enrol
from jobs.archive.search import QUERY_BATCH, Prepared, Projection, Search, ShardLayout, prepare_items
from jobs.archive.search_diff import Previous, diff_set, search_key, search_sets, stage_previous
from jobs.archive.verify import PAIRS_PER_TASK, Verifier, check_pairs, verify_archive
from jobs.runtime.accounting import Ledger
from jobs.runtime.cli import JobConfig
from jobs.runtime.cluster import ensure_ray
from jobs.runtime.launch import JobContext, run_job, run_module
from jobs.runtime.options import LabelledInput, ModelsRoot, tailored
from jobs.runtime.output import JobOutput
from jobs.runtime.reuse import reusable_run
from ops.io.errors import EmbeddingError, InvalidEmbedding, JobFailed, StorageError
from ops.io.root import inside, locate
from ops.io.schemas import EVIDENCE, MATCHES
from ops.io.storage import Store, resolve
from ops.io.tables import committed_runs, read_table
from ops.matching.decisions import published_threshold
from ops.matching.embeddings import (
    manifest_of,
    newest_manifest_run,
    one_model,
)
from ops.matching.fusion import Fusion
from ops.models import catalogue

JOB = "match"
MODES = ("search", "verify", "identify", "crossmatch")


@dataclass
class MatchConfig(LabelledInput, ModelsRoot, JobConfig):
    labels: str | None = tailored(
        LabelledInput, "labels", help="identify: CSV uri,label (default: the manifest's labels)"
    )
    models: str | None = tailored(ModelsRoot, "models", help="models root, for the model card's threshold")
    mode: str = field(
        default="search",
        metadata={"positional": True, "run_key": True, "help": "search, verify, identify or crossmatch (see above)"},
    )
    queries: str = field(default="out/results", metadata={"run_key": True, "help": "root with the query embeddings"})
    gallery: str | None = field(
        default=None,
        metadata={"run_key": True, "help": "root with the gallery (default: queries); verify: the pairs' b side"},
    )
    table: str = field(default="faces", metadata={"run_key": True, "help": "embedding table: faces or voices"})
    queries_run_id: str | None = field(default=None, metadata={"run_key": True, "help": "this run of the query table"})
    gallery_run_id: str | None = field(
        default=None, metadata={"run_key": True, "help": "this run of the gallery table"}
    )
    per_source: bool = field(
        default=False,
        metadata={
            "run_key": True,
            "help": "search: one item per source instead of every face/segment; identify: each probe source by its "
            "clearest face instead of every face of a photo and every track of a video",
        },
    )
    k: int = field(default=10, metadata={"run_key": True, "help": "results per query"})
    pairs: str | None = field(
        default=None, metadata={"run_key": True, "help": "verify: CSV or Parquet with columns a, b"}
    )
    threshold: float | None = field(default=None, metadata={"run_key": True, "help": "cosine threshold to decide at"})
    calibration: str | None = field(
        default=None,
        metadata={"run_key": True, "help": "a calibration record (jobs.calibrate) to take the threshold from"},
    )
    min_llr: float = field(
        default=0.0,
        metadata={
            "run_key": True,
            "help": "with a calibration, accept, match or identify only above this log-LR too (0: the evidence "
            "favours 'same'); a score above the threshold on less is 'below the evidence needed'",
        },
    )
    head: str | None = field(
        default=None,
        metadata={"run_key": True, "help": "a trained face head (jobs.train_face) to compare through, name or URI"},
    )
    joint_model: str | None = field(
        default=None, metadata={"run_key": True, "help": "crossmatch: the joint voice-face model, name or URI"}
    )
    fuse: bool = field(
        default=False,
        metadata={"run_key": True, "help": "verify, identify: faces and voices together, by a fused --calibration"},
    )
    shards: int | None = field(default=None, metadata={"help": "gallery shards, one actor each (default: GPUs, or 1)"})
    gpus_per_shard: float | None = field(default=None, metadata={"help": "default: 1 when the cluster has GPUs"})
    precision: str = field(default="fp32", metadata={"help": "CUDA products: fp32, fp16 or bf16 (results identical)"})
    pairs_per_task: int = field(default=PAIRS_PER_TASK, metadata={"help": "verify: pairs each task reads and scores"})
    query_batch: int = field(default=QUERY_BATCH, metadata={"help": "queries sent to the shards at a time"})
    reuse: bool = field(
        default=True,
        metadata={
            "help": "search only what changed since the newest committed run with the same settings, merging its "
            "rows (the same rows as a full search; --no-reuse: search everything)"
        },
    )


def _threshold(config: MatchConfig, model_name: str) -> tuple[float, str]:
    """The cosine threshold and where it came from: the flag, a calibration record, or the model card."""
    if config.threshold is not None:
        return config.threshold, "--threshold"
    if config.calibration:
        record, where = _calibration(config.calibration, model_name)
        return float(record["threshold"]), inside(resolve(config.output), where)
    published = published_threshold(model_name, config.models)
    if published is not None:
        return published, f"model card of {model_name}"
    raise JobFailed(
        f"no cosine threshold for {model_name} (its model card publishes none): run "
        "`python -m jobs.calibrate` on labelled data and pass --calibration, or pass --threshold"
    )


def _llr_map(config: MatchConfig, model_name: str) -> tuple[float, float] | None:
    """The calibration record's map from a score to a log-LR (slope, offset), when --calibration names one that
    has it (records before the map, and maps that could not be fitted, have none: the rows' llr is then null)."""
    if not config.calibration:
        return None
    record, where = _calibration(config.calibration, model_name)
    if "llr" not in record:  # a calibrations/ row: the map is in its record
        try:
            record = json.loads(resolve(where).read_bytes())
        except (StorageError, json.JSONDecodeError):
            return None
    llr = record.get("llr") or {}
    return (float(llr["slope"]), float(llr["offset"])) if "slope" in llr else None


def _search_threshold(config: MatchConfig, model_name: str) -> tuple[float | None, str | None]:
    """Search ranks whatever the threshold; it records one with each match (so a reader sees which clear it) when
    one is given or the model card has one. A threshold asked for that cannot be had is still an error."""
    try:
        return _threshold(config, model_name)
    except JobFailed:
        if config.threshold is not None or config.calibration:
            raise
        return None, None


def _calibration(uri: str, model_name: str) -> tuple[dict, str]:
    """A calibration record: the JSON file itself, or an output root whose newest calibration of the model is used."""
    if uri.endswith(".json"):
        try:
            record = json.loads(resolve(uri).read_bytes())
        except (StorageError, json.JSONDecodeError) as exc:
            raise JobFailed(f"cannot read the calibration record {uri}: {exc}") from None
        if record.get("model_name") != model_name:
            raise JobFailed(f"{uri} calibrates {record.get('model_name')}, not {model_name}")
        return record, uri
    rows = read_table(resolve(uri), "calibrations", filter=pc.field("model_name") == model_name).to_pylist()
    if not rows:
        raise JobFailed(f"no committed calibration of {model_name} under {uri}: run `python -m jobs.calibrate` first")
    markers = {m["run_id"]: m["committed_at"] for m in committed_runs(resolve(uri))}
    newest = max(rows, key=lambda r: markers.get(r["run_id"], ""))
    return newest, locate(resolve(uri), newest["record_uri"]).uri


def _previous(config: MatchConfig, ctx: JobContext, key: dict, staging, by: dict[str, str]) -> Previous | None:
    """The previous run to search by difference from (``jobs.archive.search_diff``), its items and rows staged; None: a
    full search (--no-reuse, or no committed run with the same key)."""
    run = reusable_run(ctx.output, JOB, key, "search_key", ctx.run_id) if config.reuse else None
    if run is None:
        return None
    ctx.log.info("searching by difference: what changed since run %s", run)
    return stage_previous(ctx.output, run, by, Ledger(staging.join("previous")))


def _how(config: MatchConfig, ctx: JobContext, k: int, keep: int, same_set: bool, fields: dict, out, mode: str):
    writer = out.row_writer("matches")
    layout = ShardLayout(
        shards=config.shards,
        gpus_per_shard=config.gpus_per_shard,
        precision=config.precision,
        query_batch=config.query_batch,
    )
    return Search(
        k=k, keep=keep, same_set=same_set, mode=mode, store=ctx.output, fields=fields, writer=writer, layout=layout
    )


def run_search(config: MatchConfig, ctx: JobContext, out: JobOutput) -> dict:
    """Search at archive scale (``jobs.archive.search``): items staged by workers, shards that read their own
    slice, query blocks searched, merged and written by tasks; the driver holds file lists and counts."""
    gallery_root = config.gallery or config.queries
    same_set = gallery_root == config.queries and config.gallery_run_id == config.queries_run_id
    staging = out.staging()
    head = Projection(config.head, config.models) if config.head else None
    ensure_ray()
    try:
        queries = prepare_items(
            resolve(config.queries), config.table, config.queries_run_id, config.per_source, staging.join("q"), head
        )
        gallery = queries
        if not same_set:
            gallery = prepare_items(
                resolve(gallery_root), config.table, config.gallery_run_id, config.per_source, staging.join("g"), head
            )
        model = one_model(queries.models, config.table, config.queries)
        other = one_model(gallery.models, config.table, gallery_root)
        if model != other or (queries.dim and gallery.dim and queries.dim != gallery.dim):
            raise EmbeddingError(
                f"cannot compare {model[0]} ({model[1][:12]}, {queries.dim}-d) with {other[0]} ({other[1][:12]}, "
                f"{gallery.dim}-d) embeddings: match sets made by the same model"
            )
        if len(gallery) == 0:
            raise JobFailed(f"the gallery under {gallery_root} has no valid embedding")
        threshold, source = _search_threshold(config, model[0])
        fields = {"run_id": out.run_id, "model_name": model[0], "model_sha256": model[1]}
        fields |= {"threshold": threshold, "threshold_source": source, "llr_map": _llr_map(config, model[0])}
        fields["min_llr"] = config.min_llr
        key = search_key("search", config.table, config.per_source, config.k, same_set, model)
        sides = ("both",) if same_set else ("queries", "gallery")
        previous = _previous(config, ctx, key, staging, dict.fromkeys(sides, "uri"))
        items = out.row_writer("match_items")
        query_set = diff_set(queries, sides[0], previous, ctx.output, staging.join("dq"), items)
        gallery_set = (
            query_set if same_set else diff_set(gallery, sides[1], previous, ctx.output, staging.join("dg"), items)
        )
        k = config.k + 1 if same_set else config.k  # a query found in its own gallery is skipped, not counted
        how = _how(config, ctx, k, config.k, same_set, fields, out, "search")
        files, matches, _, counts = search_sets(query_set, gallery_set, previous, how)
        out.add_files("matches", files)
        out.add_files("match_items", query_set.records + ([] if same_set else gallery_set.records))
    finally:
        staging.remove_tree()
    errors = [_error(r, InvalidEmbedding) for r in queries.invalid + ([] if same_set else gallery.invalid)]
    out.write_errors(errors, stage="match")
    return {
        "queries": len(queries),
        "gallery": len(gallery),
        "k": config.k,
        "matches": matches,
        "errors": len(errors),
        "threshold": threshold,
        "threshold_source": source,
        "search_key": key,
        "merged_from": previous.run_id if previous else None,
        **counts,
    }


def run_crossmatch(config: MatchConfig, ctx: JobContext, out: JobOutput) -> dict:
    """Cross-modal search at archive scale: each source's voice and each source's face mapped into the joint space
    by the staging tasks (``uri#voice``, ``uri#face``), then voices searched over faces and faces over voices on
    shard actors, rows written by workers (``jobs.archive.search``)."""
    if not config.joint_model:
        raise JobFailed("crossmatch needs --joint-model: a model trained by `python -m jobs.train_crossmodal`")
    model = catalogue.load(config.joint_model, config.models, expect="voice-face-model")
    joint = (model.name, model.sha256)
    staging = out.staging()
    sets = {
        "voices": (config.queries, config.queries_run_id),
        "faces": (config.gallery or config.queries, config.gallery_run_id),
    }
    ensure_ray()
    prepared: dict[str, Prepared] = {}
    try:
        for table, (root, run_id) in sets.items():
            through = Projection(config.joint_model, config.models, branch=table[:-1])
            prepared[table] = prepare_items(resolve(root), table, run_id, True, staging.join(table), through)
            others = prepared[table].models - {joint}
            if others:
                expected = model.card["inputs"][table]
                name, sha = sorted(others)[0]
                raise JobFailed(
                    f"{table}/ under {root} was embedded with {name} ({sha[:12]}), but {model.name} was trained on "
                    f"{expected['model_name']} ({expected['model_sha256'][:12]}): embed with that model"
                )
        threshold, source = (
            (config.threshold, "--threshold")
            if config.threshold is not None
            else (model.card.get("default_threshold"), f"model card of {model.name}")
        )
        fields = {"run_id": out.run_id, "model_name": model.name, "model_sha256": model.sha256}
        fields |= {"threshold": threshold, "threshold_source": source if threshold is not None else None}
        key = search_key("crossmatch", "both", True, config.k, False, joint)
        previous = _previous(config, ctx, key, staging, dict.fromkeys(prepared, "uri"))
        items = out.row_writer("match_items")
        diffed = {
            table: diff_set(found, table, previous, ctx.output, staging.join(f"d{table}"), items)
            for table, found in prepared.items()
        }
        how = _how(config, ctx, config.k, config.k, False, fields, out, "crossmatch")
        matches, counts = 0, {}
        for queries, gallery in (("voices", "faces"), ("faces", "voices")):
            if not len(prepared[queries]) or not len(prepared[gallery]):
                continue
            files, rows, _, found = search_sets(diffed[queries], diffed[gallery], previous, how)
            out.add_files("matches", files)
            matches += rows
            counts |= {f"{queries}_{name}": n for name, n in found.items() if name.startswith("queries")}
            counts |= {f"{gallery}_{name}": n for name, n in found.items() if name.startswith("gallery")}
        out.add_files("match_items", [f for d in diffed.values() for f in d.records])
    finally:
        staging.remove_tree()
    errors = [_error(r, InvalidEmbedding) for r in prepared["voices"].invalid + prepared["faces"].invalid]
    out.write_errors(errors, stage="match")
    return {
        "voices": len(prepared["voices"]),
        "faces": len(prepared["faces"]),
        "k": config.k,
        "joint_model": model.name,
        "matches": matches,
        "errors": len(errors),
        "search_key": key,
        "merged_from": previous.run_id if previous else None,
        **counts,
    }


def run_verify(config: MatchConfig, ctx: JobContext, out: JobOutput) -> dict:
    """Verification at archive scale (``jobs.archive.verify``): tasks read the pairs a chunk at a time, each reads
    only the embeddings its pairs name, scores, decides and writes; the driver holds the model, the threshold and
    counts."""
    if not config.pairs:
        raise JobFailed("verify needs --pairs: a CSV or Parquet table with columns a and b (source uris or items)")
    if config.fuse:
        return run_verify_fused(config, ctx, out)
    check_pairs(config.pairs)  # before the cluster starts: a wrong file is said at once
    root = resolve(config.queries)
    first = read_table(root, config.table, config.queries_run_id, columns=["model_name", "model_sha256"], limit=1)
    if first.num_rows == 0:
        raise EmbeddingError(
            f"no committed {config.table}/ rows under {root.uri}: run `python -m jobs.embed_{config.table}` first"
        )
    model = (first.column("model_name")[0].as_py(), first.column("model_sha256")[0].as_py())
    if config.head:  # compared through the head: its name and sha256 are the model of the scores
        head = catalogue.load(config.head, config.models, expect="face-head")
        model = (head.name, head.sha256)
    threshold, source = _threshold(config, model[0])
    head = (config.head, config.models) if config.head else None
    llr_map = _llr_map(config, model[0])
    verifier = Verifier(
        root,
        config.table,
        config.queries_run_id,
        model,
        head,
        threshold,
        source,
        out.run_id,
        JOB,
        llr_map,
        config.min_llr,
        _gallery_side(config),
    )
    staging = out.staging("pairs")
    matches = out.row_writer("matches")
    errors = out.row_writer("errors")
    ensure_ray()
    try:
        done = verify_archive(config.pairs, staging, verifier, matches, errors, config.pairs_per_task)
    finally:
        staging.remove_tree()
    out.add_files("matches", done.matches)
    out.add_files("errors", done.errors)
    return {
        "pairs": done.pairs,
        "accept": done.accept,
        "reject": done.reject,
        "below_evidence": done.below_evidence,
        "threshold": threshold,
        "threshold_source": source,
        "min_llr": config.min_llr if llr_map else None,
        "matches": done.accept + done.reject + done.below_evidence,
        "errors": done.unmatched,
    }


def _gallery_side(config: MatchConfig) -> tuple[Store, str | None] | None:
    """verify: where the pairs' second sides are, when --gallery (or --gallery-run-id) puts them elsewhere than the
    first's: a probe's embeddings against an archive's."""
    gallery = config.gallery or config.queries
    if resolve(gallery) == resolve(config.queries) and config.gallery_run_id == config.queries_run_id:
        return None
    return resolve(gallery), config.gallery_run_id


def run_identify(config: MatchConfig, ctx: JobContext, out: JobOutput) -> dict:
    """Identification at archive scale (``jobs.archive.identify``): identities enrolled by tasks from the gallery's
    labelled items, probes searched against them on shard actors, rows written by workers."""
    if config.fuse:
        return run_identify_fused(config, ctx, out)
    gallery_root = config.gallery or config.queries
    same_set = gallery_root == config.queries and config.gallery_run_id == config.queries_run_id
    staging = out.staging()
    head = Projection(config.head, config.models) if config.head else None
    root = resolve(gallery_root)
    ensure_ray()
    try:
        gallery = prepare_items(root, config.table, config.gallery_run_id, True, staging.join("g"), head)
        # A probe is every face of a photo and every track of a video (a source is not one face); a labelled
        # source enrols its clearest face. Voices: a source's pooled voice.
        per_face = config.table == "faces" and not config.per_source
        pool = None
        if same_set and per_face:
            pool = prepare_items(root, "faces", config.gallery_run_id, False, staging.join("p"), head, tracks=True)
        manifest_run = None
        if not config.labels:
            manifest_run = (
                config.manifest_run_id or manifest_of(root, config.gallery_run_id) or newest_manifest_run(root)
            )
        enrolled = enrol(root, gallery, config.labels, manifest_run, same_set, staging, pool)
        if not enrolled.enrolled_sources:
            raise JobFailed(
                f"no gallery source under {gallery_root} has a label: run the manifest with --label-pattern, or "
                "pass --labels uri,label"
            )
        probes = enrolled.probes
        if not same_set:
            probes = prepare_items(
                resolve(config.queries),
                config.table,
                config.queries_run_id,
                not per_face,
                staging.join("q"),
                head,
                tracks=per_face,
            )
        model = _one_model_of_both(probes, gallery, config, gallery_root)
        threshold, source = _threshold(config, model[0])
        k = min(config.k, len(enrolled.identities))
        fields = {"run_id": out.run_id, "model_name": model[0], "model_sha256": model[1]}
        fields |= {"threshold": threshold, "threshold_source": source, "llr_map": _llr_map(config, model[0])}
        fields["min_llr"] = config.min_llr
        key = search_key("identify", config.table, not per_face, config.k, same_set, model)
        previous = _previous(config, ctx, key, staging, {"queries": "uri", "gallery": "item"})
        items = out.row_writer("match_items")
        probe_set = diff_set(probes, "queries", previous, ctx.output, staging.join("dq"), items)
        identity_set = diff_set(
            enrolled.identities, "gallery", previous, ctx.output, staging.join("dg"), items, identities=True
        )
        files, matches, unknown, counts = [], 0, 0, {}
        if len(probes):
            how = _how(config, ctx, k, k, False, fields, out, "identify")
            files, matches, unknown, counts = search_sets(probe_set, identity_set, previous, how)
        out.add_files("matches", files)
        out.add_files("match_items", probe_set.records + identity_set.records)
    finally:
        staging.remove_tree()
    errors = _invalid_errors(gallery, probes, pool, same_set)
    out.write_errors(errors, stage="match")
    return {
        "identities": len(enrolled.identities),
        "enrolled_sources": enrolled.enrolled_sources,
        "probes": len(probes),
        "unknown": unknown,
        "threshold": threshold,
        "threshold_source": source,
        "matches": matches,
        "errors": len(errors),
        "search_key": key,
        "merged_from": previous.run_id if previous else None,
        **counts,
    }


def _one_model_of_both(probes: Prepared, gallery: Prepared, config: MatchConfig, gallery_root: str) -> tuple[str, str]:
    """The one model (name, sha256) both sets were embedded by; refused when they differ, in model or width."""
    model = one_model(gallery.models, config.table, gallery_root)
    other = one_model(probes.models, config.table, config.queries) if probes.models else model
    if model != other or (probes.dim and gallery.dim and probes.dim != gallery.dim):
        raise EmbeddingError(
            f"cannot compare {other[0]} ({other[1][:12]}, {probes.dim}-d) with {model[0]} ({model[1][:12]}, "
            f"{gallery.dim}-d) embeddings: match sets made by the same model"
        )
    return model


def _invalid_errors(gallery: Prepared, probes: Prepared, pool: Prepared | None, same_set: bool) -> list[dict]:
    """An error row for each item whose vector is unusable, once: the gallery's and the probes'; with a pool of
    every face and track of the probes, their own bad vectors."""
    invalid = gallery.invalid + ([] if same_set else probes.invalid)
    if pool is not None:
        seen = {r["uri"] for r in pool.invalid}
        invalid = pool.invalid + [r for r in gallery.invalid if r["uri"] not in seen]
    return [_error(r, InvalidEmbedding) for r in invalid]


def _fused_record(uri: str | None) -> tuple[dict, str]:
    """A fused calibration record (``jobs.calibrate --fuse``): the JSON file, or the newest under an output root."""
    if not uri:
        raise JobFailed("--fuse needs --calibration: a fused record from `python -m jobs.calibrate --fuse`")
    if not uri.endswith(".json"):
        rows = read_table(resolve(uri), "fusions").to_pylist()
        if not rows:
            raise JobFailed(f"no committed fused calibration under {uri}: run `python -m jobs.calibrate --fuse` first")
        markers = {m["run_id"]: m["committed_at"] for m in committed_runs(resolve(uri))}
        uri = locate(resolve(uri), max(rows, key=lambda r: markers.get(r["run_id"], ""))["record_uri"]).uri
    try:
        record = json.loads(resolve(uri).read_bytes())
    except (StorageError, json.JSONDecodeError) as exc:
        raise JobFailed(f"cannot read the calibration record {uri}: {exc}") from None
    if record.get("kind") != "fused":
        raise JobFailed(f"{uri} calibrates one modality: --fuse needs a record from `python -m jobs.calibrate --fuse`")
    return record, uri


def _evidence(config: MatchConfig, root_uri: str, run_id: str | None, ctx: JobContext, out: JobOutput) -> Evidence:
    """The fused scorer over ``root_uri``'s faces and voices, refused when either was embedded by another model
    than the calibration's."""
    record, where = _fused_record(config.calibration)
    where = inside(ctx.output, where)
    root = resolve(root_uri)
    sides = {}
    for table in ("faces", "voices"):
        first = read_table(root, table, run_id, columns=["model_name", "model_sha256"], limit=1)
        expected = record["models"][table]
        model = (expected["model_name"], expected["model_sha256"])
        if first.num_rows:
            have = (first.column("model_name")[0].as_py(), first.column("model_sha256")[0].as_py())
            if have != model:
                raise EmbeddingError(
                    f"{table}/ under {root_uri} was embedded with {have[0]} ({have[1][:12]}), but {where} calibrates "
                    f"{model[0]} ({model[1][:12]})"
                )
        sides[table] = Verifier(root, table, run_id, model, None, 0.0, where, out.run_id, JOB)
    if not any(read_table(root, t, run_id, columns=["uri"], limit=1).num_rows for t in ("faces", "voices")):
        raise EmbeddingError(f"no committed faces/ or voices/ rows under {root_uri}: run the embed jobs first")
    fusion = Fusion.from_dict(record["calibration"])
    thresholds = record["llr_thresholds"]
    return Evidence(
        sides["faces"], sides["voices"], fusion, record["fusion"], thresholds, where, out.run_id, JOB, config.min_llr
    )


def run_verify_fused(config: MatchConfig, ctx: JobContext, out: JobOutput) -> dict:
    """Fused verification at archive scale: as verify, each chunk task scoring faces and voices (``fuse_chunk``)."""
    check_pairs(config.pairs, FUSED_PAIRS)
    evidence = _evidence(config, config.queries, config.queries_run_id, ctx, out)
    staging = out.staging("pairs")
    rows = out.row_writer("evidence")
    errors = out.row_writer("errors")
    ensure_ray()
    try:
        done = verify_archive(
            config.pairs, staging, evidence, rows, errors, config.pairs_per_task, FUSED_PAIRS, fuse_chunk
        )
    finally:
        staging.remove_tree()
    out.add_files("evidence", done.matches)
    out.add_files("errors", done.errors)
    return {
        "pairs": done.pairs,
        "accept": done.accept,
        "reject": done.reject,
        "below_evidence": done.below_evidence,
        "calibration": evidence.calibration,
        "fusion": evidence.method,
        "llr_thresholds": evidence.thresholds,
        "evidence": done.accept + done.reject + done.below_evidence,
        "errors": done.unmatched,
    }


def run_identify_fused(config: MatchConfig, ctx: JobContext, out: JobOutput) -> dict:
    """Fused identification at archive scale (``jobs.archive.fuse.identify_fused``)."""
    gallery_root = config.gallery or config.queries
    same_set = gallery_root == config.queries and config.gallery_run_id == config.queries_run_id
    gallery = _evidence(config, gallery_root, config.gallery_run_id, ctx, out)
    queries = gallery if same_set else _evidence(config, config.queries, config.queries_run_id, ctx, out)
    manifest_run = None
    if not config.labels:
        root = resolve(gallery_root)
        manifest_run = config.manifest_run_id or manifest_of(root, config.gallery_run_id) or newest_manifest_run(root)
    staging = out.staging("fused")
    rows = out.row_writer("evidence")
    errors = out.row_writer("errors")
    ensure_ray()
    try:
        done = identify_fused(gallery, queries, config.labels, manifest_run, same_set, config.k, staging, rows, errors)
    finally:
        staging.remove_tree()
    out.add_files("evidence", done.rows)
    out.add_files("errors", done.errors)
    return {
        "identities": done.identities,
        "enrolled": done.enrolled,
        "probes": done.probes,
        "unknown": done.unknown,
        "calibration": gallery.calibration,
        "fusion": gallery.method,
        "llr_thresholds": gallery.thresholds,
        "errors": done.unmatched,
    }


def _error(row: dict, kind: type[InvalidEmbedding]) -> dict:
    return {
        "uri": row["uri"],
        "sha256": row["sha256"],
        "error_type": kind.error_type,
        "message": f"{row['item']}: {row['reason']}",
    }


def run(config: MatchConfig, ctx: JobContext) -> dict:
    if config.mode not in MODES:
        raise JobFailed(f"unknown mode {config.mode!r}: use {', '.join(MODES)}")
    if config.pairs_per_task < 1:
        raise JobFailed("--pairs-per-task must be at least 1")
    if config.k < 1:
        raise JobFailed("--k must be at least 1")
    if config.fuse and config.mode not in ("verify", "identify"):
        raise JobFailed(f"--fuse is for verify and identify, not {config.mode}")
    if config.fuse and (config.queries_run_id or config.gallery_run_id or config.head):
        # One run id cannot name both a faces run and a voices run; a head is not what the record calibrated.
        raise JobFailed(
            "--fuse reads every committed faces/ and voices/ run: drop --queries-run-id, --gallery-run-id and --head"
        )
    # Each mode's own errors count is in its summary; match_items/ is committed by the modes that record items.
    out = JobOutput(ctx, config, {"evidence": EVIDENCE} if config.fuse else {"matches": MATCHES}, errors="table")
    modes = {"search": run_search, "verify": run_verify, "identify": run_identify, "crossmatch": run_crossmatch}
    summary = modes[config.mode](config, ctx, out)
    headline = f"{config.mode}: {', '.join(f'{k} {v}' for k, v in summary.items())}"
    return out.commit({"mode": config.mode, **summary}, headline)


def main(argv: list[str] | None = None) -> int:
    usage = __doc__.split("\n\n")[:2]  # the title and one usage line per mode, with what each mode does below
    modes = (
        "search: top K of every query item among the gallery's items. verify: each pair of a pairs table decided. "
        "identify: each probe face, track or voice against identities enrolled from labels. crossmatch: voices "
        "against faces through a joint model. Options apply to the modes their help names."
    )
    return run_job(JOB, MatchConfig, run, argv, description="\n\n".join([*usage, textwrap.fill(modes, 100)]))


if __name__ == "__main__":
    sys.exit(run_module(__spec__.name))
