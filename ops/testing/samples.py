"""A small, deterministic sample archive of real media files, encoded with PyAV (the demo's and the tests' data).

Every container the manifest recognises appears at least once, with per-person folders for labels, an identical
copy (a duplicate), a file whose extension lies, and inputs that must end as error rows (empty, not media).
"""

from __future__ import annotations

import numpy as np
import torch
import torchaudio

from ops.io.storage import Store
from ops.media.encode import encode_audio, encode_image, encode_video

PEOPLE = ("alice", "bob", "carol")

# relpath -> (what it is, expected media kind); the kind is None for inputs that must become error rows.
SAMPLE_LAYOUT: dict[str, str | None] = {
    "photos/alice/portrait-1.jpg": "jpeg",
    "photos/alice/portrait-2.png": "png",
    "photos/bob/portrait-1.webp": "webp",
    "photos/bob/portrait-2.bmp": "bmp",
    "photos/carol/portrait-1.tiff": "tiff",
    "photos/carol/portrait-2.gif": "gif",
    "voices/alice/greeting.wav": "wav",
    "voices/alice/reading.flac": "flac",
    "voices/bob/greeting.mp3": "mp3",
    "voices/bob/reading.opus": "opus",
    "voices/carol/greeting.m4a": "m4a",
    "music/concert.flac": "flac",  # no voice in it: a learned speech detector finds no speech
    "videos/interview.mp4": "mp4",
    "videos/interview.mov": "mov",
    "videos/street.webm": "webm",
    "videos/street.mkv": "mkv",
    "videos/archive.avi": "avi",
    "copies/portrait-copy.jpg": "jpeg",  # the same bytes as photos/alice/portrait-1.jpg
    "misnamed/recording.mp3": "png",  # a PNG whatever its name says
    "broken/empty.jpg": None,  # zero bytes
    "broken/notes.txt": None,  # text, not media
}


def make_sample_archive(dest: Store, seed: int = 0) -> list[str]:
    """Write the sample archive below ``dest``; returns the relative paths written (SAMPLE_LAYOUT's keys)."""
    rng = np.random.default_rng(seed)
    files: dict[str, bytes] = {}
    for i, person in enumerate(PEOPLE):
        first, second = portrait(rng, i), portrait(rng, i)
        for relpath, kind in SAMPLE_LAYOUT.items():
            if relpath.startswith(f"photos/{person}/"):
                files[relpath] = encode_image(first if "-1." in relpath else second, kind)
            elif relpath.startswith(f"voices/{person}/"):
                rate = 44100 if kind == "mp3" else 16000  # archives mix rates: the voice path must resample
                files[relpath] = encode_audio(
                    speech(rng, pitch=110.0 + 60.0 * i, rate=rate, tract=1.0 + 0.1 * i), rate, kind
                )
    video, audio = _scene(rng), speech(rng, pitch=150.0, seconds=2.0, rate=44100)
    for relpath, kind in SAMPLE_LAYOUT.items():
        if relpath.startswith("videos/"):
            files[relpath] = encode_video(video, audio, 44100, kind)
    files["music/concert.flac"] = encode_audio(music(rng, 4.0), 16000, "flac")
    files["copies/portrait-copy.jpg"] = files["photos/alice/portrait-1.jpg"]
    files["misnamed/recording.mp3"] = files["photos/alice/portrait-2.png"]
    files["broken/empty.jpg"] = b""
    files["broken/notes.txt"] = b"meeting notes: these are not media\n"
    for relpath in SAMPLE_LAYOUT:
        dest.join(relpath).put_atomic(files[relpath])
    return list(SAMPLE_LAYOUT)


