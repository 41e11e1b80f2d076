import hashlib
import io

import pytest

from ops.io import custody
from ops.io.custody import HashingReader, open_verified, verified_bytes
from ops.io.errors import ContentChanged
from ops.io.storage import resolve


def _object(tmp_path, data: bytes):
    path = tmp_path / "obj.bin"
    path.write_bytes(data)
    return resolve(str(path)), hashlib.sha256(data).hexdigest()


def test_whole_objects_are_checked_before_use(tmp_path):
    store, sha = _object(tmp_path, b"abc" * 1000)
    assert verified_bytes(store, sha) == b"abc" * 1000
    store.put_atomic(b"abd" * 1000)
    with pytest.raises(
        ContentChanged, match=f"manifest has sha256 {sha}.*hash to {hashlib.sha256(b'abd' * 1000).hexdigest()}"
    ):
        verified_bytes(store, sha)


@pytest.mark.parametrize("moves", ["sequential", "skip_ahead", "seek_back", "stop_early"])
def test_the_streaming_hash_covers_every_byte_once_whatever_the_decoder_does(moves):
    data = bytes(range(256)) * 5000  # 1.28 MB: several chunks
    reader = HashingReader(io.BytesIO(data))
    if moves == "sequential":
        while reader.read(70_000):
            pass
    elif moves == "skip_ahead":
        reader.read(1000)
        reader.seek(900_000)
        assert reader.read(10) == data[900_000:900_010]
        reader.seek(-5, io.SEEK_END)
        reader.read()
    elif moves == "seek_back":
        reader.read(500_000)
        reader.seek(100)
        assert reader.read(300) == data[100:400]
        reader.read(10)
    else:
        reader.read(33)
    assert reader.finish() == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("whole", [True, False])
def test_open_verified_checks_after_the_decoder_and_over_its_errors(tmp_path, monkeypatch, whole):
    if not whole:
        monkeypatch.setattr(custody, "WHOLE_BYTES", 10)  # stream even this small object
    store, sha = _object(tmp_path, b"x" * 5000)
    with open_verified(store, sha, 5000) as f:
        assert f.read(100) == b"x" * 100  # stops early: the rest is hashed when the block ends
    store.put_atomic(b"y" * 5000)
    with pytest.raises(ContentChanged), open_verified(store, sha, 5000) as f:
        f.read(10)
    with pytest.raises(ContentChanged), open_verified(store, sha, 5000) as f:
        raise ValueError("the decoder gave up")  # the changed content is the better explanation
