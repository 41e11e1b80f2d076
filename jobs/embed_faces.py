"""jobs.embed_faces: find the faces in every image and video of a manifest and embed each one.

    python -m jobs.embed_faces [MANIFEST_ROOT] [--model dlib-resnet-v1] [--fps 1] [--per-track] [--output out/results]

Sources are the committed manifest's image and video objects. A CPU stage decodes them (Pillow for images, with
EXIF orientation; PyAV for video frames sampled at --fps); face actors pinned to GPUs detect (MTCNN), align and
embed the faces of many frames together. When the actors have GPUs, JPEG photos are not decoded by the CPU stage:
it only reads their bytes, and the actors decode them in batches on the GPU (nvJPEG; --decode-on).

``faces/`` gets a row per face (per frame, or per track with --per-track), written by the workers: photos' faces as
they come; video faces are staged and tracked per video when the accounting settles their slice of the sources.
``face_sources/`` gets a row per source (frames, faces, status ok / no_face / truncated), ``errors/`` a row per
source that could not be decoded. Every source ends as exactly one face_sources row or one error row, checked by
workers (jobs/runtime/accounting.py): the driver holds paths and counts, never a row per source.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from jobs.runtime.accounting import (
    OUTCOME_FIELDS,
    OUTCOMES,
    Ledger,
    collect,
    ledger_of,
    plan_sources,
    settle,
    staged_rows,
    summed,
)
from jobs.runtime.cli import JobConfig
from jobs.runtime.cluster import FRAMES_PER_BLOCK, ActorOptions, actor_plan, ensure_ray, in_process, model_pipeline
from jobs.runtime.launch import JobContext, run_job, run_module
from jobs.runtime.options import ManifestInput, ModelsOnWorkers
from jobs.runtime.output import WRITE_ROWS, JobOutput, RowWriter, error_row, file_row
from jobs.runtime.progress import ItemClock
from jobs.runtime.reuse import Reuse, reusable_run, reuse_key
from ops.faces.mtcnn import DetectorConfig
from ops.faces.pipeline import DETECT_MAX_SIDE, FacePipeline
from ops.faces.tracks import assign_tracks, clearest_per_track
from ops.io.custody import open_verified, verified_bytes
from ops.io.errors import ItemTimeout, JobFailed, PreviewError, VideoDecodeError
from ops.io.schemas import FACE_SOURCES, FACE_THUMBNAILS, faces
from ops.io.storage import Store, resolve
from ops.io.tables import DataFile
from ops.matching.decisions import published_threshold
from ops.media.images import DEFAULT_MAX_PIXELS, Frame, decode_image, decode_jpegs, sample_video
from ops.media.preview import face_jpeg
from ops.media.sniff import sniff
from ops.models import catalogue

JOB = "embed_faces"
ROWS_VERSION = 3  # bump when a code change alters the rows this job makes: no earlier run's rows are reused then
# 2: detections as facenet-pytorch's, chips as dlib's (every box, landmark and embedding moved)
MIN_SHARD_BYTES = 1 << 20  # a shard of about this many bytes of photos is a second or so of decoding


@dataclass
class EmbedFacesConfig(ModelsOnWorkers, ManifestInput, ActorOptions, JobConfig):
    model: str = field(
        default="dlib-resnet-v1", metadata={"run_key": True, "help": "face recogniser: registry name or URI"}
    )
    detector: str = field(default="mtcnn", metadata={"run_key": True, "help": "face detector: registry name or URI"})
    min_face: float = field(default=20.0, metadata={"run_key": True, "help": "smallest face side searched, pixels"})
    min_score: float = field(default=0.7, metadata={"run_key": True, "help": "detector threshold (O-Net stage)"})
    fps: float = field(default=1.0, metadata={"run_key": True, "help": "video frames examined per second (0: all)"})
    max_frames: int = field(default=36000, metadata={"help": "frames examined per video at most (the rest reported)"})
    item_timeout: float = field(default=900.0, metadata={"help": "seconds of decoding per source at most (0: none)"})
    max_pixels: int = field(default=DEFAULT_MAX_PIXELS, metadata={"help": "refuse images declaring more pixels"})
    max_side: int = field(
        default=DETECT_MAX_SIDE,
        metadata={"help": "shrink larger images to this side before detection (boxes stay in source pixels)"},
    )
    thumbnails: bool = field(
        default=True,
        metadata={
            "run_key": True,
            "help": "a small JPEG of every face in face_thumbnails/, for reports (--no-thumbnails: no face pictures "
            "in the output)",
        },
    )
    per_track: bool = field(
        default=False, metadata={"run_key": True, "help": "video: one row per face track (its best face)"}
    )
    reuse: bool = field(
        default=True,
        metadata={
            "help": "copy the rows of sources an earlier run under --output embedded with the same content, models "
            "and settings instead of embedding them again (--no-reuse: embed every source)"
        },
    )
    decode_on: str = field(
        default="auto",
        metadata={
            "help": "where JPEG photos are decoded: cpu (Pillow in the decode tasks), device (in the face actors, "
            "nvJPEG on a GPU; other formats and files it refuses still by Pillow) or auto (device when the actors "
            "have GPUs)"
        },
    )
    batch_size: int = field(
        default=64,
        metadata={"help": "frames per face-actor batch; the actor cuts it into passes that fit its GPU's memory"},
    )


THUMB_SIZE = 96  # face thumbnails' longer side, pixels: what a report shows

_STAGED = pa.schema(
    [
        ("kind", pa.string()),  # frame, source or error
        ("uri", pa.string()),
        ("sha256", pa.string()),
        ("media_category", pa.string()),
        ("frame_index", pa.int32()),
        ("timestamp", pa.float64()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("scale", pa.float64()),
        ("pixels", pa.binary()),
        ("frames", pa.int32()),
        ("status", pa.string()),
        ("stage", pa.string()),
        ("error_type", pa.string()),
        ("message", pa.string()),
    ]
)
_FACE_FIELDS = [
    ("face_index", pa.int32()),
    ("thumbnail", pa.binary()),
    ("faces", pa.int32()),
    ("box", pa.list_(pa.float32())),
    ("landmarks", pa.list_(pa.float32())),
    ("score", pa.float32()),
    ("eye_distance", pa.float32()),
    ("sharpness", pa.float32()),
    ("embedding", pa.list_(pa.float32())),
]
# What the face actors hand on: the staged rows without pixels (frames carry their face count), plus face rows.
_EMBEDDED = pa.schema([f for f in _STAGED if f.name != "pixels"] + [pa.field(n, t) for n, t in _FACE_FIELDS])


def _frame_row(uri: str, sha: str, category: str, frame: Frame) -> dict:
    h, w = frame.rgb.shape[:2]
    return {
        "kind": "frame",
        "uri": uri,
        "sha256": sha,
        "media_category": category,
        "frame_index": frame.index,
        "timestamp": frame.timestamp,
        "height": h,
        "width": w,
        "scale": frame.scale,
        "pixels": frame.rgb.tobytes(),
    }


@dataclass(frozen=True)
class FrameDecoding:
    """How the decode stage turns a source into frames: video sampling (``fps``, at most ``max_frames``), the
    image limits, the time allowed per source, and whether JPEG photos go to the face actors undecoded. Frozen and
    small: it travels to every decode task."""

    fps: float
    max_frames: int
    max_pixels: int
    max_side: int
    item_timeout: float
    jpeg_on_device: bool

    @classmethod
    def of(cls, config: EmbedFacesConfig, jpeg_on_device: bool) -> FrameDecoding:
        """The job's decoding options; ``jpeg_on_device`` is settled with the actor plan (``--decode-on``)."""
        return cls(
            fps=config.fps,
            max_frames=config.max_frames,
            max_pixels=config.max_pixels,
            max_side=config.max_side,
            item_timeout=config.item_timeout,
            jpeg_on_device=jpeg_on_device,
        )


