"""jobs.calibrate's log-LR map and --fuse: synthetic identities with both modalities made here, chimeric identities
from two roots, and (with ../shared) real faces joined to real voices."""

import json

import numpy as np
import pytest

from jobs import calibrate, synthesize
from ops.io.root import locate
from ops.io.storage import resolve
from ops.io.tables import read_table


def quiet(*args) -> list[str]:
    return [str(a) for a in args] + ["--log-level", "WARNING"]


@pytest.fixture(scope="module")
def bimodal(ray_cluster, tmp_path_factory):
    """60 synthetic people, 4 recordings each, each recording with a face and a voice (one label for both)."""
    root = tmp_path_factory.mktemp("bimodal")
    assert synthesize.main(quiet("--output", root, "--identities", 60, "--recordings", 4, "--seed", 3)) == 0
    return root


def test_a_record_maps_scores_to_log_lrs(bimodal, tmp_path):
    out = tmp_path / "out"
    assert calibrate.main(quiet(bimodal, "--table", "voices", "--output", out)) == 0
    (row,) = read_table(resolve(str(out)), "calibrations").to_pylist()
    llr = json.loads(locate(resolve(str(out)), row["record_uri"]).read_bytes())["llr"]
    assert llr["slope"] > 0
    assert llr["min_cllr"] <= llr["cllr"] < 1  # better than no information, no better than the best monotone map
    assert llr["cllr_held_out"] < 1
    # the cosine threshold for FAR 1e-3 is strong evidence for "same"
    assert llr["llr_at_threshold"] == pytest.approx(llr["slope"] * row["threshold"] + llr["offset"])
    assert llr["llr_at_threshold"] > 0


def test_fused_evidence_beats_either_modality_held_out(bimodal, tmp_path):
    out = tmp_path / "out"
    assert calibrate.main(quiet(bimodal, "--fuse", "--output", out)) == 0
    (row,) = read_table(resolve(str(out)), "fusions").to_pylist()
    record = json.loads(locate(resolve(str(out)), row["record_uri"]).read_bytes())
    assert record["kind"] == "fused" and record["pairing"] == "shared labels" and row["identities"] == 60
    systems = record["systems"]
    assert systems["fused sum"]["eer"] < min(systems["face"]["eer"], systems["voice"]["eer"]) - 0.03
    assert systems["fused sum"]["tar_at_far_0.01"] > max(
        systems["face"]["tar_at_far_0.01"], systems["voice"]["tar_at_far_0.01"]
    )
    for name in ("face", "voice", "fused sum", "fused linear"):
        assert systems[name]["min_cllr"] <= systems[name]["cllr"] < 1
    assert systems["fused sum"]["cllr"] < min(systems["face"]["cllr"], systems["voice"]["cllr"])
    assert row["fused_eer"] == systems["fused sum"]["eer"] and row["llr_threshold"] == record["llr_thresholds"]["fused"]
    assert record["models"]["faces"]["model_name"] == "synthetic-face"
    for png in ("roc.png", "det.png", "scores.png"):
        assert (out / "calibration" / row["run_id"] / png).read_bytes()[:4] == b"\x89PNG"


def test_chimeric_identities_join_faces_and_voices_of_different_people(ray_cluster, tmp_path):
    faces, voices = tmp_path / "faces", tmp_path / "voices"
    assert synthesize.main(quiet("--output", faces, "--identities", 8, "--recordings", 4, "--seed", 5)) == 0
    assert (
        synthesize.main(
            quiet("--output", voices, "--identities", 8, "--recordings", 4, "--seed", 6, "--first-identity", 100)
        )
        == 0
    )

    def fused(run_id: str, seed: int) -> dict:
        argv = quiet(
            faces, "--fuse", "--voices", voices, "--seed", seed, "--output", tmp_path / "out", "--run-id", run_id
        )
        assert calibrate.main(argv) == 0
        return json.loads((tmp_path / "out" / "calibration" / run_id / "record.json").read_text())

    first, again, other = fused("c1", 0), fused("c2", 0), fused("c3", 1)
    assert first["pairing"] == "chimeric" and first["identity_count"] == 8
    pairs = {(i["face_label"], i["voice_label"]) for i in first["identities"]}
    assert {f for f, _ in pairs} == {f"id-{i:04d}" for i in range(8)}
    assert {v for _, v in pairs} == {f"id-{i:04d}" for i in range(100, 108)}
    assert first["identities"] == again["identities"] and first["systems"] == again["systems"]  # fixed by the seed
    assert other["pairing_sha256"] != first["pairing_sha256"]


