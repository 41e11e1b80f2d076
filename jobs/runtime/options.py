"""Option groups that several jobs' configs share, each defined once as a mixin dataclass: an option of a group has
one name, type, ``run_key`` mark and meaning in every job that takes it.

A job that words an option for its own use (``--models``: "models root, for --head") or needs another default (P and
K of a batch) redeclares that field with :func:`tailored`, which keeps the mixin's marks (``positional``,
``run_key``): the option parses, and counts in the run id, as it does everywhere else. A redeclared field keeps the
mixin's place among the config's fields; a mixin's fields come after JobConfig's and before the config's own (so in
--help too).

    @dataclass
    class PersonsConfig(ModelsRoot, JobConfig):
        models: str | None = tailored(ModelsRoot, "models", help="models root, for --joint-model")
        ...
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar


def tailored(mixin: type, name: str, *, default: Any = dataclasses.MISSING, help: str | None = None) -> Any:
    """The field ``name`` of ``mixin`` with this job's own ``default`` or ``help``; ``positional`` and ``run_key``
    stay the mixin's, so the option parses the same way and counts in the run id as it does in every other job."""
    shared = mixin.__dataclass_fields__[name]
    metadata = dict(shared.metadata) | ({"help": help} if help is not None else {})
    return field(default=shared.default if default is dataclasses.MISSING else default, metadata=metadata)


@dataclass
class ModelsRoot:
    """The models root that a job's model names (registry names; a URI is taken as it is) are looked up under."""

    models: str | None = field(
        default=None, metadata={"help": "models root (default $CROSSMATCH_MODELS or out/models)"}
    )


@dataclass
class ModelsOnWorkers(ModelsRoot):
    """A models root that the job's Ray workers load their models from, not only its driver: when unset it is the
    default root, which a cluster of many nodes must see too (``jobs.runtime.launch.check_locations``)."""

    MODELS_ON_WORKERS: ClassVar[bool] = True


@dataclass
class ManifestInput:
    """A job over the sources of a committed manifest (jobs.manifest): the root holding it, the command's argument,
    and which of its runs."""

    manifest: str = field(
        default="out/results",
        metadata={"positional": True, "run_key": True, "help": "output root holding the committed manifest"},
    )
    manifest_run_id: str | None = field(default=None, metadata={"help": "use only this manifest run"})


@dataclass
class EmbeddingsInput:
    """A job over a committed embeddings run (jobs.embed_faces, or jobs.embed_voices where the job takes voices):
    the root holding it, the command's argument, and which of its runs."""

    embeddings: str = field(
        default="out/results", metadata={"positional": True, "run_key": True, "help": "root with faces/"}
    )
    embeddings_run_id: str | None = field(default=None, metadata={"run_key": True, "help": "this run of faces/"})


@dataclass
class LabelledInput:
    """Who is who, for a job that learns or scores against identities: a CSV of uri,label, or else the labels a
    manifest run took from the archive's paths (jobs.manifest --label-pattern)."""

    labels: str | None = field(default=None, metadata={"run_key": True, "help": "CSV uri,label (default: manifest)"})
    manifest_run_id: str | None = field(
        default=None,
        metadata={"run_key": True, "help": "labels from this manifest run (default: the newest under the root)"},
    )


@dataclass
class PKBatches:
    """Training batches of P identities with K samples each, so that every anchor has positives and negatives in
    its batch to mine (Hermans, Beyer and Leibe 2017, "In Defense of the Triplet Loss for Person
    Re-Identification"), and how many of them make an epoch."""

    identities_per_batch: int = field(default=32, metadata={"run_key": True, "help": "P of P x K"})
    per_identity: int = field(default=4, metadata={"run_key": True, "help": "K of P x K"})
    steps: int | None = field(default=None, metadata={"help": "batches per epoch (default: one pass of the rows)"})