def decode_frames(batch: pa.Table, endpoint_url: str | None, decoding: FrameDecoding) -> Iterator[pa.Table]:
    """Each source of the batch as frame rows, then one source row; or one error row."""
    for uri, sha, category, size in zip(
        *(batch.column(c).to_pylist() for c in ("uri", "sha256", "media_category", "size")), strict=True
    ):
        rows: list[dict] = []
        try:
            source = {"kind": "source", "uri": uri, "sha256": sha, "media_category": category, "status": "ok"}
            if category == "image":
                data = verified_bytes(resolve(uri, endpoint_url), sha)
                if decoding.jpeg_on_device and (kind := sniff(data[:16])) is not None and kind.kind == "jpeg":
                    # Only the bytes travel: the face actor decodes them on its device and makes the source row.
                    yield pa.Table.from_pylist(
                        [{"kind": "jpeg", "uri": uri, "sha256": sha, "media_category": category, "pixels": data}],
                        schema=_STAGED,
                    )
                    continue
                frame = decode_image(data, decoding.max_pixels, decoding.max_side)
                rows.append(_frame_row(uri, sha, category, frame))
                h, w = frame.rgb.shape[:2]
                source |= {"frames": 1, "height": round(h * frame.scale), "width": round(w * frame.scale)}
            else:
                count, size, clock = 0, None, ItemClock(decoding.item_timeout)
                try:
                    with open_verified(resolve(uri, endpoint_url), sha, size) as f:
                        for frame in sample_video(
                            f, decoding.fps, decoding.max_frames, decoding.max_pixels, decoding.max_side
                        ):
                            rows.append(_frame_row(uri, sha, category, frame))
                            count += 1
                            clock.check(f"decoding {count} frames")
                            size = (round(frame.rgb.shape[0] * frame.scale), round(frame.rgb.shape[1] * frame.scale))
                            if len(rows) >= FRAMES_PER_BLOCK:
                                yield pa.Table.from_pylist(rows, schema=_STAGED)
                                rows = []
                except (VideoDecodeError, ItemTimeout) as exc:
                    if count == 0:
                        raise
                    source |= {"status": "truncated", "message": f"{exc.error_type}: {exc}"}
                if count == 0:
                    raise VideoDecodeError("the video stream holds no decodable frame")
                source |= {"frames": count, "height": size[0], "width": size[1]}
            rows.append(source)
        except Exception as exc:  # noqa: BLE001 - one source's failure is that source's error row
            rows = [error_row(exc, "decode", uri=uri, sha256=sha, media_category=category)]
        yield pa.Table.from_pylist(rows, schema=_STAGED)


