"""jobs.attributes: face attributes estimated for every face of the archive, in batch.

    python -m jobs.attributes ROOT --model NAME [--embeddings-run-id RUN] [--models out/models] [--output ROOT]

Two kinds of model, both read from one committed run of ``faces/`` (``--embeddings-run-id``, by default the newest;
the paths of its data files come from the Delta log):
- attribute heads (``jobs.train_attributes``) read the embeddings: a task per data file runs the head on its faces.
  A head is refused on embeddings of another backbone than it was trained on; a face whose embedding is NaN,
  infinite or zero is an ``errors/`` row.
- a network that reads face pictures (FairFace's ResNet-34: race, gender, age group) reads each face again from its
  source: CPU tasks, each a part of a data file, read the sources (checked against the sha256 the faces were found
  in) and decode the frames that hold faces, as the faces run decoded them (its --max-pixels and --max-side); a pool
  of model actors (on GPUs when the cluster has them) cuts the network's chips at the stored
  landmarks and runs it; a write stage writes the rows, many batches to a file. A source that cannot be read again
  leaves an ``errors/`` row for each of its faces.

Either way ``attributes/`` gets one row per face and attribute: the item key, the source's uri and sha256, a
categorical attribute's most likely class and its probability, a numeric one's estimate, its uncertainty (one
standard deviation) and 90% interval, the model's name and sha256, what made its input (the recogniser of the
embeddings, or the detector of the landmarks) and the run id. Rows are written by the workers; the driver holds file
paths and counts, and before the commit checks that every face of the run is accounted for (its rows, or an error
row naming it).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from jobs.runtime.cli import JobConfig
from jobs.runtime.cluster import FRAMES_PER_BLOCK, ActorOptions, actor_plan, ensure_ray
from jobs.runtime.launch import JobContext, run_job, run_module
from jobs.runtime.options import EmbeddingsInput, ModelsOnWorkers
from jobs.runtime.output import WRITE_ROWS, JobOutput, RowWriter, file_row, parse_file_row
from jobs.runtime.progress import Progress
from jobs.runtime.slices import even_parts
from ops.attributes.fairface import FAIRFACE, GROUPS, cut_frames
from ops.attributes.heads import ATTRIBUTE_HEAD, AttributeSpec, interval
from ops.faces.pipeline import DETECT_MAX_SIDE
from ops.io.custody import verified_bytes, verified_copy
from ops.io.errors import EmbeddingError, InvalidEmbedding, JobFailed, VideoDecodeError, describe, error_type
from ops.io.schemas import ATTRIBUTES
from ops.io.storage import Store, resolve
from ops.io.tables import (
    committed_file_rows,
    committed_files,
    committed_rows,
    committed_runs,
    error_table,
    read_table,
)
from ops.matching import items
from ops.matching.embeddings import item_table
from ops.media.images import DEFAULT_MAX_PIXELS, decode_image, sample_video
from ops.models import catalogue

JOB = "attributes"
COLUMNS = ["uri", "sha256", "frame_index", "face_index", "embedding", "model_name", "model_sha256"]
PICTURE_COLUMNS = ["uri", "sha256", "frame_index", "face_index", "timestamp", "landmarks"]
PICTURE_COLUMNS += ["detector_name", "detector_sha256"]


@dataclass
class AttributesConfig(EmbeddingsInput, ModelsOnWorkers, ActorOptions, JobConfig):
    model: str | None = field(
        default=None, metadata={"run_key": True, "help": "attribute heads or a picture network: name or URI"}
    )


@dataclass(frozen=True)
class Applier:
    """What every worker needs: the model's folder (loaded once per worker), its identity and the run's."""

    folder: Store
    name: str
    sha256: str
    backbone: tuple[str, str] | None  # heads: the recogniser they read; a picture network: per face, its detector
    run_id: str


def run(config: AttributesConfig, ctx: JobContext) -> dict:
    if not config.model:
        raise JobFailed(
            "--model is needed: attribute heads trained by `python -m jobs.train_attributes`, or FairFace imported "
            "by `python -m jobs.models import ... --architecture fairface-resnet34`"
        )
    folder = catalogue.locate(config.model, config.models)
    model = catalogue.load(config.model, config.models, expect="face-attributes")
    architecture = model.card.get("architecture")
    if architecture not in (ATTRIBUTE_HEAD, FAIRFACE.name):
        raise JobFailed(f"{model.name} ({architecture}): jobs.attributes runs {ATTRIBUTE_HEAD} or {FAIRFACE.name}")
    root = resolve(config.embeddings)
    faces_run = _faces_run(root, config.embeddings_run_id, ctx)
    first = read_table(root, "faces", faces_run["run_id"], columns=["model_name", "model_sha256"], limit=1)
    backbone = None
    if architecture == ATTRIBUTE_HEAD:
        backbone = (model.card["input"]["model_name"], model.card["input"]["model_sha256"])
        have = (first.column("model_name")[0].as_py(), first.column("model_sha256")[0].as_py())
        if have != backbone:
            raise JobFailed(
                f"{model.name} was trained on {backbone[0]} ({backbone[1][:12]}) embeddings; faces/ under "
                f"{root.uri} holds {have[0]} ({have[1][:12]}): embed with that model, or train heads on these "
                "embeddings"
            )
    out = JobOutput(ctx, config, {"attributes": ATTRIBUTES}, errors="table")  # the summary counts its errors
    applier = Applier(folder, model.name, model.sha256, backbone, ctx.run_id)
    rows, errors = out.row_writer("attributes"), out.row_writer("errors")
    ensure_ray()
    if architecture == ATTRIBUTE_HEAD:
        attributes = [a["name"] for a in model.card["attributes"]]
        paths, pairs = committed_files(root, "faces", faces_run["run_id"])
        faces, bad = _apply_heads(paths, root, pairs, applier, rows, errors, out)
    else:
        attributes = list(GROUPS)
        faces, bad = _apply_pictures(config, root, faces_run, applier, rows, errors, out)
    expected = faces_run["tables"]["faces"]["rows"]
    if faces + bad != expected:  # a face lost or made twice on the way is a bug: nothing is committed then
        raise JobFailed(
            f"{faces} faces with attributes and {bad} errors account for {faces + bad} of the {expected} faces of run "
            f"{faces_run['run_id']}: nothing committed"
        )
    summary = {"model": model.name, "model_sha256": model.sha256, "faces": faces, "errors": bad}
    each = f"{len(attributes)} attributes each ({', '.join(attributes)})"
    headline = f"{model.name}: {faces} faces, {each}; {bad} errors"
    return out.commit(summary | {"attributes": attributes}, headline)


def _faces_run(root: Store, run_id: str | None, ctx: JobContext) -> dict:
    """The committed run of faces/ to read: the one named, else the newest (an embedding run that reuses earlier
    rows copies them into itself, so the newest is whole; reading every run would give a face twice)."""
    runs = [r for r in committed_runs(root) if "faces" in r["tables"] and run_id in (None, r["run_id"])]
    if not runs:
        which = f"no committed run {run_id} of" if run_id else "no committed"
        raise EmbeddingError(f"{which} faces/ under {root.uri}: run `python -m jobs.embed_faces` first")
    run = runs[-1]
    if not run["tables"]["faces"].get("rows"):
        raise EmbeddingError(f"faces/ run {run['run_id']} under {root.uri} found no face: nothing to estimate")
    newest = "" if run_id else f", the newest of {len(runs)} (--embeddings-run-id chooses another)"
    ctx.log.info("faces of run %s: %d faces%s", run["run_id"], run["tables"]["faces"]["rows"], newest)
    return run


# -- heads over embeddings: a task per faces/ file ------------------------------------------------------------------


def _apply_heads(paths, root, pairs, applier: Applier, rows: RowWriter, errors: RowWriter, out) -> tuple[int, int]:
    import ray

    task = ray.remote(num_cpus=1)(apply_file)
    pending = {task.remote(p, root, pairs, applier, rows, errors): p for p in paths}
    progress = Progress("face files", len(paths))
    faces = bad = 0
    while pending:
        (ready,), _ = ray.wait(list(pending), num_returns=1)
        found = ray.get(ready)
        if found["failed"]:
            raise JobFailed(found["failed"])
        out.add_files("attributes", found["files"])
        out.add_files("errors", found["error_files"])
        faces, bad = faces + found["faces"], bad + found["errors"]
        progress.update(1)
        del pending[ready]
    return faces, bad


def apply_file(path: str, root: Store, pairs: set, applier: Applier, rows: RowWriter, errors: RowWriter) -> dict:
    """One committed data file of faces/: its faces' attributes written by this worker."""
    data = committed_rows(path, root, pairs, COLUMNS)
    found, invalid, models = item_table(data, "faces", per_source=False)
    other = models - {applier.backbone}
    if other:
        name, sha = sorted(other)[0]
        return {"failed": f"{path} holds {name} ({sha[:12]}) embeddings: {applier.name} reads {applier.backbone[0]}"}
    files = []
    if found.num_rows:
        head = _model(applier.folder, applier.sha256, "cpu")
        vectors = np.asarray(found.column("vector").combine_chunks().flatten().to_numpy(), np.float32)
        predicted = head.predict(torch.tensor(vectors.reshape(found.num_rows, -1)))  # a copy: arrow memory is read-only
        files = rows.write(_rows(found, head.specs, predicted, applier))
    bad = [
        {
            "uri": r["uri"],
            "sha256": r["sha256"],
            "error_type": InvalidEmbedding.error_type,
            "message": f"{r['item']}: {r['reason']}",
        }
        for r in invalid
    ]
    error_files = errors.write(error_table(bad, applier.run_id, JOB, "attributes")) if bad else []
    return {"failed": None, "files": files, "error_files": error_files, "faces": found.num_rows, "errors": len(bad)}


