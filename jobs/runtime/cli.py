"""A job's command line, generated from its config dataclass, and the run id that makes reruns replace.

A job's config subclasses :class:`JobConfig`; each field becomes an option (``positional`` metadata makes it an
argument, ``help`` its help text, a ``bool`` a --flag/--no-flag pair). Fields marked ``run_key`` define the
default run id, so the same command gives the same run id and its rerun replaces the earlier output.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar


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
    shared_paths: bool = field(
        default=False,
        metadata={
            "help": "the local paths given are mounted on every node (NFS, a shared volume): allow them on "
            "a cluster of many nodes"
        },
    )


C = TypeVar("C", bound=JobConfig)


def parse_config(cls: type[C], argv: list[str] | None, prog: str, description: str) -> C:
    """Build ``cls`` from command-line arguments generated from its fields (``positional`` metadata, ``help``)."""
    # Raw: a job whose description shows one usage line per mode keeps its lines as written.
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
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


def _base_type(hint: Any) -> type:
    """``str | None`` -> str: the type argparse converts to."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0]
    return hint
