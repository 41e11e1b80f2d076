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
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import BinaryIO

import av
import numpy as np
import torch
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
    f: BinaryIO,
    fps: float,
    max_frames: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_side: int | None = None,
    only: Collection[int] | None = None,
) -> Iterator[Frame]:
    """Frames of the first video stream, one per 1/fps seconds (fps <= 0: every frame), at most ``max_frames``;
    with ``only``, just the frames of those stream numbers (a job that found faces in them, reading them again),
    decoding no further than the last."""
    last = max(only) if only else -1
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
                if only is not None and index not in only:
                    if index >= last:
                        return
                    continue
                t = float(frame.time) if frame.time is not None else index / float(stream.average_rate or 25)
                if only is None and fps > 0 and t + 1e-6 < next_time:
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


# EXIF orientation -> the (H, W, C) tensor operation Pillow's exif_transpose applies for it.
_ORIENT = {
    2: lambda x: x.flip(1),
    3: lambda x: x.flip(0).flip(1),
    4: lambda x: x.flip(0),
    5: lambda x: x.transpose(0, 1),
    6: lambda x: torch.rot90(x, -1, (0, 1)),
    7: lambda x: x.transpose(0, 1).flip(0).flip(1),
    8: lambda x: torch.rot90(x, 1, (0, 1)),
}


def decode_jpegs(
    datas: list[bytes],
    device: str | torch.device,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_side: int | None = None,
    counts: dict[str, int] | None = None,
) -> list[tuple[torch.Tensor, float] | Exception]:
    """JPEGs decoded together by torchvision's decoder on ``device`` (nvJPEG on a GPU): for each, an upright
    (H, W, 3) uint8 tensor there and its scale (as ``decode_image``: shrunk to ``max_side``, source pixels per
    pixel), or the exception that names why it cannot be used. Headers are read on the CPU first (size limit,
    orientation); what the device decoder does not take (not a JPEG, CMYK, a file it refuses) goes through Pillow,
    so the result is always what ``decode_image`` would accept. Pixels may differ from Pillow's by a level or two:
    another IDCT. ``counts``, when given, gains how many went through the device, Pillow, or failed."""
    device = torch.device(device)
    out: list = [None] * len(datas)
    todo, tensors, orient = [], [], {}
    for i, data in enumerate(datas):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                im = Image.open(io.BytesIO(data))
                w, h = im.size
                jpeg = im.format == "JPEG" and im.mode in ("RGB", "L") and 0 < w * h <= max_pixels
                orientation = im.getexif().get(0x0112, 1) if jpeg else 1
        except Exception:  # noqa: BLE001 - Pillow below names the failure as decode_image does
            jpeg = False
        if jpeg:
            todo.append(i)
            tensors.append(torch.frombuffer(bytearray(data), dtype=torch.uint8))
            orient[i] = orientation
    decoded = _decode_on(tensors, device)
    for i, image in zip(todo, decoded, strict=True):
        if image is not None:
            rgb = _ORIENT.get(orient[i], lambda x: x)(image.permute(1, 2, 0))
            out[i] = _shrink_tensor(rgb, max_side)
    pillow = failed = 0
    for i, data in enumerate(datas):
        if out[i] is None:
            try:
                frame = decode_image(data, max_pixels, max_side)
                out[i] = (torch.from_numpy(np.array(frame.rgb)).to(device), frame.scale)
            except Exception as exc:  # noqa: BLE001 - returned, not raised: one file's failure is its own
                out[i] = exc
                failed += 1
            else:
                pillow += 1
    if counts is not None:
        for key, n in (("device", len(datas) - pillow - failed), ("pillow", pillow), ("failed", failed)):
            counts[key] = counts.get(key, 0) + n
    return out


def _decode_on(tensors: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """torchvision's decoder on ``device``, all at once; one at a time when the batch fails (None where one does)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    if not tensors:
        return []
    try:
        return list(decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device))
    except RuntimeError:
        pass
    decoded: list[torch.Tensor | None] = []
    for t in tensors:
        try:
            decoded.append(decode_jpeg(t, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:
            decoded.append(None)
    return decoded


def _shrink_tensor(rgb: torch.Tensor, max_side: int | None) -> tuple[torch.Tensor, float]:
    h, w = rgb.shape[:2]
    if not max_side or max(h, w) <= max_side:
        return rgb.contiguous(), 1.0
    scale = max(h, w) / max_side
    size = (max(1, round(h / scale)), max(1, round(w / scale)))
    small = torch.nn.functional.interpolate(rgb.permute(2, 0, 1)[None].float(), size=size, mode="area")
    return small[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).contiguous(), scale
