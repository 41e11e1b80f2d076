"""Triplet training on Ray Train, as a user runs it: on synthetic identities, judged on identities it never saw."""

import pytest

from jobs import match, synthesize, train_face
from ops.io.storage import resolve
from ops.io.tables import committed_runs, read_table
from ops.models.catalogue import load


@pytest.fixture(scope="module")
def people(tmp_path_factory):
    root = tmp_path_factory.mktemp("people")
    assert synthesize.main(["--output", str(root), "--identities", "150", "--recordings", "4", "--run-id", "s"]) == 0
    return root


def _history(root, run_id: str) -> dict[int, dict]:
    rows = read_table(resolve(str(root)), "training", run_id).to_pylist()
    by_epoch: dict[int, dict] = {}
    for r in rows:
        by_epoch.setdefault(r["epoch"], {})[r["metric"]] = r["value"]
    return by_epoch


def test_triplet_training_on_two_workers_lowers_eer_on_unseen_identities_and_resumes(ray_cluster, people, tmp_path):
    models = tmp_path / "models"
    argv = [str(people), "--output", str(people), "--models", str(models), "--run-id", "tf", "--no-gpus"]
    argv += ["--workers", "2", "--epochs", "3", "--name", "face-head"]
    assert train_face.main(argv) == 0
    history = _history(people, "tf")
    assert sorted(history) == [-1, 0, 1, 2]  # the untrained head, then each epoch
    untrained, trained = history[-1]["eer"], history[2]["eer"]
    assert trained < 0.5 * untrained, (untrained, trained)
    assert history[2]["samples_per_s"] > 0 and history[2]["loss"] < history[0]["loss"]

    card = load("face-head", resolve(str(models))).card
    assert card["architecture"] == "projection-head" and card["input"]["model_name"] == "synthetic-face"
    assert card["training"]["holdout_eer"] == pytest.approx(trained)
    assert resolve(str(people)).join("checkpoints", "tf").exists()
    assert card["default_threshold"] == pytest.approx(history[2]["threshold_far_0.001"])

    # Matching through the head: its name and sha256 on every row, its card's threshold on each match.
    out = tmp_path / "matches"
    argv_match = ["search", "--queries", str(people), "--queries-run-id", "s", "--per-source", "--k", "3"]
    argv_match += ["--head", "face-head", "--models", str(models), "--output", str(out), "--run-id", "m"]
    assert match.main(argv_match) == 0
    rows = read_table(resolve(str(out)), "matches", "m").to_pylist()
    assert {r["model_name"] for r in rows} == {"face-head"} and {r["threshold_source"] for r in rows} == {
        "model card of face-head"
    }
    first = [r for r in rows if r["rank"] == 1]
    same = [r["query_uri"].split("/")[-2] == r["gallery_uri"].split("/")[-2] for r in first]
    assert sum(same) / len(same) > 0.8  # the nearest face is the same person's (training people: a sanity check)

    # A rerun with more epochs resumes from the newest checkpoint: epochs 0-2 are not trained again.
    assert train_face.main([*argv[:-6], "--workers", "2", "--epochs", "4", "--name", "face-head"]) == 0
    again = _history(people, "tf")
    assert sorted(again) == [-1, 0, 1, 2, 3]
    assert again[0] == history[0] and again[2] == history[2]  # the same measurements, carried over
    assert len([m for m in committed_runs(resolve(str(people))) if m["run_id"] == "tf"]) == 1


@pytest.mark.parametrize("loss", ["semi-hard", "contrastive", "softmax"])
def test_every_loss_trains(ray_cluster, people, tmp_path, loss):
    argv = [str(people), "--output", str(tmp_path), "--models", str(tmp_path / "m"), "--no-gpus"]
    assert train_face.main([*argv, "--loss", loss, "--epochs", "2", "--steps", "30", "--run-id", loss]) == 0
    history = _history(tmp_path, loss)
    assert history[1]["eer"] < history[-1]["eer"]


def test_bad_requests_fail_clearly(people, tmp_path, caplog):
    assert train_face.main([str(people), "--output", str(tmp_path), "--loss", "hinge"]) == 2
    assert "unknown loss 'hinge'" in caplog.text
    assert train_face.main([str(tmp_path / "empty"), "--output", str(tmp_path)]) == 2
    assert "no committed faces/" in caplog.text


def test_a_run_id_is_not_resumed_on_other_data(ray_cluster, people, tmp_path, caplog):
    argv = [str(people), "--output", str(tmp_path), "--models", str(tmp_path / "m"), "--no-gpus", "--run-id", "same"]
    assert train_face.main([*argv, "--epochs", "1", "--steps", "2"]) == 0
    assert train_face.main([*argv, "--epochs", "2", "--steps", "2", "--seed", "5"]) == 2  # another split
    assert "trained on other data" in caplog.text and "pass a new --run-id" in caplog.text


def test_training_checkpoints_and_the_model_go_to_s3(ray_cluster, request, monkeypatch):
    from tests.conftest import new_bucket

    bucket = new_bucket(request, "moto", monkeypatch)
    out, models = bucket.uri("results"), bucket.uri("models")
    assert synthesize.main(["--output", out, "--identities", "30", "--recordings", "3", "--run-id", "s"]) == 0
    argv = [out, "--output", out, "--models", models, "--no-gpus", "--epochs", "2", "--steps", "3", "--run-id", "s3t"]
    assert train_face.main([*argv, "--name", "head"]) == 0
    assert resolve(out).join("checkpoints", "s3t").fs.ls(resolve(out).join("checkpoints", "s3t").path)
    assert load("head", resolve(models)).card["training"]["epochs"] == 2
    assert train_face.main([*argv[:-4], "--epochs", "3", "--steps", "3", "--run-id", "s3t", "--name", "head"]) == 0
    assert sorted(_history(out, "s3t")) == [-1, 0, 1, 2]  # resumed from the checkpoint in the bucket


def test_a_head_refuses_embeddings_of_another_backbone(ray_cluster, people, tmp_path, caplog):
    from ops.matching.heads import PROJECTION_HEAD, ProjectionHead
    from ops.models.registry import store_model

    models = resolve(str(tmp_path / "m"))
    card = {"modality": "face", "input": {"model_name": "dlib-resnet-v1", "model_sha256": "f7d1", "dim": 128}}
    store_model(models, "dlib-head", PROJECTION_HEAD, ProjectionHead(128).state_dict(), {"file": "test"}, card)
    argv = ["search", "--queries", str(people), "--head", "dlib-head", "--models", models.uri]
    assert match.main([*argv, "--output", str(tmp_path / "o")]) == 2
    assert "dlib-head was trained on dlib-resnet-v1 (f7d1) embeddings, not synthetic-face" in caplog.text
