"""jobs.attributes: trained attribute heads applied to every face of the archive, in batch.

    python -m jobs.attributes ROOT --model NAME [--embeddings-run-id RUN] [--models out/models] [--output ROOT]

A task per committed data file of ``faces/`` (the paths come from the Delta log) reads its faces, runs the head
(``jobs.train_attributes``) on them and writes ``attributes/`` rows: one per face and attribute, with the item key,
the source's uri and sha256, a categorical attribute's most likely class and its probability, a numeric one's
estimate, its uncertainty (one standard deviation) and 90% interval, the head's name and sha256, the backbone that
made the embedding, and the run id. The head is refused on embeddings of another backbone than it was trained on; a
face whose embedding is NaN, infinite or zero is an ``errors/`` row. The driver holds file paths and counts.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import torch

from jobs.cli import JobConfig
from jobs.plan import ensure_ray
from jobs.progress import Progress
from jobs.runtime import JobContext, run_job, run_module
from jobs.source_job import RowWriter
from ops.attributes.heads import ATTRIBUTE_HEAD, interval
from ops.io.errors import EmbeddingError, InvalidEmbedding, JobFailed
from ops.io.schemas import ATTRIBUTES, schema_for
from ops.io.storage import Store, resolve
from ops.io.tables import OutputRun, committed_files, committed_rows, error_table, read_table
from ops.matching.embeddings import item_table
from ops.models import catalogue

JOB = "attributes"
COLUMNS = ["uri", "sha256", "frame_index", "face_index", "embedding", "model_name", "model_sha256"]


@dataclass
class AttributesConfig(JobConfig):
    embeddings: str = field(
        default="out/results", metadata={"positional": True, "run_key": True, "help": "root with faces/"}
    )
    model: str | None = field(default=None, metadata={"run_key": True, "help": "attribute heads: name or URI"})
    embeddings_run_id: str | None = field(default=None, metadata={"run_key": True, "help": "this run of faces/"})
    models: str | None = field(
        default=None, metadata={"help": "models root (default $CROSSMATCH_MODELS or out/models)"}
    )


@dataclass(frozen=True)
class Applier:
    """What every task needs: the head's folder (loaded once per task), its identity and the run's."""

    folder: Store
    name: str
    sha256: str
    backbone: tuple[str, str]
    run_id: str


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
        head = _head(applier.folder, applier.sha256)
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


_HEADS: dict[tuple[str, str], torch.nn.Module] = {}


def _head(folder: Store, sha256: str):
    """The head, built once per worker process (keyed by its sha256 too: a head stored again under the same name
    is another head)."""
    if (folder.uri, sha256) not in _HEADS:
        _HEADS[folder.uri, sha256] = catalogue.build(catalogue.load_folder(folder, "face-attributes"), "cpu")
    return _HEADS[folder.uri, sha256]


def _rows(found: pa.Table, specs, predicted: dict, applier: Applier) -> pa.Table:
    n = found.num_rows
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
        column |= {
            "run_id": pa.array([applier.run_id] * n),
            "model_name": pa.array([applier.name] * n),
            "model_sha256": pa.array([applier.sha256] * n),
            "backbone_name": pa.array([applier.backbone[0]] * n),
            "backbone_sha256": pa.array([applier.backbone[1]] * n),
        }
        parts.append(pa.table({f.name: column.get(f.name, pa.nulls(n, f.type)) for f in ATTRIBUTES}, ATTRIBUTES))
    return pa.concat_tables(parts)


def run(config: AttributesConfig, ctx: JobContext) -> dict:
    if not config.model:
        raise JobFailed("--model is needed: attribute heads trained by `python -m jobs.train_attributes`")
    folder = catalogue.locate(config.model, config.models)
    head = catalogue.load(config.model, config.models, expect="face-attributes")
    if head.card.get("architecture") != ATTRIBUTE_HEAD:
        raise JobFailed(
            f"{head.name} ({head.card.get('architecture')}) reads face pictures, not embeddings: jobs.attributes "
            "applies heads trained on faces/ embeddings by jobs.train_attributes"
        )
    backbone = (head.card["input"]["model_name"], head.card["input"]["model_sha256"])
    root = resolve(config.embeddings)
    first = read_table(root, "faces", config.embeddings_run_id, columns=["model_name", "model_sha256"], limit=1)
    if first.num_rows == 0:
        raise EmbeddingError(f"no committed faces/ rows under {root.uri}: run `python -m jobs.embed_faces` first")
    have = (first.column("model_name")[0].as_py(), first.column("model_sha256")[0].as_py())
    if have != backbone:
        raise JobFailed(
            f"{head.name} was trained on {backbone[0]} ({backbone[1][:12]}) embeddings; faces/ under {root.uri} holds "
            f"{have[0]} ({have[1][:12]}): embed with that model, or train heads on these embeddings"
        )
    out = OutputRun(ctx.output, ctx.run_id, JOB)
    out.check_writable()
    applier = Applier(folder, head.name, head.sha256, backbone, ctx.run_id)
    rows = RowWriter(ctx.output, "attributes", ATTRIBUTES, out.run_id, out.attempt)
    errors = RowWriter(ctx.output, "errors", schema_for("errors"), out.run_id, out.attempt)
    paths, pairs = committed_files(root, "faces", config.embeddings_run_id)
    ensure_ray()
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
    attributes = [a["name"] for a in head.card["attributes"]]
    summary = {"model": head.name, "model_sha256": head.sha256, "faces": faces, "errors": bad, "attributes": attributes}
    marker = out.commit(tables=("attributes", "errors"), config=asdict(config), summary=summary)
    ctx.log.info(
        "%s: %d faces, %d attributes each (%s); %d errors",
        head.name,
        faces,
        len(attributes),
        ", ".join(attributes),
        bad,
    )
    return marker


def main(argv: list[str] | None = None) -> int:
    return run_job(JOB, AttributesConfig, run, argv, description=__doc__.split("\n")[0])


if __name__ == "__main__":
    sys.exit(run_module(__spec__.name))
