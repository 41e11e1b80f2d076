"""jobs.report: one self-contained HTML report of a matching run, written to the object store.

    python -m jobs.report [RESULTS] [--pipeline-run-id ID] [--output ROOT] [--max-probes 50]

Reads the committed runs under RESULTS (a pipeline run's stages, or the newest run of each job) and writes
``report/<run_id>/index.html``: the runs and models behind it (names and sha256), counts (inputs by kind, faces,
speech segments, errors by job and type), the calibration (AUC, EER, threshold, ROC and score histograms) when there
are labels, for each probe its top matches with face thumbnails or speech clips, scores and thresholds, and
identification decisions; who is in the archive (a contact sheet per identity, the largest first: its representative
and surest members) and the persons that link a face identity to a voice identity, each with its evidence. Thumbnails
and clips are embedded as data: URIs, so the file opens in any browser, from a laptop or a bucket, with no server. A
source that cannot be previewed shows the reason instead.
"""

from __future__ import annotations

import bisect
import hashlib
import html
import json
import sys
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from jobs.runtime.cli import JobConfig
from jobs.runtime.launch import JobContext, run_job, run_module
from ops.io.errors import JobFailed, PreviewError, StorageError, canonical
from ops.io.root import inside, locate
from ops.io.storage import Store, resolve
from ops.io.tables import OutputRun, committed_runs, iter_table
from ops.matching import items
from ops.matching.calibration import describe
from ops.matching.decisions import BELOW_EVIDENCE, decide, is_positive, verbal
from ops.matching.reviews import latest, reviewed
from ops.media.preview import data_uri, face_thumbnail, source_frame, speech_clip

JOB = "report"
REPORTED = ("manifest", "embed_faces", "embed_voices", "match", "calibrate", "identities", "persons", "attributes")


@dataclass
class ReportConfig(JobConfig):
    results: str = field(
        default="out/results",
        metadata={"positional": True, "run_key": True, "help": "output root holding the committed runs"},
    )
    pipeline_run_id: str | None = field(
        default=None,
        metadata={"run_key": True, "help": "report this pipeline run's stages (default: the newest run of each job)"},
    )
    max_probes: int = field(default=50, metadata={"help": "probes shown with their matches, per table and mode"})
    max_identities: int = field(default=12, metadata={"help": "identities shown (the largest), per modality"})
    members_shown: int = field(default=8, metadata={"help": "members shown per identity"})
    thumb_size: int = field(default=96, metadata={"help": "face thumbnails' longer side, pixels"})
    clip_seconds: float = field(default=4.0, metadata={"help": "speech clips' length at most, seconds"})
    previews: bool = field(
        default=True,
        metadata={"run_key": True, "help": "face thumbnails and speech clips (--no-previews: no biometric data)"},
    )


def select_runs(root: Store, pipeline_run_id: str | None) -> list[dict]:
    """The commit markers to report: a pipeline run's stages, or the newest of each job (and mode, and table)."""
    markers = [m for m in committed_runs(root) if m["job"] in REPORTED]
    if pipeline_run_id:
        picked = [m for m in markers if m["run_id"].startswith(f"{pipeline_run_id}.")]
        if not picked:
            raise JobFailed(f"no committed stage of pipeline run {pipeline_run_id} under {root.uri}")
        return picked
    newest: dict[tuple, dict] = {}
    for marker in markers:  # oldest first: later ones replace
        config = marker.get("config", {})
        table = config.get("table") or marker.get("summary", {}).get("table")
        newest[(marker["job"], config.get("mode"), table, bool(config.get("fuse")))] = marker
    if not newest:
        raise JobFailed(f"no committed runs under {root.uri} to report on: run `python -m jobs.pipeline` first")
    return list(newest.values())


# Errors listed one by one in the report (the rest are counted by type); probes are capped by --max-probes.
ERRORS_LISTED = 200