_MODELS: dict[tuple[str, str], torch.nn.Module] = {}


def _model(folder: Store, sha256: str, device: str | None = None):
    """The model, built once per worker process (keyed by its sha256 too: a model stored again under the same name
    is another model)."""
    if (folder.uri, sha256) not in _MODELS:
        _MODELS[folder.uri, sha256] = catalogue.build(catalogue.load_folder(folder, "face-attributes"), device)
    return _MODELS[folder.uri, sha256]


def _rows(found: pa.Table, specs: list[AttributeSpec], predicted: dict, applier: Applier) -> pa.Table:
    """Attribute rows of the faces in ``found`` (item, uri, sha256, and backbone_name/sha256 where each face's
    input came from its own model), one per face and attribute."""
    n = found.num_rows
    if applier.backbone is not None:
        made_by = {"backbone_name": [applier.backbone[0]] * n, "backbone_sha256": [applier.backbone[1]] * n}
    else:
        made_by = {name: found.column(name) for name in ("backbone_name", "backbone_sha256")}
    parts = []
    for spec in specs:
        p = predicted[spec.name]
        column = {
            "item": found.column("item"),
            "uri": found.column("uri"),
            "sha256": found.column("sha256"),
            "attribute": pa.array([spec.name] * n),
        }
        if spec.kind == "categorical":
            best = p["probabilities"].argmax(1)
            column |= {
                "class": pa.array([spec.classes[i] for i in best]),
                "probability": pa.array(p["probabilities"][np.arange(n), best], pa.float64()),
            }
        else:
            low, high = interval(p["value"], p["std"])
            has = ~np.isnan(p["std"])
            column |= {
                "value": pa.array(p["value"], pa.float64()),
                "uncertainty": pa.array(np.where(has, p["std"], np.nan), pa.float64(), mask=~has),
                "interval_low": pa.array(low, pa.float64(), mask=~has),
                "interval_high": pa.array(high, pa.float64(), mask=~has),
            }
        column |= made_by | {
            "run_id": pa.array([applier.run_id] * n),
            "model_name": pa.array([applier.name] * n),
            "model_sha256": pa.array([applier.sha256] * n),
        }
        parts.append(pa.table({f.name: column.get(f.name, pa.nulls(n, f.type)) for f in ATTRIBUTES}, ATTRIBUTES))
    return pa.concat_tables(parts)


