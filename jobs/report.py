"""jobs.report: one self-contained HTML report of a matching run, written to the object store.

    python -m jobs.report [RESULTS] [--pipeline-run-id ID] [--output ROOT] [--max-probes 50]

Reads the committed runs under RESULTS (a pipeline run's stages, or the newest run of each job) and writes
``report/<run_id>/index.html``: the runs and models behind it (names and sha256), counts (inputs by kind, faces,
speech segments, errors by job and type), the calibration (AUC, EER, threshold, ROC and score histograms) when there
are labels, for each probe its top matches with face thumbnails or speech clips, scores and thresholds, and
identification decisions; who is in the archive (a contact sheet per identity, the largest first: its representative
and surest members) and the persons that link a face identity to a voice identity, each with its evidence. Thumbnails
and clips are embedded as data: URIs, so the file opens in any browser, from a laptop or a bucket, with no server. A
source that cannot be previewed shows the reason instead.

The command only composes: ``ops.report.read`` reads what the report shows, ``ops.report.html`` draws it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from jobs.runtime.cli import JobConfig
from jobs.runtime.launch import JobContext, run_job, run_module
from jobs.runtime.output import JobOutput
from ops.io.errors import JobFailed
from ops.io.root import inside
from ops.io.storage import resolve
from ops.report import html
from ops.report.read import read_report, select_runs

JOB = "report"


@dataclass
class ReportConfig(JobConfig):
    results: str = field(
        default="out/results",
        metadata={"positional": True, "run_key": True, "help": "output root holding the committed runs"},
    )
    pipeline_run_id: str | None = field(
        default=None,
        metadata={"run_key": True, "help": "report this pipeline run's stages (default: the newest run of each job)"},
    )
    max_probes: int = field(default=50, metadata={"help": "probes shown with their matches, per table and mode"})
    max_identities: int = field(default=12, metadata={"help": "identities shown (the largest), per modality"})
    members_shown: int = field(default=8, metadata={"help": "members shown per identity"})
    thumb_size: int = field(default=96, metadata={"help": "face thumbnails' longer side, pixels"})
    clip_seconds: float = field(default=4.0, metadata={"help": "speech clips' length at most, seconds"})
    previews: bool = field(
        default=True,
        metadata={"run_key": True, "help": "face thumbnails and speech clips (--no-previews: no biometric data)"},
    )


def run(config: ReportConfig, ctx: JobContext) -> dict:
    if config.max_probes < 0:
        raise JobFailed("--max-probes must be 0 or more")
    root = resolve(config.results)
    out = JobOutput(ctx, config)  # no table of its own: the page, and its row in runs
    runs = select_runs(root, config.pipeline_run_id)
    shown = read_report(
        root,
        runs,
        max_probes=config.max_probes,
        max_identities=config.max_identities,
        members_shown=config.members_shown,
        thumb_size=config.thumb_size,
        clip_seconds=config.clip_seconds,
        previews=config.previews,
    )
    previews, probes_shown = shown.previews, shown.probes_shown
    title = f"crossmatch report {ctx.run_id}"
    page = html.page(title, html.sections(shown))
    target = ctx.output.join("report", ctx.run_id, "index.html")
    target.put_atomic(page.encode("utf-8"))
    summary = {
        "report_uri": inside(ctx.output, target.uri),
        "bytes": len(page.encode("utf-8")),
        "runs": [m["run_id"] for m in runs],
        "probes_shown": probes_shown,
        "previews_failed": previews.failed,
    }
    return out.commit(summary, f"report of {len(runs)} runs, {probes_shown} probes shown: {target.uri}")


def main(argv: list[str] | None = None) -> int:
    return run_job(JOB, ReportConfig, run, argv, description=__doc__.split("\n")[0])


if __name__ == "__main__":
    sys.exit(run_module(__spec__.name))
