"""One storage helper for every path: a plain path, ``file://`` or ``s3://bucket/prefix``.

A :class:`Store` is a resolved URI. It is small and picklable, so the driver resolves once and Ray tasks receive
the same object: the S3 endpoint travels with it (credentials never do; each node takes them from the standard
AWS chain: environment, profile, instance role). ``store.fs`` is an fsspec filesystem and ``store.arrow`` a
pyarrow one over the same client, so pyarrow, Ray Data and fsspec see the same objects.
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import hashlib
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import IO

import fsspec
import pyarrow.fs as pafs

from ops.io.errors import NotFound, PermissionDenied, StorageError

SCHEMES = ("file", "s3")
# Reads are streamed in chunks of this size: large enough to amortise per-call overhead on S3, small enough that
# memory per concurrent read stays bounded whatever the object's size.
CHUNK_BYTES = 1 << 20
# The AWS chain's variables that change which client we need; a change of any of them gets a fresh client.
_AWS_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONFIG_FILE",
    "AWS_REQUEST_CHECKSUM_CALCULATION",
    "AWS_MAX_ATTEMPTS",
)
# Server-side encryption of every S3 write, read by resolve() on the driver and carried by each Store to the workers:
# CROSSMATCH_S3_SSE is "AES256" (S3-managed keys) or "aws:kms" (with CROSSMATCH_S3_SSE_KMS_KEY_ID, else the
# bucket's default KMS key). Reads need nothing: S3 decrypts for whoever may read.
SSE_MODES = ("AES256", "aws:kms", "aws:kms:dsse")
# Attempts per S3 request (AWS_MAX_ATTEMPTS overrides): transient answers (503 SlowDown, 500, throttling, dropped or
# timed-out connections) are retried with exponential backoff and full jitter, up to 20 s apart (botocore's
# "standard" mode). Ten attempts make a request fail only when the store keeps failing for about a minute.
MAX_ATTEMPTS = 10


@dataclass(frozen=True)
class ObjectInfo:
    """One object found by :meth:`Store.list`."""

    uri: str
    relpath: str  # path below the listed prefix, with "/" separators
    size: int
    modified: datetime | None
    etag: str | None = None  # changes with the content (see ``_etag``); None where the store gives none


@dataclass(frozen=True)
class Store:
    """A resolved URI: ``scheme`` is "file" or "s3", ``path`` is what the filesystems call it."""

    scheme: str
    path: str  # absolute local path, or "bucket/key" for S3, without a trailing "/"
    endpoint_url: str | None = None  # S3 only; from AWS_ENDPOINT_URL when resolved
    sse: tuple[str, str | None] | None = None  # S3 only: (mode, KMS key id) for writes; see SSE_MODES

    @property
    def uri(self) -> str:
        return self.path if self.scheme == "file" else f"s3://{self.path}"

    def __str__(self) -> str:
        return self.uri

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        return _fsspec_filesystem(self.scheme, self.endpoint_url, self.sse, _aws_env_key())

    @property
    def arrow(self) -> pafs.FileSystem:
        """A pyarrow filesystem over the same client (for pyarrow.parquet and ray.data readers and writers)."""
        if self.scheme == "file":
            return pafs.LocalFileSystem()
        return pafs.PyFileSystem(pafs.FSSpecHandler(self.fs))

    def join(self, *parts: str) -> Store:
        """The store at ``parts`` below this one; parts may not climb out of it."""
        path = self.path
        for part in parts:
            for piece in part.split("/"):
                if piece in ("", "."):
                    continue
                if piece == "..":
                    raise StorageError(f"refusing a path that climbs out of {self.uri}: {part!r}")
                path = f"{path}/{piece}"
        return self.at(path)

    def at(self, path: str) -> Store:
        """The store at ``path`` (as the filesystems name it) on the same server with the same settings."""
        return replace(self, path=path.rstrip("/"))

    def exists(self) -> bool:
        return self._call(self.fs.exists, self.path)

    def size(self) -> int:
        return int(self._call(self.fs.size, self.path))

    def open(self, mode: str = "rb") -> IO[bytes]:
        """A file object; reads stream from object storage in blocks rather than fetching the whole object."""
        if "w" in mode and self.scheme == "file":
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
        return self._call(self.fs.open, self.path, mode, block_size=CHUNK_BYTES if "r" in mode else None)

    def read_bytes(self) -> bytes:
        return self._call(self.fs.cat_file, self.path)

    def put_atomic(self, data: bytes) -> None:
        """Write the whole object so that a reader sees the old content or the new, never a part."""
        if self.scheme == "s3":
            self._call(self.fs.pipe_file, self.path, data)  # one PUT: S3 makes it visible whole
            return
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        # Beside the target, under a short name: the target's own name may already be the longest allowed (255).
        tmp = os.path.join(os.path.dirname(self.path), f".tmp-{uuid.uuid4().hex}")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)  # atomic within one local filesystem

    def remove_tree(self) -> None:
        """Delete everything below this store (best effort: a missing prefix is not an error)."""
        if self.scheme == "file":
            # Not fsspec's rm: it asks for the working directory, which Ray may have removed under a job's driver
            # (a runtime_env working_dir shared with an earlier job and garbage-collected after it).
            if os.path.isdir(self.path) and not os.path.islink(self.path):
                self._call(shutil.rmtree, self.path)
            elif os.path.lexists(self.path):
                self._call(os.remove, self.path)
        elif self._call(self.fs.exists, self.path):
            self._call(self.fs.rm, self.path, recursive=True)

    def list(self, pattern: str = "**", under: str = "", top_only: bool = False) -> list[ObjectInfo]:
        """Every object below this prefix whose relative path matches the glob ``pattern`` ("**" is every object);
        only those below the folder ``under`` (relative paths stay relative to this prefix), or only those right
        at this level with ``top_only``: how listing tasks split an archive (see ``folders``).

        Raises StorageError when the prefix does not exist (for S3: when nothing is stored under it).
        """
        base = self.path
        where = self.join(under).path if under else base
        found = self._call(self.fs.find, where, maxdepth=1 if top_only else None, detail=True, withdirs=False)
        if not found and not under and not self._call(self.fs.exists, base):
            hint = "check the bucket and prefix" if self.scheme == "s3" else "check the path"
            raise NotFound(f"nothing found at {self.uri}: it does not exist ({hint})")
        if self.scheme == "file" and os.path.isfile(base):
            raise StorageError(f"{self.uri} is a file, not a folder or prefix to list")
        matcher = glob_regex(pattern)
        objects = []
        for name, info in sorted(found.items()):
            rel = name[len(base) :].lstrip("/") if name.startswith(base) else name
            if not matcher.fullmatch(rel):
                continue
            objects.append(
                ObjectInfo(
                    uri=self.at(name).uri,
                    relpath=rel,
                    size=int(info.get("size") or 0),
                    modified=_modified(info),
                    etag=_etag(info),
                )
            )
        return objects

    def check_listable(self) -> None:
        """Fail now, with the reason (it does not exist, access denied, it is a file), when this prefix cannot be
        listed: one request of at most one key, whatever the archive's size (listing itself is left to workers)."""
        if self.scheme == "file":
            if os.path.isfile(self.path):
                raise StorageError(f"{self.uri} is a file, not a folder or prefix to list")
            if not os.path.isdir(self.path):
                raise NotFound(f"nothing found at {self.uri}: it does not exist (check the path)")
            self._call(os.listdir, self.path)  # a folder we may not read
            return
        bucket, _, key = self.path.partition("/")
        prefix = f"{key}/" if key else ""
        found = self._call(self.fs.call_s3, "list_objects_v2", Bucket=bucket, Prefix=prefix, MaxKeys=1)
        if not found.get("KeyCount"):
            raise NotFound(f"nothing found at {self.uri}: it does not exist (check the bucket and prefix)")

    def folders(self) -> list[str]:
        """The names of the folders (prefixes) right below this one, sorted: one listing each splits a large
        archive's listing over workers. Raises StorageError when the prefix does not exist."""
        if self.scheme == "file" and os.path.isfile(self.path):
            raise StorageError(f"{self.uri} is a file, not a folder or prefix to list")
        entries = self._call(self.fs.find, self.path, maxdepth=1, withdirs=True, detail=True).values()
        if not entries and not self._call(self.fs.exists, self.path):
            hint = "check the bucket and prefix" if self.scheme == "s3" else "check the path"
            raise NotFound(f"nothing found at {self.uri}: it does not exist ({hint})")
        base = self.path.rstrip("/")
        names = {e["name"].rstrip("/") for e in entries if e.get("type") == "directory"}
        return sorted(n.rsplit("/", 1)[-1] for n in names if n != base)

    def sha256(self) -> tuple[str, int, bytes]:
        """Stream the object once: its sha256 (hex), its size and its first bytes (for content sniffing)."""
        digest = hashlib.sha256()
        head = b""
        size = 0
        with self.open("rb") as f:
            while chunk := f.read(CHUNK_BYTES):
                if not head:
                    head = chunk[:HEAD_BYTES]
                digest.update(chunk)
                size += len(chunk)
        return digest.hexdigest(), size, head

    def _call(self, fn, *args, **kwargs):
        with storage_errors(self.uri):
            return fn(*args, **kwargs)


