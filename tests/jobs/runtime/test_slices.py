"""jobs.runtime.slices: every way work is cut, with exact integer bounds that cover the whole range once."""

from itertools import pairwise

import numpy as np
import pytest

from jobs.runtime import slices
from jobs.runtime.slices import BUCKETS, balanced, blocks, bucket_slices, even_parts


@pytest.mark.parametrize(("total", "parts"), [(10, 3), (BUCKETS, 98), (BUCKETS, 7), (3, 5), (0, 2)])
def test_even_parts_cover_the_range_once_and_differ_by_one_at_most(total, parts):
    got = even_parts(total, parts)
    assert len(got) == parts and got[0][0] == 0 and got[-1][1] == total
    assert all(hi == lo for (_, hi), (lo, _) in pairwise(got))
    sizes = [hi - lo for lo, hi in got]
    assert max(sizes) - min(sizes) <= 1


def test_bucket_bounds_are_exact_where_float_bounds_are_not():
    # 98 slices: 49 * 65536 / 98 is 32768 exactly; linspace's float step puts the cut at 32767.
    assert even_parts(BUCKETS, 98)[49][0] == 32768
    assert int(np.linspace(0, BUCKETS, 99)[49]) == 32767


def test_bucket_slices_hold_at_most_the_limits(monkeypatch):
    assert bucket_slices(0) == [(0, BUCKETS)]
    assert len(bucket_slices(slices.SLICE_SOURCES)) == 1 and len(bucket_slices(slices.SLICE_SOURCES + 1)) == 2
    assert len(bucket_slices(10, rows=5 * slices.SLICE_ROWS)) == 5
    assert len(bucket_slices(10, rows=500, slice_rows=100)) == 5
    assert len(bucket_slices(10**12)) == BUCKETS  # a bucket a slice at most
    monkeypatch.setattr(slices, "SLICE_SOURCES", 7)  # read when called: tests make slices small
    assert len(bucket_slices(40)) == 6


def test_blocks_are_consecutive_and_the_last_is_shorter():
    assert blocks(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert blocks(8, 4) == [(0, 4), (4, 8)] and blocks(0, 4) == []


def test_balanced_puts_the_heaviest_first_on_the_lightest_part_whatever_the_order():
    items = [("e", 1), ("a", 10), ("d", 5), ("b", 10), ("c", 5)]
    got = balanced(items, 2, lambda f: f[1], lambda f: f[0])
    assert got == [[("a", 10), ("c", 5), ("e", 1)], [("b", 10), ("d", 5)]]
    assert balanced(list(reversed(items)), 2, lambda f: f[1], lambda f: f[0]) == got
    assert balanced(items[:1], 3, lambda f: f[1], lambda f: f[0]) == [[("e", 1)]]  # empty parts dropped