# -- a network over face pictures: decode tasks read the frames, model actors cut the chips and run it -------------

# What the decode tasks hand the model actors: a decoded frame and the faces to cut from it, or the faces a source
# no longer gives (no pixels) and why.
_FRAMES = pa.schema(
    [
        ("uri", pa.string()),
        ("sha256", pa.string()),
        ("pixels", pa.binary()),  # (height, width, 3) uint8; null when the faces' source failed
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("scale", pa.float64()),  # source pixels per pixel of the frame (landmarks are in source pixels)
        ("items", pa.list_(pa.string())),
        ("landmarks", pa.list_(pa.list_(pa.float32()))),  # per face: x, y of its five points
        ("backbone_name", pa.list_(pa.string())),  # per face: the detector whose landmarks cut it
        ("backbone_sha256", pa.list_(pa.string())),
        ("error_type", pa.string()),
        ("message", pa.string()),
    ]
)
# What the actors hand the write stage: attribute rows, and a face's error as a row with error_type set.
_MADE_ROWS = pa.schema(
    [f.with_nullable(True) for f in ATTRIBUTES]
    + [pa.field("error_type", pa.string()), pa.field("message", pa.string())]
)
_MADE = pa.schema([("table", pa.string()), ("file", pa.string()), ("faces", pa.int64()), ("errors", pa.int64())])
PICTURE_SPECS = [AttributeSpec(name, "categorical", "ce", list(classes)) for name, classes in GROUPS.items()]
FACES_PER_PART = 1000  # faces a decode task reads again: a large data file of faces/ is cut into parts of this many
FRAME_BATCH = 16  # frames per model-actor batch on a GPU (4K frames: 48 MB each)
CUT_FRAMES = 8  # frames of one size cut in one call: its float copy of them bounds the memory it takes
CHIP_BATCH = 256  # chips per forward pass


