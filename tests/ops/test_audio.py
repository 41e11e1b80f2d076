import io
import wave
from fractions import Fraction

import av
import numpy as np
import pytest
import torch
import torchaudio

from ops.audio import (
    TARGET_RATE,
    DecodeError,
    EmptyAudio,
    NoAudioStream,
    SpeechSegmenter,
    StreamResampler,
    TooLong,
    decode_mono,
    loudness_normalise,
    speech_windows,
)
from ops.samples import encode_audio, encode_image, encode_video, music, speech


def voice(seconds: float, rate: int = TARGET_RATE, pitch: float = 140.0, seed: int = 0) -> np.ndarray:
    return speech(np.random.default_rng(seed), pitch, seconds, rate)


def silence(seconds: float, rate: int = TARGET_RATE) -> np.ndarray:
    return np.random.default_rng(1).normal(0, 1e-4, int(seconds * rate)).astype(np.float32)


def decoded(data: bytes, **kw) -> np.ndarray:
    _, chunks = decode_mono(io.BytesIO(data), **kw)
    return np.concatenate(list(chunks))


@pytest.mark.parametrize("orig", [8000, 22050, 44100, 48000, 96000, 16000])
def test_stream_resampler_equals_whole_signal(orig):
    x = np.random.default_rng(orig).normal(0, 0.1, orig * 3 + 77).astype(np.float32)
    whole = torchaudio.functional.resample(torch.from_numpy(x), orig, TARGET_RATE).numpy()
    r = StreamResampler(orig, TARGET_RATE)
    parts = [r.push(x[i : i + 2999]) for i in range(0, len(x), 2999)] + [r.flush()]
    y = np.concatenate(parts)
    assert len(y) == len(whole)
    assert np.abs(y - whole).max() < 1e-5


@pytest.mark.parametrize(
    "kind, rate",
    [("wav", 8000), ("wav", 44100), ("wav", 96000), ("flac", 48000), ("mp3", 44100), ("opus", 48000), ("m4a", 16000)],
)
def test_decode_any_audio_to_16k_mono(kind, rate):
    x = voice(2.0, rate)
    y = decoded(encode_audio(x, rate, kind))
    # codecs add priming/padding samples; the length is right to within tens of milliseconds
    assert abs(len(y) / TARGET_RATE - 2.0) < 0.08
    assert y.dtype == np.float32 and 0.05 < np.abs(y).max() <= 1.5


@pytest.mark.parametrize("kind", ["mp4", "mkv", "webm", "avi", "mov"])
def test_decode_the_sound_of_a_video(kind):
    frames = np.zeros((10, 32, 48, 3), np.uint8)
    y = decoded(encode_video(frames, voice(1.0, 44100), 44100, kind))
    assert abs(len(y) / TARGET_RATE - 1.0) < 0.1


def test_multichannel_is_downmixed():
    left, right = voice(1.0, 48000), -voice(1.0, 48000, seed=0) * 0.5  # the mean of the two: half of left
    buf = io.BytesIO()
    with av.open(buf, "w", format="wav") as out:
        stream = out.add_stream("pcm_s16le", rate=48000, layout="stereo")
        pcm = (np.stack([left, right]).T.reshape(1, -1) * 32767).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="stereo")
        frame.sample_rate, frame.pts, frame.time_base = 48000, 0, Fraction(1, 48000)
        for p in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(p)
    track, chunks = decode_mono(io.BytesIO(buf.getvalue()))
    assert track.channels == 2 and track.sample_rate == 48000
    y = np.concatenate(list(chunks))
    expected = torchaudio.functional.resample(torch.from_numpy(left * 0.25), 48000, TARGET_RATE).numpy()
    assert np.abs(y[:15000] - expected[:15000]).max() < 2e-3


