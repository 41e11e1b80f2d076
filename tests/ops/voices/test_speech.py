import numpy as np
import pytest
import torch

from ops.media.audio import TARGET_RATE
from ops.testing.samples import music, speech
from ops.voices.speech import SpeechSegmenter, loudness_normalise, speech_windows


def voice(seconds: float, rate: int = TARGET_RATE, pitch: float = 140.0, seed: int = 0) -> np.ndarray:
    return speech(np.random.default_rng(seed), pitch, seconds, rate)


def silence(seconds: float, rate: int = TARGET_RATE) -> np.ndarray:
    return np.random.default_rng(1).normal(0, 1e-4, int(seconds * rate)).astype(np.float32)


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
    from ops.models.catalogue import build, load
    from ops.voices.speech import SileroDetector

    return SileroDetector(build(load("silero-vad", models, expect="speech-detection"), "cpu"))


def test_silero_port_equals_the_package(models):
    """The proof of the port: the same probabilities as silero-vad's own model, window by window."""
    from silero_vad import load_silero_vad

    from ops.models.catalogue import load
    from ops.voices.silero import SileroVAD

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
    from ops.voices.speech import WebRTCDetector

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


def test_hysteresis_keeps_whole_runs_that_reach_the_threshold():
    from ops.voices.speech import hysteresis

    probs = np.array([0.1, 0.4, 0.6, 0.4, 0.2, 0.4, 0.36, 0.1, 0.9, 0.5, 0.34, 0.5])
    # runs >= 0.35: [1, 4) peaks 0.6 (kept, its soft onset and end too); [5, 7) peaks 0.4 (dropped);
    # [8, 10) peaks 0.9 (kept); [11, 12) reaches 0.5 exactly (kept)
    assert hysteresis(probs, 0.5, 0.35).astype(int).tolist() == [0, 1, 1, 1, 0, 0, 0, 0, 1, 1, 0, 1]
    assert hysteresis(probs, 0.5, 0.5).tolist() == (probs >= 0.5).tolist()  # low == threshold: the plain rule
    assert not hysteresis(np.full(5, 0.2), 0.5, 0.35).any()


def test_silero_thresholds_are_checked(silero):
    from ops.voices.speech import SileroDetector

    with pytest.raises(ValueError, match="low"):
        SileroDetector(silero.model, threshold=0.4, low=0.5)
