"""jobs.match and jobs.calibrate on committed embedding tables made here (and, with ../shared, on real voices)."""

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs import calibrate, match
from ops.io.root import locate
from ops.io.schemas import MANIFEST, faces
from ops.io.storage import resolve
from ops.io.tables import OutputRun, committed_runs, read_table
from ops.matching.search import normalise
from tests.conftest import shared_data

SHA = "ab" * 32


def write_faces(
    root, vectors, uris, labels=None, model=("dlib-resnet-v1", SHA), run_id="embed_faces-test", frames=None
):
    """A committed faces/ run (one face per source, or per ``frames`` entry: a dict of frame_index, timestamp,
    face_index, track_id for that row) and a manifest with labels, as the jobs would write them."""
    n, dim = vectors.shape
    rows = [
        {
            "run_id": run_id,
            "uri": u,
            "sha256": f"{i:064x}",
            "frame_index": 0,
            "timestamp": None,
            "face_index": 0,
            "track_id": None,
            "track_frames": None,
            "box": [0, 0, 50, 50],
            "landmarks": [0.0] * 10,
            "score": 0.99,
            "face_size": 50.0,
            "eye_distance": 20.0,
            "sharpness": 100.0,
            "embedding": vectors[i].tolist(),
            "detector_name": "mtcnn",
            "detector_sha256": SHA,
            "model_name": model[0],
            "model_sha256": model[1],
        }
        | (frames[i] if frames else {})
        for i, u in enumerate(uris)
    ]
    out = OutputRun(resolve(str(root)), run_id, "embed_faces")
    out.write("faces", pa.Table.from_pylist(rows, schema=faces(dim)), faces(dim))
    out.commit()
    if labels is not None:
        m = OutputRun(resolve(str(root)), "manifest-test", "manifest")
        m.write(
            "manifest",
            pa.Table.from_pylist(
                [
                    {
                        "run_id": "manifest-test",
                        "uri": u,
                        "relpath": u,
                        "size": 1,
                        "modified": None,
                        "etag": None,
                        "sha256": f"{i:064x}",
                        "media_kind": "jpeg",
                        "media_category": "image",
                        "mime": "image/jpeg",
                        "label": lab,
                        "duplicate_of": None,
                    }
                    for i, (u, lab) in enumerate(zip(uris, labels, strict=True))
                ],
                schema=MANIFEST,
            ),
        )
        m.commit()


def identities(rng, people=4, per_person=3, dim=16, spread=0.3):
    centres = rng.standard_normal((people, dim))
    vectors = np.concatenate([centres[p] + spread * rng.standard_normal((per_person, dim)) for p in range(people)])
    labels = [f"p{p}" for p in range(people) for _ in range(per_person)]
    uris = [f"/archive/{lab}/{i}.jpg" for i, lab in enumerate(labels)]
    return vectors.astype(np.float32), uris, labels


def run(*args):
    return match.main([*map(str, args), "--log-level", "WARNING"])


def test_search_gives_exact_top_k_without_self_matches(ray_cluster, tmp_path):
    rng = np.random.default_rng(0)
    vectors, uris, _ = identities(rng)
    write_faces(tmp_path, vectors, uris)
    assert (
        run("search", "--queries", tmp_path, "--output", tmp_path, "--k", 3, "--shards", 2, "--gpus-per-shard", 0.5)
        == 0
    )
    rows = read_table(resolve(str(tmp_path)), "matches").to_pylist()
    assert len(rows) == 12 * 3 and all(r["query_uri"] != r["gallery_uri"] for r in rows)
    unit = normalise(vectors).astype(np.float64)
    scores = unit @ unit.T
    np.fill_diagonal(scores, -np.inf)
    for q in range(12):
        got = [r for r in rows if r["query_uri"] == uris[q]]
        assert [uris.index(r["gallery_uri"]) for r in got] == list(np.argsort(-scores[q], kind="stable")[:3])
        assert [r["rank"] for r in got] == [1, 2, 3]
        np.testing.assert_allclose([r["score"] for r in got], np.sort(scores[q])[::-1][:3], atol=1e-6)
    # Query batches of 5: three tasks each write their batch's rows (three files); the same rows.
    assert (
        run("search", "--queries", tmp_path, "--output", tmp_path, "--k", 3, "--query-batch", 5, "--run-id", "b") == 0
    )
    (marker,) = [m for m in committed_runs(resolve(str(tmp_path))) if m["run_id"] == "b"]
    assert marker["tables"]["matches"] == {"rows": 36, "files": 3}
    key = lambda r: (r["query_uri"], r["rank"], r["gallery_uri"])  # noqa: E731
    batched = read_table(resolve(str(tmp_path)), "matches", run_id="b").to_pylist()
    assert sorted(map(key, batched)) == sorted(map(key, rows))


