"""jobs.attributes with a network that reads face pictures (FairFace's layout, random weights): every face of a
faces/ run cut again from its source at its landmarks, photos and video frames alike, and every face accounted for.
Heads over embeddings are tested with their trainer (test_train_attributes.py)."""

import json
from collections import Counter

import numpy as np
import pytest
import torch

from jobs import attributes, embed_faces, manifest
from ops.attributes.fairface import GROUPS, cut_chips
from ops.io.storage import resolve
from ops.io.tables import committed_file_rows, read_table
from ops.media.encode import encode_image, encode_video
from ops.media.images import decode_image
from ops.models import catalogue
from ops.testing.samples import portrait, speech
from tests.ops.attributes.test_fairface import released, saved


def quiet(*args) -> list[str]:
    return [str(a) for a in args] + ["--log-level", "WARNING"]


@pytest.fixture(scope="module")
def embedded(ray_cluster, face_models, tmp_path_factory):
    """A small archive embedded: a photo, a photo of two people, a video; then one photo changed and one deleted,
    as an archive moves on after its faces were found."""
    base = tmp_path_factory.mktemp("pictures")
    archive = base / "archive"
    archive.mkdir()
    rng = np.random.default_rng(3)
    frames = np.stack([np.pad(portrait(rng, 1), ((0, 0), (16 + t, 48 - t), (0, 0)), mode="edge") for t in range(30)])
    (archive / "one.jpg").write_bytes(encode_image(portrait(rng, 0), "jpeg"))
    (archive / "two.png").write_bytes(encode_image(np.concatenate([portrait(rng, 2), portrait(rng, 0)], 1), "png"))
    (archive / "clip.mp4").write_bytes(encode_video(frames, speech(rng, 150.0, 3.0, 16000), 16000, "mp4", fps=10))
    (archive / "changed.jpg").write_bytes(encode_image(portrait(rng, 2), "jpeg"))
    (archive / "deleted.jpg").write_bytes(encode_image(portrait(rng, 1), "jpeg"))
    (archive / "recut.mp4").write_bytes(encode_video(frames[:10], speech(rng, 120.0, 1.0, 16000), 16000, "mp4", fps=10))
    out = base / "out"
    assert manifest.main(quiet(archive, "--output", out)) == 0
    assert embed_faces.main(quiet(out, "--output", out, "--models", face_models.uri, "--run-id", "f")) == 0
    (archive / "changed.jpg").write_bytes(encode_image(portrait(rng, 0), "jpeg"))
    (archive / "deleted.jpg").unlink()
    (archive / "recut.mp4").write_bytes(
        encode_video(frames[5:15], speech(rng, 120.0, 1.0, 16000), 16000, "mp4", fps=10)
    )
    models = resolve(str(base / "models"))
    (base / "fairface.pt").write_bytes(saved(released()))
    catalogue.import_checkpoint(str(base / "fairface.pt"), "fairface-resnet34", "fairface", models)
    return {"archive": archive, "out": out, "models": models}


