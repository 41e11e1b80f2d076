"""jobs.export: a case, self-contained, for someone else to check: the report, the rows behind it, and a manifest.

    python -m jobs.export CASE --results ROOT --runs RUN[,RUN...]     # CASE: a folder, an s3:// prefix, or a .zip
    python -m jobs.export --check CASE                                # every file against the bundle's manifest

RUN is a find, a pipeline or any other committed run under ROOT (a find or a pipeline takes its stages). CASE gets:

    report/<run id>/index.html         each run's report (faces and clips inline: it opens on a laptop, no server)
    tables/<table>/<run id>.parquet    every row the runs committed (matches, items, embeddings, errors, ...)
    tables/reviews/reviews.parquet     the analysts' marks on those matches (jobs.review), every one
    tables/calibrations/<run id>.parquet and calibration/<run id>/   the calibrations the decisions came from
    sources.csv                        every source a row names: its uri and full sha256
    models.csv                         every model the rows name: its role, name and sha256
    case.json                          the case, when and from where it was exported, every run's record
    README.txt                         what this is and how to check it
    MANIFEST.sha256                    every file above with its sha256 (``sha256sum -c MANIFEST.sha256`` checks it)

Paths inside are relative. The export is a run of its own under ROOT (job "export"), whose summary keeps the
manifest's own sha256: a bundle whose files and manifest were both changed still fails against that. A CASE that
already holds files is refused (a case is never overwritten: export to a new name). ``--check`` reads a bundle,
recomputes every file's sha256 and exits 2 naming each file changed, missing or added.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import sys
import zipfile
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from jobs.runtime.cli import JobConfig
from jobs.runtime.launch import JobContext, run_job, setup_logging
from jobs.runtime.output import JobOutput
from ops.io.errors import JobFailed, StorageError, UserError
from ops.io.root import locate
from ops.io.storage import Store, resolve
from ops.io.tables import committed_runs, read_table

JOB = "export"
MANIFEST = "MANIFEST.sha256"
# Columns that name a source and its content, and a model and its weights, wherever a table has them.
SOURCE_COLUMNS = (("uri", "sha256"), ("query_uri", "query_sha256"), ("gallery_uri", "gallery_sha256"))
MODEL_COLUMNS = (("model", "model_name", "model_sha256"), ("detector", "detector_name", "detector_sha256"))


@dataclass
class ExportConfig(JobConfig):
    case: str = field(
        default="",
        metadata={"positional": True, "run_key": True, "help": "where the case goes: a new folder, prefix or .zip"},
    )
    results: str | None = field(
        default=None, metadata={"run_key": True, "help": "the results root holding the runs (default --output)"}
    )
    runs: str = field(default="", metadata={"run_key": True, "help": "the runs to export, comma-separated"})
    max_rows: int = field(
        default=1_000_000, metadata={"help": "refuse a case of more rows than this (a case is a find, not an archive)"}
    )

    def __post_init__(self) -> None:
        if self.results:  # the export is recorded beside the runs it exports
            self.output = self.results


def run(config: ExportConfig, ctx: JobContext) -> dict:
    if not config.case:
        raise JobFailed("no CASE given: python -m jobs.export CASE --results ROOT --runs RUN")
    case = resolve(config.case)
    if _holds_files(case):
        raise JobFailed(f"{case.uri} already holds files: a case is never overwritten, export to a new name")
    root = ctx.output
    # No table of its own; the root checked writable before a case is written that could never be written again.
    out = JobOutput(ctx, config)
    markers = _runs(root, [r.strip() for r in config.runs.split(",") if r.strip()])
    rows = sum(t.get("rows", 0) for m in markers for t in m["tables"].values())
    if rows > config.max_rows:
        raise JobFailed(
            f"the runs hold {rows} rows, more than --max-rows {config.max_rows}: a case is a find or a few match "
            "runs; export those, or raise --max-rows"
        )
    bundle = Bundle()
    for marker in markers:
        _add_rows(bundle, root, marker)
        report_uri = (marker.get("summary") or {}).get("report_uri")
        if marker["job"] == "report" and report_uri:
            bundle.add(f"report/{marker['run_id']}/index.html", locate(root, report_uri).read_bytes())
    exported = {m["run_id"] for m in markers}
    if not any(path.startswith("report/") for path in bundle.files):
        ctx.log.warning("no report among these runs: run `python -m jobs.report` on them and export its run too")
    calibrations = _add_calibrations(bundle, root, bundle.thresholds)
    reviews = read_table(root, "reviews", filter=pc.field("match_run_id").isin(sorted(exported)))
    if reviews.num_rows:
        bundle.add("tables/reviews/reviews.parquet", _parquet(reviews))
    bundle.add("sources.csv", _csv(["uri", "sha256"], sorted(bundle.sources)))
    bundle.add("models.csv", _csv(["role", "name", "sha256"], sorted(bundle.models)))
    case_record = {
        "case": config.case,
        "exported_at": datetime.now(UTC).isoformat(),
        "results": root.uri,
        "export_run_id": ctx.run_id,
        "runs": markers,
        "calibration_runs": calibrations,
        "reviews": reviews.num_rows,
    }
    bundle.add("case.json", json.dumps(case_record, indent=1, default=str).encode())
    bundle.add("README.txt", _readme(config, markers, bundle).encode())
    manifest = bundle.manifest()
    digest = hashlib.sha256(manifest).hexdigest()
    _write(case, bundle.files | {MANIFEST: manifest})
    summary = {
        "case": case.uri,
        "runs": sorted(exported),
        "files": len(bundle.files) + 1,
        "rows": bundle.rows,
        "sources": len(bundle.sources),
        "reviews": reviews.num_rows,
        "manifest_sha256": digest,
    }
    ctx.log.info(
        "case %s: %d files, %d rows of %d runs, %d sources, %d reviews",
        case.uri,
        summary["files"],
        bundle.rows,
        len(markers),
        len(bundle.sources),
        reviews.num_rows,
    )
    headline = f"manifest sha256 {digest} (kept in this root's runs table: `python -m jobs.export --check CASE`)"
    return out.commit(summary, headline)


@dataclass
class Bundle:
    """The case's files as they will be written (relative path -> bytes), and what their rows name."""

    files: dict[str, bytes] = field(default_factory=dict)
    sources: set[tuple[str, str]] = field(default_factory=set)
    models: set[tuple[str, str, str]] = field(default_factory=set)
    thresholds: set[str] = field(default_factory=set)
    rows: int = 0

    def add(self, path: str, data: bytes) -> None:
        self.files[path] = data

    def note(self, rows: pa.Table) -> None:
        """What the rows name: their sources with their content's sha256, their models, their calibrations."""
        names = set(rows.column_names)
        for uri, sha in SOURCE_COLUMNS:
            if {uri, sha} <= names:
                self.sources |= _distinct(rows, uri, sha)
        for role, name, sha in MODEL_COLUMNS:
            if {name, sha} <= names:
                self.models |= {(role, n, s) for n, s in _distinct(rows, name, sha)}
        if "threshold_source" in names:
            self.thresholds |= set(pc.unique(rows.column("threshold_source").drop_null()).to_pylist())

    def manifest(self) -> bytes:
        """``sha256sum``'s format: the hex digest, two spaces, the relative path; sorted by path."""
        lines = [f"{hashlib.sha256(data).hexdigest()}  {path}\n" for path, data in sorted(self.files.items())]
        return "".join(lines).encode()


