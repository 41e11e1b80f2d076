"""Triplet training on Ray Train, as a user runs it: on synthetic identities, judged on identities it never saw."""

import pytest

from jobs import synthesize, train_face
from ops.registry import load
from ops.storage import resolve
from ops.tables import committed_runs, read_table


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
