"""Exactly-once accounting with the archive off the driver: every source ends as its result rows or one error row,
checked by workers, a slice of the archive each.

    sources = plan_sources(root, run_id, ("image", "video"), columns, min_bytes, parallelism, ledger)
    data = ray.data.from_arrow_refs(sources.blocks) ... .map_batches(write_stage)   # workers stage their rows
    staged = collect(data, job, sources.count)                                     # paths and counts only
    settled = settle(ledger, staged, finish, finish_kwargs, errors_writer)         # a task per slice of uris
    job.add_settled(settled)

1. **Planning.** A task per committed manifest data file reads its sources, cuts them into blocks balanced by size
   (the pipeline's input, left in the object store) and stages the list of sources it planned in the ledger.
2. **Staging.** The workers that write a job's result rows stage the small rows the accounting needs (each source's
   outcome, a frame's face count, a source's partial embedding sums) in the ledger, and hand the driver only the
   paths of what they wrote and how many rows.
3. **Settling.** A task per slice of the uris (by a hash of the uri, so that every row of a source meets in one task)
   reads the manifest's and the ledger's rows of its slice, checks that every listed source has exactly one outcome
   per expected key and that no outcome is for a source nobody listed (an anti-join), writes the slice's error rows,
   and calls the job's ``finish``, which writes its per-source table rows and returns counts.

The ledger lives under ``<output>/_staging/<run_id>/<attempt>/ledger`` and its files are sorted by bucket in small
row groups, so a settling task reads only the row groups of its slice. The driver holds paths and counts: its
memory grows with the number of files written, never with the number of sources.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from jobs.runtime.cluster import TASK_CPUS, shard
from jobs.runtime.output import RowWriter, parse_file_row
from jobs.runtime.progress import Progress
from jobs.runtime.reuse import PLANNED, REUSED, Planned, Reuse, plan_reusing
from jobs.runtime.slices import bucket_slices, buckets
from ops.io.errors import AccountingMismatch, JobFailed
from ops.io.storage import ObjectInfo, Store, storage_errors
from ops.io.tables import DataFile, OutputRun, committed_files, committed_rows, committed_runs, error_table

ROW_GROUPS = 64  # a ledger file's row groups: a task reading 1/n of the buckets reads about 1/n + 1/64 of it
LISTED = "listed"  # the ledger's kind for the manifest's sources
OUTCOMES = "outcomes"  # and for each source's outcome: a result ("source") or an error row ("error")
SOURCE_COLUMNS = ["uri", "sha256", "size", "media_category", "media_kind"]
# What every outcome row holds (a job's outcome rows may hold more): the key it is accounted under (a uri, or
# "uri x style"), and for an error row its stage, name in the vocabulary and message.
OUTCOME_FIELDS = [
    ("key", pa.string()),
    ("kind", pa.string()),
    ("uri", pa.string()),
    ("sha256", pa.string()),
    ("stage", pa.string()),
    ("error_type", pa.string()),
    ("message", pa.string()),
]


@dataclass(frozen=True)
class Ledger:
    """Where a run attempt's workers stage the rows its accounting needs. Picklable: it travels to the workers."""

    folder: Store

    def stage(self, kind: str, rows: pa.Table, by: str = "uri") -> str:
        """Write rows of ``kind`` sorted by the bucket of their ``by`` column; returns the file's path."""
        target = self.folder.join(kind, f"{uuid.uuid4().hex}.parquet")
        write_bucketed(rows, target, by)
        return target.path

    def read(self, paths: list[str], lo: int, hi: int, columns: list[str] | None = None) -> pa.Table | None:
        """The rows of these staged files whose uri falls in buckets [lo, hi) (None: no files)."""
        if not paths:
            return None
        in_slice = (pc.field("bucket") >= lo) & (pc.field("bucket") < hi)
        with storage_errors(self.folder.uri):
            return pads.dataset(paths, format="parquet", filesystem=self.folder.arrow).to_table(
                columns=columns, filter=in_slice
            )

    def remove(self) -> None:
        if self.folder.exists():
            self.folder.remove_tree()