# Enough bytes to recognise every container we sniff, ID3-tagged MP3 and Matroska DocType included.
HEAD_BYTES = 4096


def resolve(uri: str, endpoint_url: str | None = None) -> Store:
    """Parse a plain path, ``file://`` URI or ``s3://bucket/prefix`` into a :class:`Store`.

    An S3 store's endpoint is ``endpoint_url`` when given (workers get the driver's this way), else
    AWS_ENDPOINT_URL. Whitespace before the scheme is dropped; whitespace at the end is part of the name (an object
    key or a file name may end in a space: the uri a listing gave must name that object again)."""
    if not isinstance(uri, str) or not uri.strip():
        raise StorageError("an empty path was given: pass a folder, file:// URI or s3://bucket/prefix")
    uri = uri.lstrip()
    match = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$", uri)
    if match is None:
        return Store("file", os.path.abspath(os.path.expanduser(uri)).rstrip("/") or "/")
    scheme, rest = match.group(1).lower(), match.group(2)
    if scheme == "file":
        return Store("file", os.path.abspath(rest or "/").rstrip("/") or "/")
    if scheme in ("s3", "s3a"):
        rest = rest.strip("/")
        if not rest:
            raise StorageError(f"{uri} names no bucket: use s3://bucket/prefix")
        return Store("s3", rest, endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None, _sse_from_env())
    raise StorageError(
        f"unsupported URI scheme {scheme!r} in {uri}: use a local path, file:///path or s3://bucket/prefix"
    )


