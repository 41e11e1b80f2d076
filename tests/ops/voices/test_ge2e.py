import numpy as np
import pytest

from ops.media.audio import TARGET_RATE
from ops.models.catalogue import load
from ops.voices.ge2e import PARTIAL_FRAMES, SpeakerEmbedder, partial_starts
from tests.conftest import shared_data


@pytest.fixture(scope="module")
def embedder(models):
    return SpeakerEmbedder.from_state(load("ge2e-resemblyzer", models).state, "cpu")


@pytest.fixture(scope="module")
def reference():
    from resemblyzer import VoiceEncoder

    return VoiceEncoder("cpu", verbose=False)


def test_partials_follow_resemblyzers_slicing(reference):
    from resemblyzer.hparams import partials_n_frames

    assert partials_n_frames == PARTIAL_FRAMES
    for n in (100, 16000, 25600, 40000, 123457, 16000 * 30):
        starts, reach = partial_starts(n)
        wav_slices, mel_slices = reference.compute_partial_slices(n, rate=1.3, min_coverage=0.75)
        assert starts == [s.start for s in mel_slices] and reach == wav_slices[-1].stop


def _waves(seconds=(1.2, 3.0, 7.5)) -> list[np.ndarray]:
    from ops.testing.samples import speech

    rng = np.random.default_rng(0)
    return [speech(rng, 100.0 + 30 * i, s, TARGET_RATE) for i, s in enumerate(seconds)]


def test_port_equals_resemblyzer(embedder, reference):
    """The proof of the port: on the same audio, the same utterance embeddings."""
    waves = _waves()
    ours = embedder.embed(waves)
    theirs = np.stack([reference.embed_utterance(w) for w in waves])
    assert (ours * theirs).sum(axis=1).min() >= 0.9999


def test_port_equals_resemblyzer_on_real_speech(embedder, reference):
    from resemblyzer import preprocess_wav

    files = sorted(shared_data("voices").glob("*/*.flac"))[::10]
    waves = [preprocess_wav(f) for f in files]
    ours = embedder.embed(waves)
    theirs = np.stack([reference.embed_utterance(w) for w in waves])
    assert (ours * theirs).sum(axis=1).min() >= 0.9999


def test_batching_does_not_change_embeddings(embedder):
    waves = _waves()
    together = embedder.embed(waves)
    alone = np.concatenate([embedder.embed([w]) for w in waves])
    assert np.abs(together - alone).max() < 1e-5
    sums, counts = embedder.partial_sums(waves)
    assert counts.tolist() == [len(partial_starts(len(w))[0]) for w in waves]
    assert np.allclose(sums / np.linalg.norm(sums, axis=1, keepdims=True), together, atol=1e-6)
