"""How work is cut into parts, one way for every job: ranges of the uri buckets that staged files are sorted by, even
parts of a count, fixed-size blocks of rows, and items balanced by weight over a number of parts.

    for lo, hi in bucket_slices(sources):           # a task per slice of the buckets (``accounting.Ledger.read``)
    for a, b in blocks(rows, QUERY_BATCH):          # a task per block of rows, the last one shorter
    shares = balanced(files, n, weight, name)       # largest first, each to the lightest part

Every bound is an integer computed exactly (``total * i // parts``): a rerun, or another machine, cuts the same
parts, so the same task writes the same rows. (Float bounds, as ``np.linspace`` gives, fall one below an exact
integer for some counts.)
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Callable
from typing import TypeVar

import pyarrow as pa

T = TypeVar("T")

BUCKET_BYTES = 2  # of a uri's sha256 that make its bucket
BUCKETS = 1 << (8 * BUCKET_BYTES)  # uris hash into this many buckets; a slice task takes a range of them
SLICE_SOURCES = 100_000  # sources per slice task at most: its slice of the ledger fits a worker easily
SLICE_ROWS = 200_000  # and staged rows per slice task at most (a video's faces, say)


def buckets(uris: pa.Array | pa.ChunkedArray | list[str]) -> pa.Array:
    """Each uri's bucket: the first bytes of its sha256 (stable across processes and runs, unlike hash())."""
    values = uris.to_pylist() if not isinstance(uris, list) else uris
    return pa.array(
        [int.from_bytes(hashlib.sha256(u.encode()).digest()[:BUCKET_BYTES], "big") for u in values], pa.int32()
    )


def even_parts(total: int, parts: int) -> list[tuple[int, int]]:
    """``[0, total)`` cut into ``parts`` ranges [lo, hi) whose sizes differ by one at most (empty ones when
    ``parts`` exceeds ``total``)."""
    return [(total * i // parts, total * (i + 1) // parts) for i in range(parts)]


def bucket_slices(sources: int, rows: int = 0, slice_rows: int | None = None) -> list[tuple[int, int]]:
    """Bucket ranges [lo, hi) for tasks that take a slice each: as many as hold at most ``SLICE_SOURCES`` of
    ``sources`` and ``slice_rows`` (default ``SLICE_ROWS``) of ``rows`` a slice, one at least, a bucket each at most.
    The limits are read when called, so that a test may make slices small."""
    per_rows = slice_rows or SLICE_ROWS
    return even_parts(BUCKETS, min(BUCKETS, max(1, -(-sources // SLICE_SOURCES), -(-rows // per_rows))))


def blocks(count: int, size: int) -> list[tuple[int, int]]:
    """``[0, count)`` in consecutive blocks [start, stop) of ``size``, the last one shorter (none for 0)."""
    return [(start, min(start + size, count)) for start in range(0, count, size)]


def balanced(items: list[T], parts: int, weight: Callable[[T], int], name: Callable[[T], str]) -> list[list[T]]:
    """``items`` over at most ``parts`` lists of about equal total weight: heaviest first (ties by name, so the cut
    is the same whatever the order given), each to the lightest list (the first of equals); empty lists dropped.
    An item of no weight still counts one: it is work to hand on."""
    loads = [(0, i) for i in range(parts)]
    shares: list[list[T]] = [[] for _ in range(parts)]
    for item in sorted(items, key=lambda it: (-weight(it), name(it))):
        load, i = heapq.heappop(loads)
        shares[i].append(item)
        heapq.heappush(loads, (load + max(weight(item), 1), i))
    return [s for s in shares if s]