def _runs(root: Store, names: list[str]) -> list[dict]:
    """The committed runs named, each followed by its stages' (a find's, a pipeline's), each once."""
    if not names:
        raise JobFailed("--runs is needed: the runs of the case, comma-separated (`python -m jobs.show ROOT` lists)")
    committed = {m["run_id"]: m for m in committed_runs(root)}
    picked: dict[str, dict] = {}
    for name in names:
        if name not in committed:
            raise JobFailed(f"no committed run {name} under {root.uri} (`python -m jobs.show {root.uri}` lists them)")
        picked[name] = committed[name]
        for stage in (committed[name].get("stages") or {}).values():
            if stage.get("run_id") in committed:
                picked.setdefault(stage["run_id"], committed[stage["run_id"]])
    return list(picked.values())


def _add_rows(bundle: Bundle, root: Store, marker: dict) -> None:
    for table, entry in sorted(marker["tables"].items()):
        if not entry.get("rows"):
            continue
        rows = read_table(root, table, marker["run_id"])
        bundle.note(rows)
        bundle.rows += rows.num_rows
        bundle.add(f"tables/{table}/{marker['run_id']}.parquet", _parquet(rows))


def _add_calibrations(bundle: Bundle, root: Store, sources: set[str]) -> list[str]:
    """The calibration records the rows' thresholds came from (``threshold_source``), with their figures and
    ``calibrations/`` rows; a threshold from a model card names no file."""
    runs = []
    for source in sorted(sources):
        parts = source.split("/")
        if len(parts) != 3 or parts[0] != "calibration":
            continue
        run_id = parts[1]
        folder = locate(root, f"calibration/{run_id}")
        try:
            found = folder.list()
        except StorageError:
            raise JobFailed(
                f"calibration {source} is gone from {root.uri}: the case cannot show its evidence"
            ) from None
        for obj in found:
            bundle.add(f"calibration/{run_id}/{obj.relpath}", folder.join(*obj.relpath.split("/")).read_bytes())
        rows = read_table(root, "calibrations", run_id)
        if rows.num_rows:
            bundle.note(rows)
            bundle.add(f"tables/calibrations/{run_id}.parquet", _parquet(rows))
        runs.append(run_id)
    return runs