class FaceActor:
    """Loads detector and recogniser once per actor; finds and embeds the faces of a batch of frames together."""

    def __init__(
        self,
        detector_folder: Store,
        model_folder: Store,
        min_face: float,
        min_score: float,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_side: int | None = None,
        thumbnails: bool = True,
    ) -> None:
        config = DetectorConfig(min_face=min_face, thresholds=(0.6, 0.7, min_score))
        self.thumbnails = thumbnails
        detector = catalogue.build(catalogue.load_folder(detector_folder, "face-detection"))
        recogniser = catalogue.build(catalogue.load_folder(model_folder, "face-embedding"))
        self.pipeline = FacePipeline(detector, recogniser, config)
        self.max_pixels, self.max_side = max_pixels, max_side

    def _thumbnail(self, image, box) -> bytes | None:
        """A small JPEG of the face, cut here from the frame already decoded, so that nobody decodes the source
        again to show it (None with --no-thumbnails, or for a box that left the frame)."""
        if not self.thumbnails:
            return None
        try:
            return face_jpeg(image, [float(v) for v in box], THUMB_SIZE)
        except PreviewError:
            return None

    def __call__(self, batch: pa.Table) -> pa.Table:
        kinds = batch.column("kind").to_pylist()
        pixels, heights, widths = batch.column("pixels"), batch.column("height"), batch.column("width")
        images: dict[int, np.ndarray | torch.Tensor] = {}
        scales: dict[int, float] = {}
        failed: dict[int, Exception] = {}
        jpegs = [i for i, k in enumerate(kinds) if k == "jpeg"]
        decoded = decode_jpegs([pixels[i].as_py() for i in jpegs], self.pipeline.device, self.max_pixels, self.max_side)
        for i, got in zip(jpegs, decoded, strict=True):
            if isinstance(got, Exception):
                failed[i] = got
            else:
                images[i], scales[i] = got
        for i, k in enumerate(kinds):
            if k == "frame":
                shape = (heights[i].as_py(), widths[i].as_py(), 3)
                images[i] = np.frombuffer(pixels[i].as_py(), np.uint8).reshape(shape)
        order = sorted(images)
        found = dict(zip(order, self.pipeline([images[i] for i in order]), strict=True))
        rows = []
        for i, row in enumerate(batch.drop_columns(["pixels"]).to_pylist()):
            origin = {k: row[k] for k in ("uri", "sha256", "media_category")}
            if i in failed:
                rows.append(error_row(failed[i], "decode", **origin))
                continue
            if i not in found:
                rows.append(row)
                continue
            source = None
            if kinds[i] == "jpeg":  # a photo decoded here: its frame row, and its source row after its faces
                h, w = images[i].shape[:2]
                row |= {"kind": "frame", "frame_index": 0, "height": h, "width": w, "scale": scales[i]}
                size = {"height": round(h * scales[i]), "width": round(w * scales[i])}
                source = origin | size | {"kind": "source", "status": "ok", "frames": 1}
            ff, scale = found[i], row["scale"]
            rows.append(row | {"faces": len(ff.scores)})
            for k in range(len(ff.scores)):
                rows.append(
                    row
                    | {
                        "kind": "face",
                        "face_index": k,
                        "box": (ff.boxes[k] * scale).tolist(),
                        "landmarks": (ff.landmarks[k] * scale).ravel().tolist(),
                        "score": float(ff.scores[k]),
                        "eye_distance": float(ff.eye_distance[k] * scale),
                        "sharpness": float(ff.sharpness[k]),
                        "embedding": ff.embeddings[k].tolist(),
                        "thumbnail": self._thumbnail(images[i], ff.boxes[k]),
                    }
                )
            if source is not None:
                rows.append(source)
        return pa.Table.from_pylist(rows, schema=_EMBEDDED)


