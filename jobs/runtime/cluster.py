"""How a job's work sits on the Ray cluster: Ray started or joined, sources cut into shards balanced by size, and
the pool of model actors beside the decoding tasks."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace

import pyarrow as pa

from jobs.runtime.slices import balanced
from ops.io.errors import JobFailed
from ops.io.redact import redact
from ops.io.storage import ObjectInfo

log = logging.getLogger("crossmatch")


def ensure_ray() -> None:
    """Connect to RAY_ADDRESS when it is set (as under ``ray job submit``), else start a local cluster."""
    import ray

    if ray.is_initialized():
        return
    redact_worker_output()
    address = os.environ.get("RAY_ADDRESS")
    if address:
        log.info("connecting to the Ray cluster at %s", address)
        ray.init(address=address, logging_level=logging.WARNING)
    else:
        log.info("starting a local Ray cluster (set RAY_ADDRESS to use a running one)")
        ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING)
    import ray.data

    # Our own progress lines read better in `ray job logs` than Ray Data's redrawn bars and plan dumps.
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def redact_worker_output() -> None:
    """Redact what Ray prints on this driver's stdout and stderr for its workers: every line they write (a print,
    a traceback, a library's own log line, whatever the worker's logging) and the errors the cluster reports. Ray
    prints them itself, past Python logging, and offers no hook for it: its printing function is wrapped (Ray
    2.60), before ray.init, which hands it to the thread that forwards the workers' lines."""
    import ray._private.worker as ray_worker

    show = ray_worker.print_to_stdstream
    if getattr(show, "redacts", False):
        return

    def redacted(data: dict, ignore_prefix: bool) -> None:
        show({**data, "lines": [redact(line) for line in data["lines"]]}, ignore_prefix)

    redacted.redacts = True
    ray_worker.print_to_stdstream = redacted


TASK_CPUS = 0.5  # what a staging, listing, planning or slice task asks: it reads and writes files more than it computes
# What an actor beside a GPU asks (a model actor, a gallery shard): whole CPUs per actor would starve the decode tasks
# on small nodes.
GPU_ACTOR_CPUS = 0.5

# Several shards per core keep every core busy when sizes vary; shards of at most MAX_SHARD_BYTES keep progress
# and retries fine-grained on huge archives.
SHARDS_PER_CPU = 4
MAX_SHARD_BYTES = 4 << 30


