"""jobs.find: a probe photo to every archive face the evidence says is the same person, in one command."""

import shutil
from pathlib import Path

from jobs import delete, find, match
from ops.io.root import locate
from ops.io.storage import resolve
from ops.io.tables import committed_runs, read_table


def test_one_photo_finds_its_person_across_the_archive_with_both_sides_in_the_report(pipeline_run, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(pipeline_run["results"], results)  # the demo's results, as a user's archive would have them
    probe = tmp_path / "probe" / "who is this.png"
    probe.parent.mkdir()
    probe.write_bytes((pipeline_run["archive"] / "photos" / "alice" / "portrait-2.png").read_bytes())
    argv = [str(probe), "--results", str(results), "--run-id", "f"]
    assert find.main(argv) == 0

    root = resolve(str(results))
    runs = {m["run_id"]: m for m in committed_runs(root)}
    marker = runs["f"]
    assert marker["summary"]["archive_runs"] == {"faces": "pl.faces", "voices": "pl.voices"}
    stages = {name: entry["state"] for name, entry in marker["stages"].items()}
    assert stages == {
        "manifest": "ran",
        "faces": "ran",
        "voices": "ran",
        "search-faces": "ran",
        "search-voices": "skipped",  # a photo has no voice
        "report": "ran",
    }
    # Only the probe was listed, embedded and searched (the archive's runs are not touched).
    assert read_table(root, "manifest", "f.manifest").column("uri").to_pylist() == [str(probe)]
    rows = read_table(root, "matches", "f.search-faces").to_pylist()
    assert {r["query_uri"] for r in rows} == {str(probe)}
    assert rows and all(r["gallery_uri"].startswith(str(pipeline_run["archive"])) for r in rows)
    # Every hit is a "match" the calibrated evidence supports, however many there are; no guessed K below --k.
    hits = [r for r in rows if r["decision"] == "match"]
    assert marker["summary"]["hits"] == {"faces": len(hits)} and hits
    assert all(r["llr"] is not None and r["llr"] > 0 for r in hits)
    assert str(pipeline_run["archive"] / "photos" / "alice" / "portrait-2.png") in {r["gallery_uri"] for r in hits}
    assert {r["threshold_source"] for r in rows} == {"calibration/pl.calibrate-faces/record.json"}

    # The report shows both sides of every hit (the archive's faces from its own thumbnails) and the calibration
    # the threshold came from, though neither was made by the find.
    page = Path(locate(root, marker["summary"]["report_uri"]).path).read_text()
    assert page.count('data-testid="thumb"') == len(rows) + 1 and "no face row" not in page
    assert 'data-testid="calibration-faces"' in page and "No calibration" not in page

    # The probe verified against named archive items, each side read from its own root: the probe's faces from the
    # find's run here, the archive's from the pipeline's own results.
    photos = pipeline_run["archive"] / "photos"
    alice, bob = str(photos / "alice" / "portrait-1.jpg"), str(photos / "bob" / "portrait-1.webp")
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(f"a,b\n{probe},{alice}\n{probe},{bob}\n{probe},{tmp_path}/not-in-the-archive.jpg\n")
    argv_verify = ["verify", "--pairs", str(pairs), "--queries", str(results), "--queries-run-id", "f.faces"]
    argv_verify += ["--gallery", str(pipeline_run["results"]), "--gallery-run-id", "pl.faces"]
    argv_verify += ["--calibration", str(results), "--output", str(results), "--run-id", "v"]
    assert match.main(argv_verify) == 0
    decided = {r["gallery_uri"]: r["decision"] for r in read_table(root, "matches", "v").to_pylist()}
    assert decided[alice] == "accept" and decided[bob] != "accept" and len(decided) == 2  # the sample's drawn faces
    # are alike: bob's is above the cosine threshold, but its log-LR says "below the evidence needed"
    (unmatched,) = read_table(root, "errors", "v").to_pylist()  # the third pair: an error row naming why
    assert unmatched["error_type"] == "unmatched_pair" and "not-in-the-archive.jpg" in unmatched["message"]

    # The same command again keeps every stage.
    assert find.main(argv) == 0
    again = {m["run_id"]: m for m in committed_runs(root)}["f"]
    assert {e["state"] for e in again["stages"].values()} <= {"kept", "skipped"}

    # find --verify: the probe against one named archive item, in one command, decided by the same evidence.
    for run_id, item, decision in (("fa", alice, "accept"), ("fb", f"{bob}#frame=0&face=0", "below the evidence")):
        assert find.main([str(probe), "--results", str(results), "--run-id", run_id, "--verify", item]) == 0
        verified = {m["run_id"]: m for m in committed_runs(root)}[run_id]
        states = {name: entry["state"] for name, entry in verified["stages"].items()}
        assert states == {
            "manifest": "ran",
            "faces": "ran",
            "voices": "skipped",  # the item is a face: no voice is embedded
            "verify-voices": "skipped",
            "verify-faces": "ran",
            "report": "ran",
        }
        (row,) = read_table(root, "matches", f"{run_id}.verify-faces").to_pylist()
        assert (row["query_uri"], row["gallery_uri"]) == (str(probe), bob if run_id == "fb" else alice)
        assert row["decision"].startswith(decision) and row["llr"] is not None
        summary = verified["summary"]
        assert summary["verified"] == item and summary["pairs"] == {"faces": 1}
        assert summary["hits"] == {"faces": int(decision == "accept")}
        page = Path(locate(root, summary["report_uri"]).path).read_text()
        assert "<h2>Verification: faces</h2>" in page and page.count('data-testid="thumb"') == 2  # both sides
    # Deleting a find takes its stages and the pairs it verified.
    assert (results / "pairs" / "fb" / "faces.parquet").exists()
    assert delete.main([str(results), "fb"]) == 0
    assert not (results / "pairs" / "fb").exists()
    assert not [m for m in committed_runs(root) if m["run_id"].split(".")[0] == "fb"]
    # An item the archive does not hold is refused before anything is listed or embedded.
    nowhere = str(tmp_path / "not-in-the-archive.jpg")
    assert find.main([str(probe), "--results", str(results), "--run-id", "fx", "--verify", nowhere]) == 2
    assert not [m for m in committed_runs(root) if m["run_id"].startswith("fx")]


def test_a_root_without_an_archive_or_a_missing_probe_is_refused_with_the_fix(tmp_path, caplog):
    (tmp_path / "probe.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    assert find.main([str(tmp_path / "probe.png"), "--results", str(tmp_path / "empty")]) == 2
    assert "run `python -m jobs.pipeline ARCHIVE" in caplog.text
    assert find.main([str(tmp_path / "nowhere.png"), "--results", str(tmp_path / "empty")]) == 2
    assert "does not exist" in caplog.text


def test_the_analysts_loop_on_real_photos_and_voices(real_pipeline, tmp_path, capsys):
    """../shared's real media: a photo and a recording the archive does not hold, found, verified, reviewed, fed
    back and exported as a case that checks clean."""
    from jobs import export, pipeline, review
    from tests.conftest import REAL_PROBES, shared_data

    results = tmp_path / "results"
    shutil.copytree(real_pipeline["results"], results)
    root = resolve(str(results))
    face, voice = shared_data(*REAL_PROBES["face"]), shared_data(*REAL_PROBES["voice"])
    probes = tmp_path / "probes"
    probes.mkdir()
    for probe in (face, voice):
        shutil.copy(probe, probes / probe.name)
    assert find.main([str(probes), "--results", str(results), "--run-id", "q"]) == 0
    summary = {m["run_id"]: m for m in committed_runs(root)}["q"]["summary"]
    assert summary["hits"]["faces"] > 0 and summary["hits"]["voices"] > 0

    # Every face hit is Obama: an enrolled photo of him, or a face the pipeline identified as him.
    identified = {
        r["query_item"]: r["identity"]
        for r in read_table(root, "matches", "real.identify-faces").to_pylist()
        if r["rank"] == 1 and r["decision"] == r["identity"]
    }
    hits = [r for r in read_table(root, "matches", "q.search-faces").to_pylist() if r["decision"] == "match"]
    assert hits and all(
        "/enrolled/obama/" in r["gallery_uri"] or identified.get(r["gallery_item"]) == "obama" for r in hits
    )
    assert all(r["llr"] > 0 for r in hits)
    # Every voice hit is the same reader's, and most of his other recordings are found.
    heard = [r for r in read_table(root, "matches", "q.search-voices").to_pylist() if r["decision"] == "match"]
    assert {Path(r["gallery_uri"]).parent.name for r in heard} == {"2609"} and len(heard) >= 5

    # Verified against one named archive item: the enrolled Obama and Biden photos.
    enrolled = real_pipeline["archive"] / "enrolled"
    for run_id, item, accepted in (
        ("qo", enrolled / "obama" / "obama.jpg", True),
        ("qb", enrolled / "biden" / "biden.jpg", False),
    ):
        assert (
            find.main([str(probes / face.name), "--results", str(results), "--run-id", run_id, "--verify", str(item)])
            == 0
        )
        (row,) = read_table(root, "matches", f"{run_id}.verify-faces").to_pylist()
        assert (row["decision"] == "accept") == accepted and (row["llr"] > 0) == accepted

    # A recording verified against a named recording of the same reader: the voices are compared, not the faces.
    same_reader = sorted((enrolled / "2609").glob("*.flac"))[0]
    argv = [str(probes / voice.name), "--results", str(results), "--run-id", "qv", "--verify", str(same_reader)]
    assert find.main(argv) == 0
    states = {name: e["state"] for name, e in {m["run_id"]: m for m in committed_runs(root)}["qv"]["stages"].items()}
    assert states["verify-voices"] == "ran" and states["faces"] == "skipped"
    (row,) = read_table(root, "matches", "qv.verify-voices").to_pylist()
    assert row["decision"] == "accept" and row["llr"] > 0

    # Reviewed: the best face hit confirmed; the marks feed the next calibration and identities.
    best = max(hits, key=lambda r: r["score"])
    argv = [
        str(results),
        "--match-run",
        "q.search-faces",
        "--query",
        best["query_item"],
        "--gallery",
        best["gallery_item"],
    ]
    assert review.main([*argv, "--verdict", "confirmed", "--reviewer", "A. Examiner", "--note", "same mole"]) == 0
    rerun = [str(real_pipeline["archive"]), "--output", str(results), "--models", real_pipeline["models"].uri]
    assert pipeline.main([*rerun, "--run-id", "real", "--no-previews", "--label-pattern", "enrolled/{label}/*"]) == 0
    stages = {m["run_id"]: m for m in committed_runs(root)}["real"]["stages"]
    assert stages["faces"]["state"] == "kept" and stages["calibrate-faces"]["state"] == "ran"
    assert stages["calibrate-faces"]["summary"]["reviewed_same_pairs"] == 1

    # The case exported, checked clean, and caught with one byte changed.
    case = tmp_path / "case"
    assert export.main([str(case), "--results", str(results), "--runs", "q,qo"]) == 0
    assert export.main(["--check", str(case)]) == 0
    sources = (case / "sources.csv").read_text()
    assert str(probes / face.name) in sources and str(probes / voice.name) in sources
    report = case / "report" / "q.report" / "index.html"
    report.write_bytes(report.read_bytes().replace(b"<html", b"<html ", 1))
    assert export.main(["--check", str(case)]) == 2
    assert "changed: report/q.report/index.html" in capsys.readouterr().err
