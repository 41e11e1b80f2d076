"""Fused verification and identification (jobs.match --fuse, jobs.archive.fuse) on synthetic people whose every
recording has a face and a voice."""

import json
import random

import numpy as np
import pytest

from jobs import calibrate, match, synthesize
from ops.io.storage import resolve
from ops.io.tables import committed_runs, read_table


def quiet(*args) -> list[str]:
    return [str(a) for a in args] + ["--log-level", "WARNING"]


@pytest.fixture(scope="module")
def archive(ray_cluster, tmp_path_factory):
    """40 synthetic people with 4 recordings each, and a fused calibration of them."""
    root = tmp_path_factory.mktemp("fused")
    assert synthesize.main(quiet("--output", root, "--identities", 40, "--recordings", 4, "--seed", 7)) == 0
    assert calibrate.main(quiet(root, "--fuse", "--output", root, "--run-id", "cal")) == 0
    manifest = read_table(resolve(str(root)), "manifest").to_pylist()
    return root, {r["uri"]: r["label"] for r in manifest}


def evidence(out, run_id):
    return read_table(resolve(str(out)), "evidence", run_id=run_id).to_pylist()


def test_verify_fuses_both_modalities_and_accounts_for_every_pair(archive, tmp_path):
    root, labels = archive
    uris = sorted(labels)
    rng = random.Random(0)
    pairs = [tuple(rng.sample(uris, 2)) for _ in range(200)] + [(u, u.replace("rec-00", "rec-01")) for u in uris[::4]]
    table = tmp_path / "pairs.csv"
    table.write_text("a,b\n" + "".join(f"{a},{b}\n" for a, b in pairs) + "nowhere,nothing\n")
    out = tmp_path / "out"
    argv = ("verify", "--fuse", "--pairs", table, "--queries", root, "--calibration", root, "--output", out)
    assert match.main(quiet(*argv, "--run-id", "v")) == 0
    rows = evidence(out, "v")
    (error,) = read_table(resolve(str(out)), "errors", run_id="v").to_pylist()
    assert len(rows) == len(pairs) and error["error_type"] == "unmatched_pair"
    assert "face: " in error["message"] and "voice: " in error["message"]
    record = json.loads((root / "calibration" / "cal" / "record.json").read_text())
    for r in rows:
        assert r["modalities"] == "face+voice" and r["llr"] == pytest.approx(r["face_llr"] + r["voice_llr"])
        assert r["llr_threshold"] == record["llr_thresholds"]["fused"]
        assert r["decision"] == ("accept" if r["llr"] >= r["llr_threshold"] else "reject")
        assert r["query_face_sha256"] and r["gallery_voice_sha256"] and r["face_model_name"] == "synthetic-face"
    same = np.array([labels[r["query"]] == labels[r["gallery"]] for r in rows])
    llr = np.array([r["llr"] for r in rows])
    assert llr[same].mean() > 0.5 and llr[~same].mean() < -0.5  # evidence points the right way on average
    assert (llr[~same] >= record["llr_thresholds"]["fused"]).mean() < 0.02
    # Stronger evidence asked for: what clears the record's threshold but not --min-llr is below the evidence needed.
    stronger = float(np.median([r["llr"] for r in rows if r["decision"] == "accept"]))  # half the accepts' llr
    assert match.main(quiet(*argv, "--run-id", "strict", "--min-llr", stronger)) == 0
    strict = evidence(out, "strict")
    for r in strict:
        clears = r["llr"] >= r["llr_threshold"]
        want = ("accept" if r["llr"] > stronger else "below the evidence needed") if clears else "reject"
        assert r["decision"] == want
    (marker,) = [m for m in committed_runs(resolve(str(out))) if m["run_id"] == "strict"]
    summary = marker["summary"]
    assert summary["below_evidence"] == sum(r["decision"] == "below the evidence needed" for r in strict) > 0
    assert summary["accept"] + summary["reject"] + summary["below_evidence"] == len(strict)


def test_a_missing_modality_falls_back_to_the_other(archive, tmp_path):
    root, labels = archive
    a, b, c = sorted(labels)[:3]
    table = tmp_path / "pairs.csv"
    table.write_text(f"a_face,a_voice,b_face,b_voice\n{a},,{b},\n,{a},,{b}\n{a},{a},{b},{c}\n{a},,,{b}\n")
    out = tmp_path / "out"
    argv = ("verify", "--fuse", "--pairs", table, "--queries", root, "--calibration", root, "--output", out)
    assert match.main(quiet(*argv, "--run-id", "v")) == 0
    record = json.loads((root / "calibration" / "cal" / "record.json").read_text())
    rows = sorted(evidence(out, "v"), key=lambda r: (r["modalities"], r["gallery"]))
    assert [r["modalities"] for r in rows] == ["face", "face+voice", "voice"]
    face, both, voice = rows
    assert face["voice_llr"] is None and face["llr"] == face["face_llr"]
    assert face["llr_threshold"] == record["llr_thresholds"]["face"]
    assert voice["face_score"] is None and voice["llr_threshold"] == record["llr_thresholds"]["voice"]
    assert both["gallery_face_item"] == b and both["gallery_voice_item"] == c
    (error,) = read_table(resolve(str(out)), "errors", run_id="v").to_pylist()  # a face against a voice only
    assert "no modality to compare" in error["message"]
    faces_only = tmp_path / "faces.csv"  # a chunk that names no voice at all
    faces_only.write_text(f"a_face,a_voice,b_face,b_voice\n{a},,{b},\n")
    argv = ("verify", "--fuse", "--pairs", faces_only, "--queries", root, "--calibration", root, "--output", out)
    assert match.main(quiet(*argv, "--run-id", "f")) == 0
    assert [r["modalities"] for r in evidence(out, "f")] == ["face"]