def test_verify_decides_and_reports_pairs_it_cannot_score(tmp_path):
    rng = np.random.default_rng(1)
    vectors, uris, _ = identities(rng, spread=0.1)
    write_faces(tmp_path, vectors, uris)
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(f"a,b\n{uris[0]},{uris[1]}\n{uris[0]},{uris[5]}\n{uris[0]},/archive/nobody.jpg\n")
    assert run("verify", "--queries", tmp_path, "--output", tmp_path, "--pairs", pairs, "--threshold", 0.8) == 0
    rows = read_table(resolve(str(tmp_path)), "matches").to_pylist()
    assert [r["decision"] for r in rows] == ["accept", "reject"]
    assert rows[0]["threshold_source"] == "--threshold"
    (error,) = read_table(resolve(str(tmp_path)), "errors").to_pylist()
    assert error["error_type"] == "unmatched_pair" and "/archive/nobody.jpg" in error["message"]


def test_verify_reads_only_the_named_sources_and_a_pair_of_strangers_is_an_error_row(tmp_path, monkeypatch):
    from jobs.archive.verify import Verifier, stage_pairs, verify_chunk
    from jobs.runtime.output import RowWriter
    from ops.io.schemas import MATCHES, schema_for
    from ops.matching import embeddings

    rng = np.random.default_rng(5)
    vectors, uris, _ = identities(rng)
    write_faces(tmp_path, vectors, uris)
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(f"a,b\n{uris[0]},{uris[1]}#frame=0&face=0\n")
    # A chunk task (run here, to watch it read) asks the table for the sources its pairs name, and no others.
    asked = []
    reader = embeddings.iter_table
    monkeypatch.setattr(embeddings, "iter_table", lambda *a, **k: asked.append(k["filter"]) or reader(*a, **k))
    root, staging = resolve(str(tmp_path)), resolve(str(tmp_path / "staged"))
    (chunk,), why = stage_pairs(resolve(str(pairs)), staging)
    verifier = Verifier(root, "faces", None, ("dlib-resnet-v1", SHA), None, 0.5, "--threshold", "v", "match")
    writers = [RowWriter(root, t, s, "v", "a") for t, s in (("matches", MATCHES), ("errors", schema_for("errors")))]
    found = verify_chunk(chunk[0], staging, verifier, *writers)
    assert why is None and found["pairs"] == 1 and found["accept"] + found["reject"] == 1 and not found["errors"]
    assert len(asked) == 1 and uris[1] in str(asked[0]) and uris[2] not in str(asked[0])
    monkeypatch.undo()

    assert run("verify", "--queries", tmp_path, "--output", tmp_path, "--pairs", pairs, "--threshold", 0.5) == 0
    (row,) = read_table(resolve(str(tmp_path)), "matches").to_pylist()
    assert row["query_uri"] == uris[0] and row["gallery_item"] == f"{uris[1]}#frame=0&face=0"
    pairs.write_text("a,b\n/nobody/x.jpg,/nobody/y.jpg\n")
    args = ["--output", tmp_path, "--pairs", pairs, "--threshold", 0.5, "--run-id", "strangers"]
    assert run("verify", "--queries", tmp_path, *args) == 0
    (error,) = read_table(resolve(str(tmp_path)), "errors", run_id="strangers").to_pylist()
    assert error["error_type"] == "unmatched_pair" and "/nobody/y.jpg" in error["message"]


