import io
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from jobs import embed_faces, manifest
from ops.io.storage import resolve
from ops.io.tables import committed_runs, read_table
from ops.media.encode import encode_image, encode_video
from ops.testing.samples import portrait, speech
from tests.conftest import same_row, shared_data


def _png(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG" if im.mode != "CMYK" else "JPEG", **kw)
    return buf.getvalue()


def _jpeg(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", **kw)
    return buf.getvalue()


def _audio_only_mp4() -> bytes:
    import av

    buf = io.BytesIO()
    pcm = (speech(np.random.default_rng(0), pitch=120.0, seconds=1.0) * 20000).astype(np.int16)[None]
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = 16000
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    return buf.getvalue()


def hard_archive(folder) -> dict[str, str]:
    """Images and videos an archive holds, good and bad; value: the expected status or error type."""
    rng = np.random.default_rng(0)
    face = Image.fromarray(portrait(rng, 0))
    exif = Image.Exif()
    exif[0x0112] = 8  # stored turned 90 degrees clockwise; the viewer turns it back
    crowd = np.concatenate([np.concatenate([portrait(rng, (r + c) % 3) for c in range(6)], 1) for r in range(5)])
    scene = np.tile(np.linspace(0, 255, 200, dtype=np.uint8)[None, :, None], (150, 1, 3))
    frames = np.stack([np.pad(portrait(rng, 1), ((0, 0), (16 + t, 48 - t), (0, 0)), mode="edge") for t in range(30)])
    video = encode_video(frames, speech(rng, pitch=150.0, seconds=3.0, rate=16000), 16000, "mp4", fps=10)
    jpeg = encode_image(portrait(rng, 2), "jpeg")
    files = {
        "portrait.jpg": (jpeg, "ok"),
        "rotated.jpg": (_jpeg(face.transpose(Image.Transpose.ROTATE_270), exif=exif), "ok"),
        "grey.png": (_png(face.convert("L")), "ok"),
        "cmyk.jpg": (_jpeg(face.convert("CMYK")), "ok"),
        "alpha.png": (_png(face.convert("RGBA")), "ok"),
        "deep-16bit.png": (_png(Image.fromarray(np.asarray(face.convert("L")).astype(np.uint16) * 257)), "ok"),
        "animated.gif": (encode_image(np.asarray(face), "gif"), "ok"),
        "crowd.jpg": (encode_image(crowd, "jpeg"), "ok"),
        "no-face.png": (encode_image(scene, "png"), "no_face"),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "image_decode_error"),
        "bomb.png": (_bomb(), "too_large"),
        "corrupt.mp4": (video[:64] + bytes(range(256)) * 16, "video_decode_error"),
        "sound-only.mp4": (_audio_only_mp4(), "no_video_stream"),
        "interview.mp4": (video, "ok"),
    }
    for name, (data, _) in files.items():
        (folder / name).write_bytes(data)
    return {name: expected for name, (_, expected) in files.items()}


def _bomb() -> bytes:
    import zlib

    header = bytearray(_png(Image.new("L", (1, 1))))
    header[16:24] = (60000).to_bytes(4, "big") * 2  # declares 3.6 gigapixels
    header[29:33] = zlib.crc32(bytes(header[12:29])).to_bytes(4, "big")
    return bytes(header)


def run_both(archive, out, face_models, *extra) -> int:
    assert manifest.main([str(archive), "--output", str(out), "--log-level", "WARNING"]) == 0
    return embed_faces.main([str(out), "--output", str(out), "--models", face_models.uri, *extra])


@pytest.mark.parametrize("decode_on", ["cpu", "device"])
def test_every_source_ends_as_one_row(ray_cluster, face_models, tmp_path, decode_on):
    """Photos decoded by Pillow in the decode tasks, or as bytes by the face actors (torchvision's decoder on their
    device: here the CPU's libjpeg, nvJPEG on a GPU): the same rows and the same error names either way."""
    (tmp_path / "archive").mkdir()
    expected = hard_archive(tmp_path / "archive")
    out = resolve(str(tmp_path / "out"))
    assert run_both(tmp_path / "archive", tmp_path / "out", face_models, "--decode-on", decode_on) == 0

    sources = {r["uri"].rsplit("/", 1)[-1]: r for r in read_table(out, "face_sources").to_pylist()}
    errors = {
        r["uri"].rsplit("/", 1)[-1]: r for r in read_table(out, "errors").to_pylist() if r["job"] == "embed_faces"
    }
    assert not set(sources) & set(errors)
    assert set(sources) | set(errors) == set(expected)  # the counts add up to the manifest's images and videos
    for name, want in expected.items():
        got = sources[name]["status"] if name in sources else errors[name]["error_type"]
        assert got == want, (name, got, sources.get(name) or errors.get(name))
        if name in errors:
            assert errors[name]["message"] and errors[name]["sha256"]

    faces = read_table(out, "faces")
    per_uri = Counter(u.rsplit("/", 1)[-1] for u in faces.column("uri").to_pylist())
    assert per_uri["crowd.jpg"] == 30
    assert all(
        per_uri[n] == 1
        for n in expected
        if n.endswith((".jpg", ".png", ".gif")) and expected[n] == "ok" and n != "crowd.jpg"
    )
    assert sum(r["face_rows"] for r in sources.values()) == faces.num_rows
    # Every face row has its thumbnail, cut at embed time from the frame already decoded (a report never decodes
    # the source again): a small JPEG of the face.
    thumbs = read_table(out, "face_thumbnails")
    key = lambda t: list(zip(*(t.column(c).to_pylist() for c in ("uri", "frame_index", "face_index")), strict=True))  # noqa: E731
    assert sorted(key(thumbs)) == sorted(key(faces))
    for jpeg in thumbs.column("thumbnail").to_pylist()[:5]:
        im = Image.open(io.BytesIO(jpeg))
        assert im.format == "JPEG" and max(im.size) <= 96 and np.asarray(im).std() > 5
    rotated = sources["rotated.jpg"]
    assert (rotated["width"], rotated["height"]) == (128, 160)  # upright
    row = next(r for r in faces.to_pylist() if r["uri"].endswith("rotated.jpg"))
    left_eye_y, nose_y = row["landmarks"][1], row["landmarks"][5]
    assert left_eye_y < nose_y  # upright face: eyes above the nose
    assert set(faces.column("model_name").to_pylist()) == {"dlib-resnet-v1"}
    assert set(faces.column("detector_name").to_pylist()) == {"mtcnn"}
    assert all(len(s) == 64 for s in faces.column("sha256").to_pylist())
    video = [r for r in faces.to_pylist() if r["uri"].endswith("interview.mp4")]
    assert [r["timestamp"] for r in video] == [0.0, 1.0, 2.0] and len({r["track_id"] for r in video}) == 1
    x1, y1, x2, y2 = video[0]["box"]
    assert 0 <= x1 < x2 <= 192 and 0 <= y1 < y2 <= 160


def test_rerun_replaces_and_per_track_keeps_one_face_per_track(ray_cluster, face_models, sample_archive, tmp_path):
    out = resolve(str(tmp_path / "out"))
    assert run_both(sample_archive, tmp_path / "out", face_models) == 0
    first = read_table(out, "faces").num_rows
    assert (
        embed_faces.main([str(tmp_path / "out"), "--output", str(tmp_path / "out"), "--models", face_models.uri]) == 0
    )
    assert read_table(out, "faces").num_rows == first  # the same command replaced its run
    assert len([m for m in committed_runs(out) if m["job"] == "embed_faces"]) == 1
    args = [str(tmp_path / "out"), "--output", str(tmp_path / "out"), "--models", face_models.uri, "--per-track"]
    assert embed_faces.main(args) == 0
    runs = [m["run_id"] for m in committed_runs(out) if m["job"] == "embed_faces"]
    assert len(runs) == 2  # --per-track changes the output, so it is its own run
    tracked = [t for t in (read_table(out, "faces", run_id=r) for r in runs) if t.num_rows < first][0]
    videos = [r for r in tracked.to_pylist() if "/videos/" in r["uri"]]
    assert len(videos) == 5 and all(r["track_frames"] >= 2 for r in videos)  # one track per sample video


def test_missing_models_fail_with_the_fix(tmp_path, caplog):
    assert embed_faces.main([str(tmp_path), "--models", str(tmp_path / "none")]) == 2
    assert "python -m jobs.models pull mtcnn" in caplog.text


def _largest(faces, name):
    rows = [r for r in faces if r["uri"].endswith(name)]
    return np.asarray(max(rows, key=lambda r: r["face_size"])["embedding"])


def test_real_faces(ray_cluster, face_models, tmp_path):
    folder = shared_data("faces")
    out = resolve(str(tmp_path / "out"))
    assert run_both(folder, tmp_path / "out", face_models, "--fps", "2") == 0
    faces = read_table(out, "faces").to_pylist()
    strong = Counter(r["uri"].rsplit("/", 1)[-1] for r in faces if r["score"] > 0.99)
    assert strong["two_people.jpg"] == 2
    assert np.linalg.norm(_largest(faces, "obama-240p.jpg") - _largest(faces, "obama-1080p.jpg")) < 0.6
    # knn_examples: every same-person pair closer than every different-person pair
    people = {}
    for path in sorted((folder / "knn_examples" / "train").glob("*/*.jpg")):
        people[path.relative_to(folder).as_posix()] = path.parent.name
    for name, person in (("alex_lacamoire1.jpg", "alex_lacamoire"), ("obama1.jpg", "obama")):
        people[f"knn_examples/test/{name}"] = person
    emb = {k: _largest(faces, k) for k in people}
    same, diff = [], []
    keys = sorted(emb)
    for i, a in enumerate(keys):
        for b in keys[i + 1 :]:
            (same if people[a] == people[b] else diff).append(np.linalg.norm(emb[a] - emb[b]))
    assert same and diff and max(same) < min(diff)
    clip = [r for r in faces if r["uri"].endswith("short_hamilton_clip.mp4")]
    assert len({r["frame_index"] for r in clip}) >= 10  # faces in most of the 20 frames sampled over 10 s


def test_bytes_changed_since_the_manifest_are_error_rows_not_faces(ray_cluster, face_models, tmp_path):
    """Chain of custody: a photo and a video rewritten in place after the manifest hashed them are error rows
    (content_changed, both hashes in the message); nothing is embedded from their new bytes."""
    archive, out = tmp_path / "archive", tmp_path / "out"
    archive.mkdir()
    rng = np.random.default_rng(3)
    for i in range(3):
        (archive / f"p{i}.jpg").write_bytes(encode_image(portrait(rng, i), "jpeg"))
    frames = np.stack([np.pad(portrait(rng, 1), ((0, 0), (16, 48), (0, 0)), mode="edge")] * 10)
    sound = speech(rng, pitch=150.0, seconds=1.0, rate=16000)
    (archive / "clip.mp4").write_bytes(encode_video(frames, sound, 16000, "mp4", fps=10))
    assert manifest.main([str(archive), "--output", str(out), "--log-level", "WARNING"]) == 0
    hashed = {r["uri"].rsplit("/", 1)[-1]: r["sha256"] for r in read_table(resolve(str(out)), "manifest").to_pylist()}
    (archive / "p1.jpg").write_bytes(encode_image(portrait(rng, 2), "jpeg"))
    (archive / "clip.mp4").write_bytes(encode_video(frames[:5], sound[:8000], 16000, "mp4", fps=10))

    assert embed_faces.main([str(out), "--output", str(out), "--models", face_models.uri]) == 0
    root = resolve(str(out))
    errors = {r["uri"].rsplit("/", 1)[-1]: r for r in read_table(root, "errors").to_pylist()}
    assert set(errors) == {"p1.jpg", "clip.mp4"}
    for name, row in errors.items():
        assert row["error_type"] == "content_changed" and row["sha256"] == hashed[name]
        assert hashed[name] in row["message"] and "hash to" in row["message"]
    embedded = {u.rsplit("/", 1)[-1] for u in read_table(root, "faces").column("uri").to_pylist()}
    assert embedded == {"p0.jpg", "p2.jpg"}


def test_a_video_that_failed_after_its_frames_went_on_is_not_tracked():
    rows = pa.Table.from_pylist([{"uri": "s3://a/v.mp4", "frame_index": i, "face_index": 0} for i in range(2)])
    assert embed_faces._tracked(rows, False, {"s3://a/v.mp4"}).num_rows == 0


def test_no_thumbnails_keeps_no_face_pictures(ray_cluster, face_models, sample_archive, tmp_path):
    out = resolve(str(tmp_path / "out"))
    assert run_both(sample_archive, tmp_path / "out", face_models, "--no-thumbnails") == 0
    assert read_table(out, "faces").num_rows > 0 and read_table(out, "face_thumbnails").num_rows == 0


def test_a_second_run_embeds_only_new_content_and_equals_a_full_run(ray_cluster, face_models, sample_archive, tmp_path):
    out = resolve(str(tmp_path / "out"))
    args = [out.uri, "--output", out.uri, "--models", face_models.uri, "--log-level", "WARNING"]

    def snapshot(run_id: str) -> None:
        assert (
            manifest.main([str(sample_archive), "--output", out.uri, "--run-id", run_id, "--log-level", "WARNING"]) == 0
        )

    snapshot("m1")
    assert embed_faces.main([*args, "--manifest-run-id", "m1", "--run-id", "f1"]) == 0
    rng = np.random.default_rng(7)
    (sample_archive / "photos" / "new.jpg").write_bytes(encode_image(portrait(rng, 3), "jpeg"))  # new content
    copied = (sample_archive / "photos/alice/portrait-2.png").read_bytes()
    (sample_archive / "photos" / "copy.png").write_bytes(copied)  # known content under a new name: reused
    (sample_archive / "photos/bob/portrait-2.bmp").write_bytes(encode_image(portrait(rng, 4), "png"))  # rewritten
    snapshot("m2")
    assert embed_faces.main([*args, "--manifest-run-id", "m2", "--run-id", "f2"]) == 0
    assert embed_faces.main([*args, "--manifest-run-id", "m2", "--run-id", "full", "--no-reuse"]) == 0
    markers = {m["run_id"]: m for m in committed_runs(out)}
    second, full = markers["f2"]["summary"], markers["full"]["summary"]
    assert second["reused_from"] == "f1" and second["reused"] == second["sources"] - 2  # decoded: new, rewritten
    assert full["reused"] == 0 and full["sources"] == second["sources"]
    for count in ("ok", "no_face", "truncated", "frames", "faces", "face_rows", "errors"):
        assert second[count] == full[count], count

    def rows(table: str, run_id: str, key: tuple[str, ...]) -> dict:
        found = read_table(out, table, run_id=run_id).drop_columns(["run_id"]).to_pylist()
        return {tuple(r[k] for k in key): r for r in found}

    face_key = ("uri", "frame_index", "face_index")
    reused, made = rows("faces", "f2", face_key), rows("faces", "full", face_key)
    assert reused.keys() == made.keys() and any("copy.png" in k[0] for k in reused)
    for k, r in reused.items():
        np.testing.assert_allclose(r.pop("embedding"), made[k].pop("embedding"), atol=1e-5)
        np.testing.assert_allclose(r.pop("landmarks"), made[k].pop("landmarks"), atol=1e-3)
        np.testing.assert_allclose(r.pop("box"), made[k].pop("box"), atol=1e-3)
        assert same_row(r, made[k]), k
    assert rows("face_sources", "f2", ("uri",)) == rows("face_sources", "full", ("uri",))
    assert rows("face_thumbnails", "f2", face_key).keys() == reused.keys()


def test_a_handful_of_sources_in_process_gives_the_actors_rows_and_is_not_reused_for_an_archive(
    ray_cluster, face_models, sample_archive, tmp_path, caplog
):
    """What jobs.find does for its probes: a photo, a video and a broken file embedded in the driver's process
    (no pool of actors) give the rows the actors give; a later run of the archive reuses the archive's run, not the
    newer handful."""
    out = resolve(str(tmp_path / "out"))
    args = [out.uri, "--output", out.uri, "--models", face_models.uri, "--log-level", "WARNING"]
    few = tmp_path / "few"
    few.mkdir()
    for name in ("photos/alice/portrait-2.png", "videos/interview.mp4"):
        (few / name.replace("/", "-")).write_bytes((sample_archive / name).read_bytes())
    (few / "cut-short.jpg").write_bytes((sample_archive / "photos/alice/portrait-1.jpg").read_bytes()[:400])
    for folder, run_id in ((sample_archive, "m-all"), (few, "m-few")):
        assert manifest.main([str(folder), "--output", out.uri, "--run-id", run_id, "--log-level", "WARNING"]) == 0
    assert embed_faces.main([*args, "--manifest-run-id", "m-all", "--run-id", "all"]) == 0
    common = [*args, "--manifest-run-id", "m-few", "--no-reuse", "--gpus-per-actor", "0"]  # the test cluster has a GPU
    assert embed_faces.main([*common, "--run-id", "actors"]) == 0
    assert "in this process" not in caplog.text
    assert embed_faces.main([*common, "--run-id", "here", "--in-process-below", "9", "--log-level", "INFO"]) == 0
    assert "face: in this process" in caplog.text
    for table, key in (
        ("faces", ("uri", "frame_index", "face_index")),
        ("face_sources", ("uri",)),
        ("errors", ("uri",)),
    ):
        here, actors = (
            {
                tuple(r[k] for k in key): r
                for r in read_table(out, table, run_id=run).drop_columns(["run_id"]).to_pylist()
            }
            for run in ("here", "actors")
        )
        assert here.keys() == actors.keys() and here, table
        for k, r in here.items():
            for column in ("embedding", "landmarks", "box"):
                if column in r:
                    np.testing.assert_allclose(r.pop(column), actors[k].pop(column), atol=1e-5)
            assert same_row(r, actors[k]), (table, k)
    # The archive again under a new run id: its own run of 15 sources is reused, not the newer run of three.
    assert embed_faces.main([*args, "--manifest-run-id", "m-all", "--run-id", "night-2"]) == 0
    summary = {m["run_id"]: m for m in committed_runs(out)}["night-2"]["summary"]
    assert summary["reused_from"] == "all" and summary["reused"] == summary["sources"]
