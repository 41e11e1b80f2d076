import av

from ops.io.storage import resolve
from ops.media.sniff import sniff
from ops.testing.samples import SAMPLE_LAYOUT, make_sample_archive


def test_sample_archive_is_real_media_and_deterministic(tmp_path):
    first, second = resolve(str(tmp_path / "a")), resolve(str(tmp_path / "b"))
    assert make_sample_archive(first) == list(SAMPLE_LAYOUT)
    make_sample_archive(second)
    for relpath, kind in SAMPLE_LAYOUT.items():
        data = first.join(relpath).read_bytes()
        assert data == second.join(relpath).read_bytes(), f"{relpath} differs between two runs with one seed"
        found = sniff(data[:4096])
        assert (found.kind if found else None) == kind, relpath
        if kind is not None:
            with av.open(str(tmp_path / "a" / relpath)) as container:  # FFmpeg decodes every media file
                assert container.streams
                frame = next(container.decode(container.streams[0]))
                assert frame is not None


def test_videos_carry_sound(tmp_path):
    root = resolve(str(tmp_path))
    make_sample_archive(root)
    for relpath in (p for p in SAMPLE_LAYOUT if p.startswith("videos/")):
        with av.open(str(tmp_path / relpath)) as container:
            assert {s.type for s in container.streams} == {"video", "audio"}, relpath
