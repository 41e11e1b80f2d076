"""jobs.persons: face identities and voice identities linked by who is on screen while a voice speaks."""

import numpy as np
import pyarrow as pa

from jobs import identities, match, persons
from ops.io.schemas import voices
from ops.io.storage import resolve
from ops.io.tables import OutputRun, committed_runs, read_table
from ops.matching.heads import JOINT_MODEL, JointModel
from ops.models.registry import store_model
from tests.jobs.test_match import SHA, write_faces

# Videos: who is on screen (face, seconds sampled) and who speaks when (voice, start, end).
VIDEOS = {
    "v1": ({"A": range(10)}, [("A", 0, 3), ("A", 4, 8), ("A", 8.5, 8.9)]),  # the last: between two frames
    "v2": ({"A": range(6)}, [("A", 1, 4)]),
    "v3": ({"B": range(10)}, [("B", 0, 5)]),
    "v4": ({"B": range(6)}, [("B", 0, 3)]),
    "v5": ({"A": range(6), "C": range(6)}, [("A", 0, 4)]),  # two faces: who speaks is a guess
    "v6": ({"C": range(6)}, [("N", 0, 2)]),  # a voice-over, in one video only
    "v7": ({"B": range(6), None: range(6)}, [("B", 0, 3)]),  # beside B, a face no identity holds: no guess
}


def _summary(root, run_id: str) -> dict:
    (marker,) = [m for m in committed_runs(resolve(str(root))) if m["run_id"] == run_id]
    return marker["summary"]


def write_voices(root, rows, dim, run_id="voices-test"):
    common = {"level": "segment", "duration": 1.0, "speech_ratio": 1.0, "partials": 1, "status": "ok"}
    common |= {"message": None, "model_name": "ge2e", "model_sha256": SHA, "run_id": run_id}
    table = [common | r | {"speech_seconds": r["end"] - r["start"]} for r in rows]
    out = OutputRun(resolve(str(root)), run_id, "embed_voices")
    out.write("voices", pa.Table.from_pylist(table, schema=voices(dim)), voices(dim))
    out.commit()


def _archive(tmp_path, rng):
    faces_of = {p: rng.standard_normal(16) for p in "ABC"}
    voice_of = {"A": faces_of["A"], "B": faces_of["B"], "N": rng.standard_normal(16)}  # one space: see _joint
    near = lambda centre: (centre + 0.2 * rng.standard_normal(16)).astype(np.float32)  # noqa: E731
    vectors, uris, frames, voice_rows = [], [], [], []
    for n, (video, (on_screen, speech)) in enumerate(VIDEOS.items()):
        uri, sha = f"/archive/{video}.mp4", f"{n:064x}"
        for face, (who, times) in enumerate(on_screen.items()):
            for t in times:
                vectors.append(near(faces_of[who]) if who else np.zeros(16, np.float32))  # zero: not searchable
                uris.append(uri)
                frames.append({"frame_index": t, "timestamp": float(t), "face_index": face, "track_id": face})
                frames[-1]["sha256"] = sha
        for s, (who, start, end) in enumerate(speech):
            row = {"uri": uri, "sha256": sha, "segment_index": s, "start": float(start), "end": float(end)}
            voice_rows.append(row | {"embedding": near(voice_of[who]).tolist()})
    write_faces(tmp_path, np.array(vectors), uris, frames=frames, run_id="faces-test")
    write_voices(tmp_path, voice_rows, 16)
    for table, run in (("faces", "faces-test"), ("voices", "voices-test")):
        runs = ["--queries-run-id", run, "--gallery-run-id", run, "--table", table, "--run-id", f"s-{table}"]
        search = ["search", "--queries", tmp_path, "--output", tmp_path, "--k", 10, "--threshold", 0.7, *runs]
        assert match.main([*map(str, search), "--log-level", "WARNING"]) == 0
        argv = [str(tmp_path), "--search-run-id", f"s-{table}", "--output", str(tmp_path), "--run-id", f"i-{table}"]
        assert identities.main([*argv, "--log-level", "WARNING"]) == 0


