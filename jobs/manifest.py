"""jobs.manifest: list an archive, hash every object, tell its media kind from its content, commit the manifest.

    python -m jobs.manifest ARCHIVE [--glob '**'] [--label-pattern '{label}/*'] [--output out/results]

Every listed object ends as exactly one row: in ``manifest/`` (uri, size, sha256, media kind, label, duplicate_of)
or in ``errors/`` (stage, error type, message). Hashing runs as a Ray Data pipeline, one task per shard of objects,
each staging its rows in files partitioned by content hash; a task per partition marks duplicates (every copy of a
content is in one partition) and writes the manifest's data files. The driver sees counts, file descriptions and
error rows, never the manifest.
"""

from __future__ import annotations

import sys
import uuid
from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from jobs.cli import JobConfig
from jobs.plan import GROWTH, ensure_ray, shard
from jobs.progress import Progress
from jobs.runtime import JobContext, run_job, run_module
from jobs.source_job import WRITE_ROWS, RowWriter, SourceJob
from ops.io.errors import EmptyFile, JobFailed, UnknownMediaType, describe, error_type
from ops.io.schemas import MANIFEST
from ops.io.storage import Store, glob_regex, resolve, storage_errors
from ops.media.sniff import sniff

JOB = "manifest"
# Shards of at least MIN_SHARD_BYTES keep Ray's per-task overhead (tens of ms) small next to hashing (about 1 GB/s
# per core with SHA extensions).
MIN_SHARD_BYTES = 64 << 20
STAGING = "_staging"  # <root>/_staging/<run_id>/<attempt>/: hashed rows between the hashing and the duplicate pass


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


# What a hashing task hands the driver: one "staged" row per file of hashed rows it wrote (its row count and the
# bytes it hashed, for progress), and one "error" row per object it could not read or recognise.
_HASHED = pa.schema(
    [
        ("kind", pa.string()),
        ("relpath", pa.string()),
        ("uri", pa.string()),
        ("size", pa.int64()),
        ("sha256", pa.string()),
        ("stage", pa.string()),
        ("error_type", pa.string()),
        ("message", pa.string()),
    ]
)
# The manifest's columns but duplicate_of, as the hashing tasks stage them for the duplicate pass.
_STAGED = pa.schema([f for f in MANIFEST if f.name != "duplicate_of"])


def hash_objects(
    batch: pa.Table, archive: Store, staging: Store, run_id: str, labels: str | None, partitions: int = 1
) -> pa.Table:
    """Stream each object once: sha256, size and media kind (and its label from the path), or the reason it could
    not be read or recognised. The manifest rows go to staging files, one per partition of the content hashes (so
    that every copy of a content meets in one partition); the driver gets their paths, counts and the errors."""
    matcher = glob_regex(labels) if labels else None
    rows, failed, hashed_bytes = [], [], 0
    for relpath, uri, modified in zip(
        *(batch.column(c).to_pylist() for c in ("relpath", "uri", "modified")), strict=True
    ):
        try:
            digest, size, head = archive.join(relpath).sha256()
        except Exception as exc:  # noqa: BLE001 - any failure to read one object is that object's error row
            failed.append({"kind": "error", "relpath": relpath, "uri": uri, "stage": "read"} | _named(exc))
            continue
        hashed_bytes += size
        kind = sniff(head)
        if size == 0 or kind is None:
            hexed = head[:12].hex(" ")
            failure = (
                EmptyFile("the object is empty (0 bytes)")
                if size == 0
                else UnknownMediaType(
                    f"content is not a recognised image, audio or video format (first bytes: {hexed})"
                )
            )
            failed.append(
                {"kind": "error", "relpath": relpath, "uri": uri, "sha256": digest, "stage": "sniff"} | _named(failure)
            )
            continue
        label = (m.group("label") if (m := matcher.fullmatch(relpath)) else None) if matcher else None
        rows.append(
            {
                "run_id": run_id,
                "uri": uri,
                "relpath": relpath,
                "size": size,
                "modified": modified,
                "sha256": digest,
                "media_kind": kind.kind,
                "media_category": kind.category,
                "mime": kind.mime,
                "label": label,
            }
        )
    out = [{"kind": "staged", "size": hashed_bytes, "relpath": "0"}]  # the bytes, for progress
    parts: dict[int, list[dict]] = {}
    for row in rows:
        parts.setdefault(partition_of(row["sha256"], partitions), []).append(row)
    for part, members in sorted(parts.items()):
        path = staging.join(f"p{part:05d}", f"{uuid.uuid4().hex}.parquet")
        with storage_errors(path.uri), path.open("wb") as f:
            pq.write_table(pa.Table.from_pylist(members, schema=_STAGED), f, compression="zstd")
        out.append({"kind": "staged", "uri": path.path, "size": 0, "relpath": str(len(members)), "stage": str(part)})
    return pa.Table.from_pylist([*out, *failed], schema=_HASHED)


def partition_of(sha256: str, partitions: int) -> int:
    return int(sha256[:8], 16) % partitions


def _named(exc: BaseException) -> dict:
    return {"error_type": error_type(exc), "message": describe(exc)}


