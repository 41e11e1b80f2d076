import pytest

from jobs.plan import ActorOptions, actor_plan, shard
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


def _cluster(monkeypatch, **resources):
    import ray

    monkeypatch.setattr(ray, "cluster_resources", lambda: resources)


@pytest.mark.parametrize(
    ("resources", "options", "expected"),
    [
        ({"CPU": 8}, {}, (0.0, 8, None)),  # CPU actors, one per core now, growing with the cluster
        ({"CPU": 8, "GPU": 4}, {}, (1.0, 4, None)),  # one per GPU now
        ({"CPU": 8, "GPU": 4}, {"max_actors": 2}, (1.0, 2, 2)),  # a ceiling below what is there
        ({}, {"gpus_per_actor": 1.0}, (1.0, 1, None)),  # no node yet: one asked of the autoscaler, then more
        ({"CPU": 8, "GPU": 4}, {"gpus_per_actor": 0.5, "max_actors": 16}, (0.5, 8, 16)),
        ({"CPU": 8, "GPU": 4}, {"pool_size": 3}, (1.0, 3, 3)),  # a fixed pool
    ],
)
def test_actor_pools_start_with_the_cluster_and_grow(monkeypatch, resources, options, expected):
    _cluster(monkeypatch, **resources)
    plan = actor_plan(ActorOptions(**options))
    assert (plan.gpus_per_actor, plan.min_size, plan.max_size) == expected
    strategy = plan.map_args(64)["compute"]
    assert (strategy.min_size, strategy.max_size) == (plan.min_size, plan.max_size or float("inf"))
    assert plan.parallelism >= max(plan.cpus, plan.max_size or 0)
