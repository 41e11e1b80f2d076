"""The hostile corpus (ops/testing/hostile.py) through every job that reads media: no crash, no hang, and every object
accounted for exactly once per job, as result rows or an error row with a reason."""

import time
from collections import Counter

import pytest

from jobs import embed_faces, embed_voices, manifest, stylize
from ops.io.storage import resolve
from ops.io.tables import read_table
from ops.testing.hostile import KINDS, write_corpus


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


def test_faces_accounts_for_every_image_and_video_within_the_time_limit(corpus, ray_cluster, face_models):
    base, _ = corpus
    argv = [str(base / "out"), "--manifest-run-id", "m", "--models", face_models.uri, "--output", str(base / "out")]
    started = time.monotonic()
    assert embed_faces.main([*argv, "--run-id", "f", "--item-timeout", "60"]) == 0
    assert time.monotonic() - started < 600
    by_name = _accounted(base, "face_sources", "embed_faces", "f", ("image", "video"))
    assert _failures(by_name) == FAILURES["embed_faces"]
    assert by_name["bomb.png"]["error_type"] and "pixels" in by_name["bomb.png"]["message"]
    assert by_name["absurd-size.jpg"]["error_type"]
    assert by_name["cmyk.jpg"].get("status") == "ok" and by_name["grey16.png"].get("status") == "ok"


def test_voices_accounts_for_every_audio_and_video_within_the_time_limit(corpus, ray_cluster, models):
    base, _ = corpus
    argv = [str(base / "out"), "--manifest-run-id", "m", "--models", models.uri, "--output", str(base / "out")]
    started = time.monotonic()
    assert embed_voices.main([*argv, "--run-id", "v", "--item-timeout", "60"]) == 0
    assert time.monotonic() - started < 600
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
