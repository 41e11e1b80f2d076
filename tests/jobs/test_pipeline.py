"""The main job end to end over the sample archive: every stage committed, reruns resume, nothing duplicated."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from jobs import match, pipeline
from ops.io.root import locate
from ops.io.storage import resolve
from ops.io.tables import committed_runs, read_table
from ops.matching.decisions import is_positive
from ops.media.encode import encode_image
from ops.testing.samples import SAMPLE_LAYOUT, portrait

OPTIONAL = ("attributes", "crossmatch")  # the stages that need a model the demo does not pass
RUN = [s for s in pipeline.STAGES if s not in OPTIONAL]


def _markers(results: Path) -> dict[str, dict]:
    return {m["run_id"]: m for m in committed_runs(resolve(str(results)))}


def test_every_stage_runs_and_commits_over_the_sample_archive(pipeline_run):
    marker, results = pipeline_run["marker"], resolve(str(pipeline_run["results"]))
    stages = marker["stages"]
    assert list(stages) == list(pipeline.STAGES)  # sample archive: faces, speech and labels, so every stage runs
    assert {n for n, e in stages.items() if e["state"] != "ran"} == set(OPTIONAL)  # but these: no models given
    assert "no --joint-model" in stages["crossmatch"]["reason"]
    assert "no --attributes-model" in stages["attributes"]["reason"]
    runs = _markers(pipeline_run["results"])
    assert all(f"pl.{stage}" in runs for stage in RUN)

    # Every object of the archive is accounted for by the manifest: a row or an error row, once.
    manifest, errors = read_table(results, "manifest", "pl.manifest"), read_table(results, "errors", "pl.manifest")
    assert manifest.num_rows + errors.num_rows == len(SAMPLE_LAYOUT)
    faces, voices = read_table(results, "faces", "pl.faces"), read_table(results, "voices", "pl.voices")
    assert faces.num_rows >= 13 and set(faces.column("run_id").to_pylist()) == {"pl.faces"}
    assert stages["voices"]["summary"]["with_speech"] >= 10 and voices.num_rows > 0

    search = read_table(results, "matches", "pl.search-faces").to_pylist()
    assert search and all(r["threshold"] is not None for r in search)  # judged by the calibrated threshold
    record = runs["pl.calibrate-faces"]["summary"]
    assert (
        search[0]["threshold"] == float(f"{record['threshold']:.7g}")
        or abs(search[0]["threshold"] - record["threshold"]) < 1e-6
    )
    identify = read_table(results, "matches", "pl.identify-faces").to_pylist()
    assert {r["decision"] for r in identify if r["rank"] == 1} <= {"alice", "bob", "carol", "unknown"}
    # Who is in the archive: every searched source in one identity, scored against the labels.
    who = runs["pl.identities-faces"]["summary"]
    assert who["items"] == runs["pl.search-faces"]["summary"]["queries"] and who["true_identities"] == 3
    members = read_table(results, "identities", "pl.identities-faces")
    assert members.num_rows == who["items"] and sum(members.column("representative").to_pylist()) == who["identities"]
    report = Path(locate(results, marker["summary"]["report_uri"]).path)
    assert report.is_file() and report.read_text().count('data-testid="identity" data-table="faces"') == min(
        who["identities"], 12
    )


def test_a_rerun_keeps_every_committed_stage(pipeline_run):
    before = _markers(pipeline_run["results"])
    assert pipeline.main(pipeline_run["argv"]) == 0
    after = _markers(pipeline_run["results"])
    stages = after["pl"]["stages"]
    assert {entry["state"] for entry in stages.values()} == {"kept", "skipped"}
    for stage in RUN:  # the same attempts: nothing rewritten, nothing duplicated
        assert after[f"pl.{stage}"]["attempt"] == before[f"pl.{stage}"]["attempt"]


def test_a_rerun_of_a_copied_root_with_nothing_new_keeps_every_stage_without_starting_ray(pipeline_run, tmp_path):
    """The results folder copied elsewhere (its paths are relative to it) and the same command run again as a user
    would, in a fresh process: every stage is kept, decided from the tables alone, and Ray is never started."""
    copy = tmp_path / "copied-results"
    shutil.copytree(pipeline_run["results"], copy)
    argv = [*pipeline_run["argv"]]
    argv[argv.index("--output") + 1] = str(copy)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run(
        [sys.executable, "-m", "jobs.pipeline", *argv], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "starting a local Ray cluster" not in done.stderr and "connecting to the Ray cluster" not in done.stderr
    states = {entry["state"] for entry in _markers(copy)["pl"]["stages"].values()}
    assert states == {"kept", "skipped"}, done.stderr[-3000:]
    assert f"report: {copy}/report/" in done.stderr  # the copy's own report, not the original's


def test_restart_from_redoes_that_stage_and_every_later_one(pipeline_run):
    before = _markers(pipeline_run["results"])
    assert pipeline.main([*pipeline_run["argv"], "--restart-from", "search-voices"]) == 0
    after = _markers(pipeline_run["results"])
    states = {name: entry["state"] for name, entry in after["pl"]["stages"].items()}
    later = RUN[RUN.index("search-voices") :]
    assert all(states[s] == "ran" for s in later) and all(states[s] == "kept" for s in RUN if s not in later)
    assert after["pl.search-voices"]["attempt"] != before["pl.search-voices"]["attempt"]
    results = resolve(str(pipeline_run["results"]))
    matches = read_table(results, "matches", "pl.search-voices")  # replaced, not added to
    assert matches.num_rows == before["pl.search-voices"]["tables"]["matches"]["rows"]


def test_changed_settings_rerun_the_stages_they_touch(pipeline_run, tmp_path):
    # Same run id, a different k: the embeddings are kept, matching and the report run again.
    argv = [*pipeline_run["argv"], "--k", "2"]
    assert pipeline.main(argv) == 0
    states = {n: e["state"] for n, e in _markers(pipeline_run["results"])["pl"]["stages"].items()}
    assert states["manifest"] == states["voices"] == states["faces"] == states["calibrate-faces"] == "kept"
    assert states["search-faces"] == states["report"] == "ran"


def test_an_archive_without_speech_or_labels_skips_those_stages_and_says_why(ray_cluster, all_models, tmp_path):
    archive = resolve(str(tmp_path / "archive"))
    rng = __import__("numpy").random.default_rng(3)
    for i in range(3):
        archive.join(f"p{i}.png").put_atomic(encode_image(portrait(rng, i), "png"))
    out = tmp_path / "results"
    assert pipeline.main([archive.uri, "--output", str(out), "--models", all_models.uri, "--run-id", "x"]) == 0
    stages = _markers(out)["x"]["stages"]
    assert stages["search-faces"]["state"] == "ran" and stages["report"]["state"] == "ran"
    assert stages["calibrate-faces"]["state"] == "skipped" and "labels" in stages["calibrate-faces"]["reason"]
    assert stages["identify-faces"]["state"] == "skipped"
    for stage in ("calibrate-voices", "search-voices", "identify-voices"):
        assert stages[stage] == {"run_id": None, "state": "skipped", "reason": "no voices were found in the archive"}
    search = read_table(resolve(str(out)), "matches", "x.search-faces").to_pylist()
    assert len(search) == 3 * 2  # each of 3 faces ranks the other 2
    # No calibration: dlib's card publishes its Euclidean 0.6 as a cosine, which judges the rows (without a log-LR).
    judged = {(round(r["threshold"], 4), r["threshold_source"]) for r in search}
    assert judged == {(0.91, "model card of dlib-resnet-v1")}
    assert {r["decision"] for r in search} <= {"match", "no match"} and {r["llr"] for r in search} == {None}
    report = Path(locate(resolve(str(out)), stages["report"]["summary"]["report_uri"]).path).read_text()
    assert "from model card of dlib-resnet-v1" in report and "No calibration" in report


def test_a_label_pattern_that_names_nothing_stops_the_pipeline_after_the_manifest(
    ray_cluster, all_models, sample_archive, tmp_path, caplog
):
    argv = [str(sample_archive), "--output", str(tmp_path / "out"), "--models", all_models.uri]
    assert pipeline.main([*argv, "--label-pattern", "people/{label}/*"]) == 2
    assert "matched none of the archive's objects" in caplog.text and "'*/{label}/*'" in caplog.text
    assert [m["job"] for m in committed_runs(resolve(str(tmp_path / "out")))] == ["manifest"]


def test_bad_arguments_fail_clearly(tmp_path, caplog):
    assert pipeline.main([str(tmp_path), "--restart-from", "nope", "--output", str(tmp_path / "o")]) == 2
    assert "unknown stage 'nope'" in caplog.text
    assert pipeline.main(["", "--output", str(tmp_path / "o")]) == 2
    assert "no archive given" in caplog.text


def test_a_joint_model_and_attribute_heads_add_their_stages_and_the_report_shows_them(
    pipeline_run, all_models, tmp_path
):
    """Wiring, not quality: an untrained joint model whose card names the demo's face and voice models, and untrained
    attribute heads over its faces (trained ones' quality is tested in test_train_crossmodal and
    test_train_attributes)."""
    import torch

    from ops.attributes.heads import ATTRIBUTE_HEAD, AttributeHead, AttributeSpec
    from ops.matching.heads import JOINT_MODEL, JointModel
    from ops.models.registry import store_model

    results = resolve(str(pipeline_run["results"]))
    faces, voices = read_table(results, "faces", "pl.faces"), read_table(results, "voices", "pl.voices")
    inputs = {
        name: {"model_name": t.column("model_name")[0].as_py(), "model_sha256": t.column("model_sha256")[0].as_py()}
        for name, t in (("faces", faces), ("voices", voices))
    }
    models = resolve(str(tmp_path / "models"))
    for card in ("mtcnn", "dlib-resnet-v1", "ge2e-resemblyzer", "silero-vad"):
        models.join(card).fs.copy(all_models.join(card).path, models.join(card).path, recursive=True)
    torch.manual_seed(0)
    state = JointModel(128, 256).state_dict()
    card = {"modality": "voice-face", "inputs": inputs, "metric": "cosine", "default_threshold": 0.5}
    store_model(models, "joint-untrained", JOINT_MODEL, state, {"file": "test"}, card)
    specs = [
        AttributeSpec("age", "numeric", "gaussian", mean=40, std=15),
        AttributeSpec("mood", "categorical", "ce", classes=["calm", "glad"]),
    ]
    heads = {
        "modality": "face",
        "input": inputs["faces"] | {"dim": 128, "key": "uri"},
        "attributes": [s.to_dict() for s in specs],
    }
    store_model(
        models, "attributes-untrained", ATTRIBUTE_HEAD, AttributeHead(128, specs).state_dict(), {"file": "test"}, heads
    )

    argv = [*pipeline_run["argv"], "--joint-model", "joint-untrained", "--attributes-model", "attributes-untrained"]
    argv[argv.index("--models") + 1] = models.uri
    assert pipeline.main(argv) == 0
    stages = _markers(pipeline_run["results"])["pl"]["stages"]
    assert stages["crossmatch"]["state"] == "ran" and stages["report"]["state"] == "ran"
    found = read_table(results, "attributes", "pl.attributes").to_pylist()
    assert len(found) == 2 * faces.num_rows and {r["attribute"] for r in found} == {"age", "mood"}
    rows = read_table(results, "matches", "pl.crossmatch").to_pylist()
    assert {r["mode"] for r in rows} == {"crossmatch"} and {r["model_name"] for r in rows} == {"joint-untrained"}
    page = Path(locate(results, stages["report"]["summary"]["report_uri"]).path).read_text()
    assert "Cross-modal matches" in page and 'data-mode="crossmatch"' in page
    assert 'data-testid="attributes"' in page


def test_a_nightly_run_does_only_what_is_new_and_equals_a_full_run(ray_cluster, all_models, tmp_path):
    """The pipeline again after objects were added, one removed and one rewritten in place: only those are read,
    decoded and embedded (counted), the removed one is in no result of the new run, and every table of the new run
    holds what a full run over the final archive holds."""
    import os

    from ops.testing.samples import make_sample_archive

    archive = tmp_path / "archive"
    make_sample_archive(resolve(str(archive)))
    for dirpath, _, names in os.walk(archive):  # written an hour ago: not "racily clean" for the first snapshot
        for name in names:
            path = os.path.join(dirpath, name)
            os.utime(path, (os.stat(path).st_atime - 3600, os.stat(path).st_mtime - 3600))

    def night(results: Path, run_id: str) -> dict:
        argv = [str(archive), "--output", str(results), "--models", all_models.uri, "--run-id", run_id]
        assert pipeline.main([*argv, "--label-pattern", "*/{label}/*"]) == 0
        return _markers(results)

    night(tmp_path / "results", "d1")
    rng = __import__("numpy").random.default_rng(11)
    (archive / "photos" / "carol" / "new.png").write_bytes(encode_image(portrait(rng, 2), "png"))
    (archive / "photos" / "alice" / "portrait-2.png").write_bytes(encode_image(portrait(rng, 0), "png"))  # rewritten
    removed = archive / "photos" / "bob" / "portrait-2.bmp"
    removed.unlink()
    runs = night(tmp_path / "results", "d2")
    manifest = runs["d2.manifest"]["summary"]
    assert (manifest["new"], manifest["modified"], manifest["removed"]) == (1, 1, 1)
    faces = runs["d2.faces"]["summary"]
    assert faces["reused_from"] == "d1.faces" and faces["sources"] - faces["reused"] == 2  # the new and rewritten
    voices = runs["d2.voices"]["summary"]
    assert voices["reused_from"] == "d1.voices" and voices["sources"] == voices["reused"]  # no new audio
    # Searches by difference: voices unchanged (every list merged), faces searched only where something changed.
    voice_search = runs["d2.search-voices"]["summary"]
    assert voice_search["merged_from"] == "d1.search-voices" and voice_search["queries_searched"] == 0
    face_search = runs["d2.search-faces"]["summary"]
    assert face_search["merged_from"] == "d1.search-faces" and face_search["gallery_added"] == 2
    assert face_search["gallery_removed"] == 2 and face_search["queries_merged"] > 0
    assert runs["d2.identify-faces"]["summary"]["merged_from"] == "d1.identify-faces"
    results = resolve(str(tmp_path / "results"))
    gone = resolve(str(removed)).uri
    for table in ("manifest", "faces", "face_sources"):
        assert (
            gone
            not in read_table(results, table, f"d2.{table if table != 'face_sources' else 'faces'}")
            .column("uri")
            .to_pylist()
        )
    search = read_table(results, "matches", "d2.search-faces")
    assert gone not in search.column("query_uri").to_pylist() + search.column("gallery_uri").to_pylist()
    page = Path(locate(results, runs["d2"]["summary"]["report_uri"]).path).read_text()
    assert 'data-testid="changes"' in page and gone in page  # the report says what changed
    assert "queries searched" in page

    full = night(tmp_path / "full", "f")
    fresh = resolve(str(tmp_path / "full"))
    key = ("query_item", "rank", "gallery_item", "identity", "decision")
    for table in ("search-faces", "search-voices", "identify-faces"):
        a = read_table(results, "matches", f"d2.{table}").to_pylist()
        b = read_table(fresh, "matches", f"f.{table}").to_pylist()
        pick = lambda rows: sorted(tuple(r[k] for k in key) + (round(r["score"], 4),) for r in rows)  # noqa: E731
        assert pick(a) == pick(b), table
    for stage in ("faces", "voices"):
        mine, theirs = runs[f"d2.{stage}"]["summary"], full[f"f.{stage}"]["summary"]
        assert {k: v for k, v in mine.items() if k not in ("reused", "reused_from")} == {
            k: v for k, v in theirs.items() if k not in ("reused", "reused_from")
        }


NOT_A_MATCH = {"unknown", "below the evidence needed"}  # what identify says of a probe it does not identify


def test_a_real_archive_gets_the_decisions_its_evidence_supports(real_pipeline, tmp_path):
    """Every face its own item, and no decision against the evidence, on real photos, a real clip and real voices."""
    archive, results = real_pipeline["archive"], real_pipeline["results"]
    root = resolve(str(results))
    identify = read_table(root, "matches", "real.identify-faces").to_pylist()
    top = {r["query_item"].split("/probes/")[1]: r for r in identify if r["rank"] == 1}
    said = lambda name: {r["decision"] for k, r in top.items() if k.startswith(name + "#")}  # noqa: E731
    # people who are not enrolled are unknown: Lin-Manuel Miranda's photo, and his track in the clip (4-7 s)
    assert said("lin-manuel-miranda.png") <= NOT_A_MATCH
    (singing,) = [k for k in top if k.startswith("short_hamilton_clip.mp4#track=") and k.endswith("t=4.02,7.02")]
    assert top[singing]["decision"] in NOT_A_MATCH
    # both people of each two-person photo are found
    assert {"obama", "biden"} <= said("obama_and_biden.jpg") and said("two_people.jpg") == {"obama", "biden"}
    assert said("kit_with_rose.jpg") == {"kit_harington", "rose_leslie"}
    # the clip's tracks: the pianist's (0.85-1.02 s) is nearest Alex Lacamoire, and no track is anyone else
    (piano,) = [
        k
        for k in top
        if k.startswith("short_hamilton_clip.mp4#track=")
        and k.endswith("t=0.85,1.02")
        and top[k]["identity"] == "alex_lacamoire"
    ]
    assert said("short_hamilton_clip.mp4") <= NOT_A_MATCH | {"alex_lacamoire"}
    # no decision that says "same" on evidence that does not (search, identify)
    for row in read_table(root, "matches").to_pylist():
        if is_positive(row["decision"]):
            assert row["llr"] > 0, row
    # no identity holds two labels, and the figure says what it covers
    (marker,) = [m for m in committed_runs(root) if m["run_id"] == "real.identities-faces"]
    assert not [w for w in marker["summary"]["warnings"] if "labels" in w]
    assert marker["summary"]["labelled_items"] < marker["summary"]["items"]
    # 1:1 of two sources: every face pair, the deciding pair named (Lin's photo against the clip: his track)
    pairs = tmp_path / "pairs.csv"
    probes = archive / "probes"
    pairs.write_text(f"a,b\n{probes / 'lin-manuel-miranda.png'},{probes / 'short_hamilton_clip.mp4'}\n")
    common = ["--queries", str(results), "--output", str(results), "--calibration", str(results)]
    assert match.main(["verify", *common, "--pairs", str(pairs), "--run-id", "v", "--log-level", "WARNING"]) == 0
    (pair,) = read_table(root, "matches", "v").to_pylist()
    assert pair["gallery_item"].endswith(singing)  # the deciding pair: his photo and his singing track
    assert (pair["decision"] == "accept") == (pair["llr"] > 0)  # the evidence of one of 11 pairs, as it stands


def test_an_interrupted_pipeline_says_which_stages_are_committed_and_that_it_resumes(monkeypatch, caplog):
    import logging
    from types import SimpleNamespace

    from jobs import embed_faces
    from jobs.runtime import stages as stages_module
    from jobs.runtime.stages import Stages

    ctx = SimpleNamespace(log=logging.getLogger("crossmatch"), run_id="p", output=resolve("/tmp/out"))
    stages = Stages(ctx, None, {})
    stages.done = {"manifest": {"state": "kept"}, "voices": {"state": "ran"}}

    def ctrl_c(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(stages_module, "launch", ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        stages.run("faces", embed_faces, embed_faces.EmbedFacesConfig(manifest="/tmp/out"))
    assert "interrupted in stage faces: stages committed: manifest, voices; the same command again" in caplog.text