OUTCOME_COLUMNS = ["media_category", "frames", "height", "width", "status"]  # a face source's outcome, beyond the core


def write_faces(
    batch: pa.Table, writer: RowWriter, thumbs: RowWriter | None, ledger: Ledger, provenance: dict, dim: int
) -> pa.Table:
    """The batch's rows written by this worker: photos' faces to ``faces/`` (and ``face_thumbnails/``), video
    faces staged in the ledger (a video is tracked once it is whole, when its slice is settled: ``finish``), each
    frame's face count and each source's outcome staged too. The driver gets the paths and row counts."""
    kinds = np.asarray(batch.column("kind").to_pylist())
    made: list[dict] = []
    faces_ = kinds == "face"
    photo = faces_ & (np.asarray(batch.column("media_category").to_pylist()) == "image")
    if photo.any():
        rows = batch.filter(pa.array(photo)).to_pylist()
        files = writer.write(_face_table(rows, provenance, dim))
        if thumbs is not None:
            files += thumbs.write(_thumbnail_table(rows, provenance))
        made += [{"kind": "file", "path": file_row(f), "rows": f.rows} for f in files]
    if (video := faces_ & ~photo).any():
        rows = batch.filter(pa.array(video)).to_pylist()
        staged = _face_table(rows, provenance, dim).append_column(
            "thumbnail", pa.array([r["thumbnail"] for r in rows], pa.binary())
        )
        made.append({"kind": VIDEO_FACES, "path": ledger.stage(VIDEO_FACES, staged), "rows": len(rows)})
    if (frames := kinds == "frame").any():
        counts = batch.filter(pa.array(frames)).select(["uri", "faces"])
        made.append({"kind": FRAMES, "path": ledger.stage(FRAMES, counts), "rows": counts.num_rows})
    if (ended := (kinds == "source") | (kinds == "error")).any():
        rows = batch.filter(pa.array(ended))
        rows = rows.select([n for n, _ in OUTCOME_FIELDS if n != "key"] + OUTCOME_COLUMNS)
        rows = rows.append_column("key", rows.column("uri"))
        made.append({"kind": OUTCOMES, "path": ledger.stage(OUTCOMES, rows), "rows": rows.num_rows})
    return staged_rows(made)