@dataclass
class Evidence:
    """What a report shows, read by column a batch at a time: counts as the rows stream by, and rows only for the
    probes shown and what they matched (their labels, faces and speech). Nothing grows with the archive but the
    counts' totals."""

    root: Store
    runs: list[dict]
    counts: dict[str, object] = field(default_factory=dict)
    kinds: Counter = field(default_factory=Counter)
    errors_by_type: Counter = field(default_factory=Counter)
    errors_listed: list[tuple] = field(default_factory=list)  # (job, uri, error_type, message), the first by job, uri
    errors_total: int = 0
    calibrations: list[tuple[dict, dict]] = field(default_factory=list)  # (marker, row)
    fusions: list[tuple[dict, dict]] = field(default_factory=list)  # (marker, row) of fused calibrations
    matches: list[dict] = field(default_factory=list)  # the match runs' markers
    fused: list[dict] = field(default_factory=list)  # the fused match runs' markers (rows in evidence/)
    identities: list[dict] = field(default_factory=list)  # the identities runs' markers
    persons: list[dict] = field(default_factory=list)  # the persons runs' markers
    sources: dict[str, dict] = field(default_factory=dict)  # manifest rows of the uris shown
    attribute_runs: list[dict] = field(default_factory=list)  # the attributes runs' markers
    attributes: dict[str, list[str]] = field(default_factory=dict)  # face item -> its attributes, as words
    # Runs outside the selection that its match runs read (``_referenced``): for the other side's pictures and labels.
    referenced: list[dict] = field(default_factory=list)
    # The newest analyst's mark of each reviewed match row: (match run, query item, gallery item) -> its reviews/ row.
    reviews: dict[tuple[str, str, str], dict] = field(default_factory=dict)

    @classmethod
    def read(cls, root: Store, runs: list[dict]) -> Evidence:
        ev = cls(root, runs)
        for marker in runs:
            job = marker["job"]
            for batch in _rows(root, marker, "errors", ["job", "stage", "error_type", "uri", "message"]):
                ev._errors(batch)
            if job == "manifest":
                for name in ("manifest rows", "duplicates", "labelled"):
                    ev._add(name, 0)
                for batch in _rows(root, marker, "manifest", ["media_category", "duplicate_of", "label"]):
                    ev.kinds.update(batch.column("media_category").to_pylist())
                    ev._add("duplicates", pc.sum(pc.is_valid(batch.column("duplicate_of"))).as_py() or 0)
                    ev._add("labelled", pc.sum(pc.is_valid(batch.column("label"))).as_py() or 0)
                    ev._add("manifest rows", batch.num_rows)
            elif job == "embed_faces":
                for batch in _rows(root, marker, "face_sources", ["faces"]):
                    found = batch.column("faces")
                    ev._add("sources with faces", pc.sum(pc.greater(found, 0)).as_py() or 0)
                    ev._add("faces found", pc.sum(found).as_py() or 0)
                ev._add("face rows", marker["tables"].get("faces", {}).get("rows", 0))
            elif job == "embed_voices":
                for batch in _rows(root, marker, "voices", ["level", "status", "speech_seconds"]):
                    sources = batch.filter(pc.equal(batch.column("level"), "source"))
                    ev._add(
                        "sources with speech", pc.sum(pc.not_equal(sources.column("status"), "no_speech")).as_py() or 0
                    )
                    ev._add("speech segments", batch.num_rows - sources.num_rows)
                    ev._add("speech seconds", pc.sum(sources.column("speech_seconds")).as_py() or 0.0)
            elif job == "match":
                (ev.fused if (marker.get("config") or {}).get("fuse") else ev.matches).append(marker)
            elif job == "identities":
                ev.identities.append(marker)
            elif job == "persons":
                ev.persons.append(marker)
            elif job == "attributes":
                ev.attribute_runs.append(marker)
            elif job == "calibrate":
                ev._calibration(marker)
        ev.referenced = _referenced(root, runs, ev.matches)
        ev.reviews = latest(root, {m["run_id"] for m in ev.matches})
        for marker in ev.referenced:
            if marker["job"] == "calibrate":  # the calibration a match's threshold came from
                ev._calibration(marker)
        return ev

    def _add(self, name: str, value) -> None:
        self.counts[name] = self.counts.get(name, 0) + value

    def _errors(self, batch: pa.Table) -> None:
        # Runs committed before the error vocabulary named failures otherwise: read under today's names.
        rows = zip(
            *(batch.column(c).to_pylist() for c in ("job", "stage", "error_type", "uri", "message")), strict=True
        )
        for job, stage, kind, uri, message in rows:
            kind = canonical(kind)
            self.errors_by_type[(job, stage, kind)] += 1
            self.errors_total += 1
            bisect.insort(self.errors_listed, (job, uri, kind, message))
            del self.errors_listed[ERRORS_LISTED:]  # the first by job and uri, however many there are

    def _calibration(self, marker: dict) -> None:
        self.calibrations += [(marker, r) for b in _rows(self.root, marker, "calibrations") for r in b.to_pylist()]
        self.fusions += [(marker, r) for b in _rows(self.root, marker, "fusions") for r in b.to_pylist()]

    def know(self, uris: set[str]) -> None:
        """Read the manifest rows (label, media category) of these uris, the ones the report shows."""
        if not uris:
            return
        wanted = pc.field("uri").isin(sorted(uris))
        for marker in self.runs + self.referenced:
            if marker["job"] == "manifest":
                for batch in _rows(self.root, marker, "manifest", ["uri", "label", "media_category"], wanted):
                    self.sources |= {r["uri"]: r for r in batch.to_pylist()}

    def know_attributes(self, uris: set[str]) -> None:
        """Read the attributes of the faces of these uris (the ones the report shows), as short words."""
        if not uris:
            return
        wanted = pc.field("uri").isin(sorted(uris))
        for marker in self.attribute_runs:
            for batch in _rows(self.root, marker, "attributes", None, wanted):
                for r in batch.to_pylist():
                    if r["class"] is not None:
                        text = f"{r['attribute']} {r['class']} ({r['probability']:.2f})"
                    elif r["interval_low"] is not None:
                        text = f"{r['attribute']} {r['value']:.0f} ({r['interval_low']:.0f}-{r['interval_high']:.0f})"
                    else:
                        text = f"{r['attribute']} {r['value']:.1f}"
                    self.attributes.setdefault(r["item"], []).append(text)
                    self.attributes.setdefault(r["uri"], self.attributes[r["item"]])  # a source: its first face

    def attribute_html(self, item: str) -> str:
        words = self.attributes.get(item)
        return f'<br><small data-testid="attributes">{_e(", ".join(words))}</small>' if words else ""

    def category(self, uri: str) -> str:
        return self.sources.get(uri, {}).get("media_category", "image")

    def label(self, uri: str) -> str | None:
        return self.sources.get(uri, {}).get("label")


def _referenced(root: Store, runs: list[dict], matches: list[dict]) -> list[dict]:
    """The committed runs under ``root`` that the selected match runs read and the selection lacks: the embeddings
    they searched and the manifests those listed (the other side's pictures and labels), and the calibration their
    threshold came from. A find searches probes against an archive's faces that its report did not select."""
    committed = {m["run_id"]: m for m in committed_runs(root)}
    wanted: list[str | None] = []
    for marker in matches:
        config, summary = marker.get("config") or {}, marker.get("summary") or {}
        for side in ("queries", "gallery"):
            run_id = config.get(f"{side}_run_id")
            if run_id and locate(root, config.get(side) or config.get("queries")) == root:
                wanted += [run_id, (committed.get(run_id, {}).get("config") or {}).get("manifest_run_id")]
        source = summary.get("threshold_source") or ""
        if source.startswith("calibration/"):  # a record inside this root (kept relative to it)
            wanted.append(source.split("/")[1])
    chosen = {m["run_id"] for m in runs}
    return [committed[r] for r in dict.fromkeys(wanted) if r and r in committed and r not in chosen]


def _rows(root: Store, marker: dict, table: str, columns: list[str] | None = None, filter=None):
    """A run's rows of ``table`` (these columns, those ``filter`` keeps) a batch at a time; none when it wrote none."""
    if not marker["tables"].get(table, {}).get("rows"):
        return iter(())  # no files: nothing to read, and no schema to read it by
    return iter_table(root, table, marker["run_id"], columns=columns, filter=filter)


