import hashlib
import os
import uuid

import pytest

from ops.io.errors import StorageError
from ops.io.storage import HEAD_BYTES, Store, glob_regex, resolve
from ops.testing.faultproxy import TRANSIENT


def test_resolve_plain_and_file_uris(tmp_path):
    assert resolve(str(tmp_path)) == Store("file", str(tmp_path))
    assert resolve(f"file://{tmp_path}/") == Store("file", str(tmp_path))
    assert resolve("relative/dir").path == os.path.abspath("relative/dir")


def test_resolve_keeps_a_name_that_ends_in_a_space(tmp_path):
    # A listing gives such names (file names and object keys may end in whitespace): the uri must name them again.
    assert resolve(f"  {tmp_path}/voice.wav ").path == f"{tmp_path}/voice.wav "
    assert resolve("s3://bucket/trailing space/voice.wav\t").path == "bucket/trailing space/voice.wav\t"


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


def _split_listing(store) -> list[str]:
    """The listing as listing tasks split it: the top level's objects, then each folder's."""
    parts = [store.list(top_only=True)] + [store.list(under=name) for name in store.folders()]
    return sorted(o.relpath for part in parts for o in part)


def test_a_listing_split_by_folders_is_the_whole_listing(tmp_path):
    store = _tree(tmp_path)
    assert store.folders() == ["a", "b"]
    assert _split_listing(store) == [o.relpath for o in store.list()]
    assert [o.relpath for o in store.list("**/*.jpg", under="a")] == ["a/1.jpg", "a/deep/3.jpg"]
    store.check_listable()
    for path, words in ((tmp_path / "nope", "does not exist"), (tmp_path / "top.txt", "is a file")):
        with pytest.raises(StorageError, match=words):
            resolve(str(path)).check_listable()


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


def test_s3_a_listing_split_by_folders_is_the_whole_listing(s3):
    root = resolve(s3.uri("archive"))
    for name in ("x/a.bin", "x/deep/c.bin", "y.bin", "z/b.bin"):
        root.join(name).put_atomic(b"1")
    root.check_listable()
    assert root.folders() == ["x", "z"]
    assert _split_listing(root) == [o.relpath for o in root.list()] == ["x/a.bin", "x/deep/c.bin", "y.bin", "z/b.bin"]
    with pytest.raises(StorageError, match="does not exist"):
        resolve(s3.uri("no/such")).check_listable()


def test_s3_a_listed_uri_reads_its_object_again_whatever_its_key(s3):
    # Spaces (one at the very end), accents, another script, and characters URL handling reads as a fragment, a
    # query, an escape or a space: the uri a listing gives is the key as it is, and reading it reads that object.
    keys = ["café/naïve ü.jpg", "hash#tag/photo #1.png", "what?/is this?x=1&y=2.wav", "100% sure/a+b %20 c.mp4"]
    keys += ["声音/录音 1.flac", "trailing space/voice.wav "]
    root = resolve(s3.uri("archive"))
    for key in keys:
        root.join(key).put_atomic(key.encode())
    listed = root.list()
    assert [(o.relpath, o.uri) for o in listed] == [(k, s3.uri("archive", k)) for k in sorted(keys)]
    assert [resolve(o.uri).read_bytes() for o in listed] == [k.encode() for k in sorted(keys)]


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


@pytest.fixture
def faulty(moto_endpoint, monkeypatch):
    """A fresh moto bucket behind a proxy that fails 30% of requests transiently (503, 500, dropped, a reply lost
    after the write landed, a body cut short)."""
    import s3fs

    from ops.testing.faultproxy import FaultProxy

    bucket = f"faults-{uuid.uuid4().hex[:8]}"
    s3fs.S3FileSystem(client_kwargs={"endpoint_url": moto_endpoint}, skip_instance_cache=True).mkdir(bucket)
    proxy = FaultProxy(moto_endpoint, rate=0.3, seed=7, deny=r"^(GET|PUT) /[^/]+/secret/").start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    yield proxy, bucket
    proxy.stop()


