"""Speaker evidence kept by each speech detector: EERs of the Resemblyzer package and of our voice pipeline with
Silero VAD and with webrtcvad, on the same labelled speech, in one run; and how much music each takes for speech.

    python benchmarks/bench_vad.py [FOLDER ...] [--crops 4] [--crop-seconds 2 4] [--seed 0]

Each FOLDER holds one folder per speaker of FLAC/WAV/MP3 utterances (default ``../shared/data/voices``; several
folders are pooled). The same audio goes to every contender, under four conditions:

- ``utterances``: each file whole, one embedding per file (all pairs of files);
- ``crops``: up to --crops seeded crops of 2 to 4 s per file, silences and all, each embedded on its own: short
  probes are where a detector's lost or added edges weigh most, and thousands of pairs resolve small differences;
- ``music between``: each utterance with two seconds of music before it and in its middle (the evidence is the
  same speech: a detector that embeds the music loses it);
- ``music only``: the share of a seeded music clip each detector keeps as speech (Resemblyzer keeps what its
  webrtcvad keeps).

Ours is the job's own path: ``SpeechSegmenter`` with the detector, GE2E partials pooled per file as
``jobs.embed_voices`` pools them; Silero both with its default rule (hysteresis) and with the plain 0.5 threshold
it had before. Prints EER and ROC AUC per contender and condition, and the ratio of each of our
EERs to Resemblyzer's.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ops.matching import metrics  # noqa: E402
from ops.matching.vectors import unit_or_zero  # noqa: E402
from ops.media.audio import TARGET_RATE, decode_mono  # noqa: E402
from ops.models.catalogue import build, load, models_root, pull  # noqa: E402
from ops.testing.samples import music  # noqa: E402
from ops.voices.speech import SileroDetector, SpeechSegmenter, WebRTCDetector  # noqa: E402

SHARED_VOICES = Path(__file__).resolve().parents[2] / "shared" / "data" / "voices"
SUFFIXES = {".flac", ".wav", ".mp3", ".ogg"}


@dataclass
class Condition:
    name: str
    labels: np.ndarray  # speaker per clip
    clips: list[np.ndarray]  # 16 kHz mono


def read_speakers(folders: list[Path]) -> tuple[list[np.ndarray], np.ndarray]:
    """Every utterance under the folders, decoded to 16 kHz, labelled by its speaker folder's name."""
    waves, labels = [], []
    for folder in folders:
        for path in sorted(p for p in folder.glob("*/*") if p.suffix.lower() in SUFFIXES):
            with open(path, "rb") as f:
                waves.append(np.concatenate(list(decode_mono(f)[1])))
            labels.append(f"{folder.name}/{path.parent.name}")
    if len(set(labels)) < 2:
        raise SystemExit(f"need two speakers or more under {', '.join(map(str, folders))}")
    return waves, np.array(labels)


