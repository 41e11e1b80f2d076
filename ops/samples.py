"""A small, deterministic sample archive of real media files, encoded with PyAV (the demo's and the tests' data).

Every container the manifest recognises appears at least once, with per-person folders for labels, an identical
copy (a duplicate), a file whose extension lies, and inputs that must end as error rows (empty, not media).
"""

from __future__ import annotations

import io
from fractions import Fraction

import av
import numpy as np

from ops.storage import Store

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
        first, second = _portrait(rng, i), _portrait(rng, i)
        for relpath, kind in SAMPLE_LAYOUT.items():
            if relpath.startswith(f"photos/{person}/"):
                files[relpath] = encode_image(first if "-1." in relpath else second, kind)
            elif relpath.startswith(f"voices/{person}/"):
                rate = 44100 if kind == "mp3" else 16000  # archives mix rates: the voice path must resample
                files[relpath] = encode_audio(_voice(rng, pitch=110.0 + 60.0 * i, rate=rate), rate, kind)
    video, audio = _scene(rng), _voice(rng, pitch=150.0, seconds=2.0, rate=44100)
    for relpath, kind in SAMPLE_LAYOUT.items():
        if relpath.startswith("videos/"):
            files[relpath] = encode_video(video, audio, 44100, kind)
    files["copies/portrait-copy.jpg"] = files["photos/alice/portrait-1.jpg"]
    files["misnamed/recording.mp3"] = files["photos/alice/portrait-2.png"]
    files["broken/empty.jpg"] = b""
    files["broken/notes.txt"] = b"meeting notes: these are not media\n"
    for relpath in SAMPLE_LAYOUT:
        dest.join(relpath).put_atomic(files[relpath])
    return list(SAMPLE_LAYOUT)


def encode_image(rgb: np.ndarray, kind: str) -> bytes:
    """Encode an HxWx3 uint8 image as one file of ``kind`` (jpeg, png, webp, bmp, tiff, gif)."""
    codec, pix_fmt, muxer = _IMAGE_CODECS[kind]
    buf = io.BytesIO()
    with av.open(buf, "w", format=muxer, options=_BITEXACT) as out:
        stream = out.add_stream(codec, rate=1)
        stream.width, stream.height, stream.pix_fmt = rgb.shape[1], rgb.shape[0], pix_fmt
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format=pix_fmt)
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


def encode_audio(samples: np.ndarray, rate: int, kind: str) -> bytes:
    """Encode mono float samples in [-1, 1] as one file of ``kind`` (wav, flac, mp3, opus, m4a)."""
    codec, muxer = _AUDIO_CODECS[kind]
    buf = io.BytesIO()
    with av.open(buf, "w", format=muxer, options=_BITEXACT) as out:
        _mux_audio(out, out.add_stream(codec, rate=48000 if codec == "libopus" else rate), samples, rate)
    return buf.getvalue()


def encode_video(frames: np.ndarray, samples: np.ndarray, rate: int, kind: str, fps: int = 10) -> bytes:
    """Encode TxHxWx3 uint8 frames (and a mono sound track) as one file of ``kind`` (mp4, mov, webm, mkv, avi)."""
    vcodec, acodec, muxer = _VIDEO_CODECS[kind]
    buf = io.BytesIO()
    with av.open(buf, "w", format=muxer, options=_BITEXACT) as out:
        video = out.add_stream(vcodec, rate=fps)
        video.width, video.height, video.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        audio = out.add_stream(acodec, rate=48000 if acodec == "libopus" else rate)
        for t, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = t, Fraction(1, fps)
            for packet in video.encode(frame):
                out.mux(packet)
        for packet in video.encode(None):
            out.mux(packet)
        _mux_audio(out, audio, samples, rate)
    return buf.getvalue()


# Muxers otherwise write dates and random stream ids: the same seed must give the same bytes (and sha256).
_BITEXACT = {"fflags": "+bitexact"}

