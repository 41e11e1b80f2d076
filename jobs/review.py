"""jobs.review: an analyst's verdict on a match, kept for good: confirmed, rejected or unsure, with a note and a name.

    python -m jobs.review ROOT --match-run RUN --query ITEM --gallery ITEM --verdict confirmed --reviewer NAME

ROOT holds the match run (a search, an identify, a verify, a find's search). Each mark is a run of its own (job
"review", one row in ``reviews/``): who, when, which match (the match run, the two items and their sources' sha256,
the score and decision as they were reviewed), the verdict and why. Rows are never changed or removed by a later
mark: a later mark of the same pair supersedes an earlier one in what the report shows, and both stay. A pair that
is no row of the match run is refused (exit 2): a verdict always names evidence that exists.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc

from jobs.runtime.cli import JobConfig
from jobs.runtime.launch import JobContext, run_job
from jobs.runtime.output import JobOutput
from ops.io.errors import JobFailed
from ops.io.schemas import REVIEWS
from ops.io.tables import committed_runs, read_table
from ops.matching.reviews import reviewed

JOB = "review"
VERDICTS = ("confirmed", "rejected", "unsure")


@dataclass
class ReviewConfig(JobConfig):
    results: str | None = field(
        default=None, metadata={"positional": True, "help": "the root holding the match run (default --output)"}
    )
    match_run: str = field(default="", metadata={"run_key": True, "help": "the match run whose row is reviewed"})
    query: str = field(default="", metadata={"run_key": True, "help": "the row's query item (or source uri)"})
    gallery: str = field(
        default="", metadata={"run_key": True, "help": "the row's gallery item (identify: the identity)"}
    )
    verdict: str = field(default="", metadata={"run_key": True, "help": f"one of {', '.join(VERDICTS)}"})
    reviewer: str = field(default="", metadata={"run_key": True, "help": "who reviewed it (a name or an id)"})
    note: str = field(default="", metadata={"run_key": True, "help": "why: what was seen"})

    def __post_init__(self) -> None:
        if self.results:  # a review is kept beside the run it reviews
            self.output = self.results
        if not self.run_id:  # every mark is a run of its own, even the same verdict again later
            self.run_id = f"review-{datetime.now(UTC):%Y%m%dT%H%M%S%f}"


def run(config: ReviewConfig, ctx: JobContext) -> dict:
    if config.verdict not in VERDICTS:
        raise JobFailed(f"--verdict {config.verdict!r}: use one of {', '.join(VERDICTS)}")
    if not config.reviewer.strip():
        raise JobFailed("--reviewer is needed: a review says who made it")
    if not (config.match_run and config.query and config.gallery):
        raise JobFailed("--match-run, --query and --gallery name the match row reviewed (see jobs.show RESULTS)")
    root = ctx.output
    if config.match_run not in {m["run_id"] for m in committed_runs(root) if m["job"] == "match"}:
        raise JobFailed(f"no committed match run {config.match_run} under {root.uri}")
    named = (pc.field("query_item") == config.query) | (pc.field("query_uri") == config.query)
    rows = [r for r in read_table(root, "matches", config.match_run, filter=named).to_pylist()]
    rows = [r for r in rows if config.gallery in (r["gallery_item"], r["gallery_uri"], r["identity"])]
    if not rows:
        raise JobFailed(
            f"match run {config.match_run} has no row of {config.query} with {config.gallery}: name a pair the run "
            "scored (its query_item and gallery_item, or identity)"
        )
    row = min(rows, key=lambda r: r["rank"])
    query, gallery = reviewed(row)
    mark = {
        "run_id": ctx.run_id,
        "match_run_id": config.match_run,
        "query_item": query,
        "gallery_item": gallery,
        "query_sha256": row["query_sha256"],
        "gallery_sha256": row["gallery_sha256"],
        "score": row["score"],
        "llr": row.get("llr"),
        "decision": row["decision"],
        "verdict": config.verdict,
        "reviewer": config.reviewer.strip(),
        "note": config.note,
        "reviewed_at": datetime.now(UTC),
    }
    out = JobOutput(ctx, config, {"reviews": REVIEWS})  # ctx.output is the match run's root: the review beside it
    out.write("reviews", pa.Table.from_pylist([mark], schema=REVIEWS))
    summary = {"verdict": config.verdict, "match_run": config.match_run}
    return out.commit(summary, f"{config.match_run}: {query} ~ {gallery} {config.verdict} by {mark['reviewer']}")


def main(argv: list[str] | None = None) -> int:
    return run_job(JOB, ReviewConfig, run, argv, __doc__.split("\n")[0])


if __name__ == "__main__":
    sys.exit(main())
