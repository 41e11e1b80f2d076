"""ops.report.html: a report drawn from plain data alone, as ops.report.read hands it over; no storage anywhere."""

import json
import re
import subprocess
import sys
from collections import Counter
from datetime import datetime
from pathlib import Path

from ops.matching.decisions import BELOW_EVIDENCE
from ops.report import html
from ops.report.content import (
    Calibration,
    Evidence,
    FusedRun,
    Fusion,
    PersonsRun,
    Plot,
    Preview,
    Previews,
    Probes,
    Report,
    Sheets,
)

ROOT = Path(__file__).resolve().parents[3]
JPEG, OGG, PNG = "data:image/jpeg;base64,AAAA", "data:audio/ogg;base64,BBBB", "data:image/png;base64,CCCC"


def test_drawing_imports_no_storage_nor_any_decoder():
    code = "import json, sys\nimport ops.report.html\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = set(json.loads(done.stdout.strip().splitlines()[-1]))
    for reader in ("ops.io.storage", "ops.io.tables", "ops.io.root", "ops.report.read", "ops.media", "deltalake"):
        assert reader not in loaded, reader


def _match(query: str, rank: int, gallery: str, score: float, **extra) -> dict:
    row = {"run_id": "s", "query_item": query, "query_uri": query, "query_sha256": "ab" * 32, "rank": rank}
    row |= {"gallery_item": gallery, "gallery_uri": gallery, "identity": None, "score": score, "threshold": 0.5}
    return (
        row | {"decision": "match" if score >= 0.5 else "no match", "verbal": None, "llr": None, "review": None} | extra
    )


def _report() -> Report:
    """A report of one archive, every section given: what ops.report.read would hand over."""
    when = "2026-01-02T03:04:05.000000+00:00"
    manifest = {"run_id": "m", "job": "manifest", "committed_at": when, "tables": {"manifest": {"rows": 3}}}
    manifest["summary"] = {"previous_manifest": "m0", "read": 1, "carried": 2, "new": 1, "modified": 0, "removed": 1}
    search = {"run_id": "s", "job": "match", "committed_at": when, "tables": {"matches": {"rows": 2}}}
    search |= {"config": {"mode": "search", "table": "faces"}, "summary": {"model": "dlib-resnet-v1"}}
    ev = Evidence([manifest, search], counts={"manifest rows": 3, "duplicates": 0, "labelled": 2})
    ev.kinds, ev.errors_total = Counter({"image": 2, "audio": 1}), 1
    ev.errors_by_type[("manifest", "sniff", "empty_file")] = 1
    ev.errors_listed = [("manifest", "/a/empty.jpg", "empty_file", "the file is empty")]
    ev.sources = {"/a/ann.jpg": {"label": "ann"}, "/a/bob.jpg": {"label": "<bob>"}}
    ev.attributes = {"/a/bob.jpg": ["age 40 (30-50)"]}
    review = {"verdict": "confirmed", "reviewer": "A. Examiner", "note": "scar", "reviewed_at": datetime(2026, 1, 2)}
    rows = [_match("/a/ann.jpg", 1, "/a/bob.jpg", 0.8, review=review), _match("/a/ann.jpg", 2, "/a/cat.jpg", 0.1)]
    record = {"threshold_why": "at FAR 0.001", "llr": None}
    calibration = {"table": "faces", "model_name": "dlib", "model_sha256": "cd" * 32, "target_far": 1e-3}
    calibration |= {"sources": 3, "same_pairs": 2, "different_pairs": 1, "auc": 0.9, "eer": 0.1, "threshold": 0.5}
    members = [{"item": "/a/ann.jpg", "uri": "/a/ann.jpg", "representative": True, "confidence": 1.0}]
    members[0] |= {"size": 3, "cohesion": None}
    identities = {"run_id": "i", "summary": {"table": "faces", "items": 3, "warnings": ["few labels"]}}
    evidence = {"query": "/v/x.mp4", "gallery": "/v/y.mp4", "rank": 1, "modalities": "face+voice", "face_score": 0.7}
    evidence |= {"face_llr": 1.0, "voice_score": 0.6, "voice_llr": 2.0, "llr": 3.0, "llr_threshold": 1.5}
    person = {"person": "person-1", "linked": True, "reason": None, "face_identity": "f1", "voice_identity": "v1"}
    person |= {"link_score": 1.0, "seconds": 9.0, "videos": 2, "evidence": [{"uri": "/v/x.mp4", "start": 0, "end": 9}]}
    previews = Previews(True, failed=1)
    previews.made = {("faces", "/a/ann.jpg"): Preview("face", JPEG), ("faces", "/a/bob.jpg"): Preview("face", JPEG)}
    previews.made[("faces", "/a/cat.jpg")] = Preview("none", reason="no face row for this item")
    return Report(
        runs=[manifest, search],
        evidence=ev,
        removed=[{"uri": "/a/gone.jpg", "previous_sha256": "ef" * 32}],
        calibrations=[
            Calibration({"run_id": "c"}, calibration, record, [Plot("roc.png", PNG), Plot("det.png", error="gone")])
        ],
        fusions=[Fusion({"run_id": "c"}, {"record_uri": "calibration/c/record.json"}, None, "no such object")],
        probes=[Probes(search, 1, {"/a/ann.jpg": rows}, [(0.5, "calibration/c/record.json")])],
        sheets=[Sheets(identities, 1, {"identity-0": members})],
        fused=[
            FusedRun(
                {"run_id": "v", "summary": {}},
                "verify",
                4,
                [("/v/x.mp4", "/v/y.mp4")],
                {("/v/x.mp4", "/v/y.mp4"): [evidence | {"decision": "accept"}]},
            )
        ],
        persons=[PersonsRun({"run_id": "p", "summary": {"persons": 1, "candidates": 1}}, [person])],
        previews=previews,
    )