@dataclass(frozen=True)
class Limits:
    """How the faces run decoded its sources (its own settings, so that every source it read decodes again). Not its
    --item-timeout: the frames wanted are ones it decoded, none past the last, and a time limit here (that would
    count waiting for the actors) would turn faces it found into errors."""

    max_pixels: int
    max_side: int | None

    @classmethod
    def of(cls, run: dict) -> Limits:
        config = run.get("config") or {}
        return cls(int(config.get("max_pixels") or DEFAULT_MAX_PIXELS), config.get("max_side", DETECT_MAX_SIDE))


def _apply_pictures(config, root, faces_run, applier, rows, errors, out) -> tuple[int, int]:
    import ray

    files, pairs = committed_file_rows(root, "faces", faces_run["run_id"])
    parts = [
        {"path": path, "part": k, "parts": n}
        for path, count in files
        for n in [max(1, -(-count // FACES_PER_PART))]
        for k in range(n)
    ]
    plan = actor_plan(config)
    data = ray.data.from_items(parts, override_num_blocks=max(1, len(parts)))
    limits = Limits.of(faces_run)
    data = data.map_batches(
        read_frames, fn_kwargs={"root": root, "pairs": pairs, "limits": limits}, batch_format="pyarrow", batch_size=1
    )
    data = data.map_batches(
        PictureActor, fn_constructor_kwargs={"applier": applier}, **plan.map_args(FRAME_BATCH), batch_format="pyarrow"
    )
    data = data.map_batches(
        write_rows,
        fn_kwargs={"rows": rows, "errors": errors, "run_id": applier.run_id},
        batch_size=WRITE_ROWS,
        batch_format="pyarrow",
    )
    progress = Progress("faces", faces_run["tables"]["faces"]["rows"])
    faces = bad = 0
    for batch in data.iter_batches(batch_format="pyarrow", batch_size=None):
        for table, made, n_faces, n_errors in zip(
            *(batch.column(c).to_pylist() for c in ("table", "file", "faces", "errors")), strict=True
        ):
            if made is not None:
                out.add_files(table, [parse_file_row(made)])
            faces, bad = faces + n_faces, bad + n_errors
            if n_faces or n_errors:
                progress.update(n_faces + n_errors)
    return faces, bad


def read_frames(batch: pa.Table, root: Store, pairs: set, limits: Limits) -> Iterator[pa.Table]:
    """Parts of committed data files of faces/ (the sources of a file, in order, cut into ``parts``): each source
    read again (checked against the sha256 its faces were found in) and the frames that hold faces decoded, a block
    of frames at a time; the faces of a source that cannot be read again come with the reason instead."""
    for path, part, parts in zip(*(batch.column(c).to_pylist() for c in ("path", "part", "parts")), strict=True):
        data = committed_rows(path, root, pairs, PICTURE_COLUMNS)
        order = [
            ("uri", "ascending"),
            ("sha256", "ascending"),
            ("frame_index", "ascending"),
            ("face_index", "ascending"),
        ]
        data = data.sort_by(order)
        # One source is one content (a uri embedded twice, changed in between, is two); this part's sources are a
        # slice of the file's, in order, cut out before any row becomes a Python object.
        key = pc.binary_join_element_wise(data.column("uri"), data.column("sha256"), "\x00")
        starts = [0] + (np.flatnonzero(pc.not_equal(key[1:], key[:-1]).to_numpy()) + 1).tolist()
        bounds = starts + [data.num_rows]
        first, last = even_parts(len(starts), parts)[part]
        mine = data.slice(bounds[first], bounds[last] - bounds[first])
        rows = [r | {"item": k} for r, k in zip(mine.to_pylist(), items.keys(mine, "faces"), strict=True)]
        sources: dict[tuple[str, str], list[dict]] = {}
        for row in rows:
            sources.setdefault((row["uri"], row["sha256"]), []).append(row)
        for faces in sources.values():
            block: list[dict] = []
            for made in _source_frames(faces, root.endpoint_url, limits):
                block.append(made)
                if len(block) >= FRAMES_PER_BLOCK:
                    yield pa.Table.from_pylist(block, schema=_FRAMES)
                    block = []
            if block:
                yield pa.Table.from_pylist(block, schema=_FRAMES)


def _source_frames(faces: list[dict], endpoint_url: str | None, limits: Limits) -> Iterator[dict]:
    """One source's faces (rows of faces/, in frame order) as a row per frame that holds them, decoded; the faces
    it no longer gives (changed, gone, unreadable) as one row with the error."""
    first = faces[0]
    by_frame: dict[int, list[dict]] = {}
    for face in faces:
        by_frame.setdefault(face["frame_index"], []).append(face)
    left = dict(by_frame)
    try:
        store = resolve(first["uri"], endpoint_url)
        if first["timestamp"] is None:  # a still image
            data = verified_bytes(store, first["sha256"])
            yield _frame_row(decode_image(data, limits.max_pixels, limits.max_side), faces)
            return
        # Checked whole before any frame goes on (rows made from a part of changed bytes could not be taken back),
        # from a local copy made in the same read: a video need not fit in memory.
        with verified_copy(store, first["sha256"]) as f:
            wanted = set(by_frame)
            for frame in sample_video(f, 0, len(wanted), limits.max_pixels, limits.max_side, only=wanted):
                row = _frame_row(frame, left[frame.index])
                del left[frame.index]  # its faces go on with the frame
                yield row
        if left:
            raise VideoDecodeError(f"the video ended before frame {min(left)}")
    except Exception as exc:  # noqa: BLE001 - a source's failure is an error row for each face it leaves
        rest = faces if first["timestamp"] is None else [r for frame in sorted(left) for r in left[frame]]
        yield _face_lists(first, rest) | {"error_type": error_type(exc), "message": describe(exc)}


def _frame_row(frame, faces: list[dict]) -> dict:
    h, w = frame.rgb.shape[:2]
    pixels = {"pixels": frame.rgb.tobytes(), "height": h, "width": w, "scale": frame.scale}
    return _face_lists(faces[0], faces) | pixels


def _face_lists(first: dict, faces: list[dict]) -> dict:
    return {
        "uri": first["uri"],
        "sha256": first["sha256"],
        "items": [f["item"] for f in faces],
        "landmarks": [f["landmarks"] for f in faces],
        "backbone_name": [f["detector_name"] for f in faces],
        "backbone_sha256": [f["detector_sha256"] for f in faces],
    }


class PictureActor:
    """The picture network, loaded once per actor (on its GPU when it has one): a batch of decoded frames in, their
    faces' chips cut here (frames of one size together) and the network run; out, each face's attribute rows, or
    its error."""

    def __init__(self, applier: Applier) -> None:
        self.applier = applier
        self.net = _model(applier.folder, applier.sha256)
        self.device = next(self.net.parameters()).device

    def __call__(self, batch: pa.Table) -> pa.Table:
        frames = batch.to_pylist()
        parts = []
        good = [f for f in frames if f["pixels"] is not None]
        if good:
            chips, faces = self._cut(good)
            runs = [self.net.predict(chips[i : i + CHIP_BATCH].float()) for i in range(0, len(chips), CHIP_BATCH)]
            predicted = {g: {"probabilities": np.concatenate([r[g]["probabilities"] for r in runs])} for g in GROUPS}
            found = _rows(faces, PICTURE_SPECS, predicted, self.applier)
            none = pa.nulls(found.num_rows, pa.string())
            parts.append(found.append_column("error_type", none).append_column("message", none).cast(_MADE_ROWS))
        bad = [
            {
                "uri": f["uri"],
                "sha256": f["sha256"],
                "item": item,
                "error_type": f["error_type"],
                "message": f["message"],
            }
            for f in frames
            if f["pixels"] is None
            for item in f["items"]
        ]
        if bad:
            parts.append(pa.Table.from_pylist(bad, schema=_MADE_ROWS))
        return pa.concat_tables(parts) if parts else _MADE_ROWS.empty_table()

    def _cut(self, frames: list[dict]) -> tuple[torch.Tensor, pa.Table]:
        """The chips of every face of ``frames`` on this actor's device, and the faces in the same order."""
        tensors, marks = [], []
        for f in frames:
            pixels = np.frombuffer(f["pixels"], np.uint8).reshape(f["height"], f["width"], 3)
            tensors.append(torch.from_numpy(pixels.copy()).to(self.device).permute(2, 0, 1))
            marks.append(torch.tensor(np.asarray(f["landmarks"], np.float32) / f["scale"], device=self.device))
        faces = {
            "item": [i for f in frames for i in f["items"]],
            "uri": [f["uri"] for f in frames for _ in f["items"]],
            "sha256": [f["sha256"] for f in frames for _ in f["items"]],
            "backbone_name": [n for f in frames for n in f["backbone_name"]],
            "backbone_sha256": [n for f in frames for n in f["backbone_sha256"]],
        }
        return cut_frames(tensors, marks, CUT_FRAMES), pa.table(faces)


def write_rows(batch: pa.Table, rows: RowWriter, errors: RowWriter, run_id: str) -> pa.Table:
    """The actors' rows written by this worker, many actor batches to a file: attribute rows to ``attributes/``,
    each face's error to ``errors/`` (naming the face). The driver gets the files and the counts."""
    failed = pc.is_valid(batch.column("error_type"))
    made = []
    results = batch.filter(pc.invert(failed)).select(ATTRIBUTES.names).cast(ATTRIBUTES)
    if results.num_rows:
        made += [{"table": "attributes", "file": file_row(f), "faces": 0, "errors": 0} for f in rows.write(results)]
        faces = pc.sum(pc.equal(results.column("attribute"), PICTURE_SPECS[0].name)).as_py()
        made.append({"table": "attributes", "file": None, "faces": faces, "errors": 0})
    bad = [r | {"message": f"{r['item']}: {r['message']}"} for r in batch.filter(failed).to_pylist()]
    if bad:
        made += [
            {"table": "errors", "file": file_row(f), "faces": 0, "errors": 0}
            for f in errors.write(error_table(bad, run_id, JOB, "attributes"))
        ]
        made.append({"table": "errors", "file": None, "faces": 0, "errors": len(bad)})
    return pa.Table.from_pylist(made, schema=_MADE)


def main(argv: list[str] | None = None) -> int:
    return run_job(JOB, AttributesConfig, run, argv, description=__doc__.split("\n")[0])


if __name__ == "__main__":
    sys.exit(run_module(__spec__.name))