@dataclass
class Probes:
    """One match run's probes as the report shows them: how many there are, the first ``limit`` by item key with
    every row of theirs, and the thresholds its rows were judged by. Two passes over the run's rows: the keys and
    thresholds, then the shown probes' rows."""

    marker: dict
    total: int
    rows: dict[str, list[dict]]  # query item -> its rows, for the shown probes
    thresholds: list[tuple[float, str]]

    @classmethod
    def read(cls, root: Store, marker: dict, limit: int) -> Probes:
        total, first, thresholds = 0, [], set()
        for batch in _rows(root, marker, "matches", ["query_item", "rank", "threshold", "threshold_source"]):
            ranks = batch.column("rank")
            # A probe has one rank-1 row (verification pairs have no rank: each row is one).
            probes = batch.filter(pc.fill_null(pc.equal(ranks, 1), True)).column("query_item").to_pylist()
            total += len(probes)
            for item in probes:
                if len(first) < limit or (first and item < first[-1]):
                    if item not in first:
                        bisect.insort(first, item)
                        del first[limit:]
            judged = zip(
                batch.column("threshold").to_pylist(), batch.column("threshold_source").to_pylist(), strict=True
            )
            thresholds |= {(t, src) for t, src in judged if t is not None}
        rows: dict[str, list[dict]] = defaultdict(list)
        if first:
            for batch in _rows(root, marker, "matches", None, pc.field("query_item").isin(first)):
                for r in batch.to_pylist():
                    rows[r["query_item"]].append(r)
        return cls(marker, total, dict(rows), sorted(thresholds))

    def uris(self) -> set[str]:
        return {u for rows in self.rows.values() for r in rows for u in (r["query_uri"], r["gallery_uri"]) if u}


@dataclass
class Sheets:
    """One identities run as contact sheets: the ``limit`` largest identities, each with its representative first
    and then its surest members up to ``members``. Two passes over the run's rows: each identity's size (from its
    representative's row), then the shown identities' members."""

    marker: dict
    total: int
    members: dict[str, list[dict]]  # identity -> its shown members, the representative first

    @classmethod
    def read(cls, root: Store, marker: dict, limit: int, members: int) -> Sheets:
        total, largest = 0, []  # (-size, identity), the ``limit`` largest
        for batch in _rows(root, marker, "identities", ["identity", "size"], pc.field("representative")):
            for identity, size in zip(*(batch.column(c).to_pylist() for c in ("identity", "size")), strict=True):
                total += 1
                bisect.insort(largest, (-size, identity))
                del largest[limit:]
        shown: dict[str, list[dict]] = {identity: [] for _, identity in largest}
        if shown:
            wanted = pc.field("identity").isin(list(shown))
            for batch in _rows(root, marker, "identities", None, wanted):
                for r in batch.to_pylist():
                    kept = shown[r["identity"]]
                    bisect.insort(kept, r, key=lambda m: (not m["representative"], -m["confidence"], m["item"]))
                    del kept[members:]
        return cls(marker, total, shown)

    def uris(self) -> set[str]:
        return {r["uri"] for rows in self.members.values() for r in rows}


class Previews:
    """Face thumbnails and speech clips of match items, each made once, the reason shown when one cannot be."""

    def __init__(
        self, ev: Evidence, uris: set[str], thumb_size: int, clip_seconds: float, enabled: bool = True
    ) -> None:
        self.ev, self.thumb_size, self.clip_seconds, self.enabled = ev, thumb_size, clip_seconds, enabled
        self._made: dict[tuple[str, str], str] = {}
        self.failed = 0
        self.faces: dict[str, dict] = {}
        self.segments: dict[str, dict] = {}
        if not (enabled and uris):
            return
        # Only the faces and speech of the sources shown: every row of theirs, so a source's clearest face is the
        # one matching chose.
        wanted = pc.field("uri").isin(sorted(uris))
        faces, voices = [], []
        self.thumbnails: dict[str, bytes] = {}
        for marker in ev.runs + ev.referenced:
            if marker["job"] == "embed_faces":
                columns = ["uri", "frame_index", "face_index", "box", "face_size", "score", "timestamp", "track_id"]
                columns += ["eye_distance", "sha256"]
                faces += [b for b in _rows(ev.root, marker, "faces", columns, wanted)]
                cut = ["uri", "frame_index", "face_index", "thumbnail"]
                for batch in _rows(ev.root, marker, "face_thumbnails", cut, wanted):
                    for r in batch.to_pylist():
                        self.thumbnails[items.face_key(r["uri"], r["frame_index"], r["face_index"])] = r["thumbnail"]
            elif marker["job"] == "embed_voices":
                columns = ["uri", "sha256", "level", "segment_index", "start", "end", "speech_seconds"]
                voices += [
                    b for b in _rows(ev.root, marker, "voices", columns, wanted & (pc.field("level") == "segment"))
                ]
        if faces:
            table = pa.concat_tables(faces)
            self.faces = {items.face_key(r["uri"], r["frame_index"], r["face_index"]): r for r in table.to_pylist()}
            # a per-source match names the source: the face it used, as matching chose it
            self.faces |= {r["uri"]: r for r in items.clearest_faces(table).to_pylist()}
            tracked = items.tracked_faces(table)  # a video's track: its clearest face, and when it was seen
            self.faces |= dict(zip(items.keys(tracked, "faces"), tracked.to_pylist(), strict=True))
        for r in (r for b in voices for r in b.to_pylist()):
            self.segments[items.segment_key(r["uri"], r["segment_index"])] = r
            current = self.segments.get(r["uri"])
            if current is None or r["speech_seconds"] > current["speech_seconds"]:
                self.segments[r["uri"]] = r

    def html(self, table: str, item: str) -> str:
        named = items.parse(item)
        if named.modality:  # cross-modal items name their modality
            item, table = named.uri, "voices" if named.modality == "voice" else "faces"
        if not self.enabled:  # --no-previews: nothing cut from the media, only the uri and the scores
            return '<span class="nopreview">previews off (--no-previews)</span>'
        key = (table, item)  # a video is a face in one table and a voice in the other
        if key not in self._made:
            try:
                self._made[key] = self._face(item) if table == "faces" else self._clip(item)
            except (PreviewError, StorageError) as exc:
                self.failed += 1
                self._made[key] = f'<span class="nopreview" title="{_e(str(exc))}">no preview: {_e(str(exc))}</span>'
        return self._made[key]

    def _face(self, item: str) -> str:
        row = self.faces.get(item)
        if row is None:
            raise PreviewError("no face row for this item")
        cut = self.thumbnails.get(items.face_key(row["uri"], row["frame_index"], row["face_index"]))
        span = items.parse(item).span
        seen = f"<small>track seen {span[0]:.1f}-{span[1]:.1f} s</small>" if span else ""
        if cut is not None:  # cut at embed time: the source is not read again
            image = data_uri("image/jpeg", cut)
        else:  # A run embedded without thumbnails (--no-thumbnails, or before they existed): cut from the source.
            rgb = source_frame(_unchanged(row), self.ev.category(row["uri"]), row["frame_index"])
            image = face_thumbnail(rgb, row["box"], self.thumb_size)
        return f'<img class="thumb" data-testid="thumb" alt="face in {_e(item)}" src="{image}">{seen}'

    def _clip(self, item: str) -> str:
        row = self.segments.get(item)
        if row is None:
            raise PreviewError("no speech segment for this item")
        uri = speech_clip(_unchanged(row), row["start"], row["end"], self.clip_seconds)
        span = f"{row['start']:.1f}-{min(row['end'], row['start'] + self.clip_seconds):.1f} s"
        return (
            f'<audio class="clip" data-testid="clip" controls preload="none" src="{uri}"></audio><small>{span}</small>'
        )


