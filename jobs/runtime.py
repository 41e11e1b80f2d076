"""What every job shares: a CLI from its config dataclass, a run id, logging, progress, Ray, and exit codes.

A job module defines a config dataclass (subclass of :class:`JobConfig`) and a ``run(config, ctx)`` function, and
its ``main(argv)`` is ``run_job(...)``. Exit codes: 0 done, 2 a failure the user can fix (the message says how),
1 a bug (with a traceback).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import heapq
import json
import logging
import os
import sys
import time
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.compute as pc

from ops.embeddings import EmbeddingError
from ops.registry import ModelError, load_folder, locate, models_root
from ops.search import SearchError
from ops.storage import ObjectInfo, StorageError, Store, redact, resolve
from ops.tables import CommitError, check_run_id, read_table

log = logging.getLogger("crossmatch")


class JobFailed(Exception):
    """A job failure whose message names the problem and the fix."""


@dataclass
class JobConfig:
    """Options every job takes. A field with ``metadata={"run_key": True}`` defines the default run id."""

    output: str = field(
        default="out/results",
        metadata={"help": "output root: a folder, file:// URI or s3://bucket/prefix (tables are committed there)"},
    )
    run_id: str | None = field(
        default=None,
        metadata={
            "help": "run id; by default derived from the job and its inputs, so that rerunning the same command "
            "replaces its earlier output instead of adding to it"
        },
    )
    log_level: str = field(default="INFO", metadata={"help": "DEBUG, INFO, WARNING or ERROR"})


C = TypeVar("C", bound=JobConfig)


@dataclass
class JobContext:
    """What a running job gets besides its config."""

    job: str
    run_id: str
    output: Store
    log: logging.Logger


def parse_config(cls: type[C], argv: list[str] | None, prog: str, description: str) -> C:
    """Build ``cls`` from command-line arguments generated from its fields (``positional`` metadata, ``help``)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = _base_type(hints[f.name])
        help_ = f.metadata.get("help", "")
        default = None if f.default is dataclasses.MISSING else f.default
        if f.metadata.get("positional"):
            parser.add_argument(f.name, type=kind, help=help_)
        elif kind is bool:
            parser.add_argument(
                f"--{f.name.replace('_', '-')}", action=argparse.BooleanOptionalAction, default=default, help=help_
            )
        else:
            shown = f" (default: {default})" if default not in (None, "") else ""
            parser.add_argument(
                f"--{f.name.replace('_', '-')}", dest=f.name, type=kind, default=default, help=help_ + shown
            )
    return cls(**vars(parser.parse_args(argv)))


def default_run_id(job: str, config: JobConfig) -> str:
    """``<job>-<hash of the fields marked run_key>``: the same inputs give the same run id, so reruns replace."""
    key = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.metadata.get("run_key")}
    digest = hashlib.sha256(json.dumps([job, key], sort_keys=True, default=str).encode()).hexdigest()
    return f"{job}-{digest[:12]}"


def run_job(
    job: str, cls: type[C], run: Callable[[C, JobContext], Any], argv: list[str] | None, description: str
) -> int:
    """Parse, set up logging, run, and turn failures into an exit code with a clear message."""
    config = parse_config(cls, argv, prog=f"python -m jobs.{job}", description=description)
    setup_logging(config.log_level)
    try:
        run_id = config.run_id or default_run_id(job, config)
        try:
            check_run_id(run_id)
        except ValueError as exc:
            raise JobFailed(str(exc)) from None
        output = resolve(config.output)
        log.info("job %s, run %s, output %s", job, run_id, output.uri)
        started = time.monotonic()
        run(config, JobContext(job, run_id, output, log))
        log.info("job %s finished in %.1f s", job, time.monotonic() - started)
        return 0
    except (JobFailed, StorageError, CommitError, EmbeddingError, SearchError) as exc:  # fixable by the user
        log.error("job %s failed: %s", job, exc)
        return 2
    except KeyboardInterrupt:
        log.error("job %s interrupted: nothing of this attempt was committed", job)
        return 130
    except Exception:  # noqa: BLE001 - a bug: say so, with the traceback, and exit non-zero
        log.exception("job %s failed with an unexpected error (a bug: please report it with this log)", job)
        return 1