def test_verify_scores_every_pair_of_many_chunks_once(ray_cluster, tmp_path):
    """Pairs cut into chunks (here of 7): each chunk's task writes its rows; one row or one error per pair."""
    rng = np.random.default_rng(3)
    vectors, uris, _ = identities(rng, people=5, per_person=4)
    write_faces(tmp_path, vectors, uris)
    pairs = [(uris[i], uris[j]) for i in range(20) for j in range(i + 1, 20, 3)] + [(uris[0], "/nobody.jpg")]
    table = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"a": [a for a, _ in pairs], "b": [b for _, b in pairs]}), table)
    args = ["--output", tmp_path, "--pairs", table, "--threshold", 0.5, "--run-id", "many", "--pairs-per-task", 7]
    assert run("verify", "--queries", tmp_path, *args) == 0
    rows = read_table(resolve(str(tmp_path)), "matches").to_pylist()
    assert sorted((r["query_uri"], r["gallery_uri"]) for r in rows) == sorted(pairs[:-1])
    unit = normalise(vectors).astype(np.float64)
    for r in rows:
        want = unit[uris.index(r["query_uri"])] @ unit[uris.index(r["gallery_uri"])]
        assert r["score"] == pytest.approx(want, abs=1e-6) and r["decision"] == ("accept" if want >= 0.5 else "reject")
    (marker,) = [m for m in committed_runs(resolve(str(tmp_path))) if m["run_id"] == "many"]
    assert marker["summary"]["pairs"] == len(pairs) and marker["summary"]["errors"] == 1
    assert marker["tables"]["matches"]["files"] >= len(pairs) // 7  # a file per chunk
    bad = tmp_path / "bad.csv"
    bad.write_text("left,right\nx,y\n")
    assert run("verify", "--queries", tmp_path, "--output", tmp_path, "--pairs", bad, "--threshold", 0.5) == 2


def test_verify_without_a_cosine_threshold_says_how_to_get_one(tmp_path, caplog):
    rng = np.random.default_rng(1)
    vectors, uris, _ = identities(rng)
    write_faces(tmp_path, vectors, uris, model=("an-imported-encoder", SHA))  # no card, nothing published
    (tmp_path / "pairs.csv").write_text(f"a,b\n{uris[0]},{uris[1]}\n")
    assert run("verify", "--queries", tmp_path, "--pairs", tmp_path / "pairs.csv", "--models", tmp_path / "m") == 2
    assert "python -m jobs.calibrate" in caplog.text


def test_calibrate_then_identify_open_set(tmp_path):
    rng = np.random.default_rng(2)
    vectors, uris, labels = identities(rng, people=5, per_person=4, spread=0.2)
    # one labelled source per person enrols it; an unlabelled stranger and unlabelled repeats are the probes
    stranger = rng.standard_normal((1, 16)).astype(np.float32)
    enrol = [i for i in range(20) if i % 4 == 0]
    probe_uris = [f"/probes/{i}.jpg" for i in range(20) if i % 4 == 1] + ["/probes/stranger.jpg"]
    probe_vectors = np.concatenate([vectors[[i for i in range(20) if i % 4 == 1]], stranger])
    root = tmp_path / "r"
    write_faces(
        root, np.concatenate([vectors, probe_vectors]), uris + probe_uris, labels=labels + [None] * len(probe_uris)
    )
    assert calibrate.main([str(root), "--output", str(root), "--target-far", "0.01", "--log-level", "WARNING"]) == 0
    (record,) = read_table(resolve(str(root)), "calibrations").to_pylist()
    assert record["record_uri"] == f"calibration/{record['run_id']}/record.json"  # kept relative to its root
    record["record_uri"] = locate(resolve(str(root)), record["record_uri"]).uri
    assert record["auc"] > 0.95 and record["same_pairs"] == 5 * 6 and record["different_pairs"] == 190 - 30
    for png in ("roc.png", "det.png", "scores.png"):
        assert resolve(record["record_uri"].rsplit("/", 1)[0]).join(png).read_bytes()[:4] == b"\x89PNG"
    labels_csv = tmp_path / "labels.csv"
    labels_csv.write_text("uri,label\n" + "".join(f"{uris[i]},{labels[i]}\n" for i in enrol))
    assert (
        run(
            "identify",
            "--queries",
            root,
            "--output",
            root,
            "--labels",
            labels_csv,
            "--k",
            2,
            "--calibration",
            record["record_uri"],
        )
        == 0
    )
    rows = read_table(resolve(str(root)), "matches").to_pylist()
    top = {r["query_uri"]: r for r in rows if r["rank"] == 1}
    assert top["/probes/stranger.jpg"]["decision"] == "unknown"
    assert all(top[f"/probes/{i}.jpg"]["decision"] == labels[i] for i in range(20) if i % 4 == 1)
    assert all(r["threshold"] == pytest.approx(record["threshold"]) for r in rows)
    llr = json.loads(resolve(record["record_uri"]).read_bytes())["llr"]  # every row's score as evidence
    assert all(r["llr"] == pytest.approx(llr["slope"] * r["score"] + llr["offset"]) for r in rows)
    # an output root stands for its newest calibration of the model
    assert (
        run(
            "identify",
            "--queries",
            root,
            "--output",
            root,
            "--labels",
            labels_csv,
            "--calibration",
            root,
            "--run-id",
            "identify-by-root",
        )
        == 0
    )
    again = read_table(resolve(str(root)), "matches", run_id="identify-by-root").to_pylist()
    assert {r["threshold_source"] for r in again} == {f"calibration/{record['run_id']}/record.json"}
    assert all(r["llr"] == pytest.approx(llr["slope"] * r["score"] + llr["offset"]) for r in again)
    # The results folder moved elsewhere: it still finds its own calibration (kept relative to it), not the old place.
    moved = tmp_path / "moved"
    shutil.move(root, moved)
    argv = ["--queries", moved, "--output", moved, "--labels", labels_csv, "--calibration", moved, "--run-id", "m"]
    assert run("identify", *argv) == 0
    after = read_table(resolve(str(moved)), "matches", run_id="m").to_pylist()
    assert {r["threshold_source"] for r in after} == {f"calibration/{record['run_id']}/record.json"}
    assert all(r["llr"] == pytest.approx(llr["slope"] * r["score"] + llr["offset"]) for r in after)
    root = moved
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(f"a,b\n{uris[0]},{uris[1]}\n")
    assert (
        run("verify", "--pairs", pairs, "--queries", root, "--output", root, "--calibration", root, "--run-id", "v")
        == 0
    )
    (pair,) = read_table(resolve(str(root)), "matches", run_id="v").to_pylist()
    assert pair["llr"] == pytest.approx(llr["slope"] * pair["score"] + llr["offset"])
    assert (
        run("verify", "--pairs", pairs, "--queries", root, "--output", root, "--threshold", 0.5, "--run-id", "t") == 0
    )
    assert read_table(resolve(str(root)), "matches", run_id="t").column("llr").to_pylist() == [None]