def test_bad_inputs_raise_named_errors():
    with pytest.raises(NoAudioStream, match="no audio track.*video"):
        decode_mono(io.BytesIO(encode_image(np.zeros((16, 16, 3), np.uint8), "png")))
    with pytest.raises(DecodeError, match="cannot open"):
        decode_mono(io.BytesIO(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk" * 10))
    empty = io.BytesIO()
    with wave.open(empty, "wb") as w:  # a valid WAV header with no samples
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
    with pytest.raises(EmptyAudio):
        decoded(empty.getvalue())
    with pytest.raises(TooLong, match="limit of 1 s"):
        decoded(encode_audio(voice(3.0), 16000, "wav"), max_seconds=1.0)


def test_truncated_file_yields_what_it_can():
    data = encode_audio(voice(4.0), 16000, "flac")
    try:
        y = decoded(data[: len(data) // 2])
    except DecodeError as exc:  # some builds stop with an error rather than silently
        assert "decoding failed after" in str(exc)
    else:
        assert 0.5 < len(y) / TARGET_RATE < 3.5


def test_loudness_is_raised_never_lowered():
    quiet = voice(1.0) * 0.001
    raised = loudness_normalise(quiet)
    assert 20 * np.log10(np.sqrt(np.mean(raised**2))) == pytest.approx(-30, abs=0.01)
    loud = voice(1.0)
    assert loudness_normalise(loud) is loud


def test_vad_finds_voice_not_silence():
    x = np.concatenate([silence(1.0), voice(2.0), silence(1.0)])
    mask = speech_windows(loudness_normalise(x))
    seconds = np.flatnonzero(mask) * 0.03
    assert 0.8 < seconds.min() < 1.1 and 2.9 < seconds.max() < 3.3


def _segments(x: np.ndarray, chunk: int = 16000, **kw) -> tuple[list, SpeechSegmenter]:
    seg = SpeechSegmenter(**kw)
    out = []
    for i in range(0, len(x), chunk):
        out += seg.push(x[i : i + chunk])
    return out + seg.finish(), seg


def test_segments_follow_speech_and_gaps():
    x = np.concatenate([silence(1.0), voice(2.0, seed=1), silence(3.0), voice(1.5, seed=2), silence(0.5)])
    segments, seg = _segments(x, block_seconds=30)
    assert [s.index for s in segments] == [0, 1]
    assert segments[0].start == pytest.approx(1.0, abs=0.15) and segments[0].end == pytest.approx(3.0, abs=0.25)
    assert segments[1].start == pytest.approx(6.0, abs=0.15)
    assert seg.total_seconds == pytest.approx(len(x) / TARGET_RATE)
    assert seg.speech_seconds == pytest.approx(sum(s.speech_seconds for s in segments))


def test_long_speech_is_split_and_short_dropped():
    segments, _ = _segments(voice(25.0), max_seconds=10.0, block_seconds=7.0)
    assert [round(s.speech_seconds, 1) for s in segments[:2]] == [10.0, 10.0]
    assert all(s.speech_seconds <= 10.0 for s in segments)
    blip = np.concatenate([silence(2.0), voice(0.3), silence(2.0)])
    segments, seg = _segments(blip, min_seconds=1.0)  # smoothing and bridging widen it to about 0.6 s
    assert segments == [] and seg.dropped_samples > 0


def test_silence_has_no_segments():
    segments, seg = _segments(silence(5.0))
    assert segments == [] and seg.speech_seconds == 0


def test_memory_stays_bounded_over_a_long_stream():
    seg = SpeechSegmenter(block_seconds=30, max_seconds=10)
    piece = np.concatenate([voice(4.0), silence(2.0)])
    peak = 0
    for _ in range(100):  # ten minutes
        seg.push(piece)
        peak = max(peak, len(seg.buffer) + seg.open_len)
    assert peak <= 40 * TARGET_RATE  # a block and an open segment, never the recording
    assert seg.total_seconds == pytest.approx(600.0)


@pytest.fixture(scope="module")
def silero(models):
    from ops.audio import SileroDetector
    from ops.registry import load
    from ops.silero import SileroVAD

    model = SileroVAD()
    model.load_state_dict(load("silero-vad", models).state, strict=True)
    return SileroDetector(model)


def test_silero_port_equals_the_package(models):
    """The proof of the port: the same probabilities as silero-vad's own model, window by window."""
    from silero_vad import load_silero_vad

    from ops.registry import load
    from ops.silero import SileroVAD

    ours = SileroVAD()
    ours.load_state_dict(load("silero-vad", models).state, strict=True)
    theirs = load_silero_vad()
    x = torch.from_numpy(np.concatenate([silence(0.5), voice(2.0), music(np.random.default_rng(3), 2.0)]))
    with torch.no_grad():
        a = ours.eval()(x)
        theirs.reset_states()
        b = theirs.audio_forward(x, TARGET_RATE)[0]
    assert a.shape == b.shape and torch.abs(a - b).max() < 1e-4


def test_silero_rejects_music_that_webrtc_takes_for_speech(silero):
    from ops.audio import WebRTCDetector

    tune = music(np.random.default_rng(5), 6.0)
    assert silero(tune).mean() < 0.1
    assert WebRTCDetector()(tune).mean() > 0.5  # why silero is the default
    talk = np.concatenate([silence(1.0), voice(4.0, pitch=120.0), silence(1.0)])
    mask = silero(talk)
    speech_at = np.flatnonzero(mask) * 0.032
    assert mask.mean() > 0.4 and 0.8 < speech_at.min() < 1.3 and 4.6 < speech_at.max() < 5.3


def test_segmenter_with_silero(silero):
    x = np.concatenate([voice(3.0, seed=1), music(np.random.default_rng(2), 5.0), voice(3.0, seed=3)])
    segments, seg = _segments(x, detector=silero)
    assert len(segments) == 2  # the music between two speakers separates them and is not embedded
    assert segments[0].end < 4.0 and segments[1].start > 7.5  # the detector lags a few windows at onsets