def test_every_face_gets_race_gender_and_age_group_or_an_error_row(embedded, tmp_path):
    out, models = embedded["out"], embedded["models"]
    faces = read_table(resolve(str(out)), "faces", "f").to_pylist()
    result = tmp_path / "result"
    assert (
        attributes.main(quiet(out, "--model", "fairface", "--models", models.uri, "--output", result, "--run-id", "a"))
        == 0
    )
    rows = read_table(resolve(str(result)), "attributes", "a").to_pylist()
    errors = read_table(resolve(str(result)), "errors", "a").to_pylist()

    by_source = {}
    for face in faces:
        by_source.setdefault(face["uri"].rsplit("/", 1)[-1], []).append(face)
    assert {k: len(v) for k, v in by_source.items() if k.endswith(".jpg") or k.endswith(".png")} == {
        "one.jpg": 1,
        "two.png": 2,
        "changed.jpg": 1,
        "deleted.jpg": 1,
    }
    assert len(by_source["clip.mp4"]) >= 3 and {f["frame_index"] for f in by_source["clip.mp4"]} != {0}
    gone = ("changed.jpg", "deleted.jpg", "recut.mp4")
    readable = [f for f in faces if not f["uri"].endswith(gone)]
    assert len(rows) == 3 * len(readable)
    for name, classes in GROUPS.items():
        mine = [r for r in rows if r["attribute"] == name]
        assert len(mine) == len(readable) and all(r["class"] in classes for r in mine)
        assert all(1 / len(classes) <= r["probability"] <= 1 and r["value"] is None for r in mine)
    assert {r["backbone_name"] for r in rows} == {"mtcnn"} and {r["model_name"] for r in rows} == {"fairface"}
    items = {r["item"] for r in rows}
    assert len(items) == len(readable) and any("frame=0&" not in i for i in items if "clip.mp4" in i)

    # every face the archive no longer gives is an error row naming it, with the reason
    kinds = {}
    for e in errors:
        kinds.setdefault(e["uri"].rsplit("/", 1)[-1], []).append(e["error_type"])
        assert e["job"] == "attributes" and e["message"].startswith(e["uri"] + "#frame=")
    assert kinds["changed.jpg"] == ["content_changed"] and kinds["deleted.jpg"] == ["not_found"]
    assert kinds["recut.mp4"] == ["content_changed"] * len(by_source["recut.mp4"]) and len(kinds) == 3
    summary = json.loads(read_table(resolve(str(result)), "runs").to_pylist()[-1]["info"])["summary"]
    assert summary["faces"] == len(readable) and summary["errors"] == len(errors) == len(faces) - len(readable)

    # a row is the network on the chip cut from the source at the stored landmarks
    (two,) = [f for f in by_source["two.png"] if f["face_index"] == 1]
    frame = decode_image((embedded["archive"] / "two.png").read_bytes())
    image = torch.from_numpy(frame.rgb.copy()).permute(2, 0, 1)[None]
    marks = torch.tensor(two["landmarks"]).view(1, 5, 2)
    net = catalogue.build(catalogue.load("fairface", models, expect="face-attributes"), "cpu")
    found = net.predict(cut_chips(image, torch.zeros(1, dtype=torch.long), marks).float())
    age = [r for r in rows if r["attribute"] == "age" and r["item"].endswith("two.png#frame=0&face=1")]
    assert age[0]["class"] == GROUPS["age"][found["age"]["probabilities"][0].argmax()]
    assert age[0]["probability"] == pytest.approx(found["age"]["probabilities"][0].max(), rel=1e-4)


def test_the_newest_faces_run_is_read_once_and_large_files_are_cut_into_parts(
    embedded, face_models, tmp_path, monkeypatch, caplog
):
    out, models = embedded["out"], embedded["models"]
    # a second faces run over the same manifest: every row reused into it
    assert embed_faces.main(quiet(out, "--output", out, "--models", face_models.uri, "--run-id", "g")) == 0
    faces = read_table(resolve(str(out)), "faces", "g").to_pylist()
    files, _ = committed_file_rows(resolve(str(out)), "faces", "g")
    assert sum(n for _, n in files) == len(faces) and max(n for _, n in files) > 2  # a file cut into parts below
    monkeypatch.setattr(attributes, "FACES_PER_PART", 2)  # decode tasks of two faces' sources each
    result = tmp_path / "result"
    argv = ("--model", "fairface", "--models", models.uri, "--output", result, "--run-id", "b", "--log-level", "INFO")
    assert attributes.main([str(out), *map(str, argv)]) == 0
    assert "faces of run g:" in caplog.text and "the newest of 2" in caplog.text
    rows = read_table(resolve(str(result)), "attributes", "b").to_pylist()
    errors = read_table(resolve(str(result)), "errors", "b").to_pylist()
    per_item = Counter(r["item"] for r in rows)
    assert set(per_item.values()) == {3} and len(per_item) + len(errors) == len(faces)


def test_a_model_that_estimates_no_attribute_is_refused(embedded, face_models, tmp_path, caplog):
    out = embedded["out"]
    assert attributes.main(quiet(out, "--model", "mtcnn", "--models", face_models.uri, "--output", tmp_path)) != 0
    assert "face-attributes" in caplog.text
    assert attributes.main(quiet(out, "--output", tmp_path)) != 0
    assert "--model is needed" in caplog.text