def test_bad_inputs_fail_or_become_error_rows(tmp_path, caplog):
    rng = np.random.default_rng(3)
    vectors, uris, labels = identities(rng)
    vectors[2] = np.nan
    write_faces(tmp_path / "a", vectors, uris, labels=labels)
    assert run("search", "--queries", tmp_path / "a", "--output", tmp_path / "a", "--shards", 1) == 0
    errors = read_table(resolve(str(tmp_path / "a")), "errors").to_pylist()
    assert [e["error_type"] for e in errors] == ["invalid_embedding"] and errors[0]["uri"] == uris[2]
    # other dimensions / another model
    write_faces(tmp_path / "b", rng.standard_normal((3, 8)).astype(np.float32), uris[:3], model=("other", "cd" * 32))
    assert run("search", "--queries", tmp_path / "a", "--gallery", tmp_path / "b") == 2
    assert "match sets made by the same model" in caplog.text
    # two models in one table
    write_faces(
        tmp_path / "a",
        rng.standard_normal((3, 16)).astype(np.float32),
        uris[:3],
        model=("other", "cd" * 32),
        run_id="embed_faces-other",
    )
    assert run("search", "--queries", tmp_path / "a") == 2
    assert "mixes models" in caplog.text
    # an identity file naming one source twice with two identities
    (tmp_path / "labels.csv").write_text(f"uri,label\n{uris[0]},x\n{uris[0]},y\n")
    args = ["--queries-run-id", "embed_faces-test", "--gallery-run-id", "embed_faces-test", "--threshold", 0.5]
    assert run("identify", "--queries", tmp_path / "a", "--labels", tmp_path / "labels.csv", *args) == 2
    assert "two identities" in caplog.text
    # no embeddings at all
    assert run("search", "--queries", tmp_path / "empty") == 2
    assert "no committed faces/ rows" in caplog.text


