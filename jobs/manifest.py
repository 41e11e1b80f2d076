"""jobs.manifest: list an archive, hash every object, tell its media kind from its content, commit the manifest.

    python -m jobs.manifest ARCHIVE [--glob '**'] [--label-pattern '{label}/*'] [--output out/results]

Every listed object ends as exactly one row: in ``manifest/`` (uri, size, sha256, media kind, label, duplicate_of)
or in ``errors/`` (stage, error type, message). Hashing runs as a Ray Data pipeline, one task per shard of objects.
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from jobs.cli import JobConfig
from jobs.plan import ensure_ray, shard
from jobs.progress import Progress
from jobs.runtime import JobContext, run_job, run_module
from jobs.source_job import SourceJob
from ops.io.errors import EmptyFile, JobFailed, UnknownMediaType, describe, error_type
from ops.io.schemas import MANIFEST
from ops.io.storage import ObjectInfo, Store, glob_regex, resolve
from ops.media.sniff import sniff

JOB = "manifest"
# Shards of at least MIN_SHARD_BYTES keep Ray's per-task overhead (tens of ms) small next to hashing (about 1 GB/s
# per core with SHA extensions).
MIN_SHARD_BYTES = 64 << 20


@dataclass
class ManifestConfig(JobConfig):
    archive: str = field(
        default="",
        metadata={
            "positional": True,
            "run_key": True,
            "help": "the archive to list: a folder, file:// URI or s3://bucket/prefix",
        },
    )
    glob: str = field(
        default="**", metadata={"run_key": True, "help": "which objects below the archive to take, e.g. '**/*.jpg'"}
    )
    label_pattern: str | None = field(
        default=None,
        metadata={
            "help": "take a label from each path below the archive, e.g. '{label}/*' or "
            "'**/{label}/*'; paths that do not match get no label"
        },
    )


# What a hashing task returns per object: the manifest's columns, or an error's.
_HASHED = pa.schema(
    [
        ("relpath", pa.string()),
        ("size", pa.int64()),
        ("sha256", pa.string()),
        ("media_kind", pa.string()),
        ("media_category", pa.string()),
        ("mime", pa.string()),
        ("stage", pa.string()),
        ("error_type", pa.string()),
        ("message", pa.string()),
    ]
)


def hash_objects(batch: pa.Table, archive: Store) -> pa.Table:
    """Stream each object once: sha256, size and media kind, or the reason it could not be read or recognised."""
    rows = []
    for relpath in batch.column("relpath").to_pylist():
        row = dict.fromkeys(_HASHED.names)
        row["relpath"] = relpath
        try:
            digest, size, head = archive.join(relpath).sha256()
        except Exception as exc:  # noqa: BLE001 - any failure to read one object is that object's error row
            row.update(stage="read", error_type=error_type(exc), message=describe(exc))
            rows.append(row)
            continue
        row.update(sha256=digest, size=size)
        kind = sniff(head)
        if size == 0:
            failure = EmptyFile("the object is empty (0 bytes)")
        elif kind is None:
            hexed = head[:12].hex(" ")
            failure = UnknownMediaType(
                f"content is not a recognised image, audio or video format (first bytes: {hexed})"
            )
        else:
            failure = None
        if failure is not None:
            row.update(stage="sniff", error_type=failure.error_type, message=str(failure))
        else:
            row.update(media_kind=kind.kind, media_category=kind.category, mime=kind.mime)
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=_HASHED)


def run(config: ManifestConfig, ctx: JobContext) -> dict:
    if not config.archive:
        raise JobFailed("no archive given: python -m jobs.manifest ARCHIVE (a folder or s3://bucket/prefix)")
    archive = resolve(config.archive)
    job = SourceJob(ctx, config, {"manifest": MANIFEST})
    objects = archive.list(config.glob)
    if not objects:
        raise JobFailed(f"no objects under {archive.uri} match {config.glob!r}: check the prefix and --glob")
    total_bytes = sum(o.size for o in objects)
    ctx.log.info("listed %d objects (%.1f MiB) under %s", len(objects), total_bytes / 2**20, archive.uri)

    ensure_ray()
    import ray

    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    blocks = [pa.Table.from_pylist([{"relpath": o.relpath} for o in s]) for s in shard(objects, cpus, MIN_SHARD_BYTES)]
    hashed_ds = ray.data.from_arrow(blocks).map_batches(
        hash_objects, fn_kwargs={"archive": archive}, batch_format="pyarrow", batch_size=None
    )
    progress = Progress("hashed objects", len(objects), total_bytes)
    parts = []
    for batch in hashed_ds.iter_batches(batch_format="pyarrow", batch_size=None):
        parts.append(batch)
        progress.update(batch.num_rows, sum(s or 0 for s in batch.column("size").to_pylist()))
    hashed = pa.concat_tables(parts) if parts else _HASHED.empty_table()

    # The promise: every listed object exactly once, as a manifest row or an error row. Checked before anything
    # is committed, so that a lost or repeated shard fails the run instead of publishing a wrong count.
    hashed_paths = hashed.column("relpath").to_pylist()
    if len(hashed_paths) != len(objects) or set(hashed_paths) != {o.relpath for o in objects}:
        raise JobFailed(
            f"accounting mismatch: {len(objects)} objects listed but {len(hashed_paths)} results "
            f"({len(set(hashed_paths))} distinct); nothing was committed, rerun the job"
        )
    manifest, errors = _tables(hashed, objects, config.label_pattern, ctx.run_id)

    duplicates = manifest.column("duplicate_of").drop_null().length()
    job.write("manifest", manifest)
    job.write_errors(errors.to_pylist())
    summary = {
        "objects": len(objects),
        "bytes": total_bytes,
        "manifest_rows": manifest.num_rows,
        "error_rows": errors.num_rows,
        "duplicates": duplicates,
        "kinds": dict(Counter(manifest.column("media_kind").to_pylist())),
    }
    by_type = dict(job.errors_by_type) or ""
    return job.commit(
        summary,
        f"{len(objects)} objects: {manifest.num_rows} in manifest ({duplicates} duplicates), "
        f"{errors.num_rows} errors {by_type}",
    )


def _tables(
    hashed: pa.Table, objects: list[ObjectInfo], label_pattern: str | None, run_id: str
) -> tuple[pa.Table, pa.Table]:
    """Join listing and hashing results, add labels and duplicate flags, and split into manifest and errors."""
    listing = pa.table(
        {
            "relpath": [o.relpath for o in objects],
            "uri": [o.uri for o in objects],
            "modified": pa.array([o.modified for o in objects], pa.timestamp("ms", tz="UTC")),
        }
    )
    rows = listing.join(hashed, "relpath", join_type="left outer").sort_by("relpath")
    rows = rows.append_column("run_id", pa.array([run_id] * rows.num_rows, pa.string()))
    failed = pc.is_valid(rows.column("error_type"))

    ok = rows.filter(pc.invert(failed))
    labels = [None] * ok.num_rows
    if label_pattern:
        matcher = glob_regex(label_pattern)
        if "label" not in matcher.groupindex:
            raise JobFailed(f"--label-pattern {label_pattern!r} has no {{label}} field, e.g. '{{label}}/*'")
        labels = [(m.group("label") if (m := matcher.fullmatch(p)) else None) for p in ok.column("relpath").to_pylist()]
    ok = ok.append_column("label", pa.array(labels, pa.string()))
    first = ok.group_by("sha256").aggregate([("uri", "min")]).rename_columns(["sha256", "first_uri"])
    ok = ok.join(first, "sha256").sort_by("relpath")
    is_copy = pc.not_equal(ok.column("uri"), ok.column("first_uri"))
    ok = ok.append_column("duplicate_of", pc.if_else(is_copy, ok.column("first_uri"), pa.scalar(None, pa.string())))

    return ok, rows.filter(failed)


def main(argv: list[str] | None = None) -> int:
    return run_job(JOB, ManifestConfig, run, argv, description=__doc__.split("\n")[0])


if __name__ == "__main__":
    sys.exit(run_module(__spec__.name))
