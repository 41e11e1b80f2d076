"""The HTML report, opened as a user opens it: from the file, in a real headless Chromium."""

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from jobs import report
from ops.io.root import locate
from ops.io.schemas import schema_for
from ops.io.storage import resolve
from ops.io.tables import OutputRun, committed_runs, read_table
from ops.report import read

# The system's Chromium (Debian's package: `make test` installs it); Playwright only drives it.
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# A closed network: no background connections, no component updates (see the workplace notes).
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking"]
FLAGS += ["--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        reason = f"no Chromium at {CHROMIUM}: `make test` installs it (apt-get install chromium)"
        if os.environ.get("CI", "").lower() in ("true", "1"):  # in CI a missing browser is a broken install
            pytest.fail(reason)
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield chromium
        chromium.close()


def test_the_report_opens_from_the_file_with_every_part_shown(pipeline_run, browser, tmp_path):
    # The session's pipeline run as it stands now (other tests rerun it with other settings, such as k).
    (marker,) = [m for m in committed_runs(resolve(str(pipeline_run["results"]))) if m["run_id"] == "pl"]
    report_file = Path(locate(resolve(str(pipeline_run["results"])), marker["summary"]["report_uri"]).path)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("requestfailed", lambda r: problems.append(f"{r.url[:80]}: {r.failure}"))
    page.goto(report_file.as_uri())
    page.wait_for_load_state("load")

    counts = page.get_by_test_id("counts").inner_text()
    for label in ("inputs", "faces found", "speech segments", "errors"):
        assert label in counts
    errors = page.get_by_test_id("errors").inner_text()
    assert "empty_file" in errors and "unknown_media_type" in errors  # the broken sample files, by type

    for table in ("faces", "voices"):
        assert page.get_by_test_id(f"calibration-{table}").is_visible()
        words = page.get_by_test_id(f"calibration-{table}").get_by_test_id("llr").inner_text()
        assert "log-likelihood ratio of" in words and "Cllr" in words and "times more likely if" in words
    plots = page.locator("img[data-testid=plot]")
    assert plots.count() == 4 and all(
        plots.nth(i).evaluate("i => i.complete && i.naturalWidth > 300") for i in range(4)
    )

    probes = page.get_by_test_id("probe")
    faces = read_table(resolve(str(pipeline_run["results"])), "faces", "pl.faces").num_rows
    assert page.locator("[data-table=faces][data-mode=search]").count() == faces  # every face its own probe
    assert page.locator("[data-table=voices][data-mode=search]").count() == 10  # every source with speech
    assert page.locator("[data-mode=identify] [data-testid=decision]").count() > 0
    assert probes.first.get_by_test_id("match").count() == marker["config"]["k"]
    thumbs = page.locator("img[data-testid=thumb]")
    loaded = thumbs.evaluate_all("all => all.map(i => i.complete && i.naturalWidth > 0)")
    assert len(loaded) > 13 and all(loaded)
    assert page.locator(".nopreview").count() == 0

    # A speech clip plays: the browser decodes its Opus and knows its length.
    duration = page.locator("audio[data-testid=clip]").first.evaluate(
        """a => new Promise((ok, fail) => {
            a.addEventListener('loadedmetadata', () => ok(a.duration));
            a.addEventListener('error', () => fail(a.error));
            a.preload = 'metadata'; a.load(); })"""
    )
    assert 0.5 < duration <= 4.01

    # What a person sees: the first thumbnail on screen is a picture (a face drawing), not a blank box.
    shot = Image.open(io.BytesIO(thumbs.first.screenshot())).convert("L")
    assert shot.size[0] >= 48 and np.asarray(shot, np.float32).std() > 15
    page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    assert (tmp_path / "report.png").stat().st_size > 100_000
    assert not problems, problems


def test_select_runs_takes_a_pipeline_runs_stages_or_the_newest_of_each_job(pipeline_run):
    root = resolve(str(pipeline_run["results"]))
    stages = read.select_runs(root, "pl")
    assert {m["run_id"] for m in stages} >= {"pl.manifest", "pl.faces", "pl.search-faces"}
    assert all(m["job"] != "report" for m in stages)
    newest = read.select_runs(root, None)
    kinds = [(m["job"], m["config"].get("mode"), m["config"].get("table") or m["summary"].get("table")) for m in newest]
    assert len(kinds) == len(set(kinds))
    assert len(committed_runs(root)) > len(newest)


def test_nothing_to_report_is_a_clear_error(tmp_path, caplog):
    assert report.main([str(tmp_path / "empty"), "--output", str(tmp_path / "out")]) == 2
    assert "no committed runs" in caplog.text
    assert report.main([str(tmp_path), "--pipeline-run-id", "nope", "--output", str(tmp_path / "out")]) == 2
    assert "no committed stage of pipeline run nope" in caplog.text


def test_no_previews_leaves_every_thumbnail_and_clip_out(pipeline_run, tmp_path):
    argv = [str(pipeline_run["results"]), "--pipeline-run-id", "pl", "--no-previews", "--output", str(tmp_path)]
    assert report.main([*argv, "--run-id", "bare"]) == 0
    page = (tmp_path / "report" / "bare" / "index.html").read_text()
    assert "previews off (--no-previews)" in page
    assert "data:image/jpeg" not in page and "data:audio" not in page and 'data-testid="thumb"' not in page
    assert "data:image/png" in page  # the calibration plots are not biometric data: they stay


def test_runs_committed_before_the_vocabulary_are_counted_under_todays_names(tmp_path):
    """Runs written before the error vocabulary named one failure differently per job: the report reads them under
    today's names, so that one failure is counted once."""
    root = resolve(str(tmp_path / "results"))
    old_names = {
        "manifest": ["EmptyFile"],
        "embed_faces": ["decode_error", "TooLarge"],
        "embed_voices": ["DecodeError"],
    }
    for job, names in old_names.items():
        run = OutputRun(root, f"old-{job}", job)
        rows = [
            {
                "run_id": run.run_id,
                "job": job,
                "uri": f"{job}-{i}",
                "stage": "decode",
                "error_type": name,
                "message": "m",
            }
            for i, name in enumerate(names)
        ]
        run.write("errors", pa.Table.from_pylist(rows, schema=schema_for("errors")))  # as an old run wrote them
        run.commit(tables=("errors",))
    assert report.main([root.uri, "--output", root.uri, "--run-id", "rep", "--no-previews"]) == 0
    (marker,) = [m for m in committed_runs(root) if m["run_id"] == "rep"]
    page = Path(locate(root, marker["summary"]["report_uri"]).path).read_text()
    for name in ("empty_file", "image_decode_error", "too_large", "audio_decode_error"):
        assert f"<td>{name}</td>" in page
    for name in ("EmptyFile", "decode_error", "TooLarge", "DecodeError"):
        assert f"<td>{name}</td>" not in page


def test_face_thumbnails_come_from_the_embed_run_not_the_sources(pipeline_run, tmp_path, monkeypatch):
    """The faces shown were cut when they were embedded: the report decodes no image or video to show them."""

    def no_decoding(*args, **kwargs):
        raise AssertionError("the report decoded a source to show a face")

    monkeypatch.setattr(read, "source_frame", no_decoding)
    argv = [str(pipeline_run["results"]), "--pipeline-run-id", "pl", "--output", str(tmp_path), "--run-id", "cut"]
    assert report.main(argv) == 0
    page = (tmp_path / "report" / "cut" / "index.html").read_text()
    assert page.count('data-testid="thumb"') > 13 and "no preview" not in page