def write_bucketed(rows: pa.Table, target: Store, by: str = "uri") -> None:
    """Rows with a ``bucket`` column (of their ``by`` column), sorted by it in small row groups: a reader of a range
    of buckets (``Ledger.read``) reads only the row groups that hold it."""
    rows = rows.append_column("bucket", buckets(rows.column(by))).sort_by("bucket")
    with storage_errors(target.uri), target.open("wb") as f:
        pq.write_table(rows, f, compression="zstd", row_group_size=max(1024, -(-rows.num_rows // ROW_GROUPS)))


def ledger_of(out: OutputRun) -> Ledger:
    """The ledger of a run attempt, beside its other staged files."""
    return Ledger(out.staging("ledger"))


# -- planning ----------------------------------------------------------------------------------------------------


@dataclass
class Sources:
    """A manifest's sources of some media categories, planned: blocks for the pipeline (object refs), the staged
    list of them, how many there are, and how many rows the committed manifest has in all."""

    blocks: list = field(default_factory=list)
    listed: list[str] = field(default_factory=list)
    count: int = 0
    manifest_rows: int = 0
    reused: Planned = field(default_factory=Planned)  # sources reused from an earlier run (``jobs.runtime.reuse``)


def plan_sources(
    root: Store,
    run_id: str | None,
    categories: tuple[str, ...],
    columns: list[str],
    min_bytes: int,
    parallelism: int,
    ledger: Ledger,
    reuse: Reuse | None = None,
) -> Sources:
    """The committed manifest's sources of these categories (one manifest run's, or every committed one's), planned
    by a task per manifest data file. Its blocks carry ``columns`` and are balanced by size over about
    ``parallelism`` workers. With ``reuse``, the sources an earlier run already embedded are planned out (their
    rows copied, see ``jobs.runtime.reuse``) by a task per slice of the content hashes."""
    import ray

    runs = [r for r in committed_runs(root) if "manifest" in r["tables"] and run_id in (None, r["run_id"])]
    total = sum(r["tables"]["manifest"]["rows"] for r in runs)
    if total == 0:
        raise JobFailed(f"no committed manifest under {root.uri}: run `python -m jobs.manifest` first")
    paths, pairs = committed_files(root, "manifest", run_id)
    cpus = max(1, -(-parallelism // max(len(paths), 1)))
    task = ray.remote(num_cpus=TASK_CPUS, num_returns="streaming")(plan_file)
    by_content = reuse is not None
    generators = [task.remote(p, root, pairs, categories, columns, cpus, min_bytes, ledger, by_content) for p in paths]
    sources, planned = Sources(manifest_rows=total), []
    for generator in generators:
        refs = list(generator)
        summary = ray.get(refs[-1])  # the last thing a planning task yields: what it staged
        sources.blocks += refs[:-1]
        sources.count += summary["rows"]
        if summary["path"]:
            sources.listed.append(summary["path"])
            planned += [summary["planned"]] if by_content else []
    if by_content:
        cpus = max(1, -(-parallelism // len(bucket_slices(sources.count))))
        sources.reused = plan_reusing(root, ledger, planned, reuse, columns, cpus, min_bytes, sources.count)
        sources.blocks = sources.reused.blocks
    return sources


def plan_file(
    path: str,
    root: Store,
    pairs: set,
    categories: tuple,
    columns: list[str],
    cpus: int,
    min_bytes: int,
    ledger: Ledger,
    by_content: bool = False,
) -> Iterator:
    """One manifest data file's sources: blocks balanced by size (see ``plan.shard``), then a summary. With
    ``by_content`` no blocks: the sources are staged by content hash for the reuse planning (``jobs.runtime.reuse``)."""
    wanted = pc.field("media_category").isin(list(categories))
    rows = committed_rows(path, root, pairs, SOURCE_COLUMNS, wanted)
    staged = ledger.stage(LISTED, rows.select(["uri", "sha256", "media_category"])) if rows.num_rows else ""
    if by_content:
        keep = list(dict.fromkeys([*columns, "uri", "sha256", "size"]))
        planned = ledger.stage(PLANNED, rows.select(keep), by="sha256") if rows.num_rows else ""
        yield {"rows": rows.num_rows, "path": staged, "planned": planned}
        return
    if rows.num_rows:
        sizes = rows.column("size").to_numpy(zero_copy_only=False)
        objects = [ObjectInfo(str(i), str(i), int(n), None) for i, n in enumerate(sizes)]
        picked = rows.select(columns)
        for part in shard(objects, cpus, min_bytes):
            yield picked.take(pa.array(sorted(int(o.uri) for o in part)))
    yield {"rows": rows.num_rows, "path": staged}


# -- staging -----------------------------------------------------------------------------------------------------

# What a job's writing stage hands the driver: one row per file it wrote (a data file of a result table, its
# description in ``path``; or a ledger file, its path) with how many rows it holds; ``sources`` counts the outcomes
# among them (for progress).
STAGED = pa.schema([("kind", pa.string()), ("path", pa.string()), ("rows", pa.int64())])


def staged_rows(entries: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(entries, schema=STAGED)


@dataclass
class Staged:
    """What the workers wrote, as the driver knows it: ledger paths by kind, row counts by kind, data files."""

    paths: dict[str, list[str]] = field(default_factory=dict)
    rows: Counter = field(default_factory=Counter)
    files: list[DataFile] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rows = Counter(self.rows)


def collect(data, sources: Sources, per_source: int = 1, what: str = "sources") -> Staged:
    """Run the pipeline ``data`` (whose last stage yields ``STAGED`` rows; None: nothing to run, every source was
    reused) and gather what it staged; progress counts outcomes, ``per_source`` of them each."""
    paths = {LISTED: list(sources.listed), REUSED: list(sources.reused.reused_paths)}
    staged = Staged(paths=paths, rows=Counter({LISTED: sources.count}))
    progress = Progress(what, (sources.count - sources.reused.reused) * per_source)
    for batch in data.iter_batches(batch_format="pyarrow", batch_size=None) if data is not None else []:
        for kind, path, rows in zip(*(batch.column(c).to_pylist() for c in ("kind", "path", "rows")), strict=True):
            if kind == "file":
                staged.files.append(parse_file_row(path))
                continue
            staged.paths.setdefault(kind, []).append(path)
            staged.rows[kind] += rows
            if kind == OUTCOMES:
                progress.update(rows)
    return staged


# -- settling ----------------------------------------------------------------------------------------------------


@dataclass
class Settled:
    """What the settling tasks wrote and counted together."""

    files: list[DataFile] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    errors_by_type: Counter = field(default_factory=Counter)


Finish = Callable[..., tuple[list[DataFile], dict]]


def settle(
    ledger: Ledger,
    staged: Staged,
    finish: Finish,
    finish_kwargs: dict,
    errors: RowWriter,
    job: str,
    suffixes: tuple[str, ...] = ("",),
    slice_rows: int | None = None,
) -> Settled:
    """Check the accounting and write the per-source rows, a task per slice of the uris; raise ``JobFailed``
    (nothing committed) when a source has no outcome, two, or an outcome nobody listed. A source is expected once
    under each key ``uri + suffix``. A slice holds at most ``SLICE_SOURCES`` sources and ``slice_rows`` (default
    ``SLICE_ROWS``) staged rows of any one kind."""
    import ray

    heaviest = max([staged.rows[k] for k in staged.rows if k not in (LISTED, OUTCOMES)], default=0)
    most = max(staged.rows[LISTED], staged.rows[OUTCOMES])
    paths = ray.put(staged.paths)
    task = ray.remote(settle_slice)
    pending = [
        task.remote(lo, hi, ledger, paths, suffixes, finish, finish_kwargs, errors, job)
        for lo, hi in bucket_slices(most, heaviest, slice_rows)
    ]
    settled, problems = Settled(), Counter()
    examples: list[str] = []
    progress = Progress("settled slices (accounting, per-source rows)", len(pending))
    while pending:
        (done,), pending = ray.wait(pending, num_returns=1)
        result = ray.get(done)
        progress.update(1)
        problems.update(result["problems"])
        examples += result["examples"]
        settled.files += result["files"]
        settled.counts.update(result["counts"])
        settled.errors_by_type.update(result["errors_by_type"])
    if problems:
        said = ", ".join(f"{n} {what}" for what, n in sorted(problems.items()))
        fixable = all(what == TWICE_LISTED for what in problems)  # the input, not the job: the user's to fix
        raise (JobFailed if fixable else AccountingMismatch)(
            f"accounting mismatch: {said} (e.g. {sorted(examples)[0]}); nothing was committed, rerun the job"
        )
    return settled


def settle_slice(
    lo: int,
    hi: int,
    ledger: Ledger,
    paths: dict[str, list[str]],
    suffixes: tuple[str, ...],
    finish: Finish,
    finish_kwargs: dict,
    errors: RowWriter,
    job: str,
) -> dict:
    """One slice of the uris: the anti-join of what the manifest listed against the outcomes, the slice's error
    rows written, then the job's own rows (``finish``)."""
    listed = ledger.read(paths[LISTED], lo, hi, ["uri", "sha256", "media_category"])
    outcomes = ledger.read(paths.get(OUTCOMES, []), lo, hi)
    reused = ledger.read(paths.get(REUSED, []), lo, hi, ["key"])
    problems, examples = _anti_join(listed, outcomes, suffixes, reused)
    if problems:
        return {"problems": problems, "examples": examples[:3], "files": [], "counts": {}, "errors_by_type": {}}
    files: list[DataFile] = []
    by_type: Counter = Counter()
    if outcomes is not None:
        failed = outcomes.filter(pc.equal(outcomes.column("kind"), "error"))
        if failed.num_rows:
            rows = failed.select([n for n, _ in OUTCOME_FIELDS if n != "key"]).to_pylist()
            files += errors.write(error_table(rows, errors.run_id, job))
            by_type.update(failed.column("error_type").to_pylist())
    made, counts = finish(lo, hi, ledger, paths, outcomes, **finish_kwargs)
    return {"problems": {}, "examples": [], "files": files + made, "counts": counts, "errors_by_type": by_type}


def _anti_join(
    listed: pa.Table | None, outcomes: pa.Table | None, suffixes: tuple[str, ...], reused: pa.Table | None = None
):
    """What went wrong in a slice: uris the manifest lists twice, keys reported twice (a reused source counts as
    reported), keys expected and never reported, keys reported and never expected; with a few examples."""
    uris = listed.column("uri").to_pylist() if listed is not None else []
    keys = [k for t in (outcomes, reused) if t is not None for k in t.column("key").to_pylist()]
    problems: Counter = Counter()
    examples: list[str] = []

    def found(what: str, items) -> None:
        if items:
            problems[what] += len(items)
            examples.append(f"{min(items)} ({what})")

    found(TWICE_LISTED, _repeated(uris))
    found("sources reported twice", _repeated(keys))
    expected = {u + s for u in set(uris) for s in suffixes}
    got = set(keys)
    found("sources without a result or an error row", expected - got)
    found("results for sources the manifest does not list", got - expected)
    return problems, examples


TWICE_LISTED = "uris the manifest lists twice (pass --manifest-run-id)"


def _repeated(values: list[str]) -> set[str]:
    seen: set[str] = set()
    return {v for v in values if v in seen or seen.add(v)}


def summed(table: pa.Table | None, key: str, columns: list[str]) -> dict[str, tuple]:
    """Per ``key`` value, the sums of ``columns`` (a slice's staged partial counts)."""
    if table is None or table.num_rows == 0:
        return {}
    grouped = table.group_by(key).aggregate([(c, "sum") for c in columns])
    sums = [grouped.column(f"{c}_sum").to_pylist() for c in columns]
    return {k: tuple(s[i] for s in sums) for i, k in enumerate(grouped.column(key).to_pylist())}