def _unchanged(row: dict) -> bytes:
    """The bytes of a row's source, when they are still the ones its scores were made from: a source rewritten
    since must not show (or play) beside an old score."""
    data = resolve(row["uri"]).read_bytes()
    if hashlib.sha256(data).hexdigest() != row["sha256"]:
        raise PreviewError("the source has changed since it was embedded (its sha256 differs): not shown")
    return data


def run(config: ReportConfig, ctx: JobContext) -> dict:
    if config.max_probes < 0:
        raise JobFailed("--max-probes must be 0 or more")
    root = resolve(config.results)
    out = OutputRun(ctx.output, ctx.run_id, JOB)
    out.check_writable()
    runs = select_runs(root, config.pipeline_run_id)
    ev = Evidence.read(root, runs)
    probes = [Probes.read(root, marker, config.max_probes) for marker in ev.matches]  # chosen first, then read
    sheets = [Sheets.read(root, m, config.max_identities, config.members_shown) for m in ev.identities]
    shown_uris = set().union(*(p.uris() for p in probes), *(s.uris() for s in sheets))
    ev.know(shown_uris)
    ev.know_attributes(shown_uris)
    previews = Previews(ev, shown_uris, config.thumb_size, config.clip_seconds, enabled=config.previews)
    sections = [_runs_section(runs), _changes_section(root, runs), _counts_section(ev), _errors_section(ev)]
    sections.append(_calibration_section(root, ev))
    probes_shown = 0
    for found in probes:
        section, shown = _matches_section(found, ev, previews)
        sections.append(section)
        probes_shown += shown
    sections += [_identities_section(found, ev, previews) for found in sheets]
    sections += [_fused_section(root, marker, config.max_probes) for marker in ev.fused]
    sections += [_persons_section(root, marker) for marker in ev.persons]
    title = f"crossmatch report {ctx.run_id}"
    page = _page(title, sections)
    target = ctx.output.join("report", ctx.run_id, "index.html")
    target.put_atomic(page.encode("utf-8"))
    summary = {
        "report_uri": inside(ctx.output, target.uri),
        "bytes": len(page.encode("utf-8")),
        "runs": [m["run_id"] for m in runs],
        "probes_shown": probes_shown,
        "previews_failed": previews.failed,
    }
    marker = out.commit(config=asdict(config), summary=summary)
    ctx.log.info("report of %d runs, %d probes shown: %s", len(runs), probes_shown, target.uri)
    return marker


# -- sections ----------------------------------------------------------------------------------------------------


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _table(headers: list[str], rows: list[list[str]], testid: str) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table data-testid="{testid}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _runs_section(runs: list[dict]) -> str:
    rows = []
    for m in sorted(runs, key=lambda m: m["committed_at"]):
        summary = m.get("summary", {})
        models = ", ".join(f"{_e(summary[k])}" for k in ("detector", "model") if isinstance(summary.get(k), str)) or _e(
            summary.get("model_name", "")
        )
        tables = ", ".join(f"{name} {t['rows']}" for name, t in m["tables"].items())
        rows.append([_e(m["run_id"]), _e(m["job"]), _e(m["committed_at"][:19]), models, _e(tables)])
    return "<h2>Runs</h2>" + _table(["run", "job", "committed (UTC)", "models", "rows"], rows, "runs")


REMOVED_SHOWN = 50  # removed objects listed by name; the count says how many there were


def _changes_section(root: Store, runs: list[dict]) -> str:
    """What this run did not have to do again: the manifest's objects carried over unread against the previous
    snapshot (and what was new, modified or removed), the embedding runs' sources reused from an earlier run, the
    match runs' queries whose lists were merged from an earlier run's rather than searched again."""
    rows, removed = [], []
    for m in sorted(runs, key=lambda m: m["committed_at"]):
        summary = m.get("summary", {})
        if m["job"] == "manifest" and "previous_manifest" in summary:
            done = f"{summary['read']} read, {summary['carried']} carried over unread"
            changed = ", ".join(f"{summary[k]} {k}" for k in ("new", "modified", "removed"))
            rows.append([_e(m["run_id"]), _e(f"manifest {summary['previous_manifest']}"), _e(changed), _e(done)])
            if summary["removed"]:
                for batch in _rows(root, m, "changes", ["uri", "previous_sha256"], pc.field("change") == "removed"):
                    removed += batch.slice(0, REMOVED_SHOWN - len(removed)).to_pylist()
                    if len(removed) >= REMOVED_SHOWN:
                        break
        elif summary.get("reused_from") and m["job"] == "calibrate":
            done = "the same labelled sample: its record copied"
            rows.append([_e(m["run_id"]), _e(f"calibrate {summary['reused_from']}"), "", _e(done)])
        elif summary.get("merged_from"):  # crossmatch counts per modality (voices_queries_searched, ...): summed
            total = {
                what: sum(v for k, v in summary.items() if k.endswith(what) and isinstance(v, int))
                for what in ("queries_searched", "queries_merged", "gallery_added", "gallery_removed")
            }
            changed = f"gallery: {total['gallery_added']} added, {total['gallery_removed']} removed"
            done = f"{total['queries_searched']} queries searched, {total['queries_merged']} merged"
            rows.append([_e(m["run_id"]), _e(f"{m['job']} {summary['merged_from']}"), _e(changed), _e(done)])
        elif summary.get("reused_from"):
            reused = summary.get("reused", 0)
            done = f"{summary.get('sources', 0) - reused} embedded, {reused} reused"
            rows.append([_e(m["run_id"]), _e(f"{m['job']} {summary['reused_from']}"), "", _e(done)])
    if not rows:
        return ""
    section = "<h2>Since the last run</h2>" + _table(["run", "compared with", "changes", "work"], rows, "changes")
    if removed:
        items = "".join(f"<li>{_e(r['uri'])} <small>{_e(r['previous_sha256'][:12])}</small></li>" for r in removed)
        said = "Removed from the archive (no longer in this run's results)"
        section += f'<p>{said}:</p><ul data-testid="removed">{items}</ul>'
    return section


