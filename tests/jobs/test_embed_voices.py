import io
import itertools
import logging
import wave

import numpy as np
import pytest

from jobs import embed_voices, manifest
from ops.io.storage import resolve
from ops.io.tables import committed_runs, read_table
from ops.matching.metrics import equal_error_rate
from ops.media.encode import encode_audio, encode_video
from ops.testing.samples import music, speech
from ops.voices.ge2e import GE2E
from tests.conftest import same_row, shared_data


def voice(seconds, rate, seed=0, pitch=140.0):
    return speech(np.random.default_rng(seed), pitch, seconds, rate)


def empty_wav() -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
    return buf.getvalue()


def stereo_wav(rate=48000) -> bytes:
    x = voice(2.0, rate)
    pcm = (np.stack([x, x * 0.5]).T * 32767).astype("<i2").tobytes()
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(2), w.setsampwidth(2), w.setframerate(rate), w.writeframes(pcm)
    return buf.getvalue()


def hard_archive(folder) -> dict[str, str]:
    """Audio a forensic archive holds, good and bad; value: the expected status or error type."""
    frames = np.random.default_rng(0).integers(0, 255, (10, 48, 64, 3), dtype=np.uint8)
    flac = encode_audio(voice(6.0, 16000, seed=5), 16000, "flac")
    files = {
        "speech-16k.wav": (encode_audio(voice(3.0, 16000), 16000, "wav"), "ok"),
        "telephone-8k.wav": (encode_audio(voice(3.0, 8000, seed=1), 8000, "wav"), "ok"),
        "music-44k.mp3": (encode_audio(voice(3.0, 44100, seed=2), 44100, "mp3"), "ok"),
        "call-48k.opus": (encode_audio(voice(3.0, 48000, seed=3), 48000, "opus"), "ok"),
        "studio-96k.flac": (encode_audio(voice(3.0, 96000, seed=4), 96000, "flac"), "ok"),
        "stereo.wav": (stereo_wav(), "ok"),
        "silence.wav": (encode_audio(np.zeros(32000, np.float32), 16000, "wav"), "no_speech"),
        "zero-length.wav": (empty_wav(), "empty_audio"),
        "corrupt.wav": (b"RIFF\x24\x00\x00\x00WAVE" + bytes(range(256)) * 8, "audio_decode_error"),
        "truncated.flac": (flac[: len(flac) // 2], "truncated|ok"),
        "interview.mp4": (encode_video(frames, voice(2.0, 44100, seed=6), 44100, "mp4"), "ok"),
        "concert.flac": (encode_audio(music(np.random.default_rng(7), 4.0), 16000, "flac"), "no_speech"),
    }
    for name, (data, _) in files.items():
        (folder / name).write_bytes(data)
    (folder / "no-sound.mp4").write_bytes(_silent_video(frames))
    return {name: expected for name, (_, expected) in files.items()} | {"no-sound.mp4": "no_audio_stream"}


def _silent_video(frames) -> bytes:
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for rgb in frames:
            for p in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(p)
        for p in stream.encode(None):
            out.mux(p)
    return buf.getvalue()


def run_both(archive, out, models, *extra) -> int:
    assert manifest.main([str(archive), "--output", str(out), "--log-level", "WARNING"]) == 0
    return embed_voices.main([str(out), "--output", str(out), "--models", models.uri, *extra])


def test_every_source_ends_as_one_row(ray_cluster, models, tmp_path):
    archive = tmp_path / "archive"
    archive.mkdir()
    expected = hard_archive(archive)
    assert run_both(archive, tmp_path / "out", models) == 0
    root = resolve(str(tmp_path / "out"))
    rows = read_table(root, "voices")
    errors = [e for e in read_table(root, "errors").to_pylist() if e["job"] == "embed_voices"]
    sources = [r for r in rows.to_pylist() if r["level"] == "source"]
    names = [r["uri"].rsplit("/", 1)[-1] for r in sources] + [e["uri"].rsplit("/", 1)[-1] for e in errors]
    assert sorted(names) == sorted(expected)  # each source exactly once, as a source row or an error row
    got = {r["uri"].rsplit("/", 1)[-1]: r["status"] for r in sources}
    got |= {e["uri"].rsplit("/", 1)[-1]: e["error_type"] for e in errors}
    for name, want in expected.items():
        assert got[name] in want.split("|"), (name, got[name])

    by_name = {r["uri"].rsplit("/", 1)[-1]: r for r in sources}
    assert by_name["silence.wav"]["embedding"] is None and by_name["silence.wav"]["speech_seconds"] == 0
    for name in ("speech-16k.wav", "telephone-8k.wav", "studio-96k.flac", "stereo.wav", "interview.mp4"):
        r = by_name[name]
        assert r["speech_seconds"] > 1.0 and np.linalg.norm(r["embedding"]) == pytest.approx(1.0, abs=1e-5)
    segments = rows.filter(rows.column("level").to_numpy(zero_copy_only=False) == "segment").to_pylist()
    assert {s["uri"] for s in segments} <= {r["uri"] for r in sources if r["embedding"] is not None}
    assert all(s["end"] > s["start"] and 0 < s["speech_ratio"] <= 1 and s["partials"] >= 1 for s in segments)
    # provenance on every row
    assert set(rows.column("model_sha256").to_pylist()) == {GE2E.checkpoint_sha256}
    assert set(rows.column("model_name").to_pylist()) == {"ge2e-resemblyzer"}
    assert all(len(s) == 64 for s in rows.column("sha256").to_pylist())
    (marker,) = [m for m in committed_runs(root) if m["job"] == "embed_voices"]
    summary = marker["summary"]
    assert summary["sources"] == len(expected)
    assert summary["ok"] + summary["no_speech"] + summary["truncated"] + summary["errors"] == len(expected)
    assert summary["errors_by_type"] == {"empty_audio": 1, "audio_decode_error": 1, "no_audio_stream": 1}
    assert summary["with_speech"] == sum(r["embedding"] is not None for r in sources)

    # a rerun replaces: same row count, one committed run of this job
    assert embed_voices.main([str(tmp_path / "out"), "--output", str(tmp_path / "out"), "--models", models.uri]) == 0
    assert read_table(root, "voices").num_rows == rows.num_rows
    assert len([m for m in committed_runs(root) if m["job"] == "embed_voices"]) == 1


def test_same_voice_scores_above_other_voices(ray_cluster, models, tmp_path):
    """Synthetic speakers differ in pitch: two takes of one speaker are closer than any two speakers."""
    archive = tmp_path / "archive"
    for spk, pitch in enumerate((95.0, 160.0, 230.0)):
        for take in range(2):
            (archive / f"s{spk}").mkdir(parents=True, exist_ok=True)
            data = encode_audio(voice(4.0, 16000, seed=10 * spk + take, pitch=pitch), 16000, "flac")
            (archive / f"s{spk}" / f"take{take}.flac").write_bytes(data)
    assert run_both(archive, tmp_path / "out", models) == 0
    rows = read_table(resolve(str(tmp_path / "out")), "voices").to_pylist()
    emb = {r["uri"]: np.array(r["embedding"]) for r in rows if r["level"] == "source"}
    pairs = [(emb[a] @ emb[b], a.split("/")[-2] == b.split("/")[-2]) for a, b in itertools.combinations(emb, 2)]
    same = [s for s, is_same in pairs if is_same]
    different = [s for s, is_same in pairs if not is_same]
    assert min(same) > max(different)


def test_missing_model_fails_with_the_fix(tmp_path, caplog):
    caplog.set_level(logging.INFO, "crossmatch")
    code = embed_voices.main([str(tmp_path), "--models", str(tmp_path / "empty-models")])
    assert code == 2 and "python -m jobs.models pull ge2e-resemblyzer" in caplog.text


def test_no_manifest_fails_with_the_fix(models, tmp_path, caplog):
    caplog.set_level(logging.INFO, "crossmatch")
    assert embed_voices.main([str(tmp_path / "nothing"), "--models", models.uri]) == 2
    assert "run `python -m jobs.manifest` first" in caplog.text


def test_real_voices_verify_as_well_as_resemblyzer(real_pipeline):
    """../shared's LibriSpeech readers as the real archive's pipeline embedded them (one recording is kept out
    as a probe), beside Resemblyzer on the same recordings."""
    rows = read_table(resolve(str(real_pipeline["results"])), "voices", "real.voices").to_pylist()
    ours = {r["uri"]: np.array(r["embedding"]) for r in rows if r["level"] == "source" and r["uri"].endswith(".flac")}
    assert len(ours) == 49
    from resemblyzer import VoiceEncoder, preprocess_wav

    encoder = VoiceEncoder("cpu", verbose=False)
    theirs = {u: encoder.embed_utterance(preprocess_wav(u)) for u in ours}

    def eer(emb):
        pairs = list(itertools.combinations(sorted(emb), 2))
        scores = np.array([emb[a] @ emb[b] for a, b in pairs])
        same = np.array([a.split("/")[-2] == b.split("/")[-2] for a, b in pairs])
        return equal_error_rate(scores, same)

    assert eer(ours) <= eer(theirs) + 1e-9
    assert np.mean([ours[u] @ theirs[u] for u in ours]) > 0.99


def test_speech_is_found_in_the_hamilton_clip(ray_cluster, models, tmp_path):
    clip = shared_data("faces", "short_hamilton_clip.mp4")
    archive = tmp_path / "archive"
    archive.mkdir()
    (archive / clip.name).write_bytes(clip.read_bytes())
    assert run_both(archive, tmp_path / "out", models) == 0
    (source,) = [r for r in read_table(resolve(str(tmp_path / "out")), "voices").to_pylist() if r["level"] == "source"]
    assert (
        source["status"] == "ok" and source["speech_seconds"] > 3.0 and source["duration"] == pytest.approx(10, abs=1)
    )


def test_an_imported_ecapa_model_embeds_too(ray_cluster, models, tmp_path):
    from ops.models.catalogue import import_checkpoint
    from tests.ops.voices.test_ecapa import speechbrain_checkpoint

    _, data = speechbrain_checkpoint(channels=(256, 256, 256, 256, 768), dim=192)
    (tmp_path / "embedding_model.ckpt").write_bytes(data)
    mine = resolve(str(tmp_path / "models"))
    card = import_checkpoint(str(tmp_path / "embedding_model.ckpt"), "ecapa-tdnn-speechbrain", "ecapa-test", mine)
    archive = tmp_path / "archive"
    archive.mkdir()
    (archive / "a.flac").write_bytes(encode_audio(voice(12.0, 16000), 16000, "flac"))
    (archive / "b.wav").write_bytes(encode_audio(voice(3.0, 16000, seed=1), 16000, "wav"))
    vad = models.join("silero-vad").uri  # a model named by URI, from another root
    assert run_both(archive, tmp_path / "out", mine, "--model", "ecapa-test", "--vad-model", vad) == 0
    rows = read_table(resolve(str(tmp_path / "out")), "voices")
    assert rows.schema.field("embedding").type.list_size == 192
    assert set(rows.column("model_sha256").to_pylist()) == {card["checkpoint_sha256"]}
    sources = [r for r in rows.to_pylist() if r["level"] == "source"]
    assert len(sources) == 2 and all(np.linalg.norm(r["embedding"]) == pytest.approx(1, abs=1e-5) for r in sources)
    assert len([r for r in rows.to_pylist() if r["level"] == "segment"]) == 3  # 10 s + 2 s, and 3 s


def test_s3_archive_models_and_output(ray_cluster, models, s3):
    """Decode workers and encoder actors reach the S3 server through the endpoint the driver resolved."""
    from ops.models.registry import CARD, CHECKPOINT

    s3_models = resolve(s3.uri("models"))
    for model in ("ge2e-resemblyzer", "silero-vad"):
        for name in (CARD, CHECKPOINT):
            s3_models.join(model, name).put_atomic(models.join(model, name).read_bytes())
    archive = resolve(s3.uri("archive"))
    archive.join("a.flac").put_atomic(encode_audio(voice(3.0, 16000), 16000, "flac"))
    archive.join("b.mp4").put_atomic(_silent_video(np.zeros((5, 32, 32, 3), np.uint8)))
    assert manifest.main([archive.uri, "--output", s3.uri("out"), "--log-level", "WARNING"]) == 0
    assert embed_voices.main([s3.uri("out"), "--output", s3.uri("out"), "--models", s3_models.uri]) == 0
    out = resolve(s3.uri("out"))
    sources = [r for r in read_table(out, "voices").to_pylist() if r["level"] == "source"]
    errors = [e for e in read_table(out, "errors").to_pylist() if e["job"] == "embed_voices"]
    assert [r["uri"] for r in sources] == [s3.uri("archive", "a.flac")] and sources[0]["status"] == "ok"
    assert [(e["uri"], e["error_type"]) for e in errors] == [(s3.uri("archive", "b.mp4"), "no_audio_stream")]


def test_audio_changed_since_the_manifest_is_an_error_row(ray_cluster, models, tmp_path):
    archive, out = tmp_path / "archive", tmp_path / "out"
    archive.mkdir()
    for i in range(2):
        (archive / f"v{i}.wav").write_bytes(encode_audio(voice(2.0, 16000, seed=i), 16000, "wav"))
    assert manifest.main([str(archive), "--output", str(out), "--log-level", "WARNING"]) == 0
    (archive / "v1.wav").write_bytes(encode_audio(voice(2.0, 16000, seed=9), 16000, "wav"))
    assert embed_voices.main([str(out), "--output", str(out), "--models", models.uri]) == 0
    root = resolve(str(out))
    (error,) = [e for e in read_table(root, "errors").to_pylist() if e["job"] == "embed_voices"]
    assert error["uri"].endswith("v1.wav") and error["error_type"] == "content_changed"
    assert {u.rsplit("/", 1)[-1] for u in read_table(root, "voices").column("uri").to_pylist()} == {"v0.wav"}


def test_a_second_run_on_s3_embeds_only_new_content_and_equals_a_full_run(ray_cluster, models, s3):
    archive, out = resolve(s3.uri("archive")), resolve(s3.uri("out"))
    archive.join("a.flac").put_atomic(encode_audio(voice(3.0, 16000, seed=1), 16000, "flac"))
    archive.join("b.flac").put_atomic(encode_audio(voice(2.0, 16000, seed=2, pitch=200.0), 16000, "flac"))
    archive.join("quiet.flac").put_atomic(encode_audio(np.zeros(16000, np.float32), 16000, "flac"))
    archive.join("silent.mp4").put_atomic(_silent_video(np.zeros((5, 32, 32, 3), np.uint8)))
    args = [out.uri, "--output", out.uri, "--models", models.uri, "--log-level", "WARNING"]
    quiet = ["--log-level", "WARNING"]
    assert manifest.main([archive.uri, "--output", out.uri, "--run-id", "m1", *quiet]) == 0
    assert embed_voices.main([*args, "--manifest-run-id", "m1", "--run-id", "v1"]) == 0
    archive.join("a.flac").put_atomic(encode_audio(voice(3.0, 16000, seed=3), 16000, "flac"))  # rewritten
    archive.join("b.flac").remove_tree()
    archive.join("new.flac").put_atomic(encode_audio(voice(2.5, 16000, seed=4, pitch=110.0), 16000, "flac"))
    archive.join("b-again.flac").put_atomic(encode_audio(voice(2.0, 16000, seed=2, pitch=200.0), 16000, "flac"))
    assert manifest.main([archive.uri, "--output", out.uri, "--run-id", "m2", *quiet]) == 0
    assert embed_voices.main([*args, "--manifest-run-id", "m2", "--run-id", "v2"]) == 0
    assert embed_voices.main([*args, "--manifest-run-id", "m2", "--run-id", "full", "--no-reuse"]) == 0
    markers = {m["run_id"]: m["summary"] for m in committed_runs(out)}
    second, full = markers["v2"], markers["full"]
    # Reused: quiet.flac (unchanged), b-again.flac (b's content under a new name); the failure is tried again.
    assert second["sources"] == 5 and second["reused"] == 2 and second["reused_from"] == "v1"
    for count in ("ok", "no_speech", "truncated", "with_speech", "segments", "audio_hours", "errors"):
        assert second[count] == pytest.approx(full[count]), count

    def rows(run_id: str) -> dict:
        found = read_table(out, "voices", run_id=run_id).drop_columns(["run_id"]).to_pylist()
        return {(r["uri"], r["level"], r["segment_index"]): r for r in found}

    reused, made = rows("v2"), rows("full")
    assert reused.keys() == made.keys() and any(k[0].endswith("b-again.flac") for k in reused)
    for k, r in reused.items():
        a, b = r.pop("embedding"), made[k].pop("embedding")
        assert (a is None) == (b is None) and (a is None or np.allclose(a, b, atol=1e-5)), k
        assert same_row(r, made[k]), k


def test_a_handful_of_sources_in_process_gives_the_actors_rows(ray_cluster, models, tmp_path, caplog):
    """jobs.find's probes: the hard cases embedded in the driver's process (no pool of actors) give the actors'
    rows, errors included."""
    archive = tmp_path / "archive"
    archive.mkdir()
    expected = hard_archive(archive)
    assert len(expected) <= 16
    out = str(tmp_path / "out")
    common = ["--output", out, "--models", models.uri, "--no-reuse", "--gpus-per-actor", "0"]
    assert run_both(archive, out, models, *common[4:], "--run-id", "actors") == 0
    assert "in this process" not in caplog.text
    assert embed_voices.main([out, *common, "--run-id", "here", "--in-process-below", "17"]) == 0
    assert "encoder: in this process" in caplog.text
    root = resolve(out)
    for table, key in (("voices", ("uri", "level", "start")), ("errors", ("uri", "error_type"))):
        here, actors = (
            {
                tuple(r[k] for k in key): r
                for r in read_table(root, table, run_id=run).drop_columns(["run_id"]).to_pylist()
            }
            for run in ("here", "actors")
        )
        assert here.keys() == actors.keys() and here, table
        for k, r in here.items():
            a, b = r.pop("embedding", None), actors[k].pop("embedding", None)
            assert (a is None) == (b is None)
            if a is not None:
                np.testing.assert_allclose(a, b, atol=1e-5)
            assert same_row(r, actors[k]), (table, k)