@contextlib.contextmanager
def storage_errors(uri: str) -> Iterator[None]:
    """Turn any client error raised in the block into a StorageError that names ``uri`` and the fix."""
    try:
        yield
    except StorageError:
        raise
    except Exception as exc:  # noqa: BLE001 - translated into a message that names the fix
        raise _explain(exc, uri) from exc


def _sse_from_env() -> tuple[str, str | None] | None:
    mode, key = os.environ.get("CROSSMATCH_S3_SSE") or None, os.environ.get("CROSSMATCH_S3_SSE_KMS_KEY_ID") or None
    if mode is None:
        if key:
            raise StorageError("CROSSMATCH_S3_SSE_KMS_KEY_ID is set without CROSSMATCH_S3_SSE=aws:kms")
        return None
    if mode not in SSE_MODES:
        raise StorageError(f"CROSSMATCH_S3_SSE={mode!r} is not one of {', '.join(SSE_MODES)}")
    if key and not mode.startswith("aws:kms"):
        raise StorageError(f"CROSSMATCH_S3_SSE_KMS_KEY_ID needs CROSSMATCH_S3_SSE=aws:kms, not {mode}")
    return mode, key


def _aws_env_key() -> tuple[str | None, ...]:
    return tuple(os.environ.get(k) for k in _AWS_ENV)


