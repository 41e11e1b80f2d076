"""How a job runs: one launcher for the command line and for pipeline stages, logging, and exit codes.

A job module defines a config dataclass (subclass of :class:`jobs.runtime.cli.JobConfig`), a ``run(config, ctx)``
function returning its commit marker, and ``main(argv) = run_job(JOB, Config, run, argv, ...)``. Exit codes: 0
done, 2 a failure the user can fix (any ``UserError``: the message says how), 1 a bug (with a traceback).
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from jobs.runtime.cli import JobConfig, default_run_id, parse_config
from jobs.runtime.cluster import ensure_ray
from ops.io.errors import AccountingMismatch, JobFailed, UserError
from ops.io.redact import redact, redact_log_records
from ops.io.root import LOCATIONS, claim
from ops.io.storage import Store, resolve
from ops.io.tables import check_run_id
from ops.models.registry import models_root

log = logging.getLogger("crossmatch")
C = TypeVar("C", bound=JobConfig)


@dataclass
class JobContext:
    """What a running job gets besides its config."""

    job: str
    run_id: str
    output: Store
    log: logging.Logger


def launch(job: str, run: Callable[[C, JobContext], dict], config: C) -> dict:
    """Run one job, from its command line or as a pipeline stage: its run id settled and checked, its start and
    end logged. Returns the job's commit marker."""
    run_id = config.run_id or default_run_id(job, config)
    try:
        check_run_id(run_id)
    except ValueError as exc:
        raise JobFailed(str(exc)) from None
    output = resolve(config.output)
    check_locations(config)
    archive = getattr(config, "archive", None)
    if archive and resolve(archive).uri.rstrip("/") == output.uri.rstrip("/"):  # before anything is written there
        raise JobFailed(f"--output {output.uri} is the archive itself: write the results beside it, not into it")
    claim(output)  # a crossmatch root, or refused when it holds another tool's tables
    log.info("job %s, run %s, output %s", job, run_id, output.uri)
    started = time.monotonic()
    marker = run(config, JobContext(job, run_id, output, log))
    log.info("job %s finished in %.1f s", job, time.monotonic() - started)
    return marker


def local_locations(config: JobConfig) -> list[tuple[str, str]]:
    """The config's locations that are local paths, as (option, path); an unset models root is the default one."""
    found = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name == "models" and value is None and getattr(config, "MODELS_ON_WORKERS", False):
            value = models_root().uri  # the default root, where this job's workers load their models
        if f.name in LOCATIONS and isinstance(value, str) and value and resolve(value).scheme == "file":
            found.append((f"--{f.name.replace('_', '-')}", value))
    return found


def check_locations(config: JobConfig) -> None:
    """On a cluster of many nodes (or one whose head runs no work, so that workers come from nodes it adds) a
    local path would be another folder on every node: refused before any work, unless --shared-paths says every
    node mounts them. A job that starts its own local Ray cluster runs on this machine alone."""
    local = local_locations(config)
    if not local or config.shared_paths:
        return
    import ray

    if not ray.is_initialized():
        if not os.environ.get("RAY_ADDRESS"):
            return
        ensure_ray()
    nodes = sum(1 for n in ray.nodes() if n["Alive"])
    if nodes > 1 or not ray.cluster_resources().get("CPU"):
        where = f"this cluster has {nodes} nodes" if nodes > 1 else "this cluster's head runs no work (workers join)"
        paths = ", ".join(f"{option} {path}" for option, path in local)
        raise JobFailed(
            f"local paths on a cluster of many nodes ({where}): {paths}. Each node would see its own folder. Use "
            "s3://bucket/prefix for the archive, models and output, or pass --shared-paths when every node mounts "
            "these paths"
        )


def run_job(
    job: str, cls: type[C], run: Callable[[C, JobContext], dict], argv: list[str] | None, description: str
) -> int:
    """Parse, set up logging, launch, and turn failures into an exit code with a clear message."""
    config = parse_config(cls, argv, prog=f"python -m jobs.{job}", description=description)
    setup_logging(config.log_level)
    try:
        launch(job, run, config)
        return 0
    except UserError as exc:  # fixable by the user: the message says how
        log.error("job %s failed: %s", job, exc)
        return 2
    except AccountingMismatch as exc:  # a bug, said plainly: nothing was committed
        log.error("job %s failed: %s (a bug: please report it with this log)", job, exc)
        return 1
    except KeyboardInterrupt:
        log.error("job %s interrupted: this attempt of it was not committed (what it committed before stays)", job)
        return 130
    except Exception:  # noqa: BLE001 - a bug: say so, with the traceback, and exit non-zero
        log.exception("job %s failed with an unexpected error (a bug: please report it with this log)", job)
        return 1


def run_module(name: str) -> int:
    """``python -m jobs.<name>``: the imported module's ``main``, not ``__main__``'s, because Ray pickles functions
    and classes by module name and workers can import ``jobs.<name>`` but not this process's ``__main__``."""
    return importlib.import_module(name).main()


class RedactingFormatter(logging.Formatter):
    """Formats as usual, then removes credentials (tracebacks included): see ops.io.redact."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def setup_logging(level: str = "INFO") -> None:
    """Log the crossmatch logger's lines to stderr (once), leaving the root logger to whoever owns the process;
    every log record of the process is redacted, ours and the libraries' (see ops.io.redact)."""
    log.setLevel(getattr(logging, level.upper(), logging.INFO))
    redact_log_records()
    if not any(getattr(h, "_crossmatch", False) for h in log.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler._crossmatch = True
        log.addHandler(handler)