def test_real_voices_calibrate_and_identify(ray_cluster, models, tmp_path):
    from jobs import embed_voices, manifest

    folder = shared_data("voices")
    out = tmp_path / "out"
    assert (
        manifest.main([str(folder), "--output", str(out), "--label-pattern", "{label}/*", "--log-level", "WARNING"])
        == 0
    )
    assert embed_voices.main([str(out), "--output", str(out), "--models", models.uri, "--log-level", "WARNING"]) == 0
    assert calibrate.main([str(out), "--table", "voices", "--output", str(out), "--log-level", "WARNING"]) == 0
    (record,) = read_table(resolve(str(out)), "calibrations").to_pylist()
    record["record_uri"] = locate(resolve(str(out)), record["record_uri"]).uri
    assert record["auc"] > 0.99 and record["sources"] == 50
    labels = tmp_path / "enrol.csv"
    enrol = sorted(p for p in folder.glob("*/*.flac"))[::10]  # the first file of each speaker
    labels.write_text("uri,label\n" + "".join(f"{p},{p.parent.name}\n" for p in enrol))
    assert (
        match.main(
            [
                "identify",
                "--queries",
                str(out),
                "--table",
                "voices",
                "--labels",
                str(labels),
                "--calibration",
                record["record_uri"],
                "--output",
                str(out),
                "--log-level",
                "WARNING",
            ]
        )
        == 0
    )
    top = [r for r in read_table(resolve(str(out)), "matches").to_pylist() if r["rank"] == 1]
    assert len(top) == 45
    correct = sum(r["identity"] == r["query_uri"].rsplit("/", 2)[-2] for r in top)
    assert correct / len(top) >= 0.95
    assert json.loads(resolve(record["record_uri"]).read_bytes())["model_name"] == "ge2e-resemblyzer"


def test_calibration_is_computed_again_only_when_its_sample_changed(tmp_path):
    rng = np.random.default_rng(4)
    vectors, uris, labels = identities(rng, people=4, per_person=3, spread=0.2)
    write_faces(tmp_path, vectors, uris, labels=labels)

    def calibrate_run(run_id: str, *extra) -> dict:
        argv = [str(tmp_path), "--output", str(tmp_path), "--run-id", run_id, "--log-level", "WARNING", *extra]
        assert calibrate.main(argv) == 0
        return {m["run_id"]: m for m in committed_runs(resolve(str(tmp_path)))}[run_id]["summary"]

    first = calibrate_run("c1")
    again = calibrate_run("c2")  # the same sample, vectors and target: the record is copied, nothing scored again
    assert again["reused_from"] == "c1" and again["threshold"] == first["threshold"]
    assert again["sample_sha256"] == first["sample_sha256"] and "reused_from" not in first
    record = json.loads((tmp_path / "calibration" / "c2" / "record.json").read_text())
    assert record["run_id"] == "c2" and record["reused_from"] == "c1"
    assert (tmp_path / "calibration" / "c2" / "roc.png").read_bytes()[:4] == b"\x89PNG"
    (row,) = read_table(resolve(str(tmp_path)), "calibrations", run_id="c2").to_pylist()
    assert row["record_uri"].endswith("c2/record.json") and row["threshold"] == first["threshold"]
    assert "reused_from" not in calibrate_run("c3", "--recalibrate")
    assert "reused_from" not in calibrate_run("c4", "--target-far", "0.01")  # another target: computed


def _record(root) -> dict:
    (row,) = read_table(resolve(str(root)), "calibrations").to_pylist()
    return json.loads(locate(resolve(str(root)), row["record_uri"]).read_bytes())


def test_a_calibration_says_what_its_sample_cannot_measure(tmp_path, caplog):
    """160 different-person pairs cannot measure a false accept rate of 1e-3 (that needs 10,000): the threshold is
    the model card's published one when it has one, else the one at the lowest rate the sample measures."""
    rng = np.random.default_rng(5)
    vectors, uris, labels = identities(rng, people=5, per_person=4, spread=0.3)
    for model, rule in ((("an-imported-encoder", SHA), "lowest measurable"), (("dlib-resnet-v1", SHA), "model card")):
        root = tmp_path / rule.replace(" ", "-")
        write_faces(root, vectors, uris, labels=labels, model=model)
        assert calibrate.main([str(root), "--output", str(root)]) == 0
        record = _record(root)
        assert record["threshold_rule"] == rule and record["different_pairs"] == 160
        assert "160 different-person pairs" in record["threshold_why"] and "not 0.001" in record["threshold_why"]
        assert "the threshold is not at --target-far 0.001" in caplog.text
    assert record["threshold"] == pytest.approx(0.91) and record["threshold_far"] is None  # dlib's 0.6, as a cosine
    lowest = _record(tmp_path / "lowest-measurable")
    assert lowest["threshold_far"] == pytest.approx(10 / 160) and lowest["impostor_pairs_above_threshold"] <= 10


