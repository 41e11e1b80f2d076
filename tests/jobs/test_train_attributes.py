"""jobs.train_attributes and jobs.attributes on synthetic people whose ages and expressions shape their faces."""

import json

import pytest

from jobs import attributes, synthesize, train_attributes
from ops.io.storage import resolve
from ops.io.tables import read_table
from ops.models.catalogue import load


def quiet(*args) -> list[str]:
    return [str(a) for a in args] + ["--log-level", "WARNING"]


@pytest.fixture(scope="module")
def people(ray_cluster, tmp_path_factory):
    root = tmp_path_factory.mktemp("ages")
    argv = ("--output", root, "--identities", 600, "--recordings", 4, "--attributes", "--run-id", "s")
    assert synthesize.main(quiet(*argv)) == 0
    return root


@pytest.fixture(scope="module")
def trained(people, tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    labels = people / "synthetic" / "s" / "attributes"
    argv = (people, "--labels", labels, "--output", people, "--models", models, "--no-gpus", "--epochs", 12)
    assert train_attributes.main(quiet(*argv, "--batch", 128, "--run-id", "ta", "--name", "ages")) == 0
    return models, load("ages", resolve(str(models))).card


def test_trained_heads_beat_the_untrained_head_and_the_baseline_on_people_held_out(trained, people):
    _, card = trained
    held, untrained, base = card["held_out"], card["untrained"], card["baseline"]
    assert card["architecture"] == "attribute-head" and card["input"]["model_name"] == "synthetic-face"
    assert [a["name"] for a in card["attributes"]] == ["age", "expression"]
    # expression: four classes, imbalanced (a majority guess has balanced accuracy 0.25)
    assert base["expression_balanced_accuracy"] == pytest.approx(0.25)
    assert held["expression_balanced_accuracy"] > base["expression_balanced_accuracy"] + 0.25
    assert held["expression_balanced_accuracy"] > untrained["expression_balanced_accuracy"] + 0.2
    # age, 5 to 80 years: the mean's error is about 19 years
    assert held["age_mae"] < base["age_mae"] - 8 and held["age_mae"] < untrained["age_mae"] - 8
    assert held["age_rmse"] < base["age_rmse"] and held["age_within_5"] > 2 * base["age_within_5"]
    assert 0.85 <= held["age_coverage_90"] <= 0.95  # the predicted 90% interval holds about 90%
    confusion = card["confusion"]["expression"]
    assert len(confusion) == 4 and sum(map(sum, confusion)) == card["training"]["held_out_faces"]
    rows = read_table(resolve(str(people)), "training", "ta").to_pylist()
    assert {r["epoch"] for r in rows} == set(range(-1, 12))


def test_applied_to_every_face_with_class_probability_value_and_interval(trained, people, tmp_path):
    models, card = trained
    out = tmp_path / "out"
    assert attributes.main(quiet(people, "--model", "ages", "--models", models, "--output", out, "--run-id", "a")) == 0
    rows = read_table(resolve(str(out)), "attributes", "a").to_pylist()
    assert len(rows) == 2 * 2400 and {r["model_name"] for r in rows} == {"ages"}
    truth = {}
    for part in (people / "synthetic" / "s" / "attributes").glob("*.parquet"):
        import pyarrow.parquet as pq

        truth |= {r["uri"]: r for r in pq.read_table(part).to_pylist()}
    ages = [r for r in rows if r["attribute"] == "age"]
    assert all(r["interval_low"] < r["value"] < r["interval_high"] and r["uncertainty"] > 0 for r in ages)
    inside = sum(r["interval_low"] <= truth[r["uri"]]["age"] <= r["interval_high"] for r in ages) / len(ages)
    assert inside > 0.85
    faces = [r for r in rows if r["attribute"] == "expression"]
    assert all(r["class"] in ("neutral", "happy", "sad", "surprised") and 0.25 <= r["probability"] <= 1 for r in faces)
    assert all(r["value"] is None for r in faces) and all(r["item"].endswith("#frame=0&face=0") for r in faces)
    assert {r["backbone_name"] for r in rows} == {"synthetic-face"}
    summary = json.loads(read_table(resolve(str(out)), "runs").to_pylist()[-1]["info"])["summary"]
    assert summary["faces"] == 2400 and summary["attributes"] == ["age", "expression"]


def test_heads_are_refused_on_another_backbone_and_bad_labels_are_clear(trained, tmp_path, caplog):
    models, _ = trained
    other = tmp_path / "other"
    assert synthesize.main(quiet("--output", other, "--identities", 5, "--recordings", 2, "--world-seed", 1)) == 0
    assert attributes.main(quiet(other, "--model", "ages", "--models", models, "--output", other)) != 0
    assert "was trained on synthetic-face" in caplog.text
    labels = tmp_path / "labels.csv"
    labels.write_text("path,age\nx,3\n")
    assert train_attributes.main(quiet(other, "--labels", labels, "--output", other, "--no-gpus")) != 0
    assert "needs a uri or an item column" in caplog.text
    assert train_attributes.main(quiet(other, "--output", other)) != 0
    assert "--labels is needed" in caplog.text
    twice = tmp_path / "twice.csv"
    uri = read_table(resolve(str(other)), "manifest").column("uri")[0].as_py()
    twice.write_text(f"uri,age\n{uri},30\n{uri},31\n")
    assert train_attributes.main(quiet(other, "--labels", twice, "--output", other, "--no-gpus")) != 0
    assert "twice, differently" in caplog.text
