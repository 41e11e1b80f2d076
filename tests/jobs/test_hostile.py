"""The hostile corpus (ops/testing/hostile.py) through every job that reads media: no crash, no hang, and every object
accounted for exactly once per job, as result rows or an error row with a reason; training on them too. Then S3
keys that URL handling would mangle, through the pipeline, each object named by its exact uri."""

import html
import time
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from jobs import embed_faces, embed_voices, manifest, pipeline, stylize, train_style
from ops.io.storage import resolve
from ops.io.tables import committed_runs, read_table
from ops.media.encode import encode_audio, encode_image, encode_video
from ops.testing.hostile import KINDS, write_corpus
from ops.testing.samples import portrait, speech
from tests.conftest import new_bucket


@pytest.fixture(scope="module")
def corpus(ray_cluster, tmp_path_factory):
    base = tmp_path_factory.mktemp("hostile")
    written = write_corpus(resolve(str(base / "archive")))
    assert len(set(written.values())) == len(KINDS) >= 30
    assert manifest.main([str(base / "archive"), "--output", str(base / "out"), "--run-id", "m"]) == 0
    return base, written


# Every object that fails, by job, with the vocabulary's name for its failure (ops/io/errors.py); every other
# object of the job's media categories must have a result row.
FAILURES = {
    "manifest": {
        "empty.jpg": "empty_file",
        "empty.wav": "empty_file",
        "random.mp4": "unknown_media_type",
        "random.wav": "unknown_media_type",
        "wrong-magic.jpg": "unknown_media_type",
    },
    "embed_faces": {
        "absurd-size.jpg": "too_large",
        "bomb.png": "too_large",
        "truncated.jpg": "image_decode_error",
        "truncated.png": "image_decode_error",
        "truncated.mp4": "video_decode_error",
    },
    "embed_voices": {
        "no-samples.wav": "empty_audio",
        "truncated.flac": "audio_decode_error",
        "truncated.mp4": "audio_decode_error",
        "truncated.wav": "audio_decode_error",
        "zero-rate.wav": "audio_decode_error",
    },
    "train_style": {  # as stylize: content images are the manifest's images, decoded as stylize decodes them
        "absurd-size.jpg": "too_large",
        "bomb.png": "too_large",
        "one-pixel.png": "too_small",
        "sliver.png": "too_small",
        "truncated.jpg": "image_decode_error",
        "truncated.png": "image_decode_error",
    },
    "stylize": {
        "absurd-size.jpg": "too_large",
        "bomb.png": "too_large",
        "one-pixel.png": "too_small",
        "sliver.png": "too_small",
        "truncated.jpg": "image_decode_error",
        "truncated.png": "image_decode_error",
    },
}


def _failures(by_name: dict[str, dict]) -> dict[str, str]:
    return {name: row["error_type"] for name, row in by_name.items() if row.get("error_type")}


def _once(rows: list[dict], expected: set[str]) -> None:
    counts = Counter(r["uri"] for r in rows)
    assert set(counts) == expected, set(counts) ^ expected
    assert max(counts.values()) == 1, [u for u, n in counts.items() if n > 1]


def test_the_manifest_accounts_for_every_object_by_its_real_name(corpus):
    base, written = corpus
    out = resolve(str(base / "out"))
    rows = read_table(out, "manifest", "m").to_pylist() + read_table(out, "errors", "m").to_pylist()
    _once(rows, {str(base / "archive" / relpath) for relpath in written})
    errors = {r["uri"].rsplit("/", 1)[-1]: r["error_type"] for r in read_table(out, "errors", "m").to_pylist()}
    assert errors == FAILURES["manifest"]
    kinds = {r["relpath"]: r["media_kind"] for r in read_table(out, "manifest", "m").to_pylist()}
    assert kinds["hostile/picture.mp3"] == "png" and kinds["hostile/sound.jpg"] == "wav"  # content, not name


def _accounted(base, table: str, job: str, run_id: str, categories: tuple[str, ...]) -> dict[str, dict]:
    out = resolve(str(base / "out"))
    sources = [r for r in read_table(out, "manifest", "m").to_pylist() if r["media_category"] in categories]
    results = read_table(out, table, run_id).to_pylist()
    if table == "voices":
        results = [r for r in results if r["level"] == "source"]
    errors = [e for e in read_table(out, "errors", run_id).to_pylist() if e["job"] == job]
    assert all(e["error_type"] and e["message"] for e in errors)  # every failure says why
    _once(results + errors, {r["uri"] for r in sources})
    return {r["uri"].rsplit("/", 1)[-1]: r for r in results + errors}