def test_labels_that_are_not_people_are_refused(tmp_path, caplog):
    """Labels that are folder names (events, dates) put each person under every label: the scores cannot tell the
    labels apart, and a calibration of them would state evidence there is not."""
    rng = np.random.default_rng(6)
    vectors, uris, _ = identities(rng, people=8, per_person=4, spread=0.3)
    events = [f"event{i % 3}" for i in range(len(uris))]  # each person's photos spread over three events
    write_faces(tmp_path, vectors, uris, labels=events)
    assert calibrate.main([str(tmp_path), "--output", str(tmp_path)]) == 2
    assert "likely not people" in caplog.text and "No calibration was written" in caplog.text
    assert not (tmp_path / "calibration").exists() or not any((tmp_path / "calibration").iterdir())


def test_no_match_is_given_against_the_evidence(ray_cluster, tmp_path):
    """A threshold set below the evidence (a policy of --threshold 0.1, or a stricter --min-llr) leaves pairs that
    clear it on evidence that does not favour "same": they are 'below the evidence needed', never accepted, matched
    or identified; every row carries its log-LR in words."""
    from ops.matching.decisions import BELOW_EVIDENCE

    rng = np.random.default_rng(7)
    vectors, uris, labels = identities(rng, people=6, per_person=4, spread=0.9)  # people who overlap
    write_faces(tmp_path, vectors, uris, labels=labels, model=("an-imported-encoder", SHA))
    assert calibrate.main([str(tmp_path), "--output", str(tmp_path), "--log-level", "WARNING"]) == 0
    record = _record(tmp_path)
    assert record["threshold_rule"] == "lowest measurable"
    calibration = ["--calibration", str(tmp_path / "calibration" / record["run_id"] / "record.json")]
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("a,b\n" + "".join(f"{a},{b}\n" for i, a in enumerate(uris) for b in uris[i + 1 :]))
    common = ["--queries", tmp_path, "--output", tmp_path, *calibration]
    assert run("verify", *common, "--pairs", pairs, "--threshold", 0.1, "--run-id", "v") == 0
    assert run("search", *common, "--k", 5, "--min-llr", 2, "--run-id", "s") == 0
    for run_id, positive, negative, min_llr in (("v", "accept", "reject", 0), ("s", "match", "no match", 2)):
        rows = read_table(resolve(str(tmp_path)), "matches", run_id).to_pylist()
        for r in rows:
            clears = np.float32(r["score"]) >= np.float32(r["threshold"])
            want = (positive if r["llr"] > min_llr else BELOW_EVIDENCE) if clears else negative
            assert r["decision"] == want and r["verbal"], r
            assert ("different people" in r["verbal"]) == (r["llr"] < -np.log(2)), r
        assert sum(r["decision"] == BELOW_EVIDENCE for r in rows) > 0  # the case this test is about happens
    (marker,) = [m for m in committed_runs(resolve(str(tmp_path))) if m["run_id"] == "v"]
    summary = marker["summary"]
    assert summary["accept"] + summary["reject"] + summary["below_evidence"] == summary["pairs"] == 276
    # Identification: an identity only on evidence for it.
    enrol = tmp_path / "enrol.csv"
    enrol.write_text(
        "uri,label\n" + "".join(f"{u},{lab}\n" for u, lab in zip(uris, labels, strict=True) if u[-5] in "02")
    )
    assert run("identify", *common, "--labels", enrol, "--threshold", 0.1, "--run-id", "i") == 0
    first = [r for r in read_table(resolve(str(tmp_path)), "matches", "i").to_pylist() if r["rank"] == 1]
    assert all(r["llr"] > 0 for r in first if r["decision"] not in ("unknown", BELOW_EVIDENCE))


