"""The joint voice-face model, trained on synthetic identities and judged on identities it never saw; then used by
`jobs.match crossmatch` on a third, unseen population."""

import numpy as np
import pytest

from jobs import match, synthesize, train_crossmodal
from ops.io.storage import resolve
from ops.io.tables import committed_runs, read_table
from ops.models.catalogue import load


@pytest.fixture(scope="module")
def people(tmp_path_factory):
    root = tmp_path_factory.mktemp("crossmodal")
    argv = ["--output", str(root), "--identities", "300", "--recordings", "4", "--run-id", "train"]
    assert synthesize.main(argv) == 0
    probe = ["--output", str(root), "--identities", "40", "--recordings", "2", "--seed", "9", "--run-id", "probe"]
    assert synthesize.main([*probe, "--first-identity", "9000"]) == 0
    return root


def _final(root, run_id: str) -> tuple[dict, dict]:
    rows = read_table(resolve(str(root)), "training", run_id).to_pylist()
    by_epoch: dict[int, dict] = {}
    for r in rows:
        by_epoch.setdefault(r["epoch"], {})[r["metric"]] = r["value"]
    return by_epoch[-1], by_epoch[max(by_epoch)]


def _train(root, models, run_id: str, *extra: str) -> int:
    argv = [str(root), "--faces-run-id", "train", "--voices-run-id", "train", "--output", str(root)]
    argv += ["--models", str(models), "--run-id", run_id, "--name", run_id, "--no-gpus", *extra]
    return train_crossmodal.main(argv)


def test_supervised_joint_model_matches_unseen_voices_and_faces(ray_cluster, people, tmp_path):
    assert _train(people, tmp_path, "joint", "--epochs", "6") == 0
    untrained, trained = _final(people, "joint")
    assert 0.3 < untrained["v2f_1of2"] < 0.7 and 0.3 < untrained["f2v_1of2"] < 0.7  # chance before training
    assert trained["v2f_1of2"] >= 0.8 and trained["f2v_1of2"] >= 0.8, trained
    assert trained["auc"] >= 0.8 and trained["map_v2f"] > 5 * untrained["map_v2f"]
    card = load("joint", resolve(str(tmp_path))).card
    assert card["architecture"] == "joint-voice-face" and card["inputs"]["voices"]["model_name"] == "synthetic-voice"
    assert card["default_threshold"] == pytest.approx(trained["threshold_far_0.01"])

    # A voice ranks faces, a face ranks voices, over people the model never saw.
    out = tmp_path / "matches"
    argv = ["crossmatch", "--queries", str(people), "--queries-run-id", "probe", "--gallery-run-id", "probe"]
    argv += ["--joint-model", "joint", "--models", str(tmp_path), "--output", str(out), "--k", "5", "--run-id", "x"]
    assert match.main(argv) == 0
    rows = read_table(resolve(str(out)), "matches", "x").to_pylist()
    assert len(rows) == 2 * 80 * 5 and {r["mode"] for r in rows} == {"crossmatch"}
    assert {r["model_name"] for r in rows} == {"joint"} and all(r["threshold"] is not None for r in rows)
    first = [r for r in rows if r["rank"] == 1]
    for direction in ("#voice", "#face"):
        ranked = [r for r in first if r["query_item"].endswith(direction)]
        hits = [r["query_uri"].split("/")[-2] == r["gallery_uri"].split("/")[-2] for r in ranked]  # the person
        assert len(hits) == 80 and np.mean(hits) > 0.3  # chance: 2 of 80
    (marker,) = [m for m in committed_runs(resolve(str(out))) if m["run_id"] == "x"]
    assert marker["summary"]["joint_model"] == "joint"

    # The next night, six more recordings: crossmatch by difference, both directions equal to a full crossmatch.
    night = tmp_path / "night"
    more = ["--output", str(night), "--recordings", "2", "--seed", "9"]
    assert synthesize.main([*more, "--identities", "30", "--first-identity", "9000", "--run-id", "n1"]) == 0
    argv = ["crossmatch", "--queries", str(night), "--joint-model", "joint", "--models", str(tmp_path)]
    argv += ["--output", str(night), "--k", "5", "--log-level", "WARNING"]
    assert match.main([*argv, "--run-id", "c1"]) == 0
    assert (
        synthesize.main([*more, "--identities", "3", "--seed", "10", "--first-identity", "9100", "--run-id", "n2"]) == 0
    )
    assert match.main([*argv, "--run-id", "c2"]) == 0
    assert match.main([*argv, "--run-id", "c3", "--no-reuse"]) == 0
    summary = {m["run_id"]: m["summary"] for m in committed_runs(resolve(str(night)))}
    assert summary["c2"]["merged_from"] == "c1" and summary["c3"]["merged_from"] is None
    assert summary["c2"]["voices_gallery_added"] == summary["c2"]["faces_gallery_added"] == 6
    assert summary["c2"]["voices_queries_merged"] > 0 and summary["c2"]["faces_queries_merged"] > 0
    key = lambda r: (r["query_item"], r["rank"], r["gallery_item"], r["score"], r["decision"])  # noqa: E731
    merged, full = (sorted(map(key, read_table(resolve(str(night)), "matches", r).to_pylist())) for r in ("c2", "c3"))
    assert merged == full and len(full) == 2 * 66 * 5


def test_self_supervised_from_video_alone_learns_the_link(ray_cluster, people, tmp_path):
    assert _train(people, tmp_path, "video", "--mode", "video", "--epochs", "8") == 0
    untrained, trained = _final(people, "video")
    assert trained["v2f_1of2"] > 0.7 and trained["f2v_1of2"] > 0.7, trained  # no labels used in training
    assert trained["auc"] > untrained["auc"] + 0.15


def test_crossmatch_refuses_embeddings_of_other_models(ray_cluster, people, tmp_path, caplog):
    assert _train(people, tmp_path, "small", "--epochs", "1", "--steps", "2") == 0
    other = tmp_path / "other"
    assert synthesize.main(["--output", str(other), "--identities", "5", "--world-seed", "3", "--run-id", "o"]) == 0
    argv = ["crossmatch", "--queries", str(other), "--joint-model", "small", "--models", str(tmp_path)]
    assert match.main([*argv, "--output", str(tmp_path / "m")]) == 2
    assert "but small was trained on synthetic-voice" in caplog.text
    assert match.main(["crossmatch", "--queries", str(other), "--output", str(tmp_path / "m")]) == 2
    assert "crossmatch needs --joint-model" in caplog.text
