"""jobs.find: here is a photo (or a recording, a video) of someone: where else are they in this archive?

    python -m jobs.find PROBE --results ROOT [--k 100] [--run-id ID]
    python -m jobs.find PROBE --results ROOT --verify ITEM


PROBE is a file or a folder of them; ROOT is the archive's results (``jobs.pipeline``'s output root). One command does
what took four: the probes are listed, their faces and voices embedded with the archive's own models and settings
(those of its newest committed faces and voices runs), and every probe face (each face of a photo, each track of a
video) and every probe voice searched against the whole archive's. A hit is every archive item the evidence says is
the same person: a calibrated log-LR above ``--min-llr`` and the threshold of the archive's newest calibration of
the model (else the model card's), not a guessed K; ``--k`` only caps how many are kept per probe item.

The stages are committed under ROOT as ``<run id>.<stage>`` (manifest, faces, voices, search-faces, search-voices,
report) and resumed as the pipeline's are, then the find's own run: ``jobs.show``, DuckDB and ``jobs.report`` read
them like any other (the hits are the search stages' ``matches/`` rows whose decision is "match"). Writing into the
archive's own root is what lets the report show the archive side of every hit from its face thumbnails.

A handful of probes (fewer than 9 files) on a cluster without GPUs is embedded in the find's own process, its models
loaded once there, with no pool of actors to start (``ActorOptions.in_process_below``: the same rows); more, or a
GPU cluster, by actors as any embedding job. Set RAY_ADDRESS to a running cluster (``ray start --head``) and the find
joins it instead of starting one.

With ``--verify ITEM`` (an archive source's uri, or an item key as ``jobs.show`` lists it) the probe is not searched
but verified: every probe file against that one item, in the table that holds it (stage ``verify-faces`` or
``verify-voices``, ``jobs.match verify`` with each side read from its own run), decided by the same calibrated
evidence; a probe with no face or voice to compare is an error row that says so. The pairs verified are kept in
``pairs/<run id>/``.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field, fields

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from jobs import embed_faces, embed_voices, manifest, match, report
from jobs.runtime.cli import JobConfig
from jobs.runtime.launch import JobContext, run_job
from jobs.runtime.options import ModelsRoot, tailored
from jobs.runtime.output import JobOutput
from jobs.runtime.stages import Stages
from ops.io.errors import JobFailed
from ops.io.root import locate
from ops.io.storage import Store, glob_escape, resolve
from ops.io.tables import committed_runs, iter_table, read_table
from ops.matching.items import parse

JOB = "find"
# The archive's settings a probe is embedded with: all but where things are, which runs, and how work is spread.
_NOT_COPIED = {"manifest", "manifest_run_id", "output", "run_id", "log_level", "shared_paths", "models", "reuse"}
_NOT_COPIED |= {"pool_size", "max_actors", "gpus_per_actor", "batch_size", "in_process_below"}
# A handful of probes is embedded in the find's own process (no pool of actors to start for them); more, by actors.
IN_PROCESS = 9


@dataclass
class FindConfig(ModelsRoot, JobConfig):
    models: str | None = tailored(ModelsRoot, "models", help="models root (default: the archive runs' own)")
    probe: str = field(
        default="",
        metadata={"positional": True, "run_key": True, "help": "a photo, recording or video, or a folder of them"},
    )
    results: str | None = field(
        default=None,
        metadata={"run_key": True, "help": "the archive's results root (jobs.pipeline's --output); default --output"},
    )
    k: int = field(default=100, metadata={"run_key": True, "help": "hits kept per probe face or voice at most"})
    min_llr: float = field(
        default=0.0, metadata={"run_key": True, "help": "a hit needs a log-LR above this too (0: favours 'same')"}
    )
    faces_run_id: str | None = field(
        default=None, metadata={"run_key": True, "help": "the archive's faces run (default: its newest)"}
    )
    voices_run_id: str | None = field(
        default=None, metadata={"run_key": True, "help": "the archive's voices run (default: its newest)"}
    )
    previews: bool = field(default=True, metadata={"run_key": True, "help": "the report's thumbnails and clips"})
    verify: str | None = field(
        default=None,
        metadata={"run_key": True, "help": "verify the probe against this archive item (a source uri or item key)"},
    )

    def __post_init__(self) -> None:
        if self.results:  # the find writes beside the archive's results: its report shows both sides
            self.output = self.results


def archive_runs(root: Store, run_id: str, config: FindConfig) -> dict[str, dict]:
    """The archive's committed faces and voices runs to search (table -> commit marker): those named, else the
    newest of each job that is no find's probes."""
    runs = committed_runs(root)
    probes = {s["run_id"] for m in runs if m["job"] == JOB for s in (m.get("stages") or {}).values() if s["run_id"]}
    found = {}
    for table, job, named in (
        ("faces", embed_faces.JOB, config.faces_run_id),
        ("voices", embed_voices.JOB, config.voices_run_id),
    ):
        mine = [
            m
            for m in runs
            if m["job"] == job and m["run_id"] not in probes and not m["run_id"].startswith(f"{run_id}.")
        ]
        if named:
            mine = [m for m in mine if m["run_id"] == named]
            if not mine:
                raise JobFailed(f"no committed {job} run {named} under {root.uri}")
        if mine and mine[-1]["tables"].get(table, {}).get("rows"):
            found[table] = mine[-1]
    if not found:
        raise JobFailed(
            f"no committed faces or voices of an archive under {root.uri}: run `python -m jobs.pipeline ARCHIVE "
            f"--output {root.uri}` first, then find in its results"
        )
    return found


