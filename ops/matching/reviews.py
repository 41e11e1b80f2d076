"""What analysts concluded, as the matching uses it: confirmed pairs are the same person, rejected pairs are not.

    found = verdicts(root)                       # every review under root; or verdicts(root, through="review-...")
    found.same, found.different                  # [((item, sha256), (item, sha256)), ...]
    scores, same = reviewed_scores(root, ("facenet", "ab12..."), "faces")   # labels for a calibration

``jobs.review`` keeps one row per mark in ``reviews/`` and never rewrites one. The verdict a pair has is its newest
mark (from any match run that scored it, in either order): a later ``unsure`` withdraws an earlier ``confirmed``.
A side is an item *with its content's sha256*: a mark says nothing of a file changed since it was reviewed. Marks
naming an identity rather than an item (identify's rows) say nothing about two items and are left out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow.compute as pc

from ops.io.errors import JobFailed
from ops.io.storage import Store
from ops.io.tables import committed_runs, read_table

Side = tuple[str, str]  # (item, sha256)
Pair = tuple[Side, Side]


@dataclass(frozen=True)
class Verdicts:
    """The newest verdict of each reviewed pair of items: ``same`` (confirmed) and ``different`` (rejected)."""

    same: list[Pair] = field(default_factory=list)
    different: list[Pair] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.same or self.different)


def newest_review(root: Store) -> str | None:
    """The newest committed review run under ``root``: what a job that applies reviews names to say which it saw."""
    runs = [m["run_id"] for m in committed_runs(root) if m["job"] == "review"]
    return runs[-1] if runs else None


def verdicts(root: Store, through: str | None = None) -> Verdicts:
    """Every pair's newest verdict among the reviews committed under ``root`` (up to and including review run
    ``through``, when given: what a run that names it saw)."""
    newest = _newest_marks(root, through)
    same = [pair for pair, mark in newest.items() if mark["verdict"] == "confirmed"]
    different = [pair for pair, mark in newest.items() if mark["verdict"] == "rejected"]
    return Verdicts(same, different)


def reviewed_scores(
    root: Store, model: tuple[str, str], table: str, through: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The scores of the confirmed and rejected pairs that a match run of ``model`` (name, sha256) on ``table``
    scored, as they were reviewed, and whether each is the same person: labels a calibration of that model adds to
    its labelled sample's pairs. Pairs another model scored (or a head) say nothing of this model's scores."""
    markers = committed_runs(root)
    marks = [m for m in _newest_marks(root, through, markers).values() if m["verdict"] in ("confirmed", "rejected")]
    runs = {m["run_id"]: m for m in markers if m["job"] == "match"}
    of_model = set()
    for run_id in {m["match_run_id"] for m in marks}:
        if run_id not in runs or (runs[run_id].get("config") or {}).get("table", "faces") != table:
            continue
        first = read_table(root, "matches", run_id, ["model_name", "model_sha256"], limit=1).to_pylist()
        if first and (first[0]["model_name"], first[0]["model_sha256"]) == tuple(model):
            of_model.add(run_id)
    kept = [m for m in marks if m["match_run_id"] in of_model]
    return np.array([m["score"] for m in kept], np.float64), np.array([m["verdict"] == "confirmed" for m in kept], bool)


def _newest_marks(root: Store, through: str | None, markers: list[dict] | None = None) -> dict[Pair, dict]:
    """The newest mark of each reviewed pair of items (in either order), of the review runs up to ``through``
    (``markers``: the root's committed runs, when the caller has them)."""
    runs = [m["run_id"] for m in (committed_runs(root) if markers is None else markers) if m["job"] == "review"]
    if through is not None:
        if through not in runs:
            raise JobFailed(f"no committed review run {through} under {root.uri} (`python -m jobs.show` lists runs)")
        runs = runs[: runs.index(through) + 1]
    if not runs:
        return {}
    columns = ["run_id", "match_run_id", "query_item", "query_sha256", "gallery_item", "gallery_sha256"]
    columns += ["score", "verdict", "reviewed_at"]
    marks = read_table(
        root, "reviews", columns=columns, filter=pc.field("run_id").isin(runs) & pc.is_valid(pc.field("gallery_sha256"))
    ).to_pylist()
    newest: dict[Pair, dict] = {}
    for mark in sorted(marks, key=lambda m: m["reviewed_at"]):
        a, b = (mark["query_item"], mark["query_sha256"]), (mark["gallery_item"], mark["gallery_sha256"])
        if a != b:
            newest[min(a, b), max(a, b)] = mark
    return newest


def latest(root: Store, match_runs: set[str]) -> dict[tuple[str, str, str], dict]:
    """The newest mark of each (match run, query item, gallery item) of these match runs (earlier marks stay)."""
    if not match_runs:
        return {}
    found = read_table(root, "reviews", filter=pc.field("match_run_id").isin(sorted(match_runs))).to_pylist()
    marks: dict[tuple[str, str, str], dict] = {}
    for mark in sorted(found, key=lambda m: m["reviewed_at"]):
        marks[mark["match_run_id"], mark["query_item"], mark["gallery_item"]] = mark
    return marks


def reviewed(row: dict) -> tuple[str, str]:
    """The pair a match row names, as a review names it: its query item, and its gallery item or identity."""
    return row["query_item"], row["gallery_item"] or row["identity"]