def conditions(waves: list[np.ndarray], labels: np.ndarray, crops: int, lengths: tuple[float, float], seed: int):
    rng = np.random.default_rng(seed)
    cut, cut_labels = [], []
    for wave, label in zip(waves, labels, strict=True):
        for _ in range(crops):
            n = int(rng.uniform(*lengths) * TARGET_RATE)
            if len(wave) > n:
                at = int(rng.integers(0, len(wave) - n))
                cut.append(wave[at : at + n])
                cut_labels.append(label)
    tune = music(rng, 2.0)
    between = [np.concatenate([tune, w[: len(w) // 2], tune, w[len(w) // 2 :]]) for w in waves]
    return [
        Condition("utterances", labels, waves),
        Condition(f"crops {lengths[0]:g}-{lengths[1]:g} s", np.array(cut_labels), cut),
        Condition("music between", labels, between),
        Condition("noise under, 10 dB SNR", labels, [_under(w, _pink(rng, len(w)), 10.0) for w in waves]),
        Condition("music under, 10 dB SNR", labels, [_under(w, _looped(tune, len(w)), 10.0) for w in waves]),
    ]


def _pink(rng: np.random.Generator, n: int) -> np.ndarray:
    """Pink noise (power falling 3 dB per octave): a hum and hiss a recording room adds under the speech."""
    spectrum = np.fft.rfft(rng.normal(size=n))
    spectrum[1:] /= np.sqrt(np.arange(1, len(spectrum)))
    return np.fft.irfft(spectrum, n).astype(np.float32)


def _looped(x: np.ndarray, n: int) -> np.ndarray:
    return np.tile(x, n // len(x) + 1)[:n]


def _under(speech: np.ndarray, background: np.ndarray, snr_db: float) -> np.ndarray:
    """The background mixed under the whole clip, silences too, ``snr_db`` below the speech's RMS."""
    level = np.sqrt(np.mean(speech**2)) / (np.sqrt(np.mean(background**2)) * 10 ** (snr_db / 20))
    return (speech + level * background).astype(np.float32)


def ours(clips: list[np.ndarray], detector, embedder) -> np.ndarray:
    """One embedding per clip, as jobs.embed_voices makes a source's: segments found by the detector, their GE2E
    partials pooled; zeros where no speech was found."""
    waves, owners = [], []
    for i, clip in enumerate(clips):
        segmenter = SpeechSegmenter(detector=detector)
        segments = segmenter.push(clip) + segmenter.finish()
        waves += [s.samples for s in segments]
        owners += [i] * len(segments)
    sums, counts = embedder.partial_sums(waves)
    pooled, n = np.zeros((len(clips), sums.shape[1] if len(sums) else 256)), np.zeros(len(clips))
    np.add.at(pooled, np.asarray(owners, int), sums)
    np.add.at(n, np.asarray(owners, int), counts)
    return unit_or_zero(pooled / np.maximum(n, 1)[:, None])


def resemblyzer(clips: list[np.ndarray], encoder) -> np.ndarray:
    from resemblyzer import preprocess_wav

    out = []
    for clip in clips:
        wav = preprocess_wav(clip, source_sr=TARGET_RATE)
        out.append(encoder.embed_utterance(wav) if len(wav) else np.zeros(256, np.float32))
    return np.stack(out)


def scores(vectors: np.ndarray, labels: np.ndarray) -> tuple[float, float, int]:
    """EER and AUC over every pair of clips, and how many clips had no speech (they score 0 with everything)."""
    upper = np.triu(np.ones((len(labels), len(labels)), bool), 1)
    s = (vectors @ vectors.T)[upper]
    same = (labels[:, None] == labels[None, :])[upper]
    return metrics.equal_error_rate(s, same), metrics.auc(s, same), int((np.abs(vectors).sum(1) == 0).sum())


def music_kept(detector, seconds: float = 30.0, seed: int = 1) -> float:
    """Share of a music clip (no voice) a detector marks as speech, after its own smoothing and bridging."""
    from ops.voices.speech import loudness_normalise

    mask = detector(loudness_normalise(music(np.random.default_rng(seed), seconds)))
    return float(mask.mean()) if len(mask) else 0.0


def resemblyzer_music_kept(seconds: float = 30.0, seed: int = 1) -> float:
    from resemblyzer import preprocess_wav

    tune = music(np.random.default_rng(seed), seconds)
    return len(preprocess_wav(tune, source_sr=TARGET_RATE)) / len(tune)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folders", nargs="*", type=Path, default=[SHARED_VOICES])
    parser.add_argument("--crops", type=int, default=4, help="crops per utterance")
    parser.add_argument("--crop-seconds", type=float, nargs=2, default=(2.0, 4.0))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", default=None, help="models root (default: out/models; pulled when missing)")
    args = parser.parse_args()
    missing = [str(f) for f in args.folders if not f.is_dir()]
    if missing:
        raise SystemExit(f"no such folder: {', '.join(missing)} (the default needs ../shared/data/voices)")
    from resemblyzer import VoiceEncoder

    root = models_root(args.models)
    for name in ("ge2e-resemblyzer", "silero-vad"):
        pull(name, root)
    embedder = build(load("ge2e-resemblyzer", root), "cpu")
    silero = build(load("silero-vad", root), "cpu")
    contenders = {
        "ours, Silero VAD": SileroDetector(silero),  # the default: hysteresis 0.5 / 0.35
        "ours, Silero >= 0.5": SileroDetector(silero, low=0.5),  # the rule before hysteresis
        "ours, webrtcvad": WebRTCDetector(),
    }
    encoder = VoiceEncoder("cpu", verbose=False)
    waves, labels = read_speakers(args.folders)
    seconds = sum(len(w) for w in waves) / TARGET_RATE
    print(
        f"{len(waves)} utterances of {len(set(labels))} speakers, {seconds:.0f} s, from {len(args.folders)} folder(s)"
    )
    table: dict[str, dict[str, tuple[float, float, int]]] = {}
    for condition in conditions(waves, labels, args.crops, tuple(args.crop_seconds), args.seed):
        t = time.perf_counter()
        row = {"Resemblyzer": scores(resemblyzer(condition.clips, encoder), condition.labels)}
        for name, detector in contenders.items():
            row[name] = scores(ours(condition.clips, detector, embedder), condition.labels)
        table[condition.name] = row
        n = len(condition.labels)
        genuine = int(sum(c * (c - 1) // 2 for c in np.unique(condition.labels, return_counts=True)[1]))
        print(f"\n{condition.name}: {n} clips, {n * (n - 1) // 2} pairs ({genuine} same speaker)")
        base = row["Resemblyzer"][0]
        for name, (eer, auc, silent) in row.items():
            ratio = f"{eer / base:5.2f}x Resemblyzer's EER" if base > 0 and name != "Resemblyzer" else ""
            quiet = f", {silent} with no speech found" if silent else ""
            print(f"  {name:<20} EER {100 * eer:6.3f}%  AUC {auc:.5f}  {ratio}{quiet}")
        print(f"  ({time.perf_counter() - t:.1f} s)")
    print("\nmusic only (30 s, no voice), share kept as speech:")
    print(f"  {'Resemblyzer':<18} {resemblyzer_music_kept():.3f}")
    for name, detector in contenders.items():
        print(f"  {name:<20} {music_kept(detector):.3f}")


if __name__ == "__main__":
    main()