def _probe_listing(probe: str) -> tuple[str, str]:
    """The folder to list and the glob: a folder's every object, or a file's own name in its folder."""
    if not probe:
        raise JobFailed("no probe given: python -m jobs.find PROBE --results ROOT (a file or a folder)")
    store = resolve(probe)
    if store.scheme == "file":
        if os.path.isfile(store.path):
            folder, name = os.path.split(store.path)
            return folder, glob_escape(name)
        if not os.path.isdir(store.path):
            raise JobFailed(f"probe {probe} does not exist: pass a photo, recording or video, or a folder of them")
        return store.uri, "**"
    if store.exists() and not store.fs.isdir(store.path):
        folder, name = store.path.rsplit("/", 1)
        return store.at(folder).uri, glob_escape(name)
    return store.uri, "**"


def _settings(marker: dict, cls: type) -> dict:
    """An embedding run's settings, as a probe must be embedded to be compared with its rows."""
    names = {f.name for f in fields(cls)} - _NOT_COPIED
    return {k: v for k, v in (marker.get("config") or {}).items() if k in names}


def _calibrated(root: Store, model_name: str) -> bool:
    found = read_table(root, "calibrations", columns=["model_name"], filter=pc.field("model_name") == model_name)
    return found.num_rows > 0


def run(config: FindConfig, ctx: JobContext) -> dict:
    folder, glob = _probe_listing(config.probe)
    root = ctx.output
    archive = archive_runs(root, ctx.run_id, config)
    verified = _verified_table(root, archive, config.verify) if config.verify else None
    out = JobOutput(ctx, config)  # no table of its own: its stages commit theirs
    stages = Stages(ctx, None, {m["run_id"]: m for m in committed_runs(root)}, config.shared_paths)
    stages.run("manifest", manifest, manifest.ManifestConfig(archive=folder, glob=glob))
    probes = stages.done["manifest"]["run_id"]
    compare = "verify" if verified else "search"
    hits: dict[str, dict] = {}
    for table, module, cls in (
        ("faces", embed_faces, embed_faces.EmbedFacesConfig),
        ("voices", embed_voices, embed_voices.EmbedVoicesConfig),
    ):
        if table not in archive or verified not in (None, table):
            why = f"the archive has no committed {table}"
            if table in archive:
                why = f"the item to verify is one of the archive's {verified}"
            stages.skip(table, why, asked=False)
            stages.skip(f"{compare}-{table}", why, asked=False)
            continue
        gallery = archive[table]
        models = config.models or locate(root, (gallery.get("config") or {}).get("models")).uri
        embedded = stages.run(
            table,
            module,
            cls(
                manifest=root.uri,
                manifest_run_id=probes,
                models=models,
                in_process_below=IN_PROCESS,
                **_settings(gallery, cls),
            ),
        )
        if not embedded["tables"].get(table, {}).get("rows"):
            stages.skip(f"{compare}-{table}", f"no {table} were found in the probes", asked=False)
            continue
        model_name = (gallery.get("summary") or {}).get("model")
        common = {
            "queries": root.uri,
            "queries_run_id": stages.done[table]["run_id"],
            "gallery": root.uri,
            "gallery_run_id": gallery["run_id"],
            "table": table,
            "calibration": root.uri if model_name and _calibrated(root, model_name) else None,
            "min_llr": config.min_llr,
            "models": models,
        }
        if verified:
            pairs = _write_pairs(root, ctx.run_id, table, probes, config.verify)
            stages.run(f"verify-{table}", match, match.MatchConfig(mode="verify", pairs=pairs, **common))
        else:
            # A recording's pooled voice is searched, as the archive's voices are.
            stages.run(
                f"search-{table}",
                match,
                match.MatchConfig(mode="search", per_source=table == "voices", k=config.k, reuse=False, **common),
            )
        compared = stages.done[f"{compare}-{table}"]
        found = _hits(root, table, compared["run_id"], ctx, "accept" if verified else "match")
        hits[table] = {"hits": found, "items": compared["summary"].get("pairs" if verified else "queries")}
    stages.run(
        "report", report, report.ReportConfig(results=root.uri, pipeline_run_id=ctx.run_id, previews=config.previews)
    )
    summary = {
        "probe": config.probe,
        "archive_runs": {table: marker["run_id"] for table, marker in archive.items()},
        "hits": {table: found["hits"] for table, found in hits.items()},
        f"{'pairs' if verified else 'probe_items'}": {table: found["items"] for table, found in hits.items()},
        "report_uri": stages.done["report"]["summary"].get("report_uri"),
    }
    if verified:
        summary["verified"] = config.verify
    return out.commit(summary, f"report: {locate(root, summary['report_uri']).uri}", stages=stages.done)


