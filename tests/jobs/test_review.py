"""jobs.review: an analyst's verdicts on matches, kept for good and shown in the report."""

import shutil
from pathlib import Path

from jobs import pipeline, report, review
from ops.io.root import locate
from ops.io.storage import resolve
from ops.io.tables import committed_runs, read_table
from ops.matching import reviews


def test_verdicts_are_kept_never_rewritten_and_the_report_shows_the_latest(pipeline_run, tmp_path, caplog):
    results = tmp_path / "results"
    shutil.copytree(pipeline_run["results"], results)
    root = resolve(str(results))
    rows = read_table(root, "matches", "pl.search-faces").to_pylist()
    first, second = sorted(rows, key=lambda r: (r["query_item"], r["rank"]))[:2]

    def mark(row: dict, verdict: str, note: str) -> int:
        argv = [str(results), "--match-run", "pl.search-faces", "--query", row["query_item"]]
        argv += ["--gallery", row["gallery_item"], "--verdict", verdict, "--reviewer", "A. Examiner", "--note", note]
        return review.main(argv)

    assert mark(first, "unsure", "profile only") == 0
    assert mark(first, "confirmed", "same scar on the left cheek") == 0  # a later look supersedes, never rewrites
    assert mark(second, "rejected", "different ear shape") == 0
    marks = read_table(root, "reviews").to_pylist()
    assert sorted(m["verdict"] for m in marks) == ["confirmed", "rejected", "unsure"]  # all three kept
    kept = {m["verdict"]: m for m in marks}["confirmed"]
    assert (kept["query_sha256"], kept["gallery_sha256"], kept["score"]) == (
        first["query_sha256"],
        first["gallery_sha256"],
        first["score"],
    )  # what was reviewed, as it was
    latest = reviews.latest(root, {"pl.search-faces"})
    assert latest["pl.search-faces", first["query_item"], first["gallery_item"]]["verdict"] == "confirmed"

    # A verdict on evidence that does not exist, or without a name, is refused with the fix.
    assert mark({**first, "gallery_item": "/nowhere.jpg#frame=0&face=0"}, "confirmed", "x") == 2
    assert "has no row of" in caplog.text
    assert review.main([str(results), "--match-run", "pl.search-faces", "--query", "q", "--gallery", "g"]) == 2

    # The report shows each reviewed match's latest verdict, who gave it and why.
    assert report.main([str(results), "--pipeline-run-id", "pl", "--output", str(results), "--run-id", "rv"]) == 0
    (marker,) = [m for m in committed_runs(root) if m["run_id"] == "rv"]
    page = Path(locate(root, marker["summary"]["report_uri"]).path).read_text()
    assert page.count('data-testid="review"') == 2
    assert "<b>confirmed</b> by A. Examiner" in page and "same scar on the left cheek" in page
    assert "<b>rejected</b> by A. Examiner" in page and "profile only" not in page  # the superseded mark: not shown

    # The verdicts feed back: the same pipeline again calibrates with them (a confirmed pair is a same-person pair,
    # a rejected one a different-person pair) and clusters with them (together, and never together).
    argv = [a if a != str(pipeline_run["results"]) else str(results) for a in pipeline_run["argv"]]
    assert pipeline.main(argv) == 0
    stages = {m["run_id"]: m for m in committed_runs(root)}["pl"]["stages"]
    for table in ("faces", "voices"):  # nothing embedded again (a stage other tests ran with other settings runs
        # again, reusing every source)
        done = stages[table]
        assert done["state"] == "kept" or done["summary"]["reused"] == done["summary"]["sources"], done
    assert stages["calibrate-faces"]["state"] == stages["identities-faces"]["state"] == "ran"
    calibration = stages["calibrate-faces"]["summary"]
    assert (calibration["reviewed_same_pairs"], calibration["reviewed_different_pairs"]) == (1, 1)
    clustered = stages["identities-faces"]["summary"]
    assert (clustered["reviewed_same"], clustered["reviewed_different"]) == (1, 1)
    who = {r["item"]: r["identity"] for r in read_table(root, "identities", "pl.identities-faces").to_pylist()}
    assert who[first["query_item"]] == who[first["gallery_item"]]
    assert who[second["query_item"]] != who[second["gallery_item"]]
    # Nothing new since: the same command keeps every stage.
    assert pipeline.main(argv) == 0
    stages = {m["run_id"]: m for m in committed_runs(root)}["pl"]["stages"]
    assert {e["state"] for e in stages.values()} <= {"kept", "skipped"}