def _counts_section(ev: Evidence) -> str:
    c = ev.counts
    shown: list[tuple[str, object]] = []
    if "manifest rows" in c:
        manifest_errors = sum(n for (job, _, _), n in ev.errors_by_type.items() if job == "manifest")
        shown.append(("inputs", c["manifest rows"] + manifest_errors))
        shown += [(f"{kind} files", n) for kind, n in sorted(ev.kinds.items())]
        shown += [("duplicates", c["duplicates"]), ("labelled", c["labelled"])]
    if "face rows" in c:
        shown += [(k, c.get(k, 0)) for k in ("sources with faces", "faces found", "face rows")]
    if "speech segments" in c:
        shown += [(k, c.get(k, 0)) for k in ("sources with speech", "speech segments")]
        shown.append(("speech seconds", round(c.get("speech seconds", 0.0), 1)))
    shown.append(("errors", ev.errors_total))
    cells = "".join(f'<div class="count"><b>{_e(v)}</b><span>{_e(k)}</span></div>' for k, v in shown)
    return f'<h2>Counts</h2><div class="counts" data-testid="counts">{cells}</div>'


def _errors_section(ev: Evidence) -> str:
    if not ev.errors_total:
        return '<h2>Errors</h2><p data-testid="errors">No errors: every input gave results.</p>'
    grouped = [[_e(j), _e(s), _e(t), str(n)] for (j, s, t), n in sorted(ev.errors_by_type.items())]
    listed = [[_e(job), _e(kind), _e(uri), _e(message)] for job, uri, kind, message in ev.errors_listed]
    rest = ev.errors_total - len(ev.errors_listed)
    more = f"<p>{rest} more in errors/.</p>" if rest > 0 else ""
    return (
        "<h2>Errors</h2>"
        + _table(["job", "stage", "error type", "count"], grouped, "errors")
        + "<details><summary>each error</summary>"
        + _table(["job", "error type", "input", "reason"], listed, "error-rows")
        + more
        + "</details>"
    )


def _calibration_section(root: Store, ev: Evidence) -> str:
    if not ev.calibrations and not ev.fusions:
        return '<h2>Calibration</h2><p data-testid="calibration">No calibration: the archive has no labels.</p>'
    parts = ["<h2>Calibration</h2>"]
    for marker, row in ev.calibrations:
        record = _record(root, row)
        rule = record.get("threshold_why") or f"at FAR {row['target_far']:g}"
        stats = (
            f"{_e(row['model_name'])} ({_e(row['model_sha256'][:12])}) on {_e(row['table'])}: "
            f"{row['sources']} labelled sources, {row['same_pairs']} genuine and {row['different_pairs']} impostor "
            f"pairs; AUC {row['auc']:.4f}, EER {row['eer']:.4f}; threshold {row['threshold']:.4f} "
            f'(<span data-testid="threshold-rule">{_e(rule)}</span>)'
        )
        llr = _llr_words(record)
        plots = _plots(root, marker["run_id"], ("roc.png", "scores.png"))
        parts.append(f'<div data-testid="calibration-{_e(row["table"])}"><p>{stats}</p>{llr}{plots}</div>')
    for marker, row in ev.fusions:
        parts.append(_fusion_block(root, marker, row))
    return "".join(parts)


def _plots(root: Store, run_id: str, names: tuple[str, ...]) -> str:
    plots = []
    for name in names:
        try:
            src = data_uri("image/png", root.join("calibration", run_id, name).read_bytes())
            plots.append(f'<img class="plot" data-testid="plot" alt="{name}" src="{src}">')
        except StorageError as exc:
            plots.append(f'<span class="nopreview">{_e(name)} unavailable: {_e(str(exc))}</span>')
    return "".join(plots)


def _record(root: Store, row: dict) -> dict:
    """A calibrations/ row's record (empty when it cannot be read)."""
    try:
        return json.loads(locate(root, row["record_uri"]).read_bytes())
    except (StorageError, ValueError):
        return {}


def _llr_words(record: dict) -> str:
    """The record's score-to-log-LR map in words, when it has one (records before it did not)."""
    llr = record.get("llr")
    if not llr:
        return ""
    held = "" if llr.get("cllr_held_out") is None else f", {llr['cllr_held_out']:.3f} held out"
    return (
        f'<p data-testid="llr">As evidence: a score s is a log-likelihood ratio of {llr["slope"]:.2f} &times; s '
        f"{'+' if llr['offset'] >= 0 else '&minus;'} {abs(llr['offset']):.2f} (natural log; {_e(llr['method'])}). "
        f"Cllr {llr['cllr']:.3f} bits{held} "
        f"(0 is perfect, 1 is no information; {llr['min_cllr']:.3f} is the best any monotone map of these scores "
        f"could do). At the threshold the evidence is {_e(describe(llr['llr_at_threshold']))}"
        + (
            ": a score there is no match; a match needs a log-LR above --min-llr (0 unless the run sets it) too"
            if llr["llr_at_threshold"] <= 0
            else ""
        )
        + ".</p>"
    )