def _verified_table(root: Store, archive: dict[str, dict], item: str) -> str:
    """The archive table (faces or voices) whose run holds ``item``'s source: what the probe is verified in."""
    uri = parse(item).uri
    for table, marker in archive.items():
        if read_table(root, table, marker["run_id"], ["uri"], filter=pc.field("uri") == uri, limit=1).num_rows:
            return table
    runs = ", ".join(f"{table} {marker['run_id']}" for table, marker in archive.items())
    raise JobFailed(
        f"--verify {item}: the archive's runs ({runs}) hold no face or voice of {uri}: name a source uri or an item "
        f"key as `python -m jobs.show {root.uri} --table faces` lists them"
    )


def _write_pairs(root: Store, run_id: str, table: str, probes: str, item: str) -> str:
    """The pairs a verification scores, every probe file against ``item``, kept as ``pairs/<run id>/<table>.parquet``
    (streamed from the probe manifest: a folder of many probes is never held)."""
    target = root.join("pairs", run_id, f"{table}.parquet")
    schema = pa.schema([("a", pa.string()), ("b", pa.string())])
    with target.open("wb") as f, pq.ParquetWriter(f, schema) as writer:
        for batch in iter_table(root, "manifest", probes, ["uri"]):
            uris = batch.column("uri")
            writer.write_table(pa.table({"a": uris, "b": pa.array([item] * len(uris), pa.string())}, schema=schema))
    return target.uri


def _hits(root: Store, table: str, run_id: str, ctx: JobContext, positive: str = "match") -> int:
    """A search or verify stage's hits (rows whose decision is ``positive``), logged as they stream by: only the hits
    are read, a batch at a time, so a folder of many probes holds nothing on the driver but the count."""
    columns = ["query_item", "rank", "gallery_item", "score", "llr", "verbal"]
    hits = 0
    for batch in iter_table(root, "matches", run_id, columns, filter=pc.field("decision") == positive):
        for r in batch.to_pylist():
            evidence = f", log-LR {r['llr']:+.2f} ({r['verbal']})" if r["llr"] is not None else ""
            ctx.log.info(
                "%s hit: %s #%d %s score %.3f%s",
                table,
                r["query_item"],
                r["rank"],
                r["gallery_item"],
                r["score"],
                evidence,
            )
        hits += batch.num_rows
    ctx.log.info("%s: %d hit(s)", table, hits)
    return hits


def main(argv: list[str] | None = None) -> int:
    return run_job(JOB, FindConfig, run, argv, __doc__.split("\n")[0])


if __name__ == "__main__":
    sys.exit(main())