def test_faces_and_voices_seen_and_heard_together_are_linked_into_persons(ray_cluster, tmp_path, caplog):
    _archive(tmp_path, np.random.default_rng(11))
    members = read_table(resolve(str(tmp_path)), "identities").to_pylist()
    who = {(r["modality"], r["uri"].split("/")[-1][:2], r["item"].rsplit("=", 1)[-1]): r["identity"] for r in members}
    face = {p: who[("faces", v, i)] for p, v, i in (("A", "v1", "0"), ("B", "v3", "0"), ("C", "v6", "0"))}
    voice = {p: who[("voices", v, "0")] for p, v in (("A", "v1"), ("B", "v3"), ("N", "v6"))}
    assert len(set(face.values())) == 3 and len(set(voice.values())) == 3

    argv = [str(tmp_path), "--faces-run-id", "i-faces", "--voices-run-id", "i-voices", "--output", str(tmp_path)]
    assert persons.main([*argv, "--run-id", "p"]) == 0
    summary = _summary(tmp_path, "p")
    assert summary["segments_decided"] == 6 and summary["segments_undecided"] == 2 and summary["segments_unseen"] == 1
    rows = {
        (r["face_identity"], r["voice_identity"]): r
        for r in read_table(resolve(str(tmp_path)), "persons", "p").to_pylist()
    }
    assert set(rows) == {(face["A"], voice["A"]), (face["B"], voice["B"]), (face["C"], voice["N"])}
    a, b, c = rows[(face["A"], voice["A"])], rows[(face["B"], voice["B"])], rows[(face["C"], voice["N"])]
    assert a["linked"] and a["videos"] == 2 and a["seconds"] == 10.0 and a["link_score"] == 1.0
    assert [(e["uri"][-6:], e["start"], e["end"]) for e in a["evidence"]] == [
        ("v1.mp4", 0.0, 3.0),
        ("v1.mp4", 4.0, 8.0),
        ("v2.mp4", 1.0, 4.0),
    ]
    assert b["linked"] and b["seconds"] == 8.0 and b["person"].startswith("person-") and b["reason"] is None
    assert not c["linked"] and c["person"] is None and "1 video(s), fewer than 2" in c["reason"]
    assert summary["persons"] == 2 and summary["candidates"] == 3
    # One video is enough when asked: the voice-over links, with its one span as evidence.
    assert persons.main([*argv, "--run-id", "p1", "--min-videos", "1"]) == 0
    linked = [r for r in read_table(resolve(str(tmp_path)), "persons", "p1").to_pylist() if r["linked"]]
    assert len(linked) == 3 and a["person"] in {r["person"] for r in linked}
    # Runs the wrong way round, or over whole sources: refused with the reason.
    swapped = [str(tmp_path), "--faces-run-id", "i-voices", "--voices-run-id", "i-faces", "--output", str(tmp_path)]
    assert persons.main(swapped) == 2 and "clustered voices, not faces" in caplog.text


def _joint(models) -> None:
    """A joint model that maps both sides by the identity (so a voice scores its own face's cosine): Linear [I; -I],
    LayerNorm (the mean is zero, a common scale), ReLU keeps each sign's part, Linear [I, -I] puts x back together."""
    import torch

    model = JointModel(16, 16, out_dim=16, hidden=32)
    eye = torch.eye(16)
    with torch.no_grad():
        for head in (model.face, model.voice):
            head.net[0].weight.copy_(torch.cat([eye, -eye])), head.net[0].bias.zero_()
            head.net[3].weight.copy_(torch.cat([eye, -eye], 1)), head.net[3].bias.zero_()
    inputs = {
        t: {"model_name": m, "model_sha256": SHA, "dim": 16}
        for t, m in (("faces", "dlib-resnet-v1"), ("voices", "ge2e"))
    }
    card = {
        "modality": "voice-face",
        "inputs": inputs,
        "embedding_dim": 16,
        "metric": "cosine",
        "default_threshold": 0.5,
    }
    store_model(resolve(str(models)), "joint", JOINT_MODEL, model.state_dict(), {"test": "identity map"}, card)


def test_a_joint_model_says_who_speaks_among_several_faces(ray_cluster, tmp_path):
    _archive(tmp_path, np.random.default_rng(11))
    _joint(tmp_path / "models")
    argv = [str(tmp_path), "--faces-run-id", "i-faces", "--voices-run-id", "i-voices", "--output", str(tmp_path)]
    argv += ["--joint-model", "joint", "--models", str(tmp_path / "models"), "--run-id", "pj"]
    assert persons.main(argv) == 0
    summary = _summary(tmp_path, "pj")
    assert summary["segments_decided"] == 7 and summary["segments_by_joint_model"] == 1
    assert summary["segments_undecided"] == 1  # v7: the model is not asked about a face nobody clustered
    (a,) = [r for r in read_table(resolve(str(tmp_path)), "persons", "pj").to_pylist() if r["seconds"] > 8]
    spans = {e["uri"][-6:]: e for e in a["evidence"]}
    assert a["linked"] and a["videos"] == 3 and a["seconds"] == 14.0
    assert spans["v5.mp4"]["by"] == "joint model" and spans["v5.mp4"]["score"] > 0.9
    assert spans["v2.mp4"]["by"] == "one identity on screen" and spans["v2.mp4"]["score"] is None