def ensure_ray() -> None:
    """Connect to RAY_ADDRESS when it is set (as under ``ray job submit``), else start a local cluster."""
    import ray

    if ray.is_initialized():
        return
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


class ItemTimeout(Exception):
    """One input took longer than the per-item limit (--item-timeout)."""

    error_type = "ItemTimeout"


class ItemClock:
    """The per-item time limit, checked between units of one input's work (frames, audio chunks): a source that
    is slow but keeps going (hours of video, a huge declared duration) ends at the limit with what it produced,
    reported, instead of holding a worker. A single decoder call is not interrupted; FFmpeg and Pillow bound their
    own work per call, and the sizes they accept are bounded by --max-pixels and --max-frames."""

    def __init__(self, limit: float | None) -> None:
        self.limit, self.started = limit, time.monotonic()

    def check(self, what: str) -> None:
        if self.limit and time.monotonic() - self.started > self.limit:
            raise ItemTimeout(f"{what} took more than {self.limit:g} s (--item-timeout)")


class Progress:
    """Logs ``done/total`` with a rate at most every ``every`` seconds, and once at the end."""

    def __init__(self, what: str, total: int, total_bytes: int = 0, every: float = 5.0) -> None:
        self.what, self.total, self.total_bytes, self.every = what, total, total_bytes, every
        self.done = self.bytes = 0
        self.started = self._last = time.monotonic()

    def update(self, n: int, nbytes: int = 0) -> None:
        self.done += n
        self.bytes += nbytes
        now = time.monotonic()
        if now - self._last >= self.every or self.done >= self.total:
            self._last = now
            self.report()

    def report(self) -> None:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        pct = 100.0 * self.done / self.total if self.total else 100.0
        extra = ""
        if self.total_bytes:
            mib, total_mib = self.bytes / 2**20, self.total_bytes / 2**20
            extra = f", {mib:.1f}/{total_mib:.1f} MiB, {mib / elapsed:.1f} MiB/s"
        log.info("%s: %d/%d (%.0f%%)%s, %.1f s", self.what, self.done, self.total, pct, extra, elapsed)


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
    heap = [(0, i) for i in range(n)]
    shards: list[list[ObjectInfo]] = [[] for _ in range(n)]
    for obj in sorted(objects, key=lambda o: (-o.size, o.relpath)):
        load, i = heapq.heappop(heap)
        shards[i].append(obj)
        heapq.heappush(heap, (load + max(obj.size, 1), i))
    return [s for s in shards if s]


