"""Reading a report: the committed runs under a root, read into the plain data of ``ops.report.content``.

Every table is read by column a batch at a time: counts as the rows stream by, and rows only for what is shown (the
first probes and what they matched, the largest identities, their labels, faces and speech). Nothing grows with the
archive but the counts' totals. Thumbnails, speech clips and calibration plots are read here too, into data: URIs,
so that drawing (``ops.report.html``) reads nothing. A preview is made only from the bytes its scores were made from:
a source rewritten since shows the reason instead.
"""

from __future__ import annotations

import bisect
import hashlib
import json
from collections import defaultdict
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc

from ops.io.errors import JobFailed, PreviewError, StorageError, canonical
from ops.io.root import locate
from ops.io.storage import Store, resolve
from ops.io.tables import committed_runs, iter_table
from ops.matching import items
from ops.matching.reviews import latest, reviewed
from ops.media.preview import data_uri, face_thumbnail, source_frame, speech_clip
from ops.report.content import (
    Calibration,
    Evidence,
    FusedRun,
    Fusion,
    PersonsRun,
    Plot,
    Preview,
    Previews,
    Probes,
    Report,
    Sheets,
    preview_key,
)

REPORTED = ("manifest", "embed_faces", "embed_voices", "match", "calibrate", "identities", "persons", "attributes")
# Errors listed one by one in the report (the rest are counted by type); probes are capped by --max-probes.
ERRORS_LISTED = 200
REMOVED_SHOWN = 50  # removed objects listed by name; the count says how many there were
PERSONS_SHOWN = 50  # candidates listed; the summary counts them all
PLOTS = ("roc.png", "scores.png")  # a calibration's plots, as jobs.calibrate writes them
PLOTS_FUSED = ("roc.png", "det.png", "scores.png")


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


def read_report(
    root: Store,
    runs: list[dict],
    *,
    max_probes: int,
    max_identities: int,
    members_shown: int,
    thumb_size: int,
    clip_seconds: float,
    previews: bool = True,
) -> Report:
    """Everything the report of these runs shows: ``max_probes`` probes per match run (and fused run),
    ``max_identities`` identities of ``members_shown`` members per identities run, previews unless ``previews`` is
    false (--no-previews: nothing cut from the media)."""
    ev = read_evidence(root, runs)
    probes = [read_probes(root, marker, max_probes) for marker in ev.matches]  # chosen first, then read
    sheets = [read_sheets(root, m, max_identities, members_shown) for m in ev.identities]
    shown_uris = set().union(*(p.uris() for p in probes), *(s.uris() for s in sheets))
    know_sources(root, ev, shown_uris)
    know_attributes(root, ev, shown_uris)
    for found in probes:  # each row with its analyst's latest mark, as jobs.review names the row
        for r in (r for rows in found.rows.values() for r in rows):
            r["review"] = ev.reviews.get((r["run_id"], *reviewed(r)))
    shown = [preview_key(*key) for found in [*probes, *sheets] for key in found.previewed()]
    return Report(
        runs=runs,
        evidence=ev,
        removed=read_removed(root, runs),
        calibrations=read_calibrations(root, ev),
        fusions=read_fusions(root, ev),
        probes=probes,
        sheets=sheets,
        fused=[read_fused(root, marker, max_probes) for marker in ev.fused],
        persons=[read_persons(root, marker) for marker in ev.persons],
        previews=read_previews(root, ev, shown_uris, shown, thumb_size, clip_seconds, enabled=previews),
    )


# -- counts, errors and the runs each section draws ---------------------------------------------------------------


def read_evidence(root: Store, runs: list[dict]) -> Evidence:
    """The selected runs' counts and errors, the markers each section draws, the runs their match runs read (for
    the other side's pictures and labels) and the calibrations their thresholds came from."""
    ev = Evidence(runs)
    for marker in runs:
        for batch in _rows(root, marker, "errors", ["job", "stage", "error_type", "uri", "message"]):
            _count_errors(ev, batch)
        job = marker["job"]
        if job in ("manifest", "embed_faces", "embed_voices"):
            _count(ev, root, marker)
        elif job == "match":
            (ev.fused if (marker.get("config") or {}).get("fuse") else ev.matches).append(marker)
        elif job == "identities":
            ev.identities.append(marker)
        elif job == "persons":
            ev.persons.append(marker)
        elif job == "attributes":
            ev.attribute_runs.append(marker)
        elif job == "calibrate":
            _calibration(ev, root, marker)
    ev.referenced = _referenced(root, runs, ev.matches)
    ev.reviews = latest(root, {m["run_id"] for m in ev.matches})
    for marker in ev.referenced:
        if marker["job"] == "calibrate":  # the calibration a match's threshold came from
            _calibration(ev, root, marker)
    return ev


