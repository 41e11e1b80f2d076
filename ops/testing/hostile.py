"""A corpus of malformed and hostile media, for checking that every job accounts for every input.

    write_corpus(resolve("/tmp/hostile"))  # -> {relpath: kind}, 40 kinds

Each kind is something archives really hold or attackers really send: empty and truncated files, wrong magic and
wrong extensions, decompression bombs, absurd declared dimensions and durations, huge metadata, NaN audio,
unusual but valid pixel formats, and names with odd characters, ``..``, deep nesting or 255 bytes. The fault
tests and the soak benchmark run every job over it: each object must end as result rows or an error row with a
reason, within the per-item time limit, and no job may crash.
"""

from __future__ import annotations

import io
import struct
import wave
import zlib
from collections.abc import Callable

import numpy as np
from PIL import Image

from ops.io.storage import Store
from ops.media.encode import encode_audio, encode_image, encode_video
from ops.testing.samples import portrait, speech


def _rng() -> np.random.Generator:
    return np.random.default_rng(99)


def _face() -> np.ndarray:
    return portrait(_rng(), 0)


def _jpeg() -> bytes:
    return encode_image(_face(), "jpeg")


def _png(im: Image.Image, **options) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG", **options)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_bomb() -> bytes:
    """A valid PNG of 12000 x 12000 white pixels (144 megapixels, 432 MB decoded) in about 400 KB."""
    width = height = 12000
    raw = zlib.compressobj(9)
    row = b"\0" + b"\xff" * (width * 3)
    body = b"".join(raw.compress(row) for _ in range(height)) + raw.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", body) + _png_chunk(b"IEND", b"")


def _jpeg_absurd_size() -> bytes:
    """A small JPEG whose frame header declares 65500 x 65500 pixels."""
    data = bytearray(_jpeg())
    i = data.index(b"\xff\xc0")
    data[i + 5 : i + 9] = struct.pack(">HH", 65500, 65500)
    return bytes(data)


def _jpeg_huge_metadata() -> bytes:
    """A JPEG carrying 16 MB of comment segments (64 KB each) before its image."""
    data = _jpeg()
    segment = b"\xff\xfe" + struct.pack(">H", 65535) + b"C" * 65533
    return data[:2] + segment * 256 + data[2:]


def _png_huge_text() -> bytes:
    """A PNG with a 20 MB tEXt chunk."""
    data = _png(Image.fromarray(_face()))
    return data[:33] + _png_chunk(b"tEXt", b"Comment\0" + b"x" * (20 << 20)) + data[33:]


def _wav(samples: np.ndarray, rate: int = 16000, width: int = 2, channels: int = 1) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    return buf.getvalue()


def _speech() -> np.ndarray:
    return speech(_rng(), 120.0, 3.0)


def _wav_speech() -> bytes:
    return _wav((_speech() * 20000).astype(np.int16))


def _wav_absurd_duration() -> bytes:
    """A WAV whose header declares 4 GB of samples (37 hours) but holds 3 seconds."""
    data = bytearray(_wav_speech())
    data[4:8] = struct.pack("<I", 0xFFFFFFF0)
    i = data.index(b"data")
    data[i + 4 : i + 8] = struct.pack("<I", 0xFFFFFFE0)
    return bytes(data)


def _wav_float_nan() -> bytes:
    """An IEEE-float WAV whose samples are NaN and infinity."""
    samples = np.full(16000, np.nan, np.float32)
    samples[::3] = np.inf
    payload = samples.tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, 16000, 64000, 4, 32)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(payload)) + payload
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _wav_zero_rate() -> bytes:
    data = bytearray(_wav_speech())
    data[24:28] = struct.pack("<I", 0)
    return bytes(data)


def _video() -> bytes:
    frames = np.stack([_face()] * 10)
    return encode_video(frames, _speech()[:16000], 16000, "mp4")


def _mp4_absurd_duration() -> bytes:
    """An MP4 whose movie header declares a duration of 2^32 - 1 units (about 50 days at 1000 units/s)."""
    data = bytearray(_video())
    i = data.index(b"mvhd")
    version = data[i + 4]
    offset = i + 4 + 4 + (16 if version == 1 else 8) + 4
    data[offset : offset + 4] = b"\xff\xff\xff\xff"
    return bytes(data)


def _cmyk_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_face()).convert("CMYK").save(buf, "JPEG")
    return buf.getvalue()


def _grey16_png() -> bytes:
    return _png(Image.fromarray(_face()[..., 0].astype(np.uint16) * 257))  # mode I;16


def _palette_alpha_png() -> bytes:
    return _png(Image.fromarray(_face()).convert("P", palette=Image.Palette.ADAPTIVE), transparency=0)


