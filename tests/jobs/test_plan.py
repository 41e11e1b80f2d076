import pytest

from jobs.plan import shard
from ops.io.storage import ObjectInfo


def test_shards_balance_bytes():
    objects = [ObjectInfo(f"u{i}", f"p{i}", size, None) for i, size in enumerate([100, 90, 10, 10, 5, 5, 1, 0])]
    shards = shard(objects, cpus=1, min_bytes=1)
    assert sorted(o.relpath for s in shards for o in s) == sorted(o.relpath for o in objects)
    assert len(shards) == 4
    loads = sorted(sum(o.size for o in s) for s in shards)
    assert loads[-1] == 100 and loads[0] >= 10


@pytest.mark.parametrize(
    "sizes, cpus, expected",
    [
        ([1 << 20] * 100, 2, 1),  # 100 MiB: one shard beats eight tasks of overhead
        ([1 << 30] * 4, 2, 4),  # 4 GiB, one object each: no more shards than objects
        ([64 << 20] * 64, 2, 8),  # 4 GiB of 64 MiB objects: four shards per core
        ([1 << 30] * 40, 2, 10),
    ],  # 40 GiB: shards of at most 4 GiB
)
def test_shard_count(sizes, cpus, expected):
    objects = [ObjectInfo(f"u{i}", f"p{i}", size, None) for i, size in enumerate(sizes)]
    assert len(shard(objects, cpus, min_bytes=64 << 20)) == expected
