"""jobs.synthesize: committed face and voice embedding tables of synthetic identities whose faces and voices share
latent traits (see ops/testing/synthetic.py): data to train and test the face encoder and the joint voice-face model on.

    python -m jobs.synthesize OUTPUT [--identities 400] [--recordings 4] [--seed 1] [--first-identity 0]

Writes, under one run, ``manifest/`` (one labelled row per recording), ``faces/`` and ``voices/`` as the embed jobs
would for videos with one face track and one stretch of speech each. Different seeds are different people: use one
seed for training identities and another for unseen ones (and --first-identity so their labels do not collide).
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field

import pyarrow as pa

from jobs.cli import JobConfig
from jobs.runtime import JobContext, run_job, run_module
from ops.io.errors import JobFailed
from ops.io.schemas import MANIFEST, faces, voices
from ops.io.tables import OutputRun
from ops.testing import synthetic

JOB = "synthesize"


@dataclass
class SynthesizeConfig(JobConfig):
    identities: int = field(default=400, metadata={"run_key": True, "help": "people"})
    recordings: int = field(default=4, metadata={"run_key": True, "help": "recordings (videos) per person"})
    seed: int = field(default=1, metadata={"run_key": True, "help": "who the people are"})
    world_seed: int = field(default=0, metadata={"run_key": True, "help": "how traits map to embeddings"})
    first_identity: int = field(default=0, metadata={"run_key": True, "help": "number of the first label"})


def run(config: SynthesizeConfig, ctx: JobContext) -> dict:
    if config.identities < 2 or config.recordings < 1:
        raise JobFailed("--identities must be at least 2 and --recordings at least 1")
    world = synthetic.World(seed=config.world_seed)
    rec = synthetic.population(world, config.identities, config.recordings, config.seed)
    prefix = ctx.output.join("synthetic", ctx.run_id).uri
    made = synthetic.rows(world, rec, prefix, ctx.run_id, config.first_identity)
    out = OutputRun(ctx.output, ctx.run_id, JOB)
    out.check_writable()
    out.write("manifest", pa.Table.from_pylist(made["manifest"], schema=MANIFEST))
    out.write("faces", pa.Table.from_pylist(made["faces"], schema=faces(world.face_dim)), faces(world.face_dim))
    out.write("voices", pa.Table.from_pylist(made["voices"], schema=voices(world.voice_dim)), voices(world.voice_dim))
    summary = {"identities": config.identities, "recordings": len(rec.identity), "world": synthetic.fingerprint(world)}
    marker = out.commit(tables=("errors",), config=asdict(config), summary=summary)
    ctx.log.info("%d identities, %d recordings: committed run %s", config.identities, len(rec.identity), ctx.run_id)
    return marker


def main(argv: list[str] | None = None) -> int:
    return run_job(JOB, SynthesizeConfig, run, argv, description=__doc__.split("\n")[0])


if __name__ == "__main__":
    sys.exit(run_module(__spec__.name))
