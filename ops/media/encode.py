"""Encoding media with PyAV: images, mono audio and short videos, byte-for-byte reproducible.

The report encodes its speech clips here; the sample archive and the test corpora encode their media here too.
"""

from __future__ import annotations

import io
from fractions import Fraction

import av
import numpy as np


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


def encode_audio(samples: np.ndarray, rate: int, kind: str, bit_rate: int | None = None) -> bytes:
    """Encode mono float samples in [-1, 1] as one file of ``kind`` (wav, flac, mp3, opus, m4a), at the codec's
    default bit rate or ``bit_rate`` (lossy codecs)."""
    codec, muxer = _AUDIO_CODECS[kind]
    buf = io.BytesIO()
    with av.open(buf, "w", format=muxer, options=_BITEXACT) as out:
        stream = out.add_stream(codec, rate=48000 if codec == "libopus" else rate)
        if bit_rate:
            stream.bit_rate = bit_rate
        _mux_audio(out, stream, samples, rate)
    return buf.getvalue()


def encode_video(frames: np.ndarray, samples: np.ndarray, rate: int, kind: str, fps: int = 10) -> bytes:
    """Encode TxHxWx3 uint8 frames (and a mono sound track) as one file of ``kind`` (mp4, mov, webm, mkv, avi)."""
    vcodec, acodec, muxer = _VIDEO_CODECS[kind]
    buf = io.BytesIO()
    with av.open(buf, "w", format=muxer, options=_BITEXACT) as out:
        video = out.add_stream(vcodec, rate=fps, options=_VIDEO_OPTIONS.get(vcodec, {}))
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
# x264's macroblock-tree rate control gave other bytes run to run when an audio encoder shared the process (AAC or
# LAME, seen on an AMD EPYC; alone it was stable): without it the same frames encode to the same bytes every time.
_VIDEO_OPTIONS = {"libx264": {"x264-params": "mbtree=0"}}

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
