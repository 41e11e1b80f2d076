"""jobs.attributes: face attributes estimated for every face of the archive, in batch.

    python -m jobs.attributes ROOT --model NAME [--embeddings-run-id RUN] [--models out/models] [--output ROOT]

Two kinds of model, both read from ``faces/`` (the paths of its committed data files come from the Delta log):
- attribute heads (``jobs.train_attributes``) read the embeddings: a task per data file runs the head on its faces.
  A head is refused on embeddings of another backbone than it was trained on; a face whose embedding is NaN,
  infinite or zero is an ``errors/`` row.
- a network that reads face pictures (FairFace's ResNet-34: race, gender, age group) reads each face again from its
  source: CPU tasks read the source (checked against the sha256 the faces were found in), decode the frames that
  hold faces and cut the network's chips at the stored landmarks; a pool of model actors (on GPUs when the cluster
  has them) runs the network. A source that cannot be read again leaves an ``errors/`` row for each of its faces.

Either way ``attributes/`` gets one row per face and attribute: the item key, the source's uri and sha256, a
categorical attribute's most likely class and its probability, a numeric one's estimate, its uncertainty (one
standard deviation) and 90% interval, the model's name and sha256, what made its input (the recogniser of the
embeddings, or the detector of the landmarks) and the run id. Rows are written by the workers; the driver holds file
paths and counts.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from jobs.cli import JobConfig
from jobs.plan import ActorOptions, actor_plan, ensure_ray
from jobs.progress import Progress
from jobs.runtime import JobContext, run_job, run_module
from jobs.source_job import RowWriter, file_row, parse_file_row
from ops.attributes.fairface import FAIRFACE, GROUPS, SIZE, cut_chips
from ops.attributes.heads import ATTRIBUTE_HEAD, AttributeSpec, interval
from ops.io.custody import verified_bytes, verify
from ops.io.errors import EmbeddingError, InvalidEmbedding, JobFailed, VideoDecodeError, describe, error_type
from ops.io.schemas import ATTRIBUTES, schema_for
from ops.io.storage import Store, resolve
from ops.io.tables import OutputRun, committed_files, committed_rows, committed_runs, error_table, read_table
from ops.matching import items
from ops.matching.embeddings import item_table
from ops.media.images import DEFAULT_MAX_PIXELS, decode_image, sample_video
from ops.models import catalogue

JOB = "attributes"
COLUMNS = ["uri", "sha256", "frame_index", "face_index", "embedding", "model_name", "model_sha256"]
PICTURE_COLUMNS = ["uri", "sha256", "frame_index", "face_index", "timestamp", "landmarks"]
PICTURE_COLUMNS += ["detector_name", "detector_sha256"]
# Frames are decoded at most this large, as jobs.embed_faces decodes them by default: landmarks are stored in
# source pixels, so any size cuts the same chip; this one bounds a worker's memory.
MAX_SIDE = 4096
CHIPS_PER_BLOCK = 64  # chips a decode task hands on at once (150 KB each): bounded memory for long videos
CHIP_BATCH = 256  # chips per model-actor batch


@dataclass
class AttributesConfig(ActorOptions, JobConfig):
    MODELS_ON_WORKERS: ClassVar[bool] = True  # its Ray workers load models from --models
    embeddings: str = field(
        default="out/results", metadata={"positional": True, "run_key": True, "help": "root with faces/"}
    )
    model: str | None = field(
        default=None, metadata={"run_key": True, "help": "attribute heads or a picture network: name or URI"}
    )
    embeddings_run_id: str | None = field(default=None, metadata={"run_key": True, "help": "this run of faces/"})
    models: str | None = field(
        default=None, metadata={"help": "models root (default $CROSSMATCH_MODELS or out/models)"}
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
    first = read_table(root, "faces", config.embeddings_run_id, columns=["model_name", "model_sha256"], limit=1)
    if first.num_rows == 0:
        raise EmbeddingError(f"no committed faces/ rows under {root.uri}: run `python -m jobs.embed_faces` first")
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
    out = OutputRun(ctx.output, ctx.run_id, JOB)
    out.check_writable()
    applier = Applier(folder, model.name, model.sha256, backbone, ctx.run_id)
    rows = RowWriter(ctx.output, "attributes", ATTRIBUTES, out.run_id, out.attempt)
    errors = RowWriter(ctx.output, "errors", schema_for("errors"), out.run_id, out.attempt)
    paths, pairs = committed_files(root, "faces", config.embeddings_run_id)
    ensure_ray()
    if architecture == ATTRIBUTE_HEAD:
        attributes = [a["name"] for a in model.card["attributes"]]
        faces, bad = _apply_heads(paths, root, pairs, applier, rows, errors, out)
    else:
        attributes = list(GROUPS)
        total = sum(
            r["tables"].get("faces", {}).get("rows", 0)
            for r in committed_runs(root)
            if config.embeddings_run_id in (None, r["run_id"])
        )
        faces, bad = _apply_pictures(config, paths, root, pairs, applier, rows, errors, out, total)
    summary = {"model": model.name, "model_sha256": model.sha256, "faces": faces, "errors": bad}
    marker = out.commit(
        tables=("attributes", "errors"), config=asdict(config), summary=summary | {"attributes": attributes}
    )
    ctx.log.info(
        "%s: %d faces, %d attributes each (%s); %d errors",
        model.name,
        faces,
        len(attributes),
        ", ".join(attributes),
        bad,
    )
    return marker


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
        out.add_files("attributes", found["files"], ATTRIBUTES)
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


# -- a network over face pictures: decode tasks cut chips, model actors run it ---------------------------------------

# What the decode tasks hand the model actors: a row per face, its chip, or the error that left it without one.
_CHIPS = pa.schema(
    [
        ("item", pa.string()),
        ("uri", pa.string()),
        ("sha256", pa.string()),
        ("backbone_name", pa.string()),  # the detector whose landmarks cut the chip
        ("backbone_sha256", pa.string()),
        ("chip", pa.binary()),  # (3, SIZE, SIZE) uint8; null when the face could not be read again
        ("error_type", pa.string()),
        ("message", pa.string()),
    ]
)
PICTURE_SPECS = [AttributeSpec(name, "categorical", "fairface", list(classes)) for name, classes in GROUPS.items()]


def _apply_pictures(config, paths, root, pairs, applier, rows, errors, out, total: int) -> tuple[int, int]:
    import ray

    plan = actor_plan(config)
    data = ray.data.from_items([{"path": p} for p in paths], override_num_blocks=max(1, len(paths)))
    data = data.map_batches(cut_file, fn_kwargs={"root": root, "pairs": pairs}, batch_format="pyarrow", batch_size=1)
    data = data.map_batches(
        PictureActor,
        fn_constructor_kwargs={"applier": applier, "rows": rows, "errors": errors},
        **plan.map_args(CHIP_BATCH),
        batch_format="pyarrow",
    )
    progress = Progress("faces", total)
    faces = bad = 0
    for batch in data.iter_batches(batch_format="pyarrow", batch_size=None):
        for table, made, n_faces, n_errors in zip(
            *(batch.column(c).to_pylist() for c in ("table", "file", "faces", "errors")), strict=True
        ):
            if made is not None:
                out.add_files(table, [parse_file_row(made)], ATTRIBUTES if table == "attributes" else None)
            faces, bad = faces + n_faces, bad + n_errors
            if n_faces or n_errors:
                progress.update(n_faces + n_errors)
    return faces, bad


def cut_file(batch: pa.Table, root: Store, pairs: set) -> Iterator[pa.Table]:
    """The committed data files of faces/ named in ``batch``: every face cut again from its source as a chip, a
    block of chips at a time; a face whose source cannot be read again gets the reason instead."""
    for path in batch.column("path").to_pylist():
        data = committed_rows(path, root, pairs, PICTURE_COLUMNS)
        data = data.sort_by([("uri", "ascending"), ("frame_index", "ascending"), ("face_index", "ascending")])
        keys = items.keys(data, "faces")
        rows = [r | {"item": k} for r, k in zip(data.to_pylist(), keys, strict=True)]
        start = 0
        while start < len(rows):
            end = start
            while end < len(rows) and rows[end]["uri"] == rows[start]["uri"]:
                end += 1
            block: list[dict] = []
            for made in _source_chips(rows[start:end], root.endpoint_url):
                block.append(made)
                if len(block) >= CHIPS_PER_BLOCK:
                    yield pa.Table.from_pylist(block, schema=_CHIPS)
                    block = []
            if block:
                yield pa.Table.from_pylist(block, schema=_CHIPS)
            start = end


def _source_chips(faces: list[dict], endpoint_url: str | None) -> Iterator[dict]:
    """One source's faces (rows of faces/, in frame order), each as a row with its chip or, for those the source
    no longer gives (changed, gone, unreadable), with the error."""
    first = faces[0]
    store = resolve(first["uri"], endpoint_url)
    done = 0
    try:
        if first["timestamp"] is None:  # a still image
            frame = decode_image(verified_bytes(store, first["sha256"]), DEFAULT_MAX_PIXELS, MAX_SIDE)
            for row in _frame_chips(frame, faces):
                done += 1
                yield row
            return
        verify(store, first["sha256"])  # before anything is cut from it; a video need not fit in memory
        wanted = sorted({f["frame_index"] for f in faces})
        with store.open() as f:
            frames = sample_video(f, 0, len(wanted), DEFAULT_MAX_PIXELS, MAX_SIDE, only=set(wanted))
            for frame in frames:
                on_frame = [r for r in faces[done:] if r["frame_index"] == frame.index]
                for row in _frame_chips(frame, on_frame):
                    done += 1
                    yield row
        if done < len(faces):
            raise VideoDecodeError(f"the video ended before frame {faces[done]['frame_index']}")
    except Exception as exc:  # noqa: BLE001 - a source's failure is an error row for each face it leaves
        for row in faces[done:]:
            yield _chip_row(row) | {"error_type": error_type(exc), "message": f"{row['item']}: {describe(exc)}"}


def _frame_chips(frame, faces: list[dict]) -> Iterator[dict]:
    """The chips of ``faces`` (rows of faces/) on one decoded frame; landmarks are in source pixels."""
    image = torch.from_numpy(np.require(frame.rgb, requirements="W")).permute(2, 0, 1)[None]
    marks = torch.tensor([r["landmarks"] for r in faces], dtype=torch.float32).view(-1, 5, 2) / frame.scale
    chips = cut_chips(image, torch.zeros(len(faces), dtype=torch.long), marks).numpy()
    for row, chip in zip(faces, chips, strict=True):
        yield _chip_row(row) | {"chip": chip.tobytes()}


def _chip_row(face: dict) -> dict:
    return {
        "item": face["item"],
        "uri": face["uri"],
        "sha256": face["sha256"],
        "backbone_name": face["detector_name"],
        "backbone_sha256": face["detector_sha256"],
    }


class PictureActor:
    """The picture network, loaded once per actor (on its GPU when it has one): a batch of chips in, their
    attribute rows and the faces' error rows written, the files' descriptions out."""

    def __init__(self, applier: Applier, rows: RowWriter, errors: RowWriter) -> None:
        self.applier, self.rows, self.errors = applier, rows, errors
        self.net = _model(applier.folder, applier.sha256)
        self.device = next(self.net.parameters()).device

    def __call__(self, batch: pa.Table) -> pa.Table:
        has = batch.column("chip").is_valid()
        good, failed = batch.filter(has), batch.filter(pc.invert(has))
        made = []
        if good.num_rows:
            pixels = np.frombuffer(b"".join(good.column("chip").to_pylist()), np.uint8)
            chips = torch.from_numpy(pixels.reshape(-1, 3, SIZE, SIZE).copy()).to(self.device).float()
            predicted = self.net.predict(chips)
            for f in self.rows.write(_rows(good, PICTURE_SPECS, predicted, self.applier)):
                made.append({"table": "attributes", "file": file_row(f), "faces": 0, "errors": 0})
            made.append({"table": "attributes", "file": None, "faces": good.num_rows, "errors": 0})
        if failed.num_rows:
            bad = failed.select(["uri", "sha256", "error_type", "message"]).to_pylist()
            for f in self.errors.write(error_table(bad, self.applier.run_id, JOB, "attributes")):
                made.append({"table": "errors", "file": file_row(f), "faces": 0, "errors": 0})
            made.append({"table": "errors", "file": None, "faces": 0, "errors": failed.num_rows})
        return pa.Table.from_pylist(
            made,
            schema=pa.schema(
                [("table", pa.string()), ("file", pa.string()), ("faces", pa.int64()), ("errors", pa.int64())]
            ),
        )


def main(argv: list[str] | None = None) -> int:
    return run_job(JOB, AttributesConfig, run, argv, description=__doc__.split("\n")[0])


if __name__ == "__main__":
    sys.exit(run_module(__spec__.name))