def test_an_identity_without_voices_is_scored_by_faces():
    from jobs.archive.fuse import _block_scores

    gallery = np.zeros((3, 0))
    assert np.isnan(_block_scores(["x", "y"], {}, gallery, 3)).all()
    faces = np.array([[1.0, 0.0], [np.nan, np.nan]])  # the second identity has no face

    class Found:
        vectors = np.array([[0.6, 0.8]])

    scores = _block_scores(["x", "y"], {"x": [(Found, 0)]}, faces, 2)
    assert scores[0, 0] == pytest.approx(0.6) and np.isnan(scores[0, 1]) and np.isnan(scores[1]).all()


def test_identify_with_both_beats_either_alone(archive, tmp_path):
    root, labels = archive
    enrol = tmp_path / "enrol.csv"
    enrol.write_text("uri,label\n" + "".join(f"{u},{lab}\n" for u, lab in labels.items() if "rec-00" in u))
    out = tmp_path / "out"
    common = ("--labels", enrol, "--queries", root, "--output", out, "--k", 3)
    assert match.main(quiet("identify", "--fuse", "--calibration", root, *common, "--run-id", "fused")) == 0
    rows = evidence(out, "fused")
    top = [r for r in rows if r["rank"] == 1]
    assert len(top) == 120 and len(rows) == 360  # every probe not enrolled, k rows each
    assert all(r["decision"] in (r["gallery"], "unknown") for r in top)
    fused = np.mean([r["gallery"] == labels[r["query"]] for r in top])
    for table in ("faces", "voices"):
        argv = ("identify", "--table", table, "--threshold", 0.0, *common, "--run-id", table)
        assert match.main(quiet(*argv)) == 0
        single = [r for r in read_table(resolve(str(out)), "matches", run_id=table).to_pylist() if r["rank"] == 1]
        assert len(single) == 120
        assert fused > np.mean([r["identity"] == labels[r["query_uri"]] for r in single]) + 0.05


def test_fuse_refuses_what_it_cannot_use(archive, tmp_path, caplog):
    root, labels = archive
    table = tmp_path / "pairs.csv"
    a, b = sorted(labels)[:2]
    table.write_text(f"a,b\n{a},{b}\n")
    base = ("verify", "--fuse", "--pairs", table, "--queries", root, "--output", tmp_path / "out")
    assert match.main(quiet(*base)) != 0
    assert "--fuse needs --calibration" in caplog.text
    assert calibrate.main(quiet(root, "--table", "faces", "--output", tmp_path / "single", "--run-id", "one")) == 0
    assert match.main(quiet(*base, "--calibration", tmp_path / "single" / "calibration" / "one" / "record.json")) != 0
    assert "calibrates one modality" in caplog.text
    other = tmp_path / "other"  # another world: other models made these embeddings
    assert synthesize.main(quiet("--output", other, "--identities", 6, "--recordings", 3, "--world-seed", 1)) == 0
    argv = ("verify", "--fuse", "--pairs", table, "--queries", other, "--calibration", root, "--output", other)
    assert match.main(quiet(*argv)) != 0
    assert "but /" in caplog.text and "calibrates synthetic-face" in caplog.text
    assert match.main(quiet("search", "--fuse", "--queries", root, "--output", tmp_path / "out")) != 0
    assert "--fuse is for verify and identify" in caplog.text
    assert match.main(quiet(*base, "--calibration", root, "--queries-run-id", "x")) != 0
    assert "drop --queries-run-id" in caplog.text
    assert calibrate.main(quiet(root, "--fuse", "--head", "h", "--output", tmp_path / "h")) != 0
    assert "--head with --fuse" in caplog.text


def test_the_report_states_the_fused_evidence_in_words(archive, tmp_path):
    from jobs import report

    root, labels = archive
    a, b = sorted(labels)[:2]
    table = tmp_path / "pairs.csv"
    table.write_text(f"a,b\n{a},{b}\n")
    enrol = tmp_path / "enrol.csv"
    enrol.write_text("uri,label\n" + "".join(f"{u},{lab}\n" for u, lab in labels.items() if "rec-00" in u))
    for argv in (("verify", "--pairs", table), ("identify", "--labels", enrol, "--k", 2)):
        assert match.main(quiet(*argv, "--fuse", "--queries", root, "--calibration", root, "--output", root)) == 0
    assert report.main(quiet(root, "--output", root, "--run-id", "r0", "--max-probes", 0)) == 0
    assert report.main(quiet(root, "--output", root, "--run-id", "r", "--max-probes", 3)) == 0
    page = (root / "report" / "r" / "index.html").read_text()
    assert 'data-testid="calibration-fused"' in page and 'data-testid="fusion-figures"' in page
    assert "face and voice, sum of log-LRs <b>(decides)</b>" in page
    assert page.count('alt="roc.png"') >= 1 and "Verification: face and voice together" in page
    assert page.count('data-testid="fused-probe"') == 3  # identification: the first 3 probes
    assert "The face and voice evidence together are" in page and "times more likely if this is" in page