def test_a_report_is_drawn_from_plain_data_with_every_section():
    report = _report()
    page = html.page("crossmatch report r", html.sections(report))
    for testid in ("runs", "changes", "removed", "counts", "errors", "error-rows", "calibration-faces", "plot"):
        assert f'data-testid="{testid}"' in page, testid
    for testid in ("probe", "match", "thumb", "review", "identity", "identity-warnings", "fused-rows", "persons"):
        assert f'data-testid="{testid}"' in page, testid
    assert "<h2>Since the last run</h2>" in page and "/a/gone.jpg <small>efefefefefef</small>" in page
    assert '<div class="count"><b>2</b><span>image files</span></div>' in page
    assert "det.png unavailable: gone" in page and f'alt="roc.png" src="{PNG}"' in page
    assert "fused calibration calibration/c/record.json unavailable: no such object" in page
    assert "label: &lt;bob&gt;" in page and "age 40 (30-50)" in page  # escaped, and the gallery face's attributes
    assert "<b>confirmed</b> by A. Examiner, 2026-01-02 00:00 UTC: scar" in page
    assert 'title="no face row for this item">no preview: no face row for this item' in page
    assert "Verification: face and voice together" in page and "4 pairs, the first 1 shown" in page
    assert "<b>person-1</b>" in page and "/v/x.mp4 0.0-9.0 s" in page
    assert report.probes_shown == 1


def test_previews_are_drawn_as_given_and_only_as_given():
    made = {
        ("faces", "/v/a.mp4"): Preview("face", JPEG, (1.0, 2.5)),
        ("voices", "/v/a.mp4"): Preview("clip", OGG, (0.0, 4.0)),
    }
    previews = Previews(True, made)
    face = html.preview(previews, "voices and faces", "/v/a.mp4#face")  # a cross-modal item names its table
    assert f'alt="face in /v/a.mp4" src="{JPEG}"><small>track seen 1.0-2.5 s</small>' in face
    clip = html.preview(previews, "voices and faces", "/v/a.mp4#voice")
    assert f'data-testid="clip" controls preload="none" src="{OGG}"></audio><small>0.0-4.0 s</small>' in clip
    assert "no preview: not read for this report" in html.preview(previews, "faces", "/v/b.mp4")
    off = html.preview(Previews(False), "faces", "/v/a.mp4")
    assert off == '<span class="nopreview">previews off (--no-previews)</span>'


def test_a_score_above_the_threshold_on_evidence_against_is_never_shown_as_a_match():
    row = {"rank": 1, "score": 0.86, "threshold": 0.8, "identity": "ann", "gallery_uri": None, "gallery_item": "ann"}

    def card(**change) -> str:
        return html.match_card(row | {"verbal": None} | change, "faces", "identify", None, None)

    below = card(decision=BELOW_EVIDENCE, llr=-0.9)
    assert 'class="match undecided"' in below and "weak support for different people" in below
    assert "above the threshold 0.800, below the evidence needed" in below
    matched = card(decision="ann", llr=2.5)
    assert 'class="match above"' in matched and "moderate support for the same person" in matched
    # A rank below 1 carries no decision of its own: the card applies the rule to its score and log-LR.
    assert 'class="match undecided"' in card(rank=2, decision=None, llr=-0.2)
    assert 'class="match above"' in card(rank=2, decision=None, llr=0.2)


def test_a_page_says_when_it_was_written():
    page = html.page("t <1>", [])
    assert page.startswith("<!doctype html>") and "<title>t &lt;1&gt;</title>" in page
    assert re.search(r"<p>Written \d{4}-\d\d-\d\d \d\d:\d\d UTC\. Scores are cosine similarities", page)