def test_every_face_of_a_photo_and_every_track_of_a_video_is_its_own_item(tmp_path):
    """A group photo is both its people and a video each of its tracks: identify finds each, with the track's time
    span in its key, and a 1:1 of two sources is decided by the best pair of their faces, named in the row."""
    rng = np.random.default_rng(7)
    people = normalise(rng.standard_normal((4, 16)).astype(np.float32))  # ann, bob, cat, and a stranger
    face = lambda p: people[p] + 0.03 * rng.standard_normal(16).astype(np.float32)  # noqa: E731
    sources = [  # uri, person, overrides of the row
        ("/a/ann.jpg", 0, {}),
        ("/a/bob.jpg", 1, {}),
        ("/a/cat.jpg", 2, {}),
        ("/a/group.jpg", 3, {"face_index": 0, "face_size": 90.0}),  # the stranger is the largest face
        ("/a/group.jpg", 1, {"face_index": 1}),
        ("/a/clip.mp4", 2, {"frame_index": 0, "timestamp": 0.0, "track_id": 0}),
        ("/a/clip.mp4", 2, {"frame_index": 25, "timestamp": 1.0, "track_id": 0}),
        ("/a/clip.mp4", 0, {"frame_index": 25, "timestamp": 1.0, "face_index": 1, "track_id": 1}),
        ("/a/clip.mp4", 0, {"frame_index": 50, "timestamp": 2.0, "track_id": 1}),
    ]
    sha = {"/a/group.jpg": "1" * 64, "/a/clip.mp4": "2" * 64}
    frames = [extra | {"sha256": sha.get(uri, f"{i:064x}")} for i, (uri, _, extra) in enumerate(sources)]
    write_faces(tmp_path, np.stack([face(p) for _, p, _ in sources]), [u for u, _, _ in sources], frames=frames)
    labels = tmp_path / "labels.csv"
    labels.write_text("uri,label\n/a/ann.jpg,ann\n/a/bob.jpg,bob\n/a/cat.jpg,cat\n")
    common = ("--queries", tmp_path, "--output", tmp_path, "--threshold", 0.8)
    assert run("identify", *common, "--labels", labels, "--run-id", "i") == 0
    rows = read_table(resolve(str(tmp_path)), "matches", "i").to_pylist()
    top = {r["query_item"]: r["decision"] for r in rows if r["rank"] == 1}
    assert top == {
        "/a/group.jpg#frame=0&face=0": "unknown",
        "/a/group.jpg#frame=0&face=1": "bob",
        "/a/clip.mp4#track=0&t=0.00,1.00": "cat",
        "/a/clip.mp4#track=1&t=1.00,2.00": "ann",
    }
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("a,b\n/a/group.jpg,/a/bob.jpg\n/a/clip.mp4,/a/ann.jpg\n/a/cat.jpg,/a/ann.jpg\n")
    assert run("verify", *common, "--pairs", pairs, "--run-id", "v") == 0
    verified = read_table(resolve(str(tmp_path)), "matches", "v").to_pylist()
    decided = {(r["query_item"], r["gallery_item"]): r["decision"] for r in verified}
    assert decided == {
        ("/a/group.jpg#frame=0&face=1", "/a/bob.jpg#frame=0&face=0"): "accept",  # not the group's largest face
        ("/a/clip.mp4#track=1&t=1.00,2.00", "/a/ann.jpg#frame=0&face=0"): "accept",
        ("/a/cat.jpg#frame=0&face=0", "/a/ann.jpg#frame=0&face=0"): "reject",
    }
    assert {r["query_uri"] for r in verified} == {"/a/group.jpg", "/a/clip.mp4", "/a/cat.jpg"}


GOOD_PAIR = "/a/0.jpg,/a/1.jpg\n"
BAD_PAIRS = {  # file contents -> what the refusal says
    "header.csv": (b"a,b\n", "has a header but no pairs"),
    "relative.csv": (b"a,b\nphotos/0.jpg,photos/1.jpg\n", "'photos/0.jpg' and every other side are relative"),
    "latin1.csv": (b"a,b\n/a/caf\xe9.jpg,/a/1.jpg\n", "is not UTF-8 text"),
    "ragged.csv": (b"a,b\n" + GOOD_PAIR.encode() * 70_000 + b"x,y,z\n", "Expected 2 columns, got 3"),  # block 2+
    "cut.parquet": (None, "cannot read the pairs table"),
    "wrong.csv": (b"left,right\n" + GOOD_PAIR.encode(), "needs a header with columns a, b; it has"),
}


@pytest.mark.parametrize("name", sorted(BAD_PAIRS))
def test_a_pairs_table_that_cannot_be_scored_is_refused_with_the_fix(ray_cluster, tmp_path, caplog, name):
    rng = np.random.default_rng(4)
    vectors, uris, _ = identities(rng)
    write_faces(tmp_path, vectors, [f"/a/{i}.jpg" for i in range(len(uris))])
    content, said = BAD_PAIRS[name]
    if content is None:  # a Parquet file cut short (a copy that stopped half way)
        pq.write_table(pa.table({"a": ["/a/0.jpg"] * 50, "b": ["/a/1.jpg"] * 50}), tmp_path / "whole.parquet")
        content = (tmp_path / "whole.parquet").read_bytes()[:300]
    (tmp_path / name).write_bytes(content)
    args = ["--queries", tmp_path, "--output", tmp_path, "--pairs", tmp_path / name, "--threshold", 0.5]
    assert run("verify", *args) == 2
    assert said in caplog.text and "unexpected error" not in caplog.text


