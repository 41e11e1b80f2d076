import base64
import io

import av
import numpy as np
import pytest
from PIL import Image

from ops.io.errors import PreviewError
from ops.media.encode import encode_audio, encode_image, encode_video
from ops.media.preview import face_thumbnail, source_frame, speech_clip
from ops.testing.samples import portrait, speech


def _payload(uri: str, mime: str) -> bytes:
    head, _, data = uri.partition(",")
    assert head == f"data:{mime};base64"
    return base64.b64decode(data)


def test_face_thumbnail_is_the_box_with_context_at_most_the_size_asked():
    rgb = np.zeros((200, 300, 3), np.uint8)
    rgb[50:150, 100:180] = 255  # the "face": a white box
    im = Image.open(io.BytesIO(_payload(face_thumbnail(rgb, [100, 50, 180, 150], size=64), "image/jpeg")))
    assert max(im.size) == 64 and im.size[1] > im.size[0]  # the box is taller than wide
    pixels = np.asarray(im.convert("L"), np.float32)
    assert pixels[pixels.shape[0] // 2, pixels.shape[1] // 2] > 200 and pixels[0, 0] < 60  # face inside, margin round


def test_face_thumbnail_of_a_box_outside_the_frame_is_refused():
    with pytest.raises(PreviewError, match="outside"):
        face_thumbnail(np.zeros((50, 50, 3), np.uint8), [80, 80, 120, 120])


def test_source_frame_reads_images_and_the_asked_video_frame():
    rng = np.random.default_rng(0)
    still = portrait(rng, 0)
    assert source_frame(encode_image(still, "png"), "image", 0).shape == still.shape
    frames = np.stack([np.full((64, 64, 3), 20 * t, np.uint8) for t in range(8)])
    video = encode_video(frames, speech(rng, 120.0, seconds=1.0, rate=16000), 16000, "mkv", fps=8)
    got = source_frame(video, "video", 5)
    assert abs(float(got.mean()) - 100) < 8  # frame 5 (value 100), not the first or last
    with pytest.raises(PreviewError, match="no frame 50"):
        source_frame(video, "video", 50)
    with pytest.raises(PreviewError, match="cannot decode"):
        source_frame(b"not an image", "image", 0)


def test_speech_clip_is_opus_of_the_span_capped_at_max_seconds():
    wav = speech(np.random.default_rng(1), 140.0, seconds=6.0, rate=16000)
    clip = _payload(speech_clip(encode_audio(wav, 16000, "flac"), 1.0, 6.0, max_seconds=2.0), "audio/ogg")
    with av.open(io.BytesIO(clip)) as container:
        stream = container.streams.audio[0]
        assert stream.codec_context.name == "opus"
        seconds = sum(f.samples for f in container.decode(stream)) / stream.codec_context.sample_rate
    assert 1.9 < seconds < 2.1
    assert len(clip) < 20_000  # a few kilobytes: a report carries hundreds


def test_speech_clip_refuses_spans_past_the_end_and_unreadable_bytes():
    audio = encode_audio(speech(np.random.default_rng(2), 150.0, seconds=1.0, rate=16000), 16000, "wav")
    with pytest.raises(PreviewError, match="no audio"):
        speech_clip(audio, 5.0, 6.0)
    with pytest.raises(PreviewError, match="cannot decode"):
        speech_clip(b"\x00" * 100, 0.0, 1.0)