@functools.lru_cache(maxsize=16)
def _fsspec_filesystem(
    scheme: str, endpoint_url: str | None, sse: tuple[str, str | None] | None, _env: tuple
) -> fsspec.AbstractFileSystem:
    # _env is part of the cache key only: a process whose AWS variables change gets a client that sees them.
    if scheme == "file":
        return fsspec.filesystem("file")
    import s3fs

    client_kwargs = {"endpoint_url": endpoint_url} if endpoint_url else {}
    attempts = int(os.environ.get("AWS_MAX_ATTEMPTS") or MAX_ATTEMPTS)
    extra = {}
    if sse:  # s3fs passes these to the calls that write (PutObject, CreateMultipartUpload, CopyObject)
        extra = {"ServerSideEncryption": sse[0]} | ({"SSEKMSKeyId": sse[1]} if sse[1] else {})
    # skip_instance_cache: fsspec's own cache would hand back a client with stale credentials.
    # use_listings_cache=False: other processes write too (Ray workers, reruns); a stale listing loses objects.
    return s3fs.S3FileSystem(
        client_kwargs=client_kwargs,
        config_kwargs={"retries": {"mode": "standard", "max_attempts": attempts}},
        s3_additional_kwargs=extra,
        skip_instance_cache=True,
        use_listings_cache=False,
    )


def glob_escape(name: str) -> str:
    """A glob that matches ``name`` alone: its wildcard characters each in a class of its own."""
    return re.sub(r"[*?\[{]", lambda m: f"[{m.group(0)}]", name)


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A glob over relative paths: "*" stays within one folder, "**" crosses folders ("**/" may match none),
    and "{name}" captures one folder or file name as the group ``name`` (as in the label pattern "{label}/*")."""
    if pattern in ("", "**", "**/*"):
        return re.compile(r".*", re.S)
    out, i = [], 0
    while i < len(pattern):
        capture = re.match(r"\{([A-Za-z_][A-Za-z0-9_]*)\}", pattern[i:])
        if capture:
            out.append(f"(?P<{capture.group(1)}>[^/]+)")
            i += capture.end()
        elif pattern.startswith("**/", i):
            out.append(r"(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(r".*")
            i += 2
        elif pattern[i] == "*":
            out.append(r"[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append(r"[^/]")
            i += 1
        elif pattern[i] == "[":
            j = pattern.find("]", i + 1)
            if j < 0:
                out.append(re.escape("["))
                i += 1
            else:
                out.append(fnmatch.translate(pattern[i : j + 1])[4:-3])  # the character class alone
                i = j + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out), re.S)


def _modified(info: dict) -> datetime | None:
    value = info.get("LastModified") or info.get("mtime")
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.astimezone(UTC)
    return datetime.fromtimestamp(float(value), tz=UTC)


def _etag(info: dict) -> str | None:
    """S3's ETag, or for a local file its inode and status-change time: the kernel sets ctime on every write and no
    copy tool can set it back, so a file rewritten with its old size and modification time (``cp -p``,
    ``rsync -a``) still shows as changed. Both come free with the listing."""
    if info.get("ETag"):
        return str(info["ETag"]).strip('"')
    if info.get("ino") is not None and info.get("created") is not None:
        return f"{info['ino']}:{float(info['created']):.9f}"
    return None


def _explain(exc: BaseException, uri: str) -> StorageError:
    """Turn a client error into one sentence that says what failed on which object and how to fix it."""
    name = type(exc).__name__
    text = str(exc)
    if name in ("NoCredentialsError", "PartialCredentialsError"):
        return StorageError(
            f"no S3 credentials found for {uri}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
            "or AWS_PROFILE, or run on a node with an instance role"
        )
    if isinstance(exc, PermissionError) or "AccessDenied" in text or "InvalidAccessKeyId" in text:
        return PermissionDenied(
            f"access denied to {uri} ({text.strip() or name}): check the S3 credentials "
            "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE) and the bucket policy"
        )
    if isinstance(exc, FileNotFoundError):
        return NotFound(f"not found: {uri} ({text.strip() or name})")
    if name in ("EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError") or isinstance(
        exc, ConnectionError
    ):
        return StorageError(f"cannot reach the object store for {uri} ({text.strip()}): check AWS_ENDPOINT_URL")
    return StorageError(f"{name} on {uri}: {text.strip() or name}")