VIDEO_FACES, FRAMES = "video_faces", "frames"  # the ledger's kinds of this job, besides outcomes
# How alike two faces of successive samples must be to continue one track, for a recogniser whose card publishes no
# same-person threshold; with one, that threshold (dlib's 0.91: at 0.7 a cut to the audience continued the singer's
# track, since two strangers' dlib vectors agree at 0.8-0.9).
TRACK_AGREEMENT = 0.7


def finish(
    lo: int,
    hi: int,
    ledger: Ledger,
    paths: dict[str, list[str]],
    outcomes: pa.Table | None,
    per_track: bool,
    writers: dict[str, RowWriter | None],
    provenance: dict,
    same_face: float = TRACK_AGREEMENT,
) -> tuple[list[DataFile], dict]:
    """One slice of the sources, settled: its videos' faces tracked (and only each track's clearest kept with
    ``per_track``) and written, and a ``face_sources/`` row per source that did not fail."""
    if outcomes is None:
        return [], {}
    found = {uri: n for uri, (n,) in summed(ledger.read(paths.get(FRAMES, []), lo, hi), "uri", ["faces"]).items()}
    ended = outcomes.to_pylist()
    failed = {r["uri"] for r in ended if r["kind"] == "error"}
    written = Counter({r["uri"]: found.get(r["uri"], 0) for r in ended if r["media_category"] == "image"})
    files: list[DataFile] = []
    video = ledger.read(paths.get(VIDEO_FACES, []), lo, hi)
    if video is not None and video.num_rows:
        tracked = _tracked(video.drop_columns(["bucket"]), per_track, failed, same_face)
        files += writers["faces"].write(tracked.drop_columns(["thumbnail"]))
        if writers["face_thumbnails"] is not None:
            files += writers["face_thumbnails"].write(_thumbnail_table(tracked.to_pylist(), provenance))
        written.update(tracked.column("uri").to_pylist())
    sources = _sources_table([r for r in ended if r["kind"] == "source"], found, written, provenance)
    files += writers["face_sources"].write(sources)
    return files, source_counts(sources)


def source_counts(sources: pa.Table) -> dict:
    """The run's counts that ``face_sources/`` rows add up to (made here, or reused)."""
    statuses = Counter(sources.column("status").to_pylist())
    return {
        "ok": statuses["ok"],
        "no_face": statuses["no_face"],
        "truncated": statuses["truncated"],
        "frames": int(pc.sum(sources.column("frames")).as_py() or 0),
        "faces": int(pc.sum(sources.column("faces")).as_py() or 0),
        "face_rows": int(pc.sum(sources.column("face_rows")).as_py() or 0),
    }


def _tracked(video: pa.Table, per_track: bool, failed: set[str], same_face: float = TRACK_AGREEMENT) -> pa.Table:
    """Video face rows with their tracks, each video tracked alone; none for a video that ended as an error row
    after some of its frames had gone on (a change found when the stream ended: its faces came from bytes the
    manifest did not hash)."""
    video = video.filter(pc.invert(pc.is_in(video.column("uri"), pa.array(sorted(failed), pa.string()))))
    video = video.sort_by([("uri", "ascending"), ("frame_index", "ascending"), ("face_index", "ascending")])
    rows = video.to_pylist()
    out: list[dict] = []
    start = 0
    for end in range(1, len(rows) + 1):
        if end == len(rows) or rows[end]["uri"] != rows[start]["uri"]:
            group = rows[start:end]
            ids = assign_tracks(group, min_cos=same_face)
            lengths = Counter(ids)
            for row, track in zip(group, ids, strict=True):
                row["track_id"], row["track_frames"] = track, lengths[track]
            out += clearest_per_track(group) if per_track else group
            start = end
    return pa.Table.from_pylist(out, schema=video.schema)


