"""jobs.manifest: list an archive, hash every object, tell its media kind from its content, commit the manifest.

    python -m jobs.manifest ARCHIVE [--glob '**'] [--label-pattern '{label}/*'] [--output out/results]

Every listed object ends as exactly one row: in ``manifest/`` (uri, size, sha256, media kind, label, duplicate_of)
or in ``errors/`` (stage, error type, message). Hashing runs as a Ray Data pipeline, one task per shard of objects,
each staging its rows in files partitioned by content hash; a task per partition marks duplicates (every copy of a
content is in one partition) and writes the manifest's data files. The driver sees counts, file descriptions and
error rows, never the manifest.
"""

from __future__ import annotations

import json
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from jobs.archive.manifest_diff import CarryOver, diff_archive, previous_manifest
from jobs.runtime.accounting import Ledger
from jobs.runtime.cli import JobConfig
from jobs.runtime.cluster import GROWTH, TASK_CPUS, ensure_ray, shard
from jobs.runtime.gather import add_up, gather
from jobs.runtime.launch import JobContext, run_job, run_module
from jobs.runtime.output import WRITE_ROWS, JobOutput, RowWriter, file_row, parse_file_row
from jobs.runtime.progress import Progress
from ops.io.errors import AccountingMismatch, EmptyFile, JobFailed, UnknownMediaType, describe, error_type
from ops.io.schemas import CHANGES, MANIFEST
from ops.io.storage import Store, glob_regex, resolve, storage_errors
from ops.io.tables import error_table
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
    full: bool = field(
        default=False,
        metadata={
            "help": "read every object again; by default only objects new or changed since the last manifest of "
            "the archive under --output are read, the others carried over"
        },
    )


# What a hashing task hands the driver: one "staged" row per file of hashed rows it wrote (its row count and the
# bytes it hashed, for progress), and one "errors" row per file of error rows it wrote (with their count by type).
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
    batch: pa.Table,
    archive: Store,
    staging: Store,
    run_id: str,
    labels: str | None,
    partitions: int = 1,
    errors: RowWriter | None = None,
    changes: RowWriter | None = None,
    previous_run_id: str | None = None,
) -> pa.Table:
    """Stream each object once: sha256, size and media kind (and its label from the path), or the reason it could
    not be read or recognised. The manifest rows go to staging files, one per partition of the content hashes (so
    that every copy of a content meets in one partition), the error rows to the errors table; the driver gets
    their paths and counts. A block made by difference (``jobs.archive.manifest_diff``) names each object's content in
    the previous snapshot: its ``new`` and ``modified`` rows go to ``changes``."""
    matcher = glob_regex(labels) if labels else None
    rows, failed, hashed_bytes = [], [], 0
    before = batch.column("previous_sha256").to_pylist() if "previous_sha256" in batch.column_names else None
    for relpath, uri, modified, etag in zip(
        *(batch.column(c).to_pylist() for c in ("relpath", "uri", "modified", "etag")), strict=True
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
                "etag": etag,
                "sha256": digest,
                "media_kind": kind.kind,
                "media_category": kind.category,
                "mime": kind.mime,
                "label": label,
            }
        )
    out = [{"kind": "staged", "size": hashed_bytes, "relpath": "0"}]  # the bytes, for progress
    out += stage_manifest_rows(pa.Table.from_pylist(rows, schema=_STAGED), staging, partitions)
    if before is not None and changes is not None:
        before_of = dict(zip(batch.column("uri").to_pylist(), before, strict=True))
        out += _changes(rows, before_of, run_id, previous_run_id, changes)
    if failed:
        by_type = json.dumps(Counter(r["error_type"] for r in failed))
        for i, file in enumerate(errors.write(error_table(failed, run_id, JOB))):
            said = by_type if i == 0 else "{}"  # the types once, with the first file
            out.append({"kind": "errors", "uri": file_row(file), "relpath": str(file.rows), "message": said})
    return pa.Table.from_pylist(out, schema=_HASHED)


def stage_manifest_rows(rows: pa.Table, staging: Store, partitions: int) -> list[dict]:
    """Manifest rows staged for the duplicate pass, one file per partition of their content hashes; what the
    driver is told of each file (its path, rows and partition)."""
    out = []
    of = [partition_of(sha, partitions) for sha in rows.column("sha256").to_pylist()]
    for part in sorted(set(of)):
        members = rows.filter(pa.array([p == part for p in of]))
        path = staging.join(f"p{part:05d}", f"{uuid.uuid4().hex}.parquet")
        with storage_errors(path.uri), path.open("wb") as f:
            pq.write_table(members.select(_STAGED.names).cast(_STAGED), f, compression="zstd")
        out.append(
            {"kind": "staged", "uri": path.path, "size": 0, "relpath": str(members.num_rows), "stage": str(part)}
        )
    return out


