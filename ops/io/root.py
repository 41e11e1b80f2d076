"""What an output root is: a folder (or S3 prefix) of crossmatch's tables and run folders, and nobody else's.

A root identifies itself with a small marker, ``crossmatch-root.json``, written by the first job that writes there.
A job refuses a root that is not crossmatch's and holds another tool's data (Delta tables or Parquet files at its top):
writing beside them would mix two tools' tables, and ``jobs.delete`` could remove what it never wrote. A root made
before the marker is known by its ``runs`` table. Jobs write only into the tables and into the run folders named
here (``<folder>/<run_id>/``), so a deletion touches nothing else.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime

from ops.io.errors import JobFailed, StorageError
from ops.io.storage import Store, resolve, storage_errors

log = logging.getLogger("crossmatch")

MARKER = "crossmatch-root.json"
# The folders of a root that hold a run's files outside the tables, ``<folder>/<run_id>/`` each: what a deletion
# may remove besides the tables' files. A job that writes another must add it here.
# ``<root>/_staging/<run_id>/<attempt>/``: what a run's workers stage between its steps (ledgers, items, pairs).
STAGING = "_staging"
RUN_FOLDERS = ("calibration", "report", "styled-images", "synthetic", "checkpoints", "pairs", STAGING)
# A job's settings that name storage locations; in the runs table those inside the root are kept relative to it.
LOCATIONS = (
    "output",
    "archive",
    "manifest",
    "models",
    "queries",
    "gallery",
    "pairs",
    "labels",
    "calibration",
    "embeddings",
    "results",
    "content",
    "style",
)


def inside(root: Store, uri: str) -> str:
    """``uri`` as the root's tables keep it: relative to ``root`` when below it ("." for the root itself), so that
    a results folder copied or moved elsewhere still finds its own records, reports and images; else whole (a local
    path made absolute: a relative one would be read as below the root)."""
    try:
        target = resolve(uri, root.endpoint_url)
    except StorageError:
        return uri
    if (target.scheme, target.endpoint_url) != (root.scheme, root.endpoint_url):
        return target.uri
    if target.path == root.path:
        return "."
    base = root.path.rstrip("/") + "/"
    return target.path[len(base) :] if target.path.startswith(base) else target.uri


def locate(root: Store, stored: str | None) -> Store:
    """The store a path kept in ``root``'s tables names (see ``inside``): relative ones are below ``root``."""
    if not stored or stored == ".":
        return root
    if "://" in stored or stored.startswith("/"):
        return resolve(stored, root.endpoint_url if stored.startswith("s3") else None)
    return root.join(stored)


def relative_locations(root: Store, config: dict) -> dict:
    """A job's settings as its runs row keeps them: the locations inside ``root`` relative to it."""
    return {k: inside(root, v) if k in LOCATIONS and isinstance(v, str) and v else v for k, v in config.items()}


def is_ours(root: Store) -> bool:
    """Whether ``root`` is a crossmatch output root: its marker, or (made before the marker) its runs table."""
    return root.join(MARKER).exists() or root.join("runs", "_delta_log").exists()


def claim(root: Store) -> None:
    """Make ``root`` a crossmatch root before a job writes there (its marker written once), or refuse it: a root that
    holds another tool's tables is not written into."""
    if root.scheme == "file" and os.path.exists(root.path) and not os.path.isdir(root.path):
        raise JobFailed(f"--output {root.uri} is a file, not a folder: pass a folder (new or crossmatch's)")
    if root.join(MARKER).exists():
        return
    if not root.join("runs", "_delta_log").exists():
        foreign = _foreign_data(root)
        if foreign:
            raise JobFailed(
                f"{root.uri} holds data crossmatch did not write ({', '.join(foreign[:3])}"
                f"{', ...' if len(foreign) > 3 else ''}): pass a new or empty folder (or an earlier crossmatch "
                "output root) as --output"
            )
    record = {"tool": "crossmatch", "created": datetime.now(UTC).isoformat(timespec="seconds")}
    try:
        root.join(MARKER).put_atomic(json.dumps(record).encode())
    except OSError as exc:  # a local folder that cannot be made or written (S3's errors are translated already)
        raise JobFailed(f"cannot write into the output root {root.uri}: {exc}: pass a folder you can write") from None
    log.debug("marked %s as a crossmatch output root", root.uri)


def require_ours(root: Store) -> None:
    """Refuse to delete from or maintain a root that is not crossmatch's."""
    if not is_ours(root):
        raise JobFailed(
            f"{root.uri} is not a crossmatch output root (no {MARKER} and no runs table): nothing there was written "
            "by crossmatch, so nothing is deleted"
        )


def _foreign_data(root: Store) -> list[str]:
    """The top-level Delta tables and Parquet files of ``root`` (another tool's data); [] for none or no root."""
    if root.join("_delta_log").exists():  # the root is itself a Delta table
        return ["_delta_log/ (the root is a Delta table)"]
    if not root.exists():
        return []
    with storage_errors(root.uri):
        entries = root.fs.ls(root.path, detail=True)
    found = []
    for entry in entries:
        name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
        if entry["type"] == "directory" and root.join(name, "_delta_log").exists():
            found.append(name + "/ (a Delta table)")
        elif name.endswith(".parquet"):
            found.append(name)
        elif entry["type"] == "directory" and "=" in name:  # a Hive-partitioned dataset: key=value folders
            found.append(name + "/ (a partition of a dataset)")
    return sorted(found)