_IMAGE_CODECS = {  # kind -> (encoder, pixel format, muxer)
    "jpeg": ("mjpeg", "yuvj420p", "image2pipe"),
    "png": ("png", "rgb24", "image2pipe"),
    "webp": ("libwebp", "yuv420p", "webp"),
    "bmp": ("bmp", "bgr24", "image2pipe"),
    "tiff": ("tiff", "rgb24", "image2pipe"),
    "gif": ("gif", "rgb8", "gif"),
}
_AUDIO_CODECS = {  # kind -> (encoder, muxer)
    "wav": ("pcm_s16le", "wav"),
    "flac": ("flac", "flac"),
    "mp3": ("libmp3lame", "mp3"),
    "opus": ("libopus", "ogg"),
    "m4a": ("aac", "ipod"),
}
_VIDEO_CODECS = {  # kind -> (video encoder, audio encoder, muxer)
    "mp4": ("libx264", "aac", "mp4"),
    "mov": ("libx264", "aac", "mov"),
    "webm": ("libvpx-vp9", "libopus", "webm"),
    "mkv": ("libx264", "flac", "matroska"),
    "avi": ("mpeg4", "libmp3lame", "avi"),
}


def _mux_audio(out: av.container.OutputContainer, stream: av.AudioStream, samples: np.ndarray, rate: int) -> None:
    pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16)[None, :]
    frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
    frame.sample_rate, frame.pts, frame.time_base = rate, 0, Fraction(1, rate)
    for packet in stream.encode(frame):
        out.mux(packet)
    for packet in stream.encode(None):
        out.mux(packet)


def _portrait(rng: np.random.Generator, person: int, size: tuple[int, int] = (96, 80)) -> np.ndarray:
    """A face-like drawing: skin-toned ellipse, eyes and mouth on a coloured background (varies per call)."""
    h, w = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.empty((h, w, 3), np.float32)
    img[:] = rng.uniform(40, 200, 3)
    skin = np.array([224, 172, 105], np.float32) * (0.7 + 0.1 * person)
    cx, cy = w / 2 + rng.normal(0, 2), h / 2 + rng.normal(0, 2)
    img[((x - cx) / (w * 0.3)) ** 2 + ((y - cy) / (h * 0.38)) ** 2 <= 1] = skin
    for ex in (cx - w * 0.12, cx + w * 0.12):
        img[(x - ex) ** 2 + (y - (cy - h * 0.08)) ** 2 <= 9] = (30, 30, 30)
    img[(np.abs(y - (cy + h * 0.15)) <= 1.5) & (np.abs(x - cx) <= w * 0.1)] = (150, 40, 40)
    img += rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _voice(rng: np.random.Generator, pitch: float, seconds: float = 1.5, rate: int = 16000) -> np.ndarray:
    """A voiced, syllable-like sound: harmonics of a wavering pitch under a 4 Hz amplitude envelope."""
    t = np.arange(int(seconds * rate)) / rate
    f0 = pitch * (1 + 0.03 * np.sin(2 * np.pi * 5 * t))
    phase = 2 * np.pi * np.cumsum(f0) / rate
    wave = sum(np.sin(k * phase) / k for k in range(1, 8))
    envelope = np.clip(np.sin(2 * np.pi * 4 * t), 0, None) ** 0.5
    return (0.3 * wave * envelope + rng.normal(0, 0.005, t.size)).astype(np.float32)


def _scene(rng: np.random.Generator, frames: int = 20, size: tuple[int, int] = (96, 128)) -> np.ndarray:
    """A moving gradient with a drifting square: frames that differ and compress like video."""
    h, w = size
    y, x = np.mgrid[0:h, 0:w]
    out = np.empty((frames, h, w, 3), np.uint8)
    base = rng.uniform(0, 255, 3)
    for t in range(frames):
        out[t, ..., 0] = (x * 2 + t * 6 + base[0]) % 256
        out[t, ..., 1] = (y * 2 + base[1]) % 256
        out[t, ..., 2] = base[2]
        out[t, 20:44, 10 + 4 * t : 34 + 4 * t] = 255
    return out