def _base_type(hint: Any) -> type:
    """``str | None`` -> str: the type argparse converts to."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0]
    return hint


class RedactingFormatter(logging.Formatter):
    """Formats as usual, then removes credentials (tracebacks included): see ops.storage.redact."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def setup_logging(level: str = "INFO") -> None:
    """Log the crossmatch logger's lines to stderr (once), leaving the root logger to whoever owns the process."""
    log.setLevel(getattr(logging, level.upper(), logging.INFO))
    if not any(getattr(h, "_crossmatch", False) for h in log.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler._crossmatch = True
        log.addHandler(handler)


def verified_model(ref: str, models: str | None) -> tuple[Store, dict]:
    """A model's folder and card, its checkpoint verified here, once, before any work is scheduled."""
    folder = locate(ref, models_root(models))
    try:
        return folder, load_folder(folder).card
    except ModelError as exc:
        raise JobFailed(str(exc)) from None


@dataclass(frozen=True)
class ActorPlan:
    """How a job's model stage sits on the cluster: one actor per GPU beside CPU decode tasks (Ray keeps the stages
    apart, their resources differ); without GPUs one actor per core, and Ray fuses decoding into the actors, so that
    every core decodes and runs the model on its own sources with no hand-off between processes."""

    cpus: int
    gpus_per_actor: float
    pool: int

    def map_args(self, gpu_batch_size: int) -> dict:
        """``map_batches`` arguments for the model stage."""
        import ray

        return {
            "compute": ray.data.ActorPoolStrategy(size=self.pool),
            "num_gpus": self.gpus_per_actor,
            # Beside a GPU, a fraction of a CPU: whole ones per actor would starve the decode tasks on small nodes.
            "num_cpus": 0.5 if self.gpus_per_actor else 1,
            # Fused with decoding (no GPUs), a batch size would bundle that many *sources* per task, leaving actors
            # idle on a few large tasks; there each decoded block goes to the model as it comes.
            "batch_size": gpu_batch_size if self.gpus_per_actor else None,
        }


def actor_plan(pool_size: int | None, gpus_per_actor: float | None) -> ActorPlan:
    """The plan for the connected cluster; ``pool_size`` and ``gpus_per_actor`` override the defaults."""
    import ray

    resources = ray.cluster_resources()
    cpus, gpus = max(1, int(resources.get("CPU", 1))), int(resources.get("GPU", 0))
    per_actor = gpus_per_actor if gpus_per_actor is not None else (1.0 if gpus else 0.0)
    pool = pool_size or (max(1, int(gpus / per_actor)) if per_actor else cpus)
    return ActorPlan(cpus, per_actor, pool)


def manifest_sources(root: Store, run_id: str | None, categories: tuple[str, ...]) -> tuple[pa.Table, int]:
    """The committed manifest's rows of these media categories, by uri, and how many rows the manifest has."""
    manifest = read_table(root, "manifest", run_id=run_id)
    if manifest.num_rows == 0:
        raise JobFailed(f"no committed manifest under {root.uri}: run `python -m jobs.manifest` first")
    sources = manifest.filter(pc.is_in(manifest.column("media_category"), pa.array(categories))).sort_by("uri")
    uris = sources.column("uri").to_pylist()
    if len(set(uris)) != len(uris):
        raise JobFailed(f"the manifest under {root.uri} lists a uri twice: pass --manifest-run-id")
    return sources, manifest.num_rows


def source_blocks(sources: pa.Table, columns: list[str], cpus: int, min_bytes: int) -> list[pa.Table]:
    """Manifest rows (these columns) in blocks balanced by size over the cores (see ``shard``)."""
    uris = sources.column("uri").to_pylist()
    objects = [ObjectInfo(u, u, int(n), None) for u, n in zip(uris, sources.column("size").to_pylist(), strict=True)]
    row = {u: i for i, u in enumerate(uris)}
    picked = sources.select(columns)
    return [picked.take(pa.array([row[o.uri] for o in part])) for part in shard(objects, cpus, min_bytes)]


class SourceLedger:
    """Every source of a job ends as exactly one result row or one error row: checked as rows arrive and before
    anything is committed."""

    def __init__(self, uris: list[str]) -> None:
        self.uris = uris
        self.results: dict[str, dict] = {}
        self.errors: dict[str, dict] = {}
        self.progress = Progress("sources", len(uris))

    def report(self, row: dict) -> None:
        """A source's final row: ``kind`` "error" for an error row, anything else for a result."""
        if row["uri"] in self.results or row["uri"] in self.errors:
            raise JobFailed(f"{row['uri']} was reported twice; nothing was committed, rerun the job")
        (self.errors if row["kind"] == "error" else self.results)[row["uri"]] = row
        self.progress.update(1)

    def check_complete(self) -> None:
        missing = set(self.uris) - set(self.results) - set(self.errors)
        if missing:
            raise JobFailed(
                f"accounting mismatch: {len(missing)} sources have no result (e.g. {sorted(missing)[0]}); "
                "nothing was committed, rerun the job"
            )