def shard(objects: list[ObjectInfo], cpus: int, min_bytes: int) -> list[list[ObjectInfo]]:
    """Split objects into shards (one Ray task each) of similar total size, none smaller than ``min_bytes``
    unless there is less than that in all: largest object first, each to the lightest shard."""
    total = sum(o.size for o in objects)
    n = min(cpus * SHARDS_PER_CPU, total // max(min_bytes, 1))
    n = max(1, min(len(objects), max(n, -(-total // MAX_SHARD_BYTES))))
    return balanced(objects, n, lambda o: o.size, lambda o: o.relpath)


@dataclass
class ActorOptions:
    """The model stage's pool options a job over sources takes (mixed into its config)."""

    pool_size: int | None = field(
        default=None, metadata={"help": "model actors: a fixed pool of this size (default: an elastic pool)"}
    )
    max_actors: int | None = field(
        default=None, metadata={"help": "the elastic pool's ceiling (default: as many as the cluster grows to)"}
    )
    gpus_per_actor: float | None = field(
        default=None,
        metadata={
            "help": "GPUs per model actor (default: 1 when the cluster has GPUs); asked of the autoscaler "
            "when the cluster has none yet"
        },
    )
    in_process_below: int = field(
        default=0,
        metadata={
            "help": "fewer sources than this (at most 16) on a cluster without GPUs: the model runs in this process, "
            "no pool of actors started (what jobs.find does for a handful of probes)"
        },
    )


# Decoded video frames a decode stage hands the model actors at once: a long video never sits decoded in memory whole.
FRAMES_PER_BLOCK = 8

# The most sources a job runs in its driver's process (``in_process_below``): a handful, so the driver's memory stays
# that of one model and a few frames, whatever the archive.
IN_PROCESS_MOST = 16


def in_process(options: ActorOptions, sources: int) -> bool:
    """Whether a job with ``sources`` to run (none reused) runs its model in its own process (see ActorOptions)."""
    return 0 < sources < min(options.in_process_below, IN_PROCESS_MOST + 1)


@dataclass(frozen=True)
class ActorPlan:
    """How a job's model stage sits on the cluster. With GPUs: actors of ``gpus_per_actor`` GPUs beside CPU decode
    tasks (Ray keeps the stages apart, their resources differ); without: actors of one CPU, into which Ray fuses
    decoding, so that every core decodes and runs the model on its own sources with no hand-off between processes.

    The pool is elastic: it starts with what the cluster has now (at least one actor) and Ray Data grows it while
    sources wait, up to ``max_size`` (None: as far as the cluster grows). Its resource demand is what an
    autoscaling cluster sees: GPU actors asked of a cluster with no GPU node yet make the autoscaler start one."""

    cpus: int  # the cluster's CPUs now
    gpus_per_actor: float
    min_size: int
    max_size: int | None

    @property
    def parallelism(self) -> int:
        """How many workers the sources are cut into blocks for: the pool's ceiling when it has one, else room
        for a cluster that grows (blocks are cheap, and never smaller than a job's minimum shard)."""
        return max(self.cpus, self.max_size or GROWTH)

    def map_args(self, gpu_batch_size: int) -> dict:
        """``map_batches`` arguments for the model stage."""
        import ray

        return {
            "compute": ray.data.ActorPoolStrategy(min_size=self.min_size, max_size=self.max_size),
            "num_gpus": self.gpus_per_actor,
            "num_cpus": GPU_ACTOR_CPUS if self.gpus_per_actor else 1,
            # Fused with decoding (no GPUs), a batch size would bundle that many *sources* per task, leaving actors
            # idle on a few large tasks; there each decoded block goes to the model as it comes.
            "batch_size": gpu_batch_size if self.gpus_per_actor else None,
        }

    def describe(self) -> str:
        each = f"with {self.gpus_per_actor:g} GPU each" if self.gpus_per_actor else "on CPUs"
        if self.min_size == self.max_size:
            return f"{self.min_size} actor(s) {each}"
        ceiling = self.max_size if self.max_size is not None else "as many as the cluster grows to"
        return f"an elastic pool of {self.min_size} to {ceiling} actor(s) {each}"


# Blocks are cut for this many workers when the pool has no ceiling: a cluster may grow to it while the job runs.
GROWTH = 64


def actor_plan(options: ActorOptions) -> ActorPlan:
    """The plan for the connected cluster and these options."""
    import ray

    resources = ray.cluster_resources()
    cpus, gpus = int(resources.get("CPU", 0)), resources.get("GPU", 0)
    per_actor = options.gpus_per_actor if options.gpus_per_actor is not None else (1.0 if gpus else 0.0)
    if options.pool_size:
        return ActorPlan(max(cpus, 1), per_actor, options.pool_size, options.pool_size)
    now = int(gpus // per_actor) if per_actor else cpus
    ceiling = options.max_actors
    start = max(1, min(now, ceiling) if ceiling else now)
    if per_actor and gpus < per_actor:
        log.info("no GPU in the cluster yet: the model actors ask the autoscaler for %g GPU each", per_actor)
    return ActorPlan(max(cpus, 1), per_actor, start, ceiling)


def shard_plan(shards: int | None, gpus_per_shard: float | None, most: int) -> tuple[int, float]:
    """How many gallery shard actors, with how many GPUs each: one per GPU by default (else one on CPUs), at most
    ``most`` (one item or file each). Shards hold fixed slices of the gallery, so their number is settled at start;
    a demand the cluster cannot meet is refused rather than left waiting."""
    import ray

    gpus = int(ray.cluster_resources().get("GPU", 0))
    per_shard = gpus_per_shard if gpus_per_shard is not None else (1.0 if gpus else 0.0)
    count = max(1, min(shards or (int(gpus / per_shard) if per_shard else 1), most))
    if per_shard and count * per_shard > gpus:  # the actors would wait for GPUs forever
        raise JobFailed(
            f"{count} shards x {per_shard:g} GPU need {count * per_shard:g} GPUs, the cluster has {gpus}: "
            "pass fewer --shards, a fractional --gpus-per-shard, or --gpus-per-shard 0"
        )
    return count, per_shard


def model_pipeline(
    blocks: list,
    plan: ActorPlan,
    actor: type,
    actor_kwargs: dict,
    batch_size: int,
    decode: Callable | None = None,
    decode_kwargs: dict | None = None,
    what: str = "model",
    in_process: bool = False,
):
    """Planned blocks of sources (object refs, see jobs.runtime.accounting.plan_sources) as a Ray Data pipeline: an
    optional CPU decode stage called on one source at a time, then the pool of ``actor`` (models loaded once each, on
    GPUs when the plan has them). Returns the dataset; iterating it runs the job. ``in_process`` (a handful of
    sources, no GPUs planned): the same stages on the same rows in this process, with no pool to start
    (``InProcess``)."""
    import ray

    if in_process and not plan.gpus_per_actor:
        log.info("%s: in this process (a handful of sources: no pool of actors to start)", what)
        data = InProcess(ray.get(block) for block in blocks)
        if decode is not None:
            data = data.map_batches(decode, fn_kwargs=decode_kwargs or {}, batch_size=1)
        return data.map_batches(actor, fn_constructor_kwargs=actor_kwargs)
    # No more actors at the start than blocks to run: a handful of sources on a large cluster starts one or two
    # actors (each loads the models), not one per GPU or CPU; the pool still grows to its ceiling if it can use it.
    plan = replace(plan, min_size=max(1, min(plan.min_size, len(blocks))))
    data = ray.data.from_arrow_refs(blocks)
    if decode is not None:
        data = data.map_batches(decode, fn_kwargs=decode_kwargs or {}, batch_format="pyarrow", batch_size=1)
    data = data.map_batches(
        actor, fn_constructor_kwargs=actor_kwargs, **plan.map_args(batch_size), batch_format="pyarrow"
    )
    log.info("%d CPUs now; %s: %s", plan.cpus, what, plan.describe())
    return data


class InProcess:
    """The part of a Ray Data pipeline the jobs use (``map_batches``, ``iter_batches``), run lazily in this process,
    a batch after another: for a handful of sources, where starting a pool of actors (a process each, the models
    loaded in each) costs more than the work. The same functions and actor class see the same rows; a function that
    yields several tables (a decoder) is followed through."""

    def __init__(self, batches: Iterable[pa.Table]) -> None:
        self._batches = batches

    def map_batches(
        self,
        fn: Callable,
        fn_kwargs: dict | None = None,
        fn_constructor_kwargs: dict | None = None,
        batch_size: int | None = None,
        **_ray_options,
    ) -> InProcess:
        def mapped() -> Iterator[pa.Table]:
            call = fn(**(fn_constructor_kwargs or {})) if isinstance(fn, type) else fn  # an actor: its models once
            for batch in _rebatched(self._batches, batch_size):
                out = call(batch, **(fn_kwargs or {}))
                yield from [out] if isinstance(out, pa.Table) else out

        return InProcess(mapped())

    def iter_batches(self, **_options) -> Iterator[pa.Table]:
        return iter(self._batches)


def _rebatched(batches: Iterable[pa.Table], size: int | None) -> Iterator[pa.Table]:
    """The rows of ``batches`` in tables of ``size`` rows (the last may be shorter); as they come for None."""
    if size is None:
        yield from (b for b in batches if b.num_rows)
        return
    pending: list[pa.Table] = []
    count = 0
    for batch in batches:
        pending.append(batch)
        count += batch.num_rows
        while count >= size:
            table = pa.concat_tables(pending)
            yield table.slice(0, size)
            pending, count = [table.slice(size)], count - size
    if count:
        yield pa.concat_tables(pending)