def write_partition(paths: list[str], store: Store, writer: RowWriter) -> dict:
    """One partition of the staged rows (every copy of a content is in one partition): duplicates marked (the first
    uri of a content is the original, every other names it) and the manifest's rows written by this worker. Returns
    the data files and the counts, never the rows."""
    with storage_errors(store.uri):
        rows = pads.dataset(paths, schema=_STAGED, format="parquet", filesystem=store.arrow).to_table()
    first = rows.group_by("sha256").aggregate([("uri", "min")]).rename_columns(["sha256", "first_uri"])
    rows = rows.join(first, "sha256").sort_by("relpath")
    copy = pc.not_equal(rows.column("uri"), rows.column("first_uri"))
    rows = rows.append_column("duplicate_of", pc.if_else(copy, rows.column("first_uri"), pa.scalar(None, pa.string())))
    return {
        "files": writer.write(rows.drop_columns(["first_uri"])),
        "rows": rows.num_rows,
        "duplicates": int(pc.sum(copy).as_py() or 0),
        "kinds": Counter(rows.column("media_kind").to_pylist()),
    }


def run(config: ManifestConfig, ctx: JobContext) -> dict:
    if not config.archive:
        raise JobFailed("no archive given: python -m jobs.manifest ARCHIVE (a folder or s3://bucket/prefix)")
    if config.label_pattern and "label" not in glob_regex(config.label_pattern).groupindex:
        raise JobFailed(f"--label-pattern {config.label_pattern!r} has no {{label}} field, e.g. '{{label}}/*'")
    archive = resolve(config.archive)
    job = SourceJob(ctx, config, {"manifest": MANIFEST})
    objects = archive.list(config.glob)
    if not objects:
        raise JobFailed(f"no objects under {archive.uri} match {config.glob!r}: check the prefix and --glob")
    total_bytes = sum(o.size for o in objects)
    ctx.log.info("listed %d objects (%.1f MiB) under %s", len(objects), total_bytes / 2**20, archive.uri)
    ensure_ray()
    import ray

    workers = max(int(ray.cluster_resources().get("CPU", 0)), GROWTH)  # room for a cluster that grows
    blocks = [
        pa.table(
            {
                "relpath": [o.relpath for o in part],
                "uri": [o.uri for o in part],
                "modified": pa.array([o.modified for o in part], pa.timestamp("ms", tz="UTC")),
            }
        )
        for part in shard(objects, workers, MIN_SHARD_BYTES)
    ]
    staging = ctx.output.join(STAGING, ctx.run_id, job.out.attempt)
    # Partitions of the content hashes of about a data file's rows each: every copy of a content meets in one.
    partitions = max(1, -(-len(objects) // WRITE_ROWS))
    hashing = ray.data.from_arrow(blocks).map_batches(
        hash_objects,
        fn_kwargs={
            "archive": archive,
            "staging": staging,
            "run_id": ctx.run_id,
            "labels": config.label_pattern,
            "partitions": partitions,
        },
        batch_format="pyarrow",
        batch_size=None,
    )
    progress = Progress("hashed objects", len(objects), total_bytes)
    staged: dict[int, list[str]] = {}
    staged_rows, errors = 0, []
    try:
        for batch in hashing.iter_batches(batch_format="pyarrow", batch_size=None):
            for row in batch.to_pylist():
                if row["kind"] == "staged":
                    if row["uri"]:
                        staged.setdefault(int(row["stage"]), []).append(row["uri"])
                    staged_rows += int(row["relpath"])
                    progress.update(int(row["relpath"]), row["size"])
                else:
                    errors.append(row)
                    progress.update(1, 0)
        # The promise: every listed object exactly once, as a manifest row or an error row. Checked before anything
        # is committed, so that a lost or repeated shard fails the run instead of publishing a wrong count.
        if staged_rows + len(errors) != len(objects):
            raise JobFailed(
                f"accounting mismatch: {len(objects)} objects listed but {staged_rows + len(errors)} results; "
                "nothing was committed, rerun the job"
            )
        writer = RowWriter(ctx.output, "manifest", MANIFEST, ctx.run_id, job.out.attempt)
        task = ray.remote(write_partition)
        done = ray.get([task.remote(paths, ctx.output, writer) for _, paths in sorted(staged.items())])
        written, duplicates, kinds = 0, 0, Counter()
        for part in done:
            job.add_files("manifest", part["files"])
            written += part["rows"]
            duplicates += part["duplicates"]
            kinds.update(part["kinds"])
        if written != staged_rows:
            raise JobFailed(f"accounting mismatch: {staged_rows} objects hashed but {written} manifest rows written")
        job.write_errors(errors)
        summary = {
            "objects": len(objects),
            "bytes": total_bytes,
            "manifest_rows": written,
            "error_rows": len(errors),
            "duplicates": duplicates,
            "kinds": dict(kinds),
        }
        by_type = dict(job.errors_by_type) or ""
        return job.commit(
            summary,
            f"{len(objects)} objects: {written} in manifest ({duplicates} duplicates), {len(errors)} errors {by_type}",
        )
    finally:
        staging.remove_tree() if staging.exists() else None


def main(argv: list[str] | None = None) -> int:
    return run_job(JOB, ManifestConfig, run, argv, description=__doc__.split("\n")[0])


if __name__ == "__main__":
    sys.exit(run_module(__spec__.name))