def portrait(rng: np.random.Generator, person: int, size: tuple[int, int] = (160, 128)) -> np.ndarray:
    """A shaded frontal face drawing that MTCNN finds (score above 0.99): skin, hair, brows, eyes with irises, nose,
    mouth. Skin tone, eye spacing and face shape are the person's; position, background and noise vary per call."""
    h, w = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.empty((h, w, 3), np.float32)
    img[:] = rng.uniform(60, 200, 3)
    skin = np.array(((224, 172, 140), (198, 134, 96), (141, 85, 36))[person % 3], np.float32)
    cx, cy = w / 2 + rng.normal(0, 2), h / 2 + rng.normal(0, 2)
    rx, ry = w * (0.30 + 0.02 * (person % 3)), h * 0.36
    d = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2
    img[(d <= 1.25) & (y < cy - ry * 0.55)] = (40, 30, 20)  # hair
    face = d <= 1
    img[face] = (skin * np.clip(1.1 - 0.35 * d, 0, None)[..., None])[face]  # lit from the front
    eye_y, spacing = cy - ry * 0.18, w * (0.12 + 0.02 * (person % 3))
    for ex in (cx - spacing, cx + spacing):
        img[(np.abs(y - (eye_y - h * 0.06)) <= 2) & (np.abs(x - ex) <= w * 0.08)] = (50, 35, 25)
        img[((x - ex) / (w * 0.065)) ** 2 + ((y - eye_y) / (h * 0.025)) ** 2 <= 1] = (235, 235, 235)
        img[(x - ex) ** 2 + (y - eye_y) ** 2 <= (h * 0.022) ** 2] = (50, 30, 20)
    nose_y = cy + ry * 0.2
    img[((x - cx) / (w * 0.06)) ** 2 + ((y - nose_y) / (h * 0.03)) ** 2 <= 1] = skin * 0.65
    ridge = (np.abs(x - cx) <= w * 0.025) & (y > eye_y) & (y < nose_y)
    img[ridge] *= 0.9
    img[((x - cx) / (w * 0.13)) ** 2 + ((y - (cy + ry * 0.5)) / (h * 0.025)) ** 2 <= 1] = (160, 60, 60)
    img += rng.normal(0, 3, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


# Vowel formants (F1, F2, F3 in Hz) of an adult voice: /a/, /i/, /u/, /e/, /o/, /ae/.
_VOWELS = (
    (730, 1090, 2440),
    (270, 2290, 3010),
    (300, 870, 2240),
    (530, 1840, 2480),
    (570, 840, 2410),
    (660, 1720, 2410),
)


def speech(
    rng: np.random.Generator, pitch: float, seconds: float = 1.5, rate: int = 16000, tract: float = 1.0
) -> np.ndarray:
    """Speech-like sound from a source-filter model: syllables of a fricative burst and a vowel (glottal pulses at
    ``pitch`` Hz through three formant resonators scaled by ``tract``), with a falling intonation and pauses.
    A learned speech detector takes it for speech; ``pitch`` and ``tract`` make different synthetic speakers."""
    out, phase, total = [], 0.0, int(seconds * rate)
    length = 0
    while length < total:
        burst = int(0.05 * rate)
        fricative = rng.normal(0, 0.05, burst) * np.hanning(burst)
        fricative[1:] -= 0.9 * fricative[:-1]  # a crude high-pass: hiss, not rumble
        n = int(rng.uniform(0.14, 0.22) * rate)
        t = np.arange(n) / rate
        f0 = pitch * (1.1 - 0.2 * length / total) * (1 + 0.05 * np.sin(2 * np.pi * rng.uniform(3, 6) * t))
        cycles = phase + np.cumsum(f0) / rate
        phase = cycles[-1]
        pulses = np.diff(np.floor(cycles), prepend=np.floor(cycles[0])).astype(np.float32)
        voiced = torchaudio.functional.lfilter(
            torch.from_numpy(pulses), torch.tensor([1.0, -0.97]), torch.tensor([1.0, 0.0]), clamp=False
        )  # glottal roll-off
        for formant, bandwidth in zip(_VOWELS[rng.integers(len(_VOWELS))], (80, 100, 120), strict=True):
            r, theta = np.exp(-np.pi * bandwidth / rate), 2 * np.pi * formant * tract / rate
            a = torch.tensor([1.0, -2 * r * np.cos(theta), r * r], dtype=torch.float32)
            b = torch.tensor([1 - r, 0.0, 0.0], dtype=torch.float32)
            voiced = torchaudio.functional.lfilter(voiced, a, b, clamp=False)
        vowel = voiced.numpy() * np.hanning(n)
        pieces = [fricative, 0.3 * vowel / (np.abs(vowel).max() + 1e-9)]
        if rng.random() < 0.15:
            pieces.append(np.zeros(int(rng.uniform(0.1, 0.3) * rate)))
        out += pieces
        length += sum(len(p) for p in pieces)
    x = np.concatenate(out)[:total]
    return (x + rng.normal(0, 0.002, len(x))).astype(np.float32)


def music(rng: np.random.Generator, seconds: float = 4.0, rate: int = 16000) -> np.ndarray:
    """Music without a voice: plucked notes of an arpeggio over a sustained chord, and hi-hat noise bursts."""
    t = np.arange(int(seconds * rate)) / rate
    x = 0.3 * sum(np.sin(2 * np.pi * f * t) for f in (110.0, 138.6, 164.8))
    notes = 220 * 2 ** (np.array([0, 4, 7, 12, 7, 4]) / 12)
    for i in range(int(seconds * 3)):
        start, f0 = int(i * rate / 3), notes[i % len(notes)]
        tt = t[: len(t) - start]
        x[start:] += sum(np.sin(2 * np.pi * k * f0 * tt) / k**1.5 for k in range(1, 6)) * np.exp(-3 * tt)
    for i in range(int(seconds * 4)):
        start = int(i * rate / 4)
        hit = rng.normal(0, 0.5, 800) * np.exp(-np.arange(800) / 150)
        x[start : start + 800] += hit[: len(x) - start]
    return (0.2 * x / np.abs(x).max()).astype(np.float32)


def _scene(rng: np.random.Generator, frames: int = 20, size: tuple[int, int] = (160, 192)) -> np.ndarray:
    """A moving gradient with a face drifting across it: frames that differ, compress like video, and hold a face."""
    h, w = size
    y, x = np.mgrid[0:h, 0:w]
    out = np.empty((frames, h, w, 3), np.uint8)
    base = rng.uniform(0, 255, 3)
    face = portrait(rng, 0)
    fh, fw = face.shape[:2]
    for t in range(frames):
        out[t, ..., 0] = (x * 2 + t * 6 + base[0]) % 256
        out[t, ..., 1] = (y * 2 + base[1]) % 256
        out[t, ..., 2] = base[2]
        left = 4 + 2 * t
        out[t, h - fh :, left : left + fw] = face
    return out
