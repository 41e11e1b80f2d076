"""Chain of custody: what a job decodes is what the manifest hashed.

Every result row carries the manifest's sha256 of its source; these helpers make that a fact rather than an
assumption. A source is hashed as it is read, in the same read that feeds the decoder (no second download), and a
difference from the manifest's hash is a ``ContentChanged`` error with both hashes.

- ``verified_bytes(store, sha256)``: the whole object, checked before anything is made from it (photos, styles);
- ``open_verified(store, sha256, size)``: a file to decode from. Objects up to ``WHOLE_BYTES`` are read whole and
  checked first, so nothing is made from changed bytes; larger ones stream through a ``HashingReader`` and are
  checked when the decoder is done (the rest of the object, if the decoder stopped early, is read to finish the
  hash). A failure inside the block is checked too: a changed object explains a decoder's error better than the
  decoder does.
- ``verified_copy(store, sha256)``: the object copied to a local temporary file as it is hashed, and checked before
  anything is made from it, for a job that cannot hold the object in memory nor undo what it made from a part of it
  (a video read again to cut the faces found in it: ``jobs.attributes``). One read of the store.
"""

from __future__ import annotations

import hashlib
import io
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

from ops.io.errors import ContentChanged
from ops.io.storage import CHUNK_BYTES, Store

# Objects read whole (and checked before decoding) up to this size; larger ones are streamed and checked after.
WHOLE_BYTES = 64 << 20


def check(expected: str, actual: str, uri: str) -> None:
    if actual != expected:
        raise ContentChanged(
            f"{uri} changed since the manifest hashed it: the manifest has sha256 {expected}, the bytes read now "
            f"hash to {actual}; run a new manifest to take the new content"
        )


def verified_bytes(store: Store, sha256: str) -> bytes:
    data = store.read_bytes()
    check(sha256, hashlib.sha256(data).hexdigest(), store.uri)
    return data


@contextmanager
def verified_copy(store: Store, sha256: str) -> Iterator[IO[bytes]]:
    with tempfile.TemporaryFile() as copy:
        digest = hashlib.sha256()
        with store.open() as raw:
            while block := raw.read(CHUNK_BYTES):
                digest.update(block)
                copy.write(block)
        check(sha256, digest.hexdigest(), store.uri)
        copy.seek(0)
        yield copy


class HashingReader(io.RawIOBase):
    """A read-only file over ``raw`` that hashes its bytes in order as the decoder reads them. A decoder that
    skips ahead has the skipped bytes hashed then (read once, by us); one that seeks back re-reads bytes already
    hashed, which are not hashed again. ``finish()`` hashes what the decoder never read and returns the digest."""

    def __init__(self, raw: IO[bytes]) -> None:
        super().__init__()
        self.raw, self.sha, self.hashed, self.pos = raw, hashlib.sha256(), 0, raw.tell()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self.pos = self.raw.seek(offset, whence)
        return self.pos

    def _hash_to(self, end: int) -> None:
        """Hash the bytes between what is hashed and ``end`` (a gap the decoder skipped), then return to pos."""
        self.raw.seek(self.hashed)
        while self.hashed < end:
            block = self.raw.read(min(CHUNK_BYTES, end - self.hashed))
            if not block:
                break
            self.sha.update(block)
            self.hashed += len(block)
        self.raw.seek(self.pos)

    def readinto(self, buffer) -> int:
        if self.pos > self.hashed:
            self._hash_to(self.pos)
        data = self.raw.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        if self.pos <= self.hashed < self.pos + n:
            self.sha.update(memoryview(data)[self.hashed - self.pos :])
            self.hashed = self.pos + n
        self.pos += n
        return n

    def finish(self) -> str:
        self._hash_to(1 << 62)
        return self.sha.hexdigest()


@contextmanager
def open_verified(store: Store, sha256: str, size: int | None) -> Iterator[IO[bytes]]:
    """A file of the object to decode from, whose bytes are checked against ``sha256`` (see the module)."""
    if size is not None and size <= WHOLE_BYTES:
        yield io.BytesIO(verified_bytes(store, sha256))
        return
    with store.open() as raw:
        reader = HashingReader(raw)
        try:
            yield io.BufferedReader(reader, CHUNK_BYTES)
        except Exception:
            check(sha256, reader.finish(), store.uri)  # raises ContentChanged over the decoder's own error
            raise
        check(sha256, reader.finish(), store.uri)