def _animated_gif() -> bytes:
    frames = [Image.fromarray(np.roll(_face(), i * 8, axis=1)) for i in range(30)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=40, loop=0)
    return buf.getvalue()


def _polyglot() -> bytes:
    """A JPEG with a ZIP archive appended (valid as both)."""
    buf = io.BytesIO()
    import zipfile

    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("payload.txt", "not media")
    return _jpeg() + buf.getvalue()


# kind -> (relative path, maker). Paths are part of the test: odd names, "..", nesting, long names.
KINDS: dict[str, tuple[str, Callable[[], bytes]]] = {
    "empty-jpeg": ("empty.jpg", lambda: b""),
    "empty-wav": ("empty.wav", lambda: b""),
    "truncated-jpeg": ("truncated.jpg", lambda: _jpeg()[:400]),
    "truncated-png": ("truncated.png", lambda: _png(Image.fromarray(_face()))[:300]),
    "truncated-wav": ("truncated.wav", lambda: _wav_speech()[:30]),
    "truncated-flac": ("truncated.flac", lambda: encode_audio(_speech(), 16000, "flac")[:200]),
    "truncated-mp4": ("truncated.mp4", lambda: _video()[: len(_video()) // 2]),
    "text-as-jpeg": ("wrong-magic.jpg", lambda: b"this is not a picture\n" * 20),
    "random-as-mp4": ("random.mp4", lambda: _rng().bytes(50_000)),
    "random-as-wav": ("random.wav", lambda: _rng().bytes(20_000)),
    "png-named-mp3": ("picture.mp3", lambda: _png(Image.fromarray(_face()))),
    "jpeg-named-wav": ("picture.wav", _jpeg),
    "wav-named-jpeg": ("sound.jpg", _wav_speech),
    "png-decompression-bomb": ("bomb.png", _png_bomb),
    "jpeg-absurd-dimensions": ("absurd-size.jpg", _jpeg_absurd_size),
    "jpeg-16mb-comments": ("huge-metadata.jpg", _jpeg_huge_metadata),
    "png-20mb-text-chunk": ("huge-text.png", _png_huge_text),
    "png-1x1": ("one-pixel.png", lambda: _png(Image.new("RGB", (1, 1), "white"))),
    "png-1x4000": ("sliver.png", lambda: _png(Image.new("RGB", (1, 4000), "grey"))),
    "wav-absurd-duration": ("absurd-duration.wav", _wav_absurd_duration),
    "wav-nan-samples": ("nan.wav", _wav_float_nan),
    "wav-zero-sample-rate": ("zero-rate.wav", _wav_zero_rate),
    "wav-no-samples": ("no-samples.wav", lambda: _wav(np.zeros(0, np.int16))),
    "wav-one-sample": ("one-sample.wav", lambda: _wav(np.ones(1, np.int16))),
    "mp4-absurd-duration": ("absurd-duration.mp4", _mp4_absurd_duration),
    "cmyk-jpeg": ("cmyk.jpg", _cmyk_jpeg),
    "grey16-png": ("grey16.png", _grey16_png),
    "palette-alpha-png": ("palette-alpha.png", _palette_alpha_png),
    "animated-gif": ("animated.gif", _animated_gif),
    "jpeg-zip-polyglot": ("polyglot.jpg", _polyglot),
    "name-with-dotdot": ("..evil..jpg", _jpeg),
    "name-with-encoded-traversal": ("..%2F..%2Fetc%2Fpasswd.jpg", _jpeg),
    "name-with-spaces-and-quotes": ('it\'s a "face" (1).jpg', _jpeg),
    "name-with-unicode": ("visage-été-顔-🙂.jpg", _jpeg),
    "name-with-newline": ("line\nbreak.wav", _wav_speech),
    "name-255-bytes": ("n" * 251 + ".jpg", _jpeg),
    "deeply-nested": ("/".join(f"d{i}" for i in range(40)) + "/deep.jpg", _jpeg),
    "hidden-file": (".hidden.jpg", _jpeg),
    "no-extension": ("no-extension", _wav_speech),
    "upper-case-extension": ("SHOUT.JPEG", _jpeg),
}


def write_corpus(dest: Store, kinds: list[str] | None = None) -> dict[str, str]:
    """Write the corpus (or ``kinds`` of it) under ``dest``; returns {relative path: kind}."""
    written = {}
    for kind in kinds or list(KINDS):
        relpath, make = KINDS[kind]
        dest.join(f"hostile/{relpath}").put_atomic(make())
        written[f"hostile/{relpath}"] = kind
    return written
