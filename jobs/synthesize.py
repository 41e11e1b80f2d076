"""jobs.synthesize: committed face and voice embedding tables of synthetic identities whose faces and voices share
latent traits (see ops/testing/synthetic.py): data to train and test the face encoder and the joint voice-face model on.

    python -m jobs.synthesize OUTPUT [--identities 400] [--recordings 4] [--seed 1] [--first-identity 0] [--attributes]

Writes, under one run, ``manifest/`` (one labelled row per recording), ``faces/`` and ``voices/`` as the embed jobs
would for videos with one face track and one stretch of speech each. Different seeds are different people: use one
seed for training identities and another for unseen ones (and --first-identity so their labels do not collide).
With --attributes each person also has an age and each recording an expression that shape its face; their ground
truth, by uri, is written as Parquet under ``synthetic/<run_id>/attributes/`` (a labels table for
``jobs.train_attributes``).
Ray tasks make and write the rows, a chunk of identities each (the first chunk is the seed's own stream, so a small
population is the same however large the chunks); the driver holds file lists.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from jobs.runtime.cli import JobConfig
from jobs.runtime.cluster import ensure_ray
from jobs.runtime.launch import JobContext, run_job, run_module
from jobs.runtime.output import JobOutput, RowWriter
from jobs.runtime.progress import Progress
from jobs.runtime.slices import blocks
from ops.io.errors import JobFailed
from ops.io.root import inside
from ops.io.schemas import MANIFEST, faces, voices
from ops.io.storage import resolve, storage_errors
from ops.io.tables import DataFile
from ops.testing import synthetic

JOB = "synthesize"
CHUNK = 25_000  # identities per task: 100,000 recordings' rows at 4 each, tens of MB in a worker


@dataclass
class SynthesizeConfig(JobConfig):
    identities: int = field(default=400, metadata={"run_key": True, "help": "people"})
    recordings: int = field(default=4, metadata={"run_key": True, "help": "recordings (videos) per person"})
    seed: int = field(default=1, metadata={"run_key": True, "help": "who the people are"})
    world_seed: int = field(default=0, metadata={"run_key": True, "help": "how traits map to embeddings"})
    first_identity: int = field(default=0, metadata={"run_key": True, "help": "number of the first label"})
    attributes: bool = field(
        default=False, metadata={"run_key": True, "help": "ages and expressions that shape the faces, and their labels"}
    )


def make_chunk(
    config: SynthesizeConfig, start: int, stop: int, prefix: str, writers: dict[str, RowWriter]
) -> list[DataFile]:
    """Identities ``start:stop``: their recordings' rows made and written by this worker."""
    world = synthetic.World(seed=config.world_seed, attributes=config.attributes)
    rng = np.random.default_rng(config.seed if start == 0 else [config.seed, start])
    rec = synthetic.record(world, synthetic.identities(world, stop - start, rng), config.recordings, rng)
    made = synthetic.rows(world, rec, prefix, writers["manifest"].run_id, config.first_identity + start)
    if config.attributes:  # the ground truth, as a lab's labels table would hold it
        truth = synthetic.attribute_rows(rec, [r["uri"] for r in made["manifest"]])
        target = resolve(prefix).join("attributes", f"{start:09d}.parquet")
        with storage_errors(target.uri), target.open("wb") as f:
            pq.write_table(pa.Table.from_pylist(truth), f)
    schemas = {"manifest": MANIFEST, "faces": faces(world.face_dim), "voices": voices(world.voice_dim)}
    files = []
    for table, rows in made.items():
        files += writers[table].write(pa.Table.from_pylist(rows, schema=schemas[table]))
    return files


def run(config: SynthesizeConfig, ctx: JobContext) -> dict:
    if config.identities < 2 or config.recordings < 1:
        raise JobFailed("--identities must be at least 2 and --recordings at least 1")
    world = synthetic.World(seed=config.world_seed, attributes=config.attributes)
    schemas = {"manifest": MANIFEST, "faces": faces(world.face_dim), "voices": voices(world.voice_dim)}
    out = JobOutput(ctx, config, schemas, errors="table")  # errors/ listed, and empty: made rows never fail
    writers = {table: out.row_writer(table) for table in schemas}
    prefix = ctx.output.join("synthetic", ctx.run_id).uri
    ensure_ray()
    import ray

    task = ray.remote(make_chunk)
    pending = {task.remote(config, a, b, prefix, writers): b - a for a, b in blocks(config.identities, CHUNK)}
    progress = Progress("identities", config.identities)
    while pending:
        (done,), _ = ray.wait(list(pending), num_returns=1)
        for file in ray.get(done):
            out.add_files(file.table, [file])
        progress.update(pending.pop(done))
    recordings = config.identities * config.recordings
    summary = {"identities": config.identities, "recordings": recordings, "world": synthetic.fingerprint(world)}
    if config.attributes:
        summary["attribute_labels"] = inside(ctx.output, ctx.output.join("synthetic", ctx.run_id, "attributes").uri)
    return out.commit(summary, f"{config.identities} identities, {recordings} recordings")


def main(argv: list[str] | None = None) -> int:
    return run_job(JOB, SynthesizeConfig, run, argv, description=__doc__.split("\n")[0])


if __name__ == "__main__":
    sys.exit(run_module(__spec__.name))
