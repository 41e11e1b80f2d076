"""Image and video frame decoding to RGB uint8 arrays, for the face path.

Images go through Pillow (JPEG, PNG, WebP, BMP, TIFF, GIF's first frame), with the EXIF orientation applied;
grey, palette, CMYK, 16-bit and float images become 8-bit RGB, and transparency is composited onto white. The
declared size is checked before any pixel is decoded, so a decompression bomb costs nothing. Video frames come from
PyAV at a chosen rate, with their presentation timestamps. Every failure is an ``ImageError`` whose ``error_type``
names what went wrong.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import av
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ops.io.errors import ImageDecodeError, NotAnImage, NoVideoStream, TooLarge, VideoDecodeError

DEFAULT_MAX_PIXELS = 100_000_000  # 100 megapixels: beyond any camera, far below what would exhaust a worker


@dataclass
class Frame:
    index: int  # frame number in the stream (0 for a still image)
    timestamp: float | None  # seconds, for video
    rgb: np.ndarray  # (H, W, 3) uint8
    scale: float = 1.0  # source pixels per pixel of ``rgb`` (> 1 when shrunk to max_side)


def _to_rgb(im: Image.Image) -> np.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return _grey(np.asarray(im, dtype=np.float32) / 257.0)
    if im.mode == "I":  # 32-bit integer; Pillow's 16-bit PNGs land here as 0..65535
        arr = np.asarray(im, dtype=np.float64)
        return _grey(arr / 257.0 if arr.max(initial=0) > 255 else arr)
    if im.mode == "F":
        return _grey(np.asarray(im, dtype=np.float32))
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.asarray(im.convert("RGB"))


def _grey(values: np.ndarray) -> np.ndarray:
    grey = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def _shrink(rgb: np.ndarray, max_side: int | None) -> tuple[np.ndarray, float]:
    h, w = rgb.shape[:2]
    if not max_side or max(h, w) <= max_side:
        return rgb, 1.0
    scale = max(h, w) / max_side
    size = (max(1, round(w / scale)), max(1, round(h / scale)))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BOX)), scale


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, max_side: int | None = None) -> Frame:
    """One still image as an upright RGB frame (GIFs and multi-page TIFFs: the first frame)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit applies below
        try:
            im = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise NotAnImage("not an image format Pillow can decode") from None
        except Image.DecompressionBombError as exc:
            raise TooLarge(str(exc)) from None
        except (OSError, ValueError, SyntaxError) as exc:  # a header cut short or garbled ("Truncated File Read")
            raise ImageDecodeError(f"the image header could not be read: {exc}") from None
        w, h = im.size
        if w * h > max_pixels:
            raise TooLarge(f"declares {w}x{h} = {w * h / 1e6:.0f} megapixels, over the limit of {max_pixels / 1e6:g}")
        if w == 0 or h == 0:
            raise ImageDecodeError(f"declares an empty {w}x{h} image")
        try:
            im.load()
            im = ImageOps.exif_transpose(im)
            rgb = _to_rgb(im)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise ImageDecodeError(f"{im.format} image could not be decoded: {exc}") from None
    rgb, scale = _shrink(np.ascontiguousarray(rgb), max_side)
    return Frame(0, None, rgb, scale)


def sample_video(
    f: BinaryIO, fps: float, max_frames: int, max_pixels: int = DEFAULT_MAX_PIXELS, max_side: int | None = None
) -> Iterator[Frame]:
    """Frames of the first video stream, one per 1/fps seconds (fps <= 0: every frame), at most ``max_frames``."""
    try:
        container = av.open(f, mode="r")
    except av.error.InvalidDataError as exc:
        raise VideoDecodeError(f"not a readable container: {exc}") from None
    except av.error.FFmpegError as exc:
        raise VideoDecodeError(f"the container could not be opened: {exc}") from None
    with container:
        if not container.streams.video:
            raise NoVideoStream("the file has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        w, h = stream.codec_context.width, stream.codec_context.height
        if w * h > max_pixels:
            raise TooLarge(f"frames of {w}x{h} are over the limit of {max_pixels / 1e6:g} megapixels")
        next_time, taken, index = 0.0, 0, -1
        try:
            for frame in container.decode(stream):
                index += 1
                t = float(frame.time) if frame.time is not None else index / float(stream.average_rate or 25)
                if fps > 0 and t + 1e-6 < next_time:
                    continue
                rgb, scale = _shrink(frame.to_ndarray(format="rgb24"), max_side)
                yield Frame(index, t, rgb, scale)
                taken += 1
                while fps > 0 and next_time <= t + 1e-6:  # a fixed grid of sample times: no drift
                    next_time += 1.0 / fps
                if taken >= max_frames:
                    return
        except av.error.FFmpegError as exc:
            raise VideoDecodeError(f"decoding stopped at frame {index + 1}: {exc}") from None