def test_transient_s3_faults_are_retried_and_nothing_is_lost(faulty):
    proxy, bucket = faulty
    root = resolve(f"s3://{bucket}/archive")
    blobs = {f"d{i % 3}/f{i}.bin": os.urandom(1000 + 37 * i) for i in range(20)}
    for name, data in blobs.items():
        root.join(name).put_atomic(data)
    assert [o.relpath for o in root.list()] == sorted(blobs)
    for name, data in blobs.items():
        assert root.join(name).read_bytes() == data
        assert root.join(name).sha256()[0] == hashlib.sha256(data).hexdigest()
    injected = sum(proxy.stats[k] for k in TRANSIENT)
    assert injected >= 10 and min(proxy.stats[k] for k in TRANSIENT) > 0, proxy.stats  # every kind, short reads too


def test_a_permanent_s3_error_names_the_object(faulty):
    proxy, bucket = faulty
    target = resolve(f"s3://{bucket}/secret/key.bin")
    with pytest.raises(StorageError, match=f"access denied to s3://{bucket}/secret/key.bin"):
        target.put_atomic(b"x")
    assert proxy.stats["denied"] == 1  # refused at once: a 403 is not retried


@pytest.mark.parametrize("mode, key", [("AES256", None), ("aws:kms", "alias/crossmatch-test")])
def test_server_side_encryption_applies_to_every_write(moto_endpoint, monkeypatch, mode, key):
    import boto3

    from ops.io.tables import OutputRun

    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("CROSSMATCH_S3_SSE", mode)
    if key:
        monkeypatch.setenv("CROSSMATCH_S3_SSE_KMS_KEY_ID", key)
    client = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    bucket = f"sse-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)
    root = resolve(f"s3://{bucket}/out")
    assert root.sse == (mode, key) and root.join("a").sse == (mode, key)
    root.join("put.bin").put_atomic(b"x")
    with root.join("stream.bin").open("wb") as f:
        f.write(b"y" * (6 << 20))  # past s3fs's block size: a multipart upload
    run = OutputRun(root, "r", "test")  # Parquet through pyarrow, Delta logs through delta-rs
    run.write_errors([{"uri": "u", "sha256": "0" * 64, "error_type": "read_error", "message": "m"}], stage="s")
    run.commit()
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]]
    assert len(keys) == 6 and sum("_delta_log/" in k for k in keys) == 2  # errors and runs: data and log each
    for name in keys:
        head = client.head_object(Bucket=bucket, Key=name)
        assert head["ServerSideEncryption"] == mode, name
        if key:
            assert key in head["SSEKMSKeyId"], name


def test_encryption_settings_are_checked(monkeypatch):
    monkeypatch.setenv("CROSSMATCH_S3_SSE", "rot13")
    with pytest.raises(StorageError, match="not one of AES256"):
        resolve("s3://b/x")
    monkeypatch.setenv("CROSSMATCH_S3_SSE", "AES256")
    monkeypatch.setenv("CROSSMATCH_S3_SSE_KMS_KEY_ID", "k")
    with pytest.raises(StorageError, match="needs CROSSMATCH_S3_SSE=aws:kms"):
        resolve("s3://b/x")
    assert resolve("/tmp/x").sse is None  # local folders: nothing to encrypt server-side


def test_an_error_row_or_marker_never_holds_a_credential(tmp_path, monkeypatch):
    from ops.io.tables import OutputRun, read_table

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret-value")
    run = OutputRun(resolve(str(tmp_path)), "r", "test")
    message = "botocore said: bad signature for very-secret-value"
    run.write_errors([{"uri": "u", "sha256": "0" * 64, "error_type": "read_error", "message": message}], stage="s")
    run.commit(config={"endpoint": "http://user:very-secret-value@host"})
    everything = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    assert b"very-secret-value" not in everything
    assert read_table(resolve(str(tmp_path)), "errors").column("message")[0].as_py().endswith("[redacted]")
