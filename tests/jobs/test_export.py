"""jobs.export: a find's case bundled for a second examiner, checked file by file; one byte changed is caught."""

import csv
import json
import shutil
import subprocess
import zipfile
from pathlib import Path

import pyarrow.parquet as pq

from jobs import export, find, review
from ops.io.storage import resolve
from ops.io.tables import committed_runs, read_table


def test_a_find_exported_as_a_case_checks_clean_and_one_changed_byte_fails(pipeline_run, tmp_path, capsys):
    results = tmp_path / "results"
    shutil.copytree(pipeline_run["results"], results)
    probe = tmp_path / "probe.png"
    probe.write_bytes((pipeline_run["archive"] / "photos" / "alice" / "portrait-2.png").read_bytes())
    assert find.main([str(probe), "--results", str(results), "--run-id", "f"]) == 0
    root = resolve(str(results))
    hit = read_table(root, "matches", "f.search-faces").to_pylist()[0]
    marked = [str(results), "--match-run", "f.search-faces", "--query", hit["query_item"]]
    assert review.main([*marked, "--gallery", hit["gallery_item"], "--verdict", "confirmed", "--reviewer", "A"]) == 0

    case = tmp_path / "case-17"
    assert export.main([str(case), "--results", str(results), "--runs", "f", "--run-id", "x"]) == 0
    files = {str(p.relative_to(case)) for p in case.rglob("*") if p.is_file()}
    assert {"MANIFEST.sha256", "README.txt", "case.json", "sources.csv", "models.csv"} <= files
    assert "report/f.report/index.html" in files and "tables/matches/f.search-faces.parquet" in files
    assert "tables/reviews/reviews.parquet" in files and "calibration/pl.calibrate-faces/record.json" in files
    assert "tables/calibrations/pl.calibrate-faces.parquet" in files
    # Every source a row names, with its full sha256: the probe and every archive face it was compared with.
    sources = {r["uri"]: r["sha256"] for r in csv.DictReader((case / "sources.csv").open())}
    assert sources[str(probe)] == hit["query_sha256"] and sources[hit["gallery_uri"]] == hit["gallery_sha256"]
    assert all(len(sha) == 64 for sha in sources.values())
    models = {(r["role"], r["name"]) for r in csv.DictReader((case / "models.csv").open())}
    assert ("model", hit["model_name"]) in models and ("detector", "mtcnn") in models
    rows = pq.read_table(case / "tables" / "matches" / "f.search-faces.parquet")
    assert rows.num_rows == read_table(root, "matches", "f.search-faces").num_rows
    record = json.loads((case / "case.json").read_text())
    assert {m["run_id"] for m in record["runs"]} >= {"f", "f.manifest", "f.faces", "f.search-faces", "f.report"}
    page = (case / "report" / "f.report" / "index.html").read_text()
    assert 'data-testid="thumb"' in page and "file://" not in page  # both sides inline: it opens with no server

    # The manifest checks clean, with our command and with coreutils' sha256sum on any machine.
    assert export.main(["--check", str(case)]) == 0
    assert subprocess.run(["sha256sum", "--quiet", "-c", "MANIFEST.sha256"], cwd=case).returncode == 0
    summary = {m["run_id"]: m for m in committed_runs(root)}["x"]["summary"]
    assert summary["manifest_sha256"] in capsys.readouterr().out  # the digest the root recorded

    # A copy with one byte changed fails, naming the file; so does a file added or removed.
    changed = tmp_path / "changed"
    shutil.copytree(case, changed)
    target = changed / "tables" / "matches" / "f.search-faces.parquet"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 1
    target.write_bytes(bytes(data))
    assert export.main(["--check", str(changed)]) == 2
    err = capsys.readouterr().err
    assert "changed: tables/matches/f.search-faces.parquet" in err and "was changed since it was exported" in err
    (changed / "extra.txt").write_text("added later")
    (changed / "sources.csv").unlink()
    assert export.main(["--check", str(changed)]) == 2
    err = capsys.readouterr().err
    assert "not in the manifest: extra.txt" in err and "missing: sources.csv" in err

    # The same case as a .zip checks the same way; a case is never overwritten.
    bundle = tmp_path / "case-17.zip"
    assert export.main([str(bundle), "--results", str(results), "--runs", "f"]) == 0
    assert export.main(["--check", str(bundle)]) == 0
    with zipfile.ZipFile(bundle) as z:
        assert set(z.namelist()) == files
    assert export.main([str(case), "--results", str(results), "--runs", "f"]) == 2
    assert export.main([str(tmp_path / "new"), "--results", str(results), "--runs", "nope"]) == 2
    assert not Path(tmp_path / "new").exists()
