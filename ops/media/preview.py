"""Small, self-contained previews of what a row points at: a face thumbnail, a speech clip (for the HTML report).

Both come back as ``data:`` URIs, so a report is one file that opens anywhere without a server or a bucket policy.
"""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from ops.io.errors import PreviewError
from ops.media.audio import TARGET_RATE, decode_mono
from ops.media.encode import encode_audio
from ops.media.images import decode_image, sample_video

CLIP_BIT_RATE = 24000  # Opus at 24 kb/s is transparent enough for listening to speech
MARGIN = 0.3  # context around a face box, as a fraction of its size on each side


def data_uri(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def source_frame(data: bytes, category: str, frame_index: int) -> np.ndarray:
    """The upright RGB pixels of an image, or of frame ``frame_index`` of a video."""
    try:
        if category != "video":
            return decode_image(data).rgb
        for frame in sample_video(io.BytesIO(data), fps=0, max_frames=frame_index + 1):
            if frame.index == frame_index:
                return frame.rgb
    except Exception as exc:  # noqa: BLE001 - a preview must never stop a report; the reason is shown instead
        raise PreviewError(f"cannot decode: {exc}") from None
    raise PreviewError(f"the video has no frame {frame_index}")


def face_thumbnail(rgb: np.ndarray, box: list[float], size: int = 96) -> str:
    """A JPEG ``data:`` URI of the face in ``box`` (x1, y1, x2, y2 in the frame's pixels) with some context."""
    return data_uri("image/jpeg", face_jpeg(rgb, box, size))


def face_jpeg(rgb, box: list[float], size: int = 96) -> bytes:
    """A small JPEG of the face in ``box`` with some context; ``rgb`` an (H, W, 3) array or tensor (only the crop
    leaves a device)."""
    x1, y1, x2, y2 = box
    mx, my = (x2 - x1) * MARGIN, (y2 - y1) * MARGIN
    h, w = rgb.shape[:2]
    left, top = max(0, int(x1 - mx)), max(0, int(y1 - my))
    right, bottom = min(w, int(np.ceil(x2 + mx))), min(h, int(np.ceil(y2 + my)))
    if right <= left or bottom <= top:
        raise PreviewError(f"the box {box} lies outside the {w}x{h} frame")
    part = rgb[top:bottom, left:right]
    if not isinstance(part, np.ndarray):  # a frame decoded on the device
        part = part.cpu().numpy()
    crop = Image.fromarray(np.ascontiguousarray(part, np.uint8))
    crop.thumbnail((size, size), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    crop.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def speech_clip(data: bytes, start: float, end: float, max_seconds: float = 4.0) -> str:
    """An Ogg Opus ``data:`` URI of ``start``..``end`` seconds of the source's audio (at most ``max_seconds``): a
    few kilobytes a clip, so a report can carry hundreds."""
    end = min(end, start + max_seconds)
    if end <= start:
        raise PreviewError(f"empty span {start:.2f}-{end:.2f} s")
    first, last = int(start * TARGET_RATE), int(end * TARGET_RATE)
    pieces, have = [], 0
    try:
        _, chunks = decode_mono(io.BytesIO(data), max_seconds=end + 1.0)
        for chunk in chunks:
            pieces.append(chunk)
            have += len(chunk)
            if have >= last:
                break
    except Exception as exc:  # noqa: BLE001 - as above
        raise PreviewError(f"cannot decode: {exc}") from None
    wav = np.concatenate(pieces)[first:last] if pieces else np.zeros(0, np.float32)
    if len(wav) == 0:
        raise PreviewError(f"no audio at {start:.2f} s")
    return data_uri("audio/ogg", encode_audio(wav, TARGET_RATE, "opus", bit_rate=CLIP_BIT_RATE))