def run(config: EmbedFacesConfig, ctx: JobContext) -> dict:
    manifest_root = resolve(config.manifest)
    detector_folder, detector_card = catalogue.verified(config.detector, config.models, "face-detection")
    model_folder, card = catalogue.verified(config.model, config.models, "face-embedding")
    if config.fps < 0 or config.max_frames < 1 or config.min_face < 12:
        raise JobFailed("--fps must be >= 0, --max-frames >= 1 and --min-face >= 12 (MTCNN's smallest window)")
    if config.decode_on not in ("auto", "cpu", "device"):
        raise JobFailed(f"--decode-on must be auto, cpu or device, not {config.decode_on!r}")
    dim = int(card["output_dim"])
    schema = faces(dim)
    job = JobOutput(
        ctx,
        config,
        {"faces": schema, "face_sources": FACE_SOURCES, "face_thumbnails": FACE_THUMBNAILS},
        errors="counted",
    )
    provenance = {
        "run_id": ctx.run_id,
        "detector_name": detector_card["name"],
        "detector_sha256": detector_card["checkpoint_sha256"],
        "model_name": card["name"],
        "model_sha256": card["checkpoint_sha256"],
    }
    writers = {
        table: job.row_writer(table)
        for table in ("faces", "face_sources", "face_thumbnails")
        if table != "face_thumbnails" or config.thumbnails
    }
    ensure_ray()
    plan = actor_plan(config)
    ledger = ledger_of(job.out)
    models = {detector_card["name"]: detector_card["checkpoint_sha256"], card["name"]: card["checkpoint_sha256"]}
    jpeg_on_device = config.decode_on == "device" or (config.decode_on == "auto" and plan.gpus_per_actor > 0)
    device = {"inference": "gpu" if plan.gpus_per_actor > 0 else "cpu", "jpeg_on_device": jpeg_on_device}
    key = reuse_key(config, models, ROWS_VERSION, device)
    previous = reusable_run(ctx.output, JOB, key, run_id=ctx.run_id) if config.reuse else None
    reuse = None
    if previous is not None:  # a truncated source (a timeout, a stream cut short) is decoded again, like an error
        reuse = Reuse(previous, writers, "face_sources", pc.field("status") != "truncated", source_counts)
    try:
        sources = plan_sources(
            manifest_root,
            config.manifest_run_id,
            ("image", "video"),
            ["uri", "sha256", "media_category", "size"],
            MIN_SHARD_BYTES,
            plan.parallelism,
            ledger,
            reuse,
        )
        ctx.log.info(
            "%d image and video sources of %d manifest rows; detector %s, recogniser %s (%s)",
            sources.count,
            sources.manifest_rows,
            detector_card["name"],
            card["name"],
            card["checkpoint_sha256"][:12],
        )
        if previous is not None:
            ctx.log.info(
                "%d sources reused from run %s (same content, models and settings)", sources.reused.reused, previous
            )
        if not sources.count:
            return job.commit({"sources": 0, "reuse_key": key})
        job.add_settled(sources.reused.files, Counter())
        fixed = _Fixed(provenance, detector_folder, model_folder, card, writers, key, previous)
        return _embed(config, ctx, job, plan, sources, ledger, fixed)
    finally:
        ledger.remove()


@dataclass
class _Fixed:
    """What a run settles before it starts: provenance, models, writers, the reuse key and the run reused."""

    provenance: dict
    detector_folder: Store
    model_folder: Store
    card: dict
    writers: dict[str, RowWriter]
    key: dict
    previous: str | None


