import numpy as np
import pytest

from ops.media.encode import encode_audio, encode_image, encode_video
from ops.media.sniff import sniff

RGB = np.random.default_rng(0).integers(0, 255, (32, 48, 3), dtype=np.uint8)
SOUND = np.sin(np.linspace(0, 400, 8000)).astype(np.float32) * 0.3
FRAMES = np.random.default_rng(1).integers(0, 255, (4, 32, 48, 3), dtype=np.uint8)


@pytest.mark.parametrize("kind", ["jpeg", "png", "webp", "bmp", "tiff", "gif"])
def test_images_by_content(kind):
    found = sniff(encode_image(RGB, kind)[:4096])
    assert (found.kind, found.category) == (kind, "image")


@pytest.mark.parametrize("kind", ["wav", "flac", "mp3", "opus", "m4a"])
def test_audio_by_content(kind):
    found = sniff(encode_audio(SOUND, 16000, kind)[:4096])
    assert (found.kind, found.category) == (kind, "audio")


@pytest.mark.parametrize("kind", ["mp4", "mov", "webm", "mkv", "avi"])
def test_video_by_content(kind):
    found = sniff(encode_video(FRAMES, SOUND, 16000, kind)[:4096])
    assert (found.kind, found.category) == (kind, "video")


@pytest.mark.parametrize(
    "head, kind",
    [
        (b"\xff\xfb\x90\x64" + bytes(60), "mp3"),  # a bare MPEG-1 Layer III frame, no ID3 tag
        (b"RF64\xff\xff\xff\xffWAVEds64", "wav"),
        (b"II+\x00\x08\x00\x00\x00", "tiff"),
        (b"\x00\x00\x00\x18ftypM4A \x00\x00\x02\x00", "m4a"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00", "heif"),
        (b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00", "mp4"),
    ],
)
def test_headers(head, kind):
    assert sniff(head).kind == kind


@pytest.mark.parametrize(
    "head",
    [
        b"",
        b"\xff",
        b"hello world, plain text",
        b"BM is how this note starts, not a bitmap",
        b"RIFF\x00\x00\x00\x00XXXX",
        b"%PDF-1.7\n",
        b"PK\x03\x04zipfile",
        b"\xff\xf1\x50\x80",
    ],  # ADTS AAC: not ours
)
def test_non_media(head):
    assert sniff(head) is None