def _fusion_block(root: Store, marker: dict, row: dict) -> str:
    try:
        record = json.loads(locate(root, row["record_uri"]).read_bytes())
    except (StorageError, ValueError) as exc:
        return f'<p class="nopreview">fused calibration {_e(row["record_uri"])} unavailable: {_e(str(exc))}</p>'
    systems = record["systems"]
    decider = f"fused {record['fusion']}"
    names = {"face": "face alone", "voice": "voice alone", "fused sum": "face and voice, sum of log-LRs"}
    names["fused linear"] = "face and voice, trained linear fusion"
    table = _table(
        ["system", "EER", "TAR at FAR 1e-2", "TAR at FAR 1e-3", "Cllr (bits)", "min Cllr"],
        [
            [
                _e(names[name]) + (" <b>(decides)</b>" if name == decider else ""),
                f"{100 * fig['eer']:.2f}%",
                f"{fig['tar_at_far_0.01']:.3f}",
                f"{fig['tar_at_far_0.001']:.3f}",
                f"{fig['cllr']:.3f}",
                f"{fig['min_cllr']:.3f}",
            ]
            for name, fig in systems.items()
        ],
        "fusion-figures",
    )
    models = record["models"]
    head = (
        f"<h3>Face and voice together</h3><p>{_e(models['faces']['model_name'])} faces and "
        f"{_e(models['voices']['model_name'])} voices, {record['identity_count']} identities ({_e(record['pairing'])}"
        + (": each the faces of one person joined to the voices of another" if record["pairing"] == "chimeric" else "")
        + f"), {record['same_trials']} same-identity and {record['different_trials']} different-identity trials, "
        f"every figure held out ({_e(record['held_out'])}).</p>"
    )
    threshold = record["llr_thresholds"]["fused"]
    fused = systems[decider]
    caveat = ""
    if fused.get("different_trials") and 1 / fused["different_trials"] > record["target_far"]:
        caveat = (
            f" Only {fused['different_trials']} different-identity trials were held out: a rate of "
            f"{record['target_far']:g} cannot be measured on them, so the threshold is the lowest that accepts none."
        )
    if fused.get("llr_at_far", threshold) < threshold:
        caveat += " It is raised to 0: evidence that favours different people is never accepted."
    words = (
        f"<p>A fused log-LR of {threshold:.2f} or more is accepted (false accept rate {record['target_far']:g} held "
        f"out): the face and voice evidence together are then at least {_e(describe(threshold))}.{caveat}</p>"
    )
    plots = _plots(root, marker["run_id"], ("roc.png", "det.png", "scores.png"))
    return f'<div data-testid="calibration-fused">{head}{table}{words}{plots}</div>'


def _fused_section(root: Store, marker: dict, limit: int) -> str:
    """A fused match run: verification's first ``limit`` pairs, one line each; identification's first ``limit``
    probes, each with its top rows. The evidence of each is put in words."""
    mode = (marker.get("config") or {}).get("mode", "verify")
    first: list[tuple[str, str]] = []  # (query, gallery) of verify rows; (query, "") of identify probes
    total = 0
    for batch in _rows(root, marker, "evidence", ["query", "gallery"], pc.field("rank") == 1):
        keys = zip(batch.column("query").to_pylist(), batch.column("gallery").to_pylist(), strict=True)
        for query, gallery in keys:
            total += 1
            key = (query, gallery if mode == "verify" else "")
            if key not in first and (len(first) < limit or (first and key < first[-1])):
                bisect.insort(first, key)
                del first[limit:]
    shown: dict[tuple[str, str], list[dict]] = defaultdict(list)
    if first:
        wanted = pc.field("query").isin(sorted({q for q, _ in first}))
        for batch in _rows(root, marker, "evidence", None, wanted):
            for r in batch.to_pylist():
                key = (r["query"], r["gallery"] if mode == "verify" else "")
                if key in set(first):
                    shown[key].append(r)
    summary = marker.get("summary") or {}
    heading = "Verification" if mode == "verify" else "Identification"
    parts = [
        f"<h2>{heading}: face and voice together</h2>"
        f"<p>run {_e(marker['run_id'])}, {total} {'pairs' if mode == 'verify' else 'probes'}"
        + (f", the first {len(first)} shown" if len(first) < total else "")
        + f"; calibration {_e(summary.get('calibration', ''))} ({_e(summary.get('fusion', ''))} of log-LRs). "
        "A log-LR is the natural log of how many times more likely the evidence is if it is the same person.</p>"
    ]
    headers = ["rank", "against", "used", "face cosine (log-LR)", "voice cosine (log-LR)", "log-LR", "decision"]
    if mode == "verify":
        rows = [r for key in first for r in sorted(shown[key], key=lambda r: r["modalities"])]
        cells = [[f"<code>{_e(r['query'])}</code>", *_evidence_cells(r)[1:], _e(_statement(r, mode))] for r in rows]
        parts.append(_table(["pair", *headers[1:], "in words"], cells, "fused-rows"))
        return "".join(parts)
    for key in first:
        rows = sorted(shown[key], key=lambda r: r["rank"])
        parts.append(
            f'<section class="fused" data-testid="fused-probe"><p><code>{_e(key[0])}</code></p>'
            f'<p data-testid="fused-words">{_e(_statement(rows[0], mode))}</p>'
            + _table(headers, [_evidence_cells(r) for r in rows], "fused-rows")
            + "</section>"
        )
    return "".join(parts)


def _evidence_cells(r: dict) -> list[str]:
    def modality(score, llr) -> str:
        return "" if score is None else f"{score:.3f} ({llr:+.2f})"

    return [
        str(r["rank"]),
        f"<code>{_e(r['gallery'])}</code>",
        _e(r["modalities"]),
        modality(r["face_score"], r["face_llr"]),
        modality(r["voice_score"], r["voice_llr"]),
        f"<b>{r['llr']:+.2f}</b> (threshold {r['llr_threshold']:.2f})",
        _e(r["decision"] or ""),
    ]


