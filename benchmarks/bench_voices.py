"""Voice embedding throughput against the Resemblyzer package on the same files, in one run, interleaved.

    python benchmarks/bench_voices.py [--folder ../shared/data/voices] [--rounds 3]

Contenders, each over every file: Resemblyzer (``preprocess_wav`` then ``embed_utterance``, one file at a time, as
its README does); our pipeline in one process (PyAV decode, torchaudio resampling, Silero VAD, GE2E with the
partials of all files batched), with where its time goes; and the ``jobs.embed_voices`` job on local Ray
(every core; Ray's start-up excluded). Prints seconds of audio per wall second, ratios, and how close the
embeddings are.
Without ``../shared`` it makes 40 ten-second files of synthetic voices.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs import embed_voices, manifest  # noqa: E402
from jobs.runtime.cluster import ensure_ray  # noqa: E402
from ops.io.storage import resolve  # noqa: E402
from ops.io.tables import read_table  # noqa: E402
from ops.matching.vectors import unit_or_zero  # noqa: E402
from ops.media.audio import decode_mono  # noqa: E402
from ops.media.encode import encode_audio  # noqa: E402
from ops.models.catalogue import build, load, models_root, pull  # noqa: E402
from ops.testing.samples import speech  # noqa: E402
from ops.voices.ge2e import SpeakerEmbedder  # noqa: E402
from ops.voices.speech import SileroDetector, SpeechSegmenter, WebRTCDetector  # noqa: E402

SHARED_VOICES = Path(__file__).resolve().parents[2] / "shared" / "data" / "voices"


def synthetic(folder: Path, n: int = 40) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = folder / f"speaker{i % 8}" / f"take{i}.flac"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(
            encode_audio(speech(rng, 90.0 + 20 * (i % 8), 10.0, 16000, tract=0.9 + 0.05 * (i % 8)), 16000, "flac")
        )
        paths.append(path)
    return paths


def resemblyzer(paths: list[Path], encoder) -> dict[str, np.ndarray]:
    from resemblyzer import preprocess_wav

    return {str(p): encoder.embed_utterance(preprocess_wav(p)) for p in paths}


def ours(paths: list[Path], embedder: SpeakerEmbedder, detector, clock: dict[str, float]) -> dict[str, np.ndarray]:
    """Decode and segment every file, then embed all segments in one batched pass; pooled per file."""
    waves, owners = [], []
    for path in paths:
        t0 = time.perf_counter()
        with open(path, "rb") as f:
            _, chunks = decode_mono(f)
            audio = list(chunks)
        t1 = time.perf_counter()
        segmenter = SpeechSegmenter(detector=detector)
        segments = [s for chunk in audio for s in segmenter.push(chunk)] + segmenter.finish()
        t2 = time.perf_counter()
        clock["decode + resample"] += t1 - t0
        clock["VAD + segments"] += t2 - t1
        waves += [s.samples for s in segments]
        owners += [str(path)] * len(segments)
    t3 = time.perf_counter()
    sums, counts = embedder.partial_sums(waves)
    clock["encoder"] += time.perf_counter() - t3
    pooled: dict[str, list] = {}
    for owner, s, n in zip(owners, sums, counts, strict=True):
        acc = pooled.setdefault(owner, [np.zeros_like(s), 0])
        acc[0] += s
        acc[1] += n
    return {k: unit_or_zero(v[0] / v[1]) for k, v in pooled.items()}


VAD = ["--vad", "silero"]  # set from the command line in main()


def job(out: Path, models: str, round_: int | str, *extra: str) -> dict[str, np.ndarray]:
    code = embed_voices.main(
        [
            str(out),
            "--output",
            str(out),
            "--models",
            models,
            "--run-id",
            f"bench{round_}",
            "--log-level",
            "WARNING",
            "--no-reuse",  # every round embeds every file: a rerun would otherwise reuse the first round's rows
            *VAD,
            *extra,
        ]
    )
    assert code == 0, "the embed_voices job failed"
    rows = read_table(resolve(str(out)), "voices", run_id=f"bench{round_}").to_pylist()
    return {r["uri"]: np.asarray(r["embedding"]) for r in rows if r["level"] == "source"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--folder", type=Path, default=SHARED_VOICES if SHARED_VOICES.exists() else None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--vad", choices=["silero", "webrtc"], default="silero", help="our speech detector")
    args = parser.parse_args()
    VAD[1] = args.vad
    from resemblyzer import VoiceEncoder

    with tempfile.TemporaryDirectory(prefix="bench-voices-") as tmp:
        folder = args.folder or Path(tmp, "voices")
        paths = sorted(folder.glob("**/*.flac")) if args.folder else synthetic(folder)
        seconds = 0.0
        for p in paths:
            with open(p, "rb") as f:
                seconds += sum(len(c) for c in decode_mono(f)[1]) / 16000
        root = models_root(str(Path(tmp, "models")))
        pull("ge2e-resemblyzer", root)
        pull("silero-vad", root)
        vad = build(load("silero-vad", root), "cpu")
        detector = SileroDetector(vad) if args.vad == "silero" else WebRTCDetector()
        embedder = build(load("ge2e-resemblyzer", root), "cpu")
        encoder = VoiceEncoder("cpu", verbose=False)
        out = Path(tmp, "out")
        assert manifest.main([str(folder), "--glob", "**/*.flac", "--output", str(out), "--log-level", "WARNING"]) == 0
        ensure_ray()
        # Warm-up: librosa/numba compile, Ray workers start, models load.
        resemblyzer(paths[:2], encoder)
        ours(paths[:2], embedder, detector, {"decode + resample": 0, "VAD + segments": 0, "encoder": 0})
        job(out, root.uri, -1)

        # The job's fixed cost per run (manifest read, actor start-up with torch imports, model load, commit) is
        # seconds; its steady-state rate comes from a second archive of the same files four times over:
        # (4S - S) of audio over (T4 - T1) of time.
        big = Path(tmp, "x4")
        for copy in range(4):
            for p in paths:
                target = big / f"copy{copy}" / p.relative_to(folder)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(p.read_bytes())
        big_out = Path(tmp, "out4")
        assert manifest.main([str(big), "--output", str(big_out), "--log-level", "WARNING"]) == 0
        times: dict[str, list[float]] = {"Resemblyzer, 1 process": [], "ours, 1 process": [], "embed_voices job": []}
        fourfold: list[float] = []
        clock = {"decode + resample": 0.0, "VAD + segments": 0.0, "encoder": 0.0}
        for round_ in range(args.rounds):  # interleaved: a noisy neighbour slows every contender alike
            t = time.perf_counter()
            theirs = resemblyzer(paths, encoder)
            times["Resemblyzer, 1 process"].append(time.perf_counter() - t)
            t = time.perf_counter()
            mine = ours(paths, embedder, detector, clock)
            times["ours, 1 process"].append(time.perf_counter() - t)
            t = time.perf_counter()
            jobbed = job(out, root.uri, round_)
            times["embed_voices job"].append(time.perf_counter() - t)
            t = time.perf_counter()
            job(big_out, root.uri, f"x4-{round_}")
            fourfold.append(time.perf_counter() - t)

        cos = np.array([float(mine[k] @ theirs[k]) for k in theirs])
        cos_job = np.array([float(jobbed[k] @ theirs[k]) for k in theirs])
        print(f"\n{len(paths)} files, {seconds:.0f} s of audio, {args.rounds} rounds (median), our VAD: {args.vad}")
        rates = {name: seconds / statistics.median(ts) for name, ts in times.items()}
        for name, rate in rates.items():
            runs = ", ".join(f"{t:.2f}s" for t in times[name])
            print(f"  {name:<24} {rate:8.1f} s of audio per s   (runs: {runs})")
        base = rates["Resemblyzer, 1 process"]
        print(f"  ours / Resemblyzer, 1 process each: {rates['ours, 1 process'] / base:.2f}x")
        print(f"  embed_voices job / Resemblyzer:      {rates['embed_voices job'] / base:.2f}x end to end")
        t1, t4 = statistics.median(times["embed_voices job"]), statistics.median(fourfold)
        print(f"  embed_voices job on 4x the audio: {t4:.2f}s (runs: {', '.join(f'{t:.2f}s' for t in fourfold)})")
        steady = 3 * seconds / (t4 - t1) if t4 > t1 else None
        fixed = t1 - seconds / steady if steady else None
        if steady is None or fixed < 0:  # noise larger than the work: no figure is better than a wrong one
            print(
                "  embed_voices job, steady state:    not measurable from these runs (4x the audio did not take "
                "longer by more than the noise): rerun with more --rounds on a quieter machine"
            )
        else:
            print(
                f"  embed_voices job, steady state:    {steady:8.1f} s of audio per s = {steady / base:.2f}x "
                f"Resemblyzer (fixed cost per run about {fixed:.1f} s: actor start-up, model load, commit)"
            )
        total = sum(clock.values())
        print("  where our time goes: " + ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in clock.items()))
        print(
            f"  embeddings vs Resemblyzer's: cosine mean {cos.mean():.5f}, min {cos.min():.5f} (one process); "
            f"job mean {cos_job.mean():.5f}, min {cos_job.min():.5f}"
        )


if __name__ == "__main__":
    main()
