"""The hostile corpus (ops/testing/hostile.py) through every job that reads media: no crash, no hang, and every object
accounted for exactly once per job, as result rows or an error row with a reason; the jobs that read sources again
(attributes, the report's previews) and training on them too. Then S3 keys that URL handling would mangle, through
the pipeline, each object named by its exact uri."""

import html
import re
import time
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from jobs import attributes, embed_faces, embed_voices, manifest, match, pipeline, report, stylize, train_style
from ops.attributes.fairface import GROUPS
from ops.attributes.heads import ATTRIBUTE_HEAD, AttributeHead, AttributeSpec
from ops.io.storage import resolve
from ops.io.tables import committed_runs, read_table
from ops.matching import items
from ops.media.encode import encode_audio, encode_image, encode_video
from ops.models import catalogue
from ops.models.registry import store_model
from ops.testing.hostile import KINDS, write_corpus
from ops.testing.samples import portrait, speech
from tests.conftest import new_bucket
from tests.ops.attributes.test_fairface import released, saved


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
# train_style's content images are the manifest's images, decoded as stylize decodes them: the same failures.
FAILURES["train_style"] = FAILURES["stylize"]


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


def _face_items(out) -> set[str]:
    return set(items.keys(read_table(out, "faces", "f"), "faces"))


def _attributes_accounted(out, run_id: str, per_face: int) -> tuple[set[str], dict[str, dict]]:
    """The faces of run ``run_id`` of attributes/ with their ``per_face`` rows each, and its error rows by the face
    each names; together every face of the faces run, once."""
    faces = _face_items(out)
    made = Counter(r["item"] for r in read_table(out, "attributes", run_id).to_pylist())
    assert set(made.values()) <= {per_face}, made
    errors = {}
    for e in read_table(out, "errors", run_id).to_pylist():
        assert e["job"] == "attributes" and e["error_type"] and e["message"]
        (named,) = [f for f in faces if e["message"].startswith(f"{f}: ")]  # every error names its face
        assert named not in errors
        errors[named] = e
    assert set(made) | set(errors) == faces and not set(made) & set(errors)
    return set(made), errors


def test_attributes_accounts_for_every_face_from_the_embeddings_and_from_the_sources_read_again(
    corpus, faces_run, tmp_path
):
    base, _ = corpus
    out = resolve(str(base / "out"))
    faces = read_table(out, "faces", "f")
    models = resolve(str(tmp_path / "models"))
    # Untrained heads over the embeddings (as the pipeline's tests make them) ...
    specs = [
        AttributeSpec("age", "numeric", "gaussian", mean=40, std=15),
        AttributeSpec("mood", "categorical", "ce", classes=["calm", "glad"]),
    ]
    made_by = {c: faces.column(c)[0].as_py() for c in ("model_name", "model_sha256")}
    card = {"modality": "face", "input": made_by | {"dim": 128, "key": "uri"}}
    card["attributes"] = [s.to_dict() for s in specs]
    state = AttributeHead(128, specs).state_dict()
    store_model(models, "attributes-untrained", ATTRIBUTE_HEAD, state, {"file": "test"}, card)
    # ... and FairFace's network with random weights, which cuts every face again from its source.
    (tmp_path / "fairface.pt").write_bytes(saved(released()))
    catalogue.import_checkpoint(str(tmp_path / "fairface.pt"), "fairface-resnet34", "fairface", models)

    argv = [str(base / "out"), "--embeddings-run-id", "f", "--models", models.uri, "--output", str(base / "out")]
    assert attributes.main([*argv, "--model", "attributes-untrained", "--run-id", "a-heads"]) == 0
    with_rows, errors = _attributes_accounted(out, "a-heads", len(specs))
    assert with_rows == _face_items(out) and not errors  # the corpus's faces all have a usable embedding
    assert attributes.main([*argv, "--model", "fairface", "--run-id", "a-pictures"]) == 0
    with_rows, errors = _attributes_accounted(out, "a-pictures", len(GROUPS))
    assert with_rows == _face_items(out) and not errors  # every source that gave a face gives it again
    again = {items.parse(item).uri.rsplit("/", 1)[-1] for item in with_rows}
    assert {"absurd-duration.mp4", "animated.gif", "cmyk.jpg", "grey16.png", "huge-metadata.jpg"} <= again


def test_the_reports_previews_of_the_corpus_are_made_or_shown_unavailable_never_a_crash(
    corpus, faces_run, voices_run, face_models
):
    base, _ = corpus
    out = str(base / "out")
    # Faces without thumbnails, so that the report cuts each face from its source again, as it does for runs
    # embedded before thumbnails existed; speech clips are always cut from the sources.
    argv = [out, "--manifest-run-id", "m", "--models", face_models.uri, "--output", out, "--item-timeout", "60"]
    assert embed_faces.main([*argv, "--no-thumbnails", "--run-id", "f-bare"]) == 0
    matches = {}
    for table, run in (("faces", "f-bare"), ("voices", "v")):
        search = ["search", "--queries", out, "--table", table, "--queries-run-id", run, "--gallery-run-id", run]
        search += ["--k", "3", "--output", out, "--run-id", f"search-{table}"]
        assert match.main([*search, *(["--per-source"] if table == "voices" else [])]) == 0
        matches[table] = read_table(resolve(out), "matches", f"search-{table}").to_pylist()
    # Two sources go bad after they were embedded (put back after the report: the other tests read them): the
    # video with a face and speech is deleted, a photo is cut short in place.
    gone, cut = base / "archive" / "hostile" / "absurd-duration.mp4", base / "archive" / "hostile" / "cmyk.jpg"
    kept = {gone: gone.read_bytes(), cut: cut.read_bytes()}
    try:
        gone.unlink()
        cut.write_bytes(kept[cut][:300])
        # The newest run of each job: the manifest, these runs, and whatever else ran over the corpus before.
        assert report.main([out, "--output", out, "--run-id", "r", "--max-probes", "1000"]) == 0
    finally:
        for path, data in kept.items():
            path.write_bytes(data)
    (marker,) = [m for m in committed_runs(resolve(out)) if m["run_id"] == "r"]
    page = resolve(out).join(marker["summary"]["report_uri"]).read_bytes().decode()
    assert "Traceback" not in page

    # Every preview place holds a thumbnail, a clip or the reason there is none: one per probe and one per match.
    places = sum(len(rows) + len({r["query_item"] for r in rows}) for rows in matches.values())
    made = page.count('data-testid="thumb"') + page.count('data-testid="clip"')
    reasons = re.findall(r'<span class="nopreview" title="[^"]*">no preview: ([^<]*)</span>', page)
    assert made + len(reasons) == places and made > 0
    # Each item of the two bad sources is counted once as a failed preview, and shown with its reason.
    bad = {str(gone): "not found", str(cut): "changed since it was embedded"}
    failed = {
        (table, item)
        for table, rows in matches.items()
        for r in rows
        for item in (r["query_item"], r["gallery_item"])
        if items.parse(item).uri in bad
    }
    assert {t for t, _ in failed} == {"faces", "voices"}  # the video's face and voice, the photo's face
    assert marker["summary"]["previews_failed"] == len(failed)
    assert reasons and all(
        any(words in reason and (words != "not found" or html.escape(uri) in reason) for uri, words in bad.items())
        for reason in reasons
    ), reasons


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