def test_too_few_identities_is_a_clear_error(ray_cluster, tmp_path, caplog):
    root = tmp_path / "few"
    assert synthesize.main(quiet("--output", root, "--identities", 3, "--recordings", 3)) == 0
    assert calibrate.main(quiet(root, "--fuse", "--output", root)) != 0
    assert "3 identities with two faces and two voices or more" in caplog.text
    assert calibrate.main(quiet(root, "--fuse", "--fusion", "max", "--output", root)) != 0
    assert "--fusion 'max'" in caplog.text


def test_real_faces_joined_to_real_voices(real_pipeline, tmp_path):
    """knn_examples' four people with two photos and the five LibriSpeech speakers, as chimeric identities: the
    faces and voices the real archive's pipeline embedded."""
    results = real_pipeline["results"]
    assert calibrate.main(quiet(results, "--fuse", "--voices", results, "--output", tmp_path / "out")) == 0
    (row,) = read_table(resolve(str(tmp_path / "out")), "fusions").to_pylist()
    record = json.loads(locate(resolve(str(tmp_path / "out")), row["record_uri"]).read_bytes())
    systems = record["systems"]
    assert record["pairing"] == "chimeric" and record["identity_count"] == 4
    assert systems["fused sum"]["eer"] <= min(systems["face"]["eer"], systems["voice"]["eer"])
    assert systems["fused sum"]["cllr"] < 1 and np.isfinite(row["llr_threshold"])


def test_an_analysts_verdicts_join_the_labelled_pairs_of_the_next_calibration(ray_cluster, tmp_path):
    from jobs import match, review
    from ops.io.tables import committed_runs
    from tests.jobs.test_match import write_faces

    rng = np.random.default_rng(5)
    centres = rng.standard_normal((6, 16))
    vectors = (np.repeat(centres, 4, axis=0) + 0.4 * rng.standard_normal((24, 16))).astype(np.float32)
    uris = [f"/archive/{i:02d}.jpg" for i in range(24)]
    write_faces(tmp_path, vectors, uris, labels=[f"p{i // 4}" for i in range(24)])
    search = ["search", "--queries", tmp_path, "--output", tmp_path, "--per-source", "--k", 23, "--threshold", 0.5]
    assert match.main(quiet(*search, "--run-id", "s")) == 0
    root = resolve(str(tmp_path))
    argv = [tmp_path, "--output", tmp_path, "--manifest-run-id", "manifest-test"]
    assert calibrate.main(quiet(*argv, "--run-id", "c1")) == 0

    rows = read_table(root, "matches", "s").to_pylist()
    same = next(r for r in rows if r["query_uri"] == uris[0] and r["gallery_uri"] == uris[1])
    other = next(r for r in rows if r["query_uri"] == uris[0] and r["gallery_uri"] == uris[4])
    for row, verdict in ((same, "confirmed"), (other, "rejected")):
        marked = [str(tmp_path), "--match-run", "s", "--query", row["query_item"], "--gallery", row["gallery_item"]]
        assert review.main(quiet(*marked, "--verdict", verdict, "--reviewer", "A. Examiner")) == 0
    assert calibrate.main(quiet(*argv, "--run-id", "c2")) == 0
    assert calibrate.main(quiet(*argv, "--run-id", "c3", "--no-reviews")) == 0

    runs = {m["run_id"]: m.get("summary") for m in committed_runs(root)}
    before, after, without = runs["c1"], runs["c2"], runs["c3"]
    assert (before["reviewed_same_pairs"], before["reviewed_different_pairs"]) == (0, 0)
    assert (after["reviewed_same_pairs"], after["reviewed_different_pairs"]) == (1, 1)
    assert after["reviews_through"] == [m["run_id"] for m in committed_runs(root) if m["job"] == "review"][-1]
    assert after["same_pairs"] == before["same_pairs"] + 1
    assert after["different_pairs"] == before["different_pairs"] + 1
    assert after["sample_sha256"] != before["sample_sha256"] == without["sample_sha256"]  # new evidence, new record