def _statement(row: dict, mode: str) -> str:
    """The best row's evidence in words a reader can check against its log-LR."""
    which = {
        "face+voice": "The face and voice evidence together are",
        "face": "The face evidence alone (no voice to compare) is",
        "voice": "The voice evidence alone (no face to compare) is",
    }[row["modalities"]]
    if mode == "identify":
        words = describe(row["llr"], f"this is {row['gallery']}", "it is someone else")
    else:
        words = describe(row["llr"], f"this is the same person as {row['gallery']}", "it is someone else")
    return f"{which} {words}, at this calibration. Decision: {row['decision']}."


def _matches_section(probes: Probes, ev: Evidence, previews: Previews) -> tuple[str, int]:
    marker, by_query = probes.marker, probes.rows
    config = marker.get("config", {})
    mode, table = config.get("mode", "search"), config.get("table", "faces")
    min_llr = float(config.get("min_llr") or 0.0)
    shown = sorted(by_query)
    heading = {
        "search": "Top matches",
        "identify": "Identification",
        "verify": "Verification",
        "crossmatch": "Cross-modal matches",
    }.get(mode, mode)
    if mode == "crossmatch":
        table = "voices and faces"
    thresholds = probes.thresholds
    judged = "; ".join(f"threshold {t:.4f} from {_e(src)}" for t, src in thresholds) or "no threshold: ranked only"
    parts = [
        f"<h2>{heading}: {_e(table)}</h2><p>run {_e(marker['run_id'])}, {probes.total} probes"
        + (f", the first {len(shown)} shown" if len(shown) < probes.total else "")
        + f"; {judged}.</p>"
    ]
    for query in shown:
        ranked = sorted(by_query[query], key=lambda r: r["rank"])
        first = ranked[0]
        label = ev.label(first["query_uri"])
        head = (
            f'<div class="probe-head">{previews.html(table, query)}<div><code>{_e(query)}</code>'
            + (f"<br>label: <b>{_e(label)}</b>" if label else "")
            + (ev.attribute_html(query) if table == "faces" else "")
            + f"<br><small>sha256 {_e(first['query_sha256'][:16])}</small>"
            + (
                f"<br>decision: <b data-testid='decision'>{_e(first['decision'])}</b>"
                + (f"<br><small>{_e(first['verbal'])}</small>" if first.get("verbal") else "")
                if first["decision"]
                else ""
            )
            + "</div></div>"
        )
        cards = "".join(_match_card(r, table, mode, ev, previews, min_llr) for r in ranked)
        parts.append(
            f'<section class="probe" data-testid="probe" data-table="{_e(table)}" data-mode="{_e(mode)}">'
            f'{head}<div class="matches">{cards}</div></section>'
        )
    return "".join(parts), len(shown)


def _card_decision(r: dict, mode: str, min_llr: float) -> str | None:
    """A row's decision as stored; for the rows the job leaves undecided (identify's ranks below 1), the same rule
    (``ops.matching.decisions.decide``) applied to the row's score, threshold and log-LR."""
    if r["decision"] is not None or r["threshold"] is None:
        return r["decision"]
    llr = None if r.get("llr") is None else np.array([r["llr"]])
    positive = r["identity"] if mode == "identify" else "match"
    return decide(np.array([r["score"]]), r["threshold"], llr, min_llr, positive, "no match")[0]


def _match_card(r: dict, table: str, mode: str, ev: Evidence, previews: Previews, min_llr: float = 0.0) -> str:
    threshold = r["threshold"]
    decision = _card_decision(r, mode, min_llr)
    # Green only for a decision that says "the same person": a score above the threshold on evidence that does
    # not favour it is shown apart, never as a match.
    verdict = (
        ""
        if decision is None
        else " above"
        if is_positive(decision)
        else (" undecided" if decision == BELOW_EVIDENCE else " below")
    )
    what = (
        f"<b>{_e(r['identity'])}</b>"
        if mode == "identify"
        else previews.html(table, r["gallery_item"])
        + f"<code>{_e(r['gallery_item'])}</code>"
        + (ev.attribute_html(r["gallery_item"]) if table == "faces" else "")
    )
    label = ev.label(r["gallery_uri"]) if r["gallery_uri"] else None
    if threshold is None:
        limit = "no threshold"
    elif decision == BELOW_EVIDENCE:
        limit = f"above the threshold {threshold:.3f}, {BELOW_EVIDENCE}"
    else:
        limit = f"{'match' if is_positive(decision) else 'no match'} at {threshold:.3f}"
    words = r.get("verbal") or (verbal(r["llr"]) if r.get("llr") is not None else None)
    return (
        f'<div class="match{verdict}" data-testid="match" data-decision="{_e(decision or "")}">'
        f'<span class="rank">#{r["rank"]}</span>{what}'
        + (f"<br>label: {_e(label)}" if label else "")
        + f'<br>score <b data-testid="score">{r["score"]:.3f}</b>'
        + (
            f' <small data-testid="llr" title="{_e(describe(r["llr"]))}">log-LR {r["llr"]:+.2f}</small>'
            f'<br><small data-testid="verbal">{_e(words)}</small>'
            if r.get("llr") is not None
            else ""
        )
        + f"<br><small>{limit}</small>"
        + _review_html(ev.reviews.get(_reviewed(r)) if ev is not None else None)
        + "</div>"
    )


def _reviewed(r: dict) -> tuple[str, str, str]:
    """A match row as a review names it (``jobs.review``): its run, its query item, its gallery item or identity."""
    return (r["run_id"], *reviewed(r))


def _review_html(mark: dict | None) -> str:
    """An analyst's latest verdict on the row: what, who, when and why."""
    if mark is None:
        return ""
    when = mark["reviewed_at"].strftime("%Y-%m-%d %H:%M UTC")
    note = f": {_e(mark['note'])}" if mark["note"] else ""
    return (
        f'<br><small class="review {_e(mark["verdict"])}" data-testid="review">'
        f"<b>{_e(mark['verdict'])}</b> by {_e(mark['reviewer'])}, {when}{note}</small>"
    )