def _changes(
    rows: list[dict], before: dict[str, str | None], run_id: str, previous_run_id: str, changes: RowWriter
) -> list[dict]:
    """The ``changes/`` rows of objects read again: new (no content before) or modified (another content)."""
    found = [
        {"run_id": run_id, "uri": r["uri"], "sha256": r["sha256"], "previous_sha256": before[r["uri"]]}
        | {"previous_run_id": previous_run_id}
        | {"change": "new" if before[r["uri"]] is None else "modified"}
        for r in rows
        if before[r["uri"]] != r["sha256"]
    ]
    if not found:
        return []
    counts = json.dumps(Counter(r["change"] for r in found))
    out = []
    for i, file in enumerate(changes.write(pa.Table.from_pylist(found, schema=CHANGES))):
        out.append(
            {"kind": "changes", "uri": file_row(file), "relpath": str(file.rows), "message": counts if i == 0 else "{}"}
        )
    return out


@dataclass
class Listing:
    """An archive listed by workers: blocks of objects balanced by size (object refs), how many, how many bytes."""

    blocks: list = field(default_factory=list)
    objects: int = 0
    bytes: int = 0


def output_inside(archive: Store, output: Store) -> str | None:
    """Where the output root lies inside the archive (its path relative to the archive), or None when outside: the
    project's own tables and logs are not archive objects (the archive itself as the output is refused by
    ``jobs.runtime.launch.launch``, before anything is written)."""
    top, out = archive.uri.rstrip("/"), output.uri.rstrip("/")
    return out[len(top) + 1 :] if out.startswith(top + "/") else None