def _embed(config, ctx, job, plan, sources, ledger, fixed: _Fixed) -> dict:
    """Run the pipeline (over the sources not reused), settle the accounting a slice of the sources at a time,
    commit."""
    provenance, card, writers = fixed.provenance, fixed.card, fixed.writers
    decoding = FrameDecoding.of(config, fixed.key["device"]["jpeg_on_device"])
    ctx.log.info("JPEG photos decoded %s", "by the face actors" if decoding.jpeg_on_device else "by Pillow")
    writers = {"face_thumbnails": None} | writers
    embedded = None
    if sources.blocks:  # none when every source was reused
        embedded = model_pipeline(
            sources.blocks,
            plan,
            FaceActor,
            {
                "detector_folder": fixed.detector_folder,
                "model_folder": fixed.model_folder,
                "min_face": config.min_face,
                "min_score": config.min_score,
                "max_pixels": config.max_pixels,
                "max_side": config.max_side,
                "thumbnails": config.thumbnails,
            },
            config.batch_size,
            decode=decode_frames,
            decode_kwargs={"endpoint_url": resolve(config.manifest).endpoint_url, "decoding": decoding},
            what="face",
            in_process=in_process(config, sources.count - sources.reused.reused),
        )
        embedded = embedded.map_batches(
            write_faces,
            fn_kwargs={
                "writer": writers["faces"],
                "thumbs": writers["face_thumbnails"],
                "ledger": ledger,
                "provenance": provenance,
                "dim": int(card["output_dim"]),
            },
            batch_size=WRITE_ROWS,
            batch_format="pyarrow",
        )
    staged = collect(embedded, sources)
    finish_kwargs = {"per_track": config.per_track, "writers": writers, "provenance": provenance}
    finish_kwargs["same_face"] = published_threshold(card["name"], config.models) or TRACK_AGREEMENT
    settled = settle(ledger, staged, finish, finish_kwargs, job.row_writer("errors"), JOB)
    job.add_settled(staged.files + settled.files, settled.errors_by_type)
    counts = settled.counts + Counter(sources.reused.counts)
    summary = {
        "sources": sources.count,
        # ok + no_face + truncated + errors == sources, reused ones included
        **{k: counts[k] for k in ("ok", "no_face", "truncated", "frames", "faces", "face_rows")},
        "reused": sources.reused.reused,
        "reused_from": fixed.previous,
        "detector": provenance["detector_name"],
        "model": card["name"],
        "model_sha256": card["checkpoint_sha256"],
        "reuse_key": fixed.key,
    }
    return job.commit(
        summary,
        f"{sources.count} sources: {summary['ok']} with faces, {summary['no_face']} without, "
        f"{summary['truncated']} truncated, {sum(job.errors_by_type.values())} errors "
        f"{dict(job.errors_by_type) or ''}; {summary['frames']} frames, {summary['faces']} faces, "
        f"{summary['face_rows']} rows",
    )


def _thumbnail_table(rows: list[dict], provenance: dict) -> pa.Table:
    """The thumbnails of face rows (a face whose box left the frame has none)."""
    table = [
        {
            "run_id": provenance["run_id"],
            "uri": r["uri"],
            "sha256": r["sha256"],
            "frame_index": r["frame_index"],
            "face_index": r["face_index"],
            "thumbnail": r["thumbnail"],
        }
        for r in rows
        if r.get("thumbnail")
    ]
    return pa.Table.from_pylist(table, schema=FACE_THUMBNAILS)


def _face_table(rows: list[dict], provenance: dict, dim: int) -> pa.Table:
    table = [
        {
            **provenance,
            "uri": r["uri"],
            "sha256": r["sha256"],
            "frame_index": r["frame_index"],
            "timestamp": r["timestamp"],
            "face_index": r["face_index"],
            "track_id": r.get("track_id"),
            "track_frames": r.get("track_frames"),
            "box": r["box"],
            "landmarks": r["landmarks"],
            "score": r["score"],
            "face_size": float(min(r["box"][2] - r["box"][0], r["box"][3] - r["box"][1])),
            "eye_distance": r["eye_distance"],
            "sharpness": r["sharpness"],
            "embedding": r["embedding"],
        }
        for r in rows
    ]
    return pa.Table.from_pylist(table, schema=faces(dim))


def _sources_table(ended: list[dict], found: dict[str, int], written: Counter, provenance: dict) -> pa.Table:
    rows = []
    for r in sorted(ended, key=lambda r: r["uri"]):
        uri = r["uri"]
        status = r["status"] if r["status"] != "ok" or found.get(uri) else "no_face"
        rows.append(
            {
                **provenance,
                "uri": uri,
                "sha256": r["sha256"],
                "media_category": r["media_category"],
                "width": r["width"],
                "height": r["height"],
                "frames": r["frames"],
                "faces": found.get(uri, 0),
                "face_rows": written[uri],
                "status": status,
                "message": r["message"],
            }
        )
    return pa.Table.from_pylist(rows, schema=FACE_SOURCES)


def main(argv: list[str] | None = None) -> int:
    return run_job(JOB, EmbedFacesConfig, run, argv, description=__doc__.split("\n")[0])


if __name__ == "__main__":
    sys.exit(run_module(__spec__.name))