def _identities_section(sheets: Sheets, ev: Evidence, previews: Previews) -> str:
    marker, summary = sheets.marker, sheets.marker.get("summary", {})
    table = summary.get("table", "faces")
    scored = (
        f"; against the labels of {summary.get('labelled_items', '?')} of the {summary.get('items', 0)} items: "
        f"{summary['found_identities']} found for {summary['true_identities']} people, "
        f"BCubed F {summary['bcubed_f']:.3f}, pairwise F {summary['pairwise_f']:.3f}"
        if "bcubed_f" in summary
        else ""
    )
    warnings = "".join(f"<li>{_e(w)}</li>" for w in summary.get("warnings", []))
    parts = [
        f"<h2>Who is in the archive: {_e(table)}</h2><p>run {_e(marker['run_id'])}: {summary.get('items', 0)} items "
        f"in {sheets.total} identities ({summary.get('singletons', 0)} of one) by {_e(summary.get('method', ''))} "
        f"at {summary.get('threshold', 0):.3f} over search {_e(summary.get('search_run_id', ''))}"
        + (f", the {len(sheets.members)} largest shown" if len(sheets.members) < sheets.total else "")
        + f"{scored}.</p>"
        + (f'<ul class="warnings" data-testid="identity-warnings">{warnings}</ul>' if warnings else "")
    ]
    for identity, members in sheets.members.items():
        first = members[0]
        cohesion = "" if first["cohesion"] is None else f", cohesion {first['cohesion']:.3f}"
        labels = Counter(ev.label(m["uri"]) for m in members if ev.label(m["uri"]))
        named = f"<br>labels: {_e(', '.join(f'{k} ({n})' for k, n in labels.most_common()))}" if labels else ""
        cards = "".join(
            f'<div class="match{" above" if m["representative"] else ""}" data-testid="member">'
            f"{previews.html(table, m['item'])}<code>{_e(m['item'])}</code>"
            f"{ev.attribute_html(m['item']) if table == 'faces' else ''}"
            f"<br><small>confidence {m['confidence']:.2f}{' · representative' if m['representative'] else ''}</small>"
            "</div>"
            for m in members
        )
        more = first["size"] - len(members)
        parts.append(
            f'<section class="probe" data-testid="identity" data-table="{_e(table)}"><div class="probe-head"><div>'
            f"<code>{_e(identity)}</code><br><b>{first['size']}</b> members{cohesion}{named}"
            + (f"<br><small>{more} more in identities/</small>" if more > 0 else "")
            + f'</div></div><div class="matches">{cards}</div></section>'
        )
    return "".join(parts)


PERSONS_SHOWN = 50  # candidates listed; the summary counts them all


def _persons_section(root: Store, marker: dict) -> str:
    summary = marker.get("summary", {})
    rows = []
    for batch in _rows(root, marker, "persons"):
        rows += batch.to_pylist()
        rows = sorted(rows, key=lambda r: (not r["linked"], -r["seconds"]))[:PERSONS_SHOWN]
    cells = []
    for r in rows:
        spans = "<br>".join(f"{_e(e['uri'])} {e['start']:.1f}-{e['end']:.1f} s" for e in r["evidence"][:5])
        spans += f"<br><small>{len(r['evidence']) - 5} more spans</small>" if len(r["evidence"]) > 5 else ""
        decision = f"<b>{_e(r['person'])}</b>" if r["linked"] else f"not linked: {_e(r['reason'])}"
        cells.append(
            [
                decision,
                _e(r["face_identity"]),
                _e(r["voice_identity"]),
                f"{r['link_score']:.2f}",
                f"{r['seconds']:.1f} s in {r['videos']} videos",
                spans,
            ]
        )
    said = (
        f"<p>run {_e(marker['run_id'])}: {summary.get('persons', 0)} persons from {summary.get('candidates', 0)} "
        f"candidates. Speech segments in videos with faces: {summary.get('segments_decided', 0)} with one face on "
        f"screen (evidence), {summary.get('segments_undecided', 0)} with several (undecided), "
        f"{summary.get('segments_unseen', 0)} with nobody seen.</p>"
    )
    headers = ["person", "face identity", "voice identity", "link score", "together", "evidence"]
    return "<h2>Persons: faces and voices</h2>" + said + _table(headers, cells, "persons")


_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222;max-width:1400px}
h1{font-size:1.5em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:.2em .5em;text-align:left;
vertical-align:top}th{background:#f4f4f4}
.counts{display:flex;flex-wrap:wrap;gap:.5em}.count{border:1px solid #ddd;border-radius:4px;padding:.4em .8em;
min-width:7em}.count b{display:block;font-size:1.4em}
.probe{border:1px solid #ccc;border-radius:6px;margin:1em 0;padding:.6em;display:flex;gap:1em;align-items:flex-start}
.probe-head{display:flex;gap:.6em;min-width:18em;max-width:18em;word-break:break-all}
.matches{display:flex;flex-wrap:wrap;gap:.6em}.match{border:1px solid #ddd;border-radius:4px;padding:.4em;
width:11em;word-break:break-all}.match.above{border-color:#2a7;background:#f1fbf5}.match.below{opacity:.8}
.match.undecided{border-color:#c90;background:#fffaf0}.review.confirmed{color:#175}.review.rejected{color:#a33}.warnings{color:#a50;font-weight:600}
.rank{float:right;color:#888}.thumb{display:block;max-width:96px;max-height:96px;border-radius:3px}
.clip{width:10em;display:block}.plot{max-width:420px;margin-right:1em}.nopreview{color:#a33;font-size:.85em}
code{font-size:.85em}
"""


def _page(title: str, sections: list[str]) -> str:
    made = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
        f"<style>{_STYLE}</style></head><body><h1>{_e(title)}</h1><p>Written {made}. Scores are cosine "
        "similarities of L2-normalised embeddings; a match is a score at or above the threshold shown with it whose "
        "calibrated log-likelihood ratio, where there is a calibration, favours the same person (green); a score "
        "above the threshold on evidence that does not is shown apart (amber), never as a match.</p>"
        + "".join(sections)
        + "</body></html>"
    )


def main(argv: list[str] | None = None) -> int:
    return run_job(JOB, ReportConfig, run, argv, description=__doc__.split("\n")[0])


if __name__ == "__main__":
    sys.exit(run_module(__spec__.name))