def _add(ev: Evidence, name: str, value: float) -> None:
    ev.counts[name] = ev.counts.get(name, 0) + value


def _count(ev: Evidence, root: Store, marker: dict) -> None:
    """An inventory run's counts: the manifest's inputs by kind, the faces found, the speech heard."""
    job = marker["job"]
    if job == "manifest":
        for name in ("manifest rows", "duplicates", "labelled"):
            _add(ev, name, 0)
        for batch in _rows(root, marker, "manifest", ["media_category", "duplicate_of", "label"]):
            ev.kinds.update(batch.column("media_category").to_pylist())
            _add(ev, "duplicates", pc.sum(pc.is_valid(batch.column("duplicate_of"))).as_py() or 0)
            _add(ev, "labelled", pc.sum(pc.is_valid(batch.column("label"))).as_py() or 0)
            _add(ev, "manifest rows", batch.num_rows)
    elif job == "embed_faces":
        for batch in _rows(root, marker, "face_sources", ["faces"]):
            found = batch.column("faces")
            _add(ev, "sources with faces", pc.sum(pc.greater(found, 0)).as_py() or 0)
            _add(ev, "faces found", pc.sum(found).as_py() or 0)
        _add(ev, "face rows", marker["tables"].get("faces", {}).get("rows", 0))
    elif job == "embed_voices":
        for batch in _rows(root, marker, "voices", ["level", "status", "speech_seconds"]):
            sources = batch.filter(pc.equal(batch.column("level"), "source"))
            _add(ev, "sources with speech", pc.sum(pc.not_equal(sources.column("status"), "no_speech")).as_py() or 0)
            _add(ev, "speech segments", batch.num_rows - sources.num_rows)
            _add(ev, "speech seconds", pc.sum(sources.column("speech_seconds")).as_py() or 0.0)


def _count_errors(ev: Evidence, batch: pa.Table) -> None:
    # Runs committed before the error vocabulary named failures otherwise: read under today's names.
    rows = zip(*(batch.column(c).to_pylist() for c in ("job", "stage", "error_type", "uri", "message")), strict=True)
    for job, stage, kind, uri, message in rows:
        kind = canonical(kind)
        ev.errors_by_type[(job, stage, kind)] += 1
        ev.errors_total += 1
        bisect.insort(ev.errors_listed, (job, uri, kind, message))
        del ev.errors_listed[ERRORS_LISTED:]  # the first by job and uri, however many there are


def _calibration(ev: Evidence, root: Store, marker: dict) -> None:
    ev.calibrations += [(marker, r) for b in _rows(root, marker, "calibrations") for r in b.to_pylist()]
    ev.fusions += [(marker, r) for b in _rows(root, marker, "fusions") for r in b.to_pylist()]


def know_sources(root: Store, ev: Evidence, uris: set[str]) -> None:
    """Read the manifest rows (label, media category) of these uris, the ones the report shows."""
    if not uris:
        return
    wanted = pc.field("uri").isin(sorted(uris))
    for marker in ev.runs + ev.referenced:
        if marker["job"] == "manifest":
            for batch in _rows(root, marker, "manifest", ["uri", "label", "media_category"], wanted):
                ev.sources |= {r["uri"]: r for r in batch.to_pylist()}


def know_attributes(root: Store, ev: Evidence, uris: set[str]) -> None:
    """Read the attributes of the faces of these uris (the ones the report shows), as short words."""
    if not uris:
        return
    wanted = pc.field("uri").isin(sorted(uris))
    for marker in ev.attribute_runs:
        for batch in _rows(root, marker, "attributes", None, wanted):
            for r in batch.to_pylist():
                if r["class"] is not None:
                    text = f"{r['attribute']} {r['class']} ({r['probability']:.2f})"
                elif r["interval_low"] is not None:
                    text = f"{r['attribute']} {r['value']:.0f} ({r['interval_low']:.0f}-{r['interval_high']:.0f})"
                else:
                    text = f"{r['attribute']} {r['value']:.1f}"
                ev.attributes.setdefault(r["item"], []).append(text)
                ev.attributes.setdefault(r["uri"], ev.attributes[r["item"]])  # a source: its first face


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