def list_archive(archive: Store, pattern: str, workers: int, skip: str | None = None) -> Listing:
    """The archive's objects matching ``pattern`` (none under the folder ``skip``), listed by tasks: one per folder
    right below the archive and one for the objects at its top, each cutting its objects into blocks balanced by
    size (``plan.shard``). The driver holds the refs and the counts, never an object's name."""
    import ray

    try:
        folders = ray.get(ray.remote(num_cpus=TASK_CPUS)(_folders).remote(archive))
    except ray.exceptions.RayTaskError as exc:  # the archive's own message (it does not exist, it is a file)
        raise exc.cause from None
    parts = [("", True)] + [(name, False) for name in folders if name != skip]
    share = max(1, -(-workers // len(parts)))
    task = ray.remote(num_cpus=TASK_CPUS, num_returns="streaming")(list_blocks)
    generators = [task.remote(archive, pattern, under, top, share, skip) for under, top in parts]
    listing = Listing()
    for generator in generators:
        refs = list(generator)
        summary = ray.get(refs[-1])  # the last thing a listing task yields: what it listed
        listing.blocks += refs[:-1]
        listing.objects += summary["objects"]
        listing.bytes += summary["bytes"]
    return listing


def _folders(archive: Store) -> list[str]:
    return archive.folders()


def list_blocks(archive: Store, pattern: str, under: str, top_only: bool, workers: int, skip: str | None = None):
    """One part of the archive listed (nothing under the folder ``skip``): its objects in blocks balanced by size,
    then a summary."""
    objects = archive.list(pattern, under=under, top_only=top_only)
    if skip:
        objects = [o for o in objects if not o.relpath.startswith(skip + "/")]
    for part in shard(objects, workers, MIN_SHARD_BYTES) if objects else []:
        yield pa.table(
            {
                "relpath": [o.relpath for o in part],
                "uri": [o.uri for o in part],
                "modified": pa.array([o.modified for o in part], pa.timestamp("ms", tz="UTC")),
                "etag": pa.array([o.etag for o in part], pa.string()),
                "size": pa.array([o.size for o in part], pa.int64()),
            }
        )
    yield {"objects": len(objects), "bytes": sum(o.size for o in objects)}


def _hashed(blocks: list, **settings) -> Iterator[pa.Table]:
    """What the hashing tasks report of the blocks (``hash_objects``), as they finish; nothing for no blocks."""
    if not blocks:
        return
    import ray

    data = ray.data.from_arrow_refs(blocks).map_batches(
        hash_objects, fn_kwargs=settings, batch_format="pyarrow", batch_size=None
    )
    yield from data.iter_batches(batch_format="pyarrow", batch_size=None)


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
    labelled = pc.fill_null(pc.not_equal(rows.column("label"), ""), False)
    return {
        "files": writer.write(rows.drop_columns(["first_uri"])),
        "rows": rows.num_rows,
        "duplicates": int(pc.sum(copy).as_py() or 0),
        "kinds": Counter(rows.column("media_kind").to_pylist()),
        "labelled": int(pc.sum(labelled).as_py() or 0),
        "unlabelled": rows.filter(pc.invert(labelled)).column("relpath").slice(0, 2).to_pylist(),  # examples
    }


def run(config: ManifestConfig, ctx: JobContext) -> dict:
    if not config.archive:
        raise JobFailed("no archive given: python -m jobs.manifest ARCHIVE (a folder or s3://bucket/prefix)")
    if config.label_pattern and "label" not in glob_regex(config.label_pattern).groupindex:
        raise JobFailed(f"--label-pattern {config.label_pattern!r} has no {{label}} field, e.g. '{{label}}/*'")
    archive = resolve(config.archive)
    job = JobOutput(ctx, config, {"manifest": MANIFEST, "changes": CHANGES}, errors="counted")
    archive.check_listable()  # a missing prefix or a denied read said here, before any task starts
    workers, listed = _listed(archive, config, ctx)
    objects, total_bytes, blocks = listed.objects, listed.bytes, listed.blocks
    staging = job.staging()
    # Partitions of the content hashes of about a data file's rows each: every copy of a content meets in one.
    partitions = max(1, -(-objects // WRITE_ROWS))
    errors = job.row_writer("errors")
    changes = job.row_writer("changes")
    try:
        previous = previous_manifest(ctx.output, config.archive, config.glob)
        diff = None
        staged: dict[int, list[str]] = {}
        staged_rows, failed, to_hash, hash_bytes = 0, 0, objects, total_bytes
        if previous is not None:
            carry = CarryOver(
                run_id=ctx.run_id,
                staging=staging,
                partitions=partitions,
                labels=config.label_pattern,
                changes=changes,
                stage_rows=stage_manifest_rows,
                workers=workers,
                min_bytes=MIN_SHARD_BYTES,
            )
            diff = _by_difference(blocks, objects, previous, ctx, job, carry, config)
            for row in diff.staged:
                staged.setdefault(int(row["stage"]), []).append(row["uri"])
            blocks, staged_rows, to_hash, hash_bytes = diff.blocks, diff.carried, diff.to_hash, diff.to_hash_bytes
        changed: Counter = Counter()
        hashed = _hashed(
            blocks,
            archive=archive,
            staging=staging,
            run_id=ctx.run_id,
            labels=config.label_pattern,
            partitions=partitions,
            errors=errors,
            changes=changes if previous is not None else None,
            previous_run_id=previous.run_id if previous is not None else None,
        )
        progress = Progress("hashed objects", to_hash, hash_bytes)
        hashed_rows, failed = _gather_hashed(hashed, job, staged, changed, progress)
        staged_rows += hashed_rows
        # The promise: every listed object exactly once, as a manifest row or an error row. Checked before anything
        # is committed, so that a lost or repeated shard fails the run instead of publishing a wrong count.
        if staged_rows + failed != objects:
            raise AccountingMismatch(
                f"accounting mismatch: {objects} objects listed but {staged_rows + failed} results; "
                "nothing was committed, rerun the job"
            )
        written, duplicates, kinds, labelled, unlabelled = _write_manifest(staged, ctx, job)
        if written != staged_rows:
            raise AccountingMismatch(
                f"accounting mismatch: {staged_rows} objects hashed but {written} manifest rows written"
            )
        summary = {"objects": objects, "bytes": total_bytes, "manifest_rows": written, "error_rows": failed}
        summary |= {"duplicates": duplicates, "kinds": dict(kinds)}
        if config.label_pattern:
            summary["labelled"] = labelled
            _say_labels(ctx, config.label_pattern, labelled, written, unlabelled)
        if diff is not None:
            summary |= {"previous_manifest": previous.run_id, "read": diff.to_hash, "carried": diff.carried}
            summary |= {"new": changed["new"], "modified": changed["modified"], "removed": diff.removed}
        by_type = dict(job.errors_by_type) or ""
        return job.commit(
            summary,
            f"{objects} objects: {written} in manifest ({duplicates} duplicates), {failed} errors {by_type}",
        )
    finally:
        staging.remove_tree() if staging.exists() else None


def _listed(archive: Store, config: ManifestConfig, ctx: JobContext):
    """The archive listed by tasks (the output root left out when it lies inside), and how many workers the
    listing was cut for."""
    ensure_ray()
    import ray

    workers = max(int(ray.cluster_resources().get("CPU", 0)), GROWTH)  # room for a cluster that grows
    inside = output_inside(archive, ctx.output)
    if inside:
        ctx.log.info(
            "the output root %s lies inside the archive: its objects (%s/) are not listed", ctx.output.uri, inside
        )
    listed = list_archive(archive, config.glob, workers, inside)
    if not listed.objects:
        raise JobFailed(f"no objects under {archive.uri} match {config.glob!r}: check the prefix and --glob")
    ctx.log.info("listed %d objects (%.1f MiB) under %s", listed.objects, listed.bytes / 2**20, archive.uri)
    return workers, listed


def _by_difference(blocks, objects: int, previous, ctx: JobContext, job: JobOutput, carry: CarryOver, config):
    """The listing against the previous snapshot (``jobs.archive.manifest_diff``): what is carried over unread, what
    is read again, what was removed; its change rows added to the run."""
    diff = diff_archive(blocks, objects, previous, ctx.output, Ledger(carry.staging.join("ledger")), carry, config.full)
    job.add_files("changes", diff.files)
    ctx.log.info(
        "against manifest run %s: %d objects carried over unread, %d to read, %d removed",
        previous.run_id,
        diff.carried,
        diff.to_hash,
        diff.removed,
    )
    return diff


def _gather_hashed(hashed, job: JobOutput, staged: dict[int, list[str]], changed: Counter, progress: Progress):
    """What the hashing tasks report, as it streams by: their staged files (by partition), their changes and error
    files added to the run; how many rows they staged and how many objects failed."""
    staged_rows = failed = 0
    for batch in hashed:
        for row in batch.to_pylist():
            if row["kind"] == "staged":
                if row["uri"]:
                    staged.setdefault(int(row["stage"]), []).append(row["uri"])
                staged_rows += int(row["relpath"])
                progress.update(int(row["relpath"]), row["size"])
            elif row["kind"] == "changes":  # a file of new and modified objects' rows, and how many of each
                job.add_files("changes", [parse_file_row(row["uri"])])
                changed.update(json.loads(row["message"]))
            else:  # a file of error rows the task wrote, and how many of each type
                job.add_settled([parse_file_row(row["uri"])], Counter(json.loads(row["message"])))
                failed += int(row["relpath"])
                progress.update(int(row["relpath"]), 0)
    return staged_rows, failed


def _write_manifest(staged: dict[int, list[str]], ctx: JobContext, job: JobOutput):
    """A task per partition of the staged rows writes its manifest rows (duplicates flagged there); their files
    added to the run; the counts: rows written, duplicates, kinds, labelled rows, two unlabelled paths."""
    writer = job.row_writer("manifest")
    done = gather(write_partition, [(paths, ctx.output, writer) for _, paths in sorted(staged.items())], cpus=1)
    for part in done:
        job.add_files("manifest", part["files"])
    total = add_up(done, {"rows": 0, "duplicates": 0, "kinds": Counter(), "labelled": 0, "unlabelled": []})
    return total["rows"], total["duplicates"], total["kinds"], total["labelled"], total["unlabelled"][:2]


def _say_labels(ctx: JobContext, pattern: str, labelled: int, rows: int, unlabelled: list[str]) -> None:
    """How many objects the label pattern named, and two it did not: a pattern that matches nothing leaves every
    label null, which no later stage can tell from an archive without labels."""
    if labelled == rows:
        ctx.log.info("--label-pattern %r gave a label to all %d objects", pattern, rows)
        return
    examples = ", ".join(unlabelled)
    ctx.log.warning(
        "--label-pattern %r gave a label to %d of %d objects; not matched: %s. The pattern is matched against the "
        "path below the archive (for ARCHIVE/alice/1.jpg, '{label}/*'; one folder deeper, '*/{label}/*')",
        pattern,
        labelled,
        rows,
        examples,
    )


def main(argv: list[str] | None = None) -> int:
    return run_job(JOB, ManifestConfig, run, argv, description=__doc__.split("\n")[0])


if __name__ == "__main__":
    sys.exit(run_module(__spec__.name))