def _distinct(rows: pa.Table, a: str, b: str) -> set[tuple[str, str]]:
    pairs = rows.select([a, b]).drop_null().group_by([a, b]).aggregate([])
    return set(zip(pairs.column(a).to_pylist(), pairs.column(b).to_pylist(), strict=True))


def _parquet(rows: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(rows, sink)
    return sink.getvalue()


def _csv(header: list[str], rows: list[tuple]) -> bytes:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return text.getvalue().encode()


def _readme(config: ExportConfig, markers: list[dict], bundle: Bundle) -> str:
    runs = "\n".join(f"  {m['run_id']} ({m['job']}, committed {m['committed_at'][:19]} UTC)" for m in markers)
    return (
        f"Case {config.case}, exported by crossmatch from {config.output}.\n\nRuns:\n{runs}\n\n"
        f"{bundle.rows} rows of {len(bundle.sources)} sources. Open report/<run id>/index.html in a browser. The rows "
        "are Parquet (tables/), readable by pyarrow, DuckDB, Polars or Spark; sources.csv lists every source with its "
        "full sha256, models.csv every model with its sha256, case.json every run's record (settings, summary).\n\n"
        "To check that nothing was changed: `sha256sum -c MANIFEST.sha256` in this folder (any machine), or "
        "`python -m jobs.export --check CASE`; compare MANIFEST.sha256's own sha256 with the one the exporting root "
        "recorded (its runs table, the export run's summary: manifest_sha256).\n"
    )


def _holds_files(case: Store) -> bool:
    if case.path.endswith(".zip"):
        return case.exists()
    try:
        return bool(case.list())
    except StorageError:
        return False


def _write(case: Store, files: dict[str, bytes]) -> None:
    """The bundle's files, the manifest last (a bundle cut short has none, and its check says so); a .zip whole."""
    if case.path.endswith(".zip"):
        sink = io.BytesIO()
        with zipfile.ZipFile(sink, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(files, key=lambda p: p == MANIFEST):
                archive.writestr(path, files[path])
        case.put_atomic(sink.getvalue())
        return
    for path in sorted(files, key=lambda p: p == MANIFEST):
        case.join(*path.split("/")).put_atomic(files[path])


def check(uri: str) -> list[str]:
    """What is wrong with the bundle at ``uri`` (a folder, prefix or .zip): each file changed, missing or not in its
    manifest; nothing when every file is as exported."""
    case = resolve(uri)
    files = _read_bundle(case)
    if MANIFEST not in files:
        return [f"{MANIFEST} is missing: not a case, or an export cut short"]
    listed = {}
    for line in files.pop(MANIFEST).decode().splitlines():
        digest, _, path = line.partition("  ")
        listed[path] = digest
    problems = [f"changed: {p}" for p, d in sorted(listed.items()) if p in files and _sha(files[p]) != d]
    problems += [f"missing: {p}" for p in sorted(listed) if p not in files]
    problems += [f"not in the manifest: {p}" for p in sorted(files) if p not in listed]
    return problems


def _read_bundle(case: Store) -> dict[str, bytes]:
    if case.path.endswith(".zip"):
        with zipfile.ZipFile(io.BytesIO(case.read_bytes())) as archive:
            return {name: archive.read(name) for name in archive.namelist() if not name.endswith("/")}
    return {obj.relpath: case.join(*obj.relpath.split("/")).read_bytes() for obj in case.list()}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--check" not in argv:
        return run_job(JOB, ExportConfig, run, argv, __doc__.split("\n")[0])
    setup_logging()
    rest = [a for a in argv if a != "--check"]
    if len(rest) != 1:
        print("usage: python -m jobs.export --check CASE", file=sys.stderr)
        return 2
    try:
        problems = check(rest[0])
        digest = _sha(_read_bundle(resolve(rest[0])).get(MANIFEST, b""))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"error: case {rest[0]} was changed since it was exported ({len(problems)} problems)", file=sys.stderr)
        return 2
    print(f"case {rest[0]}: every file as exported; manifest sha256 {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
