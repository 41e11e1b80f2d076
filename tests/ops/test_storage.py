import hashlib
import os

import pytest

from ops.storage import HEAD_BYTES, StorageError, Store, glob_regex, resolve


def test_resolve_plain_and_file_uris(tmp_path):
    assert resolve(str(tmp_path)) == Store("file", str(tmp_path))
    assert resolve(f"file://{tmp_path}/") == Store("file", str(tmp_path))
    assert resolve("relative/dir").path == os.path.abspath("relative/dir")


def test_resolve_s3_takes_endpoint_from_env(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    store = resolve("s3://bucket/some/prefix/")
    assert (store.scheme, store.path, store.endpoint_url) == ("s3", "bucket/some/prefix", "http://127.0.0.1:9")
    assert store.uri == "s3://bucket/some/prefix"
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    assert resolve("s3a://bucket").endpoint_url is None


@pytest.mark.parametrize(
    "uri, words",
    [
        ("gs://bucket/x", "unsupported URI scheme 'gs'"),
        ("", "empty path"),
        ("s3://", "names no bucket"),
        ("http://host/x", "use a local path, file:///path or s3://bucket/prefix"),
    ],
)
def test_resolve_refuses_what_it_cannot_serve(uri, words):
    with pytest.raises(StorageError, match=words):
        resolve(uri)


def test_join_stays_inside(tmp_path):
    root = resolve(str(tmp_path))
    assert root.join("a/b", "c.txt").path == f"{tmp_path}/a/b/c.txt"
    assert root.join("./a//b/").path == f"{tmp_path}/a/b"
    with pytest.raises(StorageError, match="climbs out"):
        root.join("a/../../etc/passwd")


@pytest.mark.parametrize(
    "pattern, yes, no",
    [
        ("**", ["a", "a/b/c.jpg"], []),
        ("*.jpg", ["x.jpg"], ["a/x.jpg", "x.png"]),
        ("**/*.jpg", ["x.jpg", "a/b/x.jpg"], ["x.jpeg"]),
        ("photos/*/*.[jp][pn]g", ["photos/al/1.jpg", "photos/b/2.png"], ["photos/1.jpg", "photos/a/b/1.jpg"]),
        ("{label}/*", ["alice/1.jpg"], ["1.jpg", "a/b/1.jpg"]),
    ],
)
def test_glob_regex(pattern, yes, no):
    regex = glob_regex(pattern)
    assert all(regex.fullmatch(p) for p in yes)
    assert not any(regex.fullmatch(p) for p in no)


def test_glob_regex_captures_label():
    assert glob_regex("**/{label}/*").fullmatch("a/b/carol/x.wav").group("label") == "carol"


def _tree(tmp_path):
    for rel in ["b/2.png", "a/1.jpg", "a/deep/3.jpg", "top.txt"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(rel.encode())
    return resolve(str(tmp_path))


def test_list_is_sorted_recursive_and_filtered(tmp_path):
    store = _tree(tmp_path)
    assert [o.relpath for o in store.list()] == ["a/1.jpg", "a/deep/3.jpg", "b/2.png", "top.txt"]
    found = store.list("**/*.jpg")
    assert [o.relpath for o in found] == ["a/1.jpg", "a/deep/3.jpg"]
    assert found[0].uri == f"{tmp_path}/a/1.jpg" and found[0].size == len(b"a/1.jpg")
    assert found[0].modified is not None and found[0].modified.tzinfo is not None


def test_list_missing_prefix_or_a_file_is_an_error(tmp_path):
    with pytest.raises(StorageError, match="does not exist"):
        resolve(str(tmp_path / "nope")).list()
    (tmp_path / "f").write_bytes(b"x")
    with pytest.raises(StorageError, match="is a file"):
        resolve(str(tmp_path / "f")).list()


def test_sha256_streams_across_chunks(tmp_path):
    data = os.urandom(3 * 2**20 + 12345)  # several read chunks and a ragged end
    (tmp_path / "big.bin").write_bytes(data)
    digest, size, head = resolve(str(tmp_path / "big.bin")).sha256()
    assert digest == hashlib.sha256(data).hexdigest()
    assert size == len(data) and head == data[:HEAD_BYTES]


def test_put_atomic_replaces_whole(tmp_path):
    target = resolve(str(tmp_path / "d" / "marker.json"))
    target.put_atomic(b"one")
    target.put_atomic(b"two")
    assert target.read_bytes() == b"two"
    assert os.listdir(tmp_path / "d") == ["marker.json"]  # no temporary left behind


def test_s3_roundtrip(s3):
    root = resolve(s3.uri("archive"))
    assert root.endpoint_url == s3.endpoint
    root.join("x/a.bin").put_atomic(b"a" * 10)
    root.join("y.bin").put_atomic(b"")
    with root.join("x/b.bin").open("wb") as f:
        f.write(b"b" * (2**20 + 7))
    assert [(o.relpath, o.size) for o in root.list()] == [("x/a.bin", 10), ("x/b.bin", 2**20 + 7), ("y.bin", 0)]
    assert root.list("x/*")[0].uri == f"s3://{s3.bucket}/archive/x/a.bin"
    digest, size, _ = root.join("x/b.bin").sha256()
    assert digest == hashlib.sha256(b"b" * (2**20 + 7)).hexdigest() and size == 2**20 + 7
    root.join("x").remove_tree()
    assert [o.relpath for o in root.list()] == ["y.bin"]


def test_s3_missing_prefix_and_bucket(s3):
    with pytest.raises(StorageError, match="does not exist"):
        resolve(s3.uri("no/such/prefix")).list()
    with pytest.raises(StorageError, match="nosuchbucket"):
        resolve("s3://nosuchbucket-crossmatch/x").list()


def test_s3_wrong_credentials_name_the_fix(rclone_endpoint, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", rclone_endpoint)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    with pytest.raises(StorageError, match="access denied.*check the S3 credentials") as info:
        resolve("s3://anybucket/x").list()
    assert "wrong-secret" not in str(info.value)


def test_s3_missing_credentials_name_the_fix(moto_endpoint, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance role to find here
    with pytest.raises(StorageError, match="no S3 credentials found.*AWS_ACCESS_KEY_ID"):
        resolve("s3://anybucket/x").list()


def test_unreachable_endpoint_names_it(monkeypatch):
    from tests.conftest import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(StorageError, match="AWS_ENDPOINT_URL|cannot reach"):
        resolve("s3://anybucket/x").list()