def _rows(
    root: Store, marker: dict, table: str, columns: list[str] | None = None, filter: pc.Expression | None = None
) -> Iterator[pa.Table]:
    """A run's rows of ``table`` (these columns, those ``filter`` keeps) a batch at a time; none when it wrote none."""
    if not marker["tables"].get(table, {}).get("rows"):
        return iter(())  # no files: nothing to read, and no schema to read it by
    return iter_table(root, table, marker["run_id"], columns=columns, filter=filter)


# -- what each section shows --------------------------------------------------------------------------------------


def read_probes(root: Store, marker: dict, limit: int) -> Probes:
    """A match run's probes: the first ``limit`` by item key with every row of theirs, how many there are, and the
    thresholds its rows were judged by. Two passes over the run's rows: the keys and thresholds, then the shown
    probes' rows."""
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
        judged = zip(batch.column("threshold").to_pylist(), batch.column("threshold_source").to_pylist(), strict=True)
        thresholds |= {(t, src) for t, src in judged if t is not None}
    rows: dict[str, list[dict]] = defaultdict(list)
    if first:
        for batch in _rows(root, marker, "matches", None, pc.field("query_item").isin(first)):
            for r in batch.to_pylist():
                rows[r["query_item"]].append(r)
    return Probes(marker, total, dict(rows), sorted(thresholds))


def read_sheets(root: Store, marker: dict, limit: int, members: int) -> Sheets:
    """An identities run's ``limit`` largest identities, each with its representative first and then its surest
    members up to ``members``. Two passes over the run's rows: each identity's size (from its representative's
    row), then the shown identities' members."""
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
    return Sheets(marker, total, shown)


def read_removed(root: Store, runs: list[dict]) -> list[dict]:
    """The first objects the selected manifests found removed since their previous snapshot (uri, previous_sha256)."""
    removed: list[dict] = []
    for m in sorted(runs, key=lambda m: m["committed_at"]):
        summary = m.get("summary", {})
        if m["job"] == "manifest" and "previous_manifest" in summary and summary["removed"]:
            for batch in _rows(root, m, "changes", ["uri", "previous_sha256"], pc.field("change") == "removed"):
                removed += batch.slice(0, REMOVED_SHOWN - len(removed)).to_pylist()
                if len(removed) >= REMOVED_SHOWN:
                    break
    return removed


def read_calibrations(root: Store, ev: Evidence) -> list[Calibration]:
    """Each calibration's record (empty when it cannot be read) and its ROC and score plots."""
    return [
        Calibration(marker, row, _record(root, row), _plots(root, marker["run_id"], PLOTS))
        for marker, row in ev.calibrations
    ]


def read_fusions(root: Store, ev: Evidence) -> list[Fusion]:
    """Each fused calibration's record and plots, or why its record cannot be read."""
    fusions = []
    for marker, row in ev.fusions:
        try:
            record = json.loads(locate(root, row["record_uri"]).read_bytes())
        except (StorageError, ValueError) as exc:
            fusions.append(Fusion(marker, row, None, str(exc)))
            continue
        fusions.append(Fusion(marker, row, record, plots=_plots(root, marker["run_id"], PLOTS_FUSED)))
    return fusions


def _plots(root: Store, run_id: str, names: tuple[str, ...]) -> list[Plot]:
    plots = []
    for name in names:
        try:
            plots.append(Plot(name, src=data_uri("image/png", root.join("calibration", run_id, name).read_bytes())))
        except StorageError as exc:
            plots.append(Plot(name, error=str(exc)))
    return plots


def _record(root: Store, row: dict) -> dict:
    """A calibrations/ row's record (empty when it cannot be read)."""
    try:
        return json.loads(locate(root, row["record_uri"]).read_bytes())
    except (StorageError, ValueError):
        return {}


def read_fused(root: Store, marker: dict, limit: int) -> FusedRun:
    """A fused match run: verification's first ``limit`` pairs, identification's first ``limit`` probes, each with
    its evidence/ rows."""
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
    return FusedRun(marker, mode, total, first, dict(shown))


def read_persons(root: Store, marker: dict) -> PersonsRun:
    """A persons run's first candidates: the linked first, the longest together first."""
    rows: list[dict] = []
    for batch in _rows(root, marker, "persons"):
        rows += batch.to_pylist()
        rows = sorted(rows, key=lambda r: (not r["linked"], -r["seconds"]))[:PERSONS_SHOWN]
    return PersonsRun(marker, rows)


# -- previews ------------------------------------------------------------------------------------------------------