@pytest.fixture(scope="module")
def faces_run(corpus, ray_cluster, face_models) -> float:
    """The faces run over the corpus (run "f"), once: its test checks it, and attributes and the report read it.
    Returns how long it took."""
    base, _ = corpus
    argv = [str(base / "out"), "--manifest-run-id", "m", "--models", face_models.uri, "--output", str(base / "out")]
    started = time.monotonic()
    assert embed_faces.main([*argv, "--run-id", "f", "--item-timeout", "60"]) == 0
    return time.monotonic() - started


@pytest.fixture(scope="module")
def voices_run(corpus, ray_cluster, models) -> float:
    """The voices run over the corpus (run "v"), once, as ``faces_run``."""
    base, _ = corpus
    argv = [str(base / "out"), "--manifest-run-id", "m", "--models", models.uri, "--output", str(base / "out")]
    started = time.monotonic()
    assert embed_voices.main([*argv, "--run-id", "v", "--item-timeout", "60"]) == 0
    return time.monotonic() - started


def test_faces_accounts_for_every_image_and_video_within_the_time_limit(corpus, faces_run):
    base, _ = corpus
    assert faces_run < 600
    by_name = _accounted(base, "face_sources", "embed_faces", "f", ("image", "video"))
    assert _failures(by_name) == FAILURES["embed_faces"]
    assert by_name["bomb.png"]["error_type"] and "pixels" in by_name["bomb.png"]["message"]
    assert by_name["absurd-size.jpg"]["error_type"]
    assert by_name["cmyk.jpg"].get("status") == "ok" and by_name["grey16.png"].get("status") == "ok"


def test_voices_accounts_for_every_audio_and_video_within_the_time_limit(corpus, voices_run):
    base, _ = corpus
    assert voices_run < 600
    by_name = _accounted(base, "voices", "embed_voices", "v", ("audio", "video"))
    assert _failures(by_name) == FAILURES["embed_voices"]
    assert by_name["nan.wav"].get("status") != "ok" or by_name["nan.wav"].get("speech_seconds") == 0
    assert "absurd-duration.wav" in by_name


def test_stylize_accounts_for_every_image(corpus, ray_cluster):
    base, _ = corpus
    style = base / "archive" / "hostile" / "cmyk.jpg"
    argv = [str(base / "out"), "--manifest-run-id", "m", "--style", str(style), "--random-loss-network", "0"]
    argv += ["--steps", "2", "--max-side", "48", "--output", str(base / "out"), "--run-id", "s"]
    assert stylize.main(argv) == 0
    assert _failures(_accounted(base, "styled", "stylize", "s", ("image",))) == FAILURES["stylize"]


def test_train_style_leaves_out_every_unusable_content_image_with_its_reason(corpus, ray_cluster, tmp_path):
    base, _ = corpus
    style = base / "archive" / "hostile" / "cmyk.jpg"
    argv = [str(base / "out"), "--manifest-run-id", "m", "--style", str(style), "--random-loss-network", "0"]
    argv += ["--size", "32", "--epochs", "1", "--batch-size", "4", "--no-gpus", "--models", str(tmp_path / "models")]
    assert train_style.main([*argv, "--output", str(base / "out"), "--run-id", "ts"]) == 0
    out = resolve(str(base / "out"))
    images = {r["uri"] for r in read_table(out, "manifest", "m").to_pylist() if r["media_category"] == "image"}
    errors = read_table(out, "errors", "ts").to_pylist()
    assert all(e["job"] == "train_style" and e["error_type"] and e["message"] for e in errors)
    assert {e["uri"].rsplit("/", 1)[-1]: e["error_type"] for e in errors} == FAILURES["train_style"]
    (marker,) = [m for m in committed_runs(out) if m["run_id"] == "ts"]
    summary = marker["summary"]
    assert summary["content_images"] + summary["errors"] == len(images) and summary["errors"] == len(errors)
    assert summary["errors_by_type"] == dict(Counter(FAILURES["train_style"].values()))