def test_a_labels_file_saved_by_excel_is_read(tmp_path):
    rng = np.random.default_rng(5)
    vectors, uris, labels = identities(rng, spread=0.1)
    write_faces(tmp_path, vectors, uris)
    rows = "".join(f"{uris[i]},{labels[i]}\n" for i in (0, 3, 6, 9))
    (tmp_path / "labels.csv").write_bytes(("uri,label\r\n" + rows).encode("utf-8-sig"))  # Excel's "CSV UTF-8"
    args = ["--queries", tmp_path, "--output", tmp_path, "--labels", tmp_path / "labels.csv", "--threshold", 0.8]
    assert run("identify", *args) == 0
    rows = read_table(resolve(str(tmp_path)), "matches").to_pylist()
    top = {r["query_uri"]: r["decision"] for r in rows if r["rank"] == 1}
    assert top[uris[1]] == labels[1] and len(top) == 8


def test_the_help_names_every_mode_with_its_usage(capsys):
    with pytest.raises(SystemExit) as exc:
        match.main(["--help"])
    assert exc.value.code == 0
    said = capsys.readouterr().out
    for mode in match.MODES:
        assert f"python -m jobs.match {mode}" in said


def test_a_stray_relative_side_is_its_pairs_error_row_with_the_reason(tmp_path):
    rng = np.random.default_rng(6)
    vectors, uris, _ = identities(rng)
    write_faces(tmp_path, vectors, [f"/a/{i}.jpg" for i in range(len(uris))])
    (tmp_path / "pairs.csv").write_text("a,b\n/a/0.jpg,/a/1.jpg\nphotos/2.jpg,/a/3.jpg\n")
    args = ["--queries", tmp_path, "--output", tmp_path, "--pairs", tmp_path / "pairs.csv", "--threshold", 0.5]
    assert run("verify", *args) == 0
    (error,) = read_table(resolve(str(tmp_path)), "errors").to_pylist()
    assert "photos/2.jpg: a relative path" in error["message"]
    assert read_table(resolve(str(tmp_path)), "matches").num_rows == 1


def test_user_files_named_relative_to_the_driver_are_read_by_the_workers(ray_cluster, tmp_path, monkeypatch):
    """Tasks read --pairs and --labels as the driver resolved them (its working folder, its S3 endpoint and options):
    a worker has another working folder, and on a cluster maybe no endpoint of its own."""
    rng = np.random.default_rng(8)
    vectors, uris, labels = identities(rng, spread=0.1)
    write_faces(tmp_path, vectors, uris)
    (tmp_path / "pairs.csv").write_text(f"a,b\n{uris[0]},{uris[1]}\n")
    (tmp_path / "labels.csv").write_text("uri,label\n" + "".join(f"{uris[i]},{labels[i]}\n" for i in (0, 3, 6, 9)))
    monkeypatch.chdir(tmp_path)
    assert run("verify", "--queries", ".", "--output", ".", "--pairs", "pairs.csv", "--threshold", 0.5) == 0
    assert run("identify", "--queries", ".", "--output", ".", "--labels", "labels.csv", "--threshold", 0.5) == 0
    assert read_table(resolve(str(tmp_path)), "matches").num_rows > 1


def test_a_source_pairs_evidence_counts_how_many_face_pairs_it_had_to_choose_from():
    from jobs.archive.verify import source_llr

    line = (10.0, -9.0)  # log-LR = 10 x score - 9
    assert source_llr(np.array([0.95]), line) == pytest.approx(0.5)  # one pair: its own
    assert source_llr(np.array([0.95] * 4), line) == pytest.approx(0.5)  # four equally good pairs: the same
    # the best of a hundred pairs, the rest strangers: about its own evidence less log(100)
    hundred = source_llr(np.array([0.95] + [0.5] * 99), line)
    assert hundred == pytest.approx(np.log((np.exp(0.5) + 99 * np.exp(-4.0)) / 100))
    assert hundred < 0 < 0.5