def read_previews(
    root: Store,
    ev: Evidence,
    uris: set[str],
    keys: list[tuple[str, str]],
    thumb_size: int,
    clip_seconds: float,
    enabled: bool = True,
) -> Previews:
    """The face thumbnails and speech clips of these (table, item) keys (``preview_key``), each made once, the
    reason kept when one cannot be; ``uris`` are their sources."""
    previews = Previews(enabled)
    if not (enabled and uris):  # --no-previews: nothing cut from the media, only the uri and the scores
        return previews
    media = _Media.read(root, ev, uris)
    for table, item in dict.fromkeys(keys):
        try:
            made = media.face(item, thumb_size) if table == "faces" else media.clip(item, clip_seconds)
        except (PreviewError, StorageError) as exc:
            previews.failed += 1
            made = Preview("none", reason=str(exc))
        previews.made[table, item] = made
    return previews


class _Media:
    """The face and speech rows of the sources shown, and the face thumbnails cut at embed time."""

    def __init__(self, ev: Evidence) -> None:
        self.ev = ev
        self.faces: dict[str, dict] = {}
        self.segments: dict[str, dict] = {}
        self.thumbnails: dict[str, bytes] = {}

    @classmethod
    def read(cls, root: Store, ev: Evidence, uris: set[str]) -> _Media:
        media = cls(ev)
        # Only the faces and speech of the sources shown: every row of theirs, so a source's clearest face is the
        # one matching chose.
        wanted = pc.field("uri").isin(sorted(uris))
        faces, voices = [], []
        for marker in ev.runs + ev.referenced:
            if marker["job"] == "embed_faces":
                columns = ["uri", "frame_index", "face_index", "box", "face_size", "score", "timestamp", "track_id"]
                columns += ["eye_distance", "sha256"]
                faces += [b for b in _rows(root, marker, "faces", columns, wanted)]
                cut = ["uri", "frame_index", "face_index", "thumbnail"]
                for batch in _rows(root, marker, "face_thumbnails", cut, wanted):
                    for r in batch.to_pylist():
                        media.thumbnails[items.face_key(r["uri"], r["frame_index"], r["face_index"])] = r["thumbnail"]
            elif marker["job"] == "embed_voices":
                columns = ["uri", "sha256", "level", "segment_index", "start", "end", "speech_seconds"]
                voices += [b for b in _rows(root, marker, "voices", columns, wanted & (pc.field("level") == "segment"))]
        if faces:
            table = pa.concat_tables(faces)
            media.faces = {items.face_key(r["uri"], r["frame_index"], r["face_index"]): r for r in table.to_pylist()}
            # a per-source match names the source: the face it used, as matching chose it
            media.faces |= {r["uri"]: r for r in items.clearest_faces(table).to_pylist()}
            tracked = items.tracked_faces(table)  # a video's track: its clearest face, and when it was seen
            media.faces |= dict(zip(items.keys(tracked, "faces"), tracked.to_pylist(), strict=True))
        for r in (r for b in voices for r in b.to_pylist()):
            media.segments[items.segment_key(r["uri"], r["segment_index"])] = r
            current = media.segments.get(r["uri"])
            if current is None or r["speech_seconds"] > current["speech_seconds"]:
                media.segments[r["uri"]] = r
        return media

    def face(self, item: str, thumb_size: int) -> Preview:
        row = self.faces.get(item)
        if row is None:
            raise PreviewError("no face row for this item")
        cut = self.thumbnails.get(items.face_key(row["uri"], row["frame_index"], row["face_index"]))
        span = items.parse(item).span
        if cut is not None:  # cut at embed time: the source is not read again
            return Preview("face", data_uri("image/jpeg", cut), span)
        # A run embedded without thumbnails (--no-thumbnails, or before they existed): cut from the source.
        rgb = source_frame(_unchanged(row), self.ev.category(row["uri"]), row["frame_index"])
        return Preview("face", face_thumbnail(rgb, row["box"], thumb_size), span)

    def clip(self, item: str, clip_seconds: float) -> Preview:
        row = self.segments.get(item)
        if row is None:
            raise PreviewError("no speech segment for this item")
        uri = speech_clip(_unchanged(row), row["start"], row["end"], clip_seconds)
        return Preview("clip", uri, (row["start"], min(row["end"], row["start"] + clip_seconds)))


def _unchanged(row: dict) -> bytes:
    """The bytes of a row's source, when they are still the ones its scores were made from: a source rewritten
    since must not show (or play) beside an old score."""
    data = resolve(row["uri"]).read_bytes()
    if hashlib.sha256(data).hexdigest() != row["sha256"]:
        raise PreviewError("the source has changed since it was embedded (its sha256 differs): not shown")
    return data