def test_train_style_crops_a_long_thin_image_without_scaling_it_whole(monkeypatch):
    # 32 x 100000 pixels passes every limit; scaled whole to 256 on its shorter side it would be 256 x 800000 (600
    # MB) before its centre square is taken.
    made, resize = [], Image.Image.resize
    monkeypatch.setattr(Image.Image, "resize", lambda im, size, *a, **k: made.append(size) or resize(im, size, *a, **k))
    assert train_style._crop(np.full((100_000, 32, 3), 90, np.uint8), 256).shape == (256, 256, 3)
    assert made == [(256, 256)]


# Object keys as people and tools write them: spaces (one at the very end), accents composed and decomposed (as
# macOS writes them: another key), other scripts, and '#', '?', '%', '+' and '&', which URL handling would read as a
# fragment, a query, escapes and spaces. Each is a picture, a voice or a video with both, so every job reads some.
ODD_KEYS = {
    "café/naïve ü.jpg": "picture",
    "cafe\u0301/nai\u0308ve u\u0308.png": "picture",
    "hash#tag/photo #1.png": "picture",
    "what?/is this?x=1&y=2.wav": "voice",
    "100% sure/a+b %20 c.mp4": "video",
    "声音/录音 1.flac": "voice",
    "trailing space/voice.wav ": "voice",
}


def _odd_media(key: str, what: str, rng: np.random.Generator) -> bytes:
    kind = key.rstrip().rsplit(".", 1)[-1].replace("jpg", "jpeg")
    if what == "picture":
        return encode_image(portrait(rng, 0), kind)
    if what == "voice":
        return encode_audio(speech(rng, 140.0, 3.0), 16000, kind)
    frames = np.stack([np.pad(portrait(rng, 1), ((0, 0), (16, 48), (0, 0)), mode="edge")] * 10)
    return encode_video(frames, speech(rng, 150.0, 2.0), 16000, kind)


def test_s3_keys_with_spaces_unicode_hash_and_question_marks_keep_their_exact_uri_through_every_job(
    ray_cluster, all_models, request, monkeypatch
):
    bucket = new_bucket(request, "moto", monkeypatch)
    archive, results = resolve(bucket.uri("archive")), resolve(bucket.uri("results"))
    rng = np.random.default_rng(5)
    for key, what in ODD_KEYS.items():
        archive.join(key).put_atomic(_odd_media(key, what, rng))
    # The pipeline: manifest, voices, faces, search and the report with its previews, each reading the keys again.
    argv = [archive.uri, "--output", results.uri, "--models", all_models.uri, "--run-id", "odd"]
    assert pipeline.main(argv) == 0
    uris = {key: archive.join(key).uri for key in ODD_KEYS}
    assert len(set(uris.values())) == len(ODD_KEYS)  # the decomposed accents are another key, and stay one

    listed = read_table(results, "manifest", "odd.manifest").to_pylist()
    assert {r["relpath"]: r["uri"] for r in listed} == uris
    for run in ("odd.manifest", "odd.faces", "odd.voices"):
        assert read_table(results, "errors", run).to_pylist() == []  # nothing refused: every key was read again
    pictures = {uris[k] for k, what in ODD_KEYS.items() if what in ("picture", "video")}
    voices = {uris[k] for k, what in ODD_KEYS.items() if what in ("voice", "video")}
    sources = read_table(results, "face_sources", "odd.faces").to_pylist()
    assert {r["uri"]: (r["status"], r["faces"]) for r in sources} == {u: ("ok", 1) for u in pictures}
    assert {r["uri"] for r in read_table(results, "faces", "odd.faces").to_pylist()} == pictures
    segments = read_table(results, "voices", "odd.voices").to_pylist()
    assert {r["uri"] for r in segments if r["level"] == "source" and r["status"] == "ok"} == voices
    assert {r["uri"] for r in segments} == voices
    for stage, found in (("search-faces", pictures), ("search-voices", voices)):
        matches = read_table(results, "matches", f"odd.{stage}").to_pylist()
        assert {r["query_uri"] for r in matches} | {r["gallery_uri"] for r in matches} == found

    # The report: every thumbnail and clip made (the clips read from the sources by their uris), every uri shown
    (marker,) = [m for m in committed_runs(results) if m["run_id"] == "odd.report"]
    page = results.join(marker["summary"]["report_uri"]).read_bytes().decode()
    assert marker["summary"]["previews_failed"] == 0 and 'class="nopreview"' not in page
    assert page.count('data-testid="thumb"') >= len(pictures) and page.count('data-testid="clip"') >= len(voices)
    assert all(html.escape(u) in page for u in uris.values())
