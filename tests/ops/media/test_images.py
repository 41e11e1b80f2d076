import io
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from ops.io.errors import ImageDecodeError, NotAnImage, NoVideoStream, TooLarge
from ops.media.encode import encode_audio, encode_image, encode_video
from ops.media.images import decode_image, sample_video
from ops.testing.samples import speech


def _save(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def test_exif_orientation_is_applied():
    im = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    frame = decode_image(_save(im, "JPEG", exif=exif))
    assert frame.rgb.shape == (40, 20, 3)


@pytest.mark.parametrize(
    ("mode", "fmt", "value", "expected"),
    [
        ("L", "PNG", 100, (100, 100, 100)),
        ("CMYK", "JPEG", (0, 0, 0, 0), (255, 255, 255)),
        ("I;16", "PNG", 65535, (255, 255, 255)),
        ("RGBA", "PNG", (0, 0, 0, 0), (255, 255, 255)),  # transparent: composited onto white
        ("P", "GIF", 0, None),
    ],
)
def test_every_pixel_format_becomes_8_bit_rgb(mode, fmt, value, expected):
    frame = decode_image(_save(Image.new(mode, (8, 6), value), fmt))
    assert frame.rgb.shape == (6, 8, 3) and frame.rgb.dtype == np.uint8
    if expected:
        assert np.abs(frame.rgb[3, 4].astype(int) - expected).max() <= 2


def test_decompression_bomb_is_refused_before_decoding():
    # A PNG header declaring 100000 x 100000 pixels, and nothing behind it.
    data = _save(Image.new("L", (1, 1)), "PNG")
    header = bytearray(data)
    header[16:24] = (100000).to_bytes(4, "big") * 2
    header[29:33] = zlib.crc32(bytes(header[12:29])).to_bytes(4, "big")  # a valid IHDR chunk
    with pytest.raises(TooLarge, match="pixels"):
        decode_image(bytes(header))


def test_truncated_and_foreign_bytes_say_so():
    data = _save(Image.effect_noise((64, 64), 50).convert("RGB"), "JPEG")
    with pytest.raises(ImageDecodeError, match="could not be decoded"):
        decode_image(data[: len(data) // 2])
    with pytest.raises(NotAnImage):
        decode_image(b"meeting notes")


def test_large_images_shrink_and_report_their_scale():
    frame = decode_image(_save(Image.new("RGB", (800, 400)), "PNG"), max_side=200)
    assert frame.rgb.shape == (100, 200, 3) and frame.scale == 4.0


def test_video_frames_are_sampled_at_the_asked_rate_with_timestamps():
    frames = np.zeros((30, 32, 48, 3), np.uint8)
    data = encode_video(
        frames, speech(np.random.default_rng(0), pitch=120.0, seconds=3.0, rate=16000), 16000, "mp4", fps=10
    )
    sampled = list(sample_video(io.BytesIO(data), fps=2.0, max_frames=100))
    assert [round(f.timestamp, 2) for f in sampled] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
    assert [f.index for f in sampled] == [0, 5, 10, 15, 20, 25]
    assert len(list(sample_video(io.BytesIO(data), fps=0, max_frames=7))) == 7


def test_audio_only_container_has_no_video_stream():
    data = encode_audio(speech(np.random.default_rng(0), pitch=120.0, seconds=1.0), 16000, "m4a")
    with pytest.raises(NoVideoStream):
        list(sample_video(io.BytesIO(data), fps=1.0, max_frames=10))


def test_a_jpeg_cut_inside_its_header_is_a_decode_error_not_a_crash():
    from ops.media.encode import encode_image
    from ops.testing.samples import portrait

    data = encode_image(portrait(np.random.default_rng(0), 0), "jpeg")
    with pytest.raises(ImageDecodeError, match="header"):
        decode_image(data[:300])


def _jpeg(rgb: np.ndarray, orientation: int = 1, mode: str = "RGB") -> bytes:
    from PIL import Image

    im = Image.fromarray(rgb).convert(mode)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_batched_jpeg_decoding_is_pillows_upright_image(orientation):
    from ops.media.images import decode_jpegs

    rng = np.random.default_rng(orientation)
    rgb = np.zeros((48, 80, 3), np.uint8)
    rgb[:, :40] = 200  # left half light, a dark corner: every flip and turn shows
    rgb[:12, :12] = 30
    rgb += rng.integers(0, 20, rgb.shape, dtype=np.uint8)
    data = _jpeg(rgb, orientation)
    ((tensor, scale),) = decode_jpegs([data], "cpu")
    pillow = decode_image(data).rgb
    assert tuple(tensor.shape) == pillow.shape and scale == 1.0
    assert np.abs(tensor.numpy().astype(int) - pillow.astype(int)).mean() < 1.5  # another IDCT, the same picture


def test_batched_jpeg_decoding_falls_back_and_names_failures():
    from ops.io.errors import ImageDecodeError, NotAnImage, TooLarge
    from ops.media.images import decode_jpegs

    rgb = np.random.default_rng(0).integers(0, 255, (300, 200, 3), dtype=np.uint8)
    good, cmyk = _jpeg(rgb), _jpeg(rgb, mode="CMYK")
    png = encode_image(rgb, "png")
    results = decode_jpegs([good, cmyk, png, good[:300], b"not an image", good], "cpu", max_pixels=10**6, max_side=150)
    (a, sa), (b, sb), (c, sc) = results[0], results[1], results[2]
    pillow = decode_image(good, max_side=150)
    assert tuple(a.shape) == pillow.rgb.shape == (150, 100, 3) and sa == pillow.scale == 2.0
    assert tuple(b.shape) == tuple(c.shape) == (150, 100, 3) and sb == sc == 2.0  # through Pillow
    assert isinstance(results[3], ImageDecodeError) and isinstance(results[4], NotAnImage)
    assert torch.equal(results[5][0], a)
    (too_large,) = decode_jpegs([good], "cpu", max_pixels=1000)
    assert isinstance(too_large, TooLarge)
