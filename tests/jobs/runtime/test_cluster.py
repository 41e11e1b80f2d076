import pytest

from jobs.runtime.cluster import ActorOptions, actor_plan, shard
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


def test_in_process_runs_the_stages_on_the_same_rows_with_the_actor_made_once():
    import pyarrow as pa

    from jobs.runtime.cluster import InProcess, in_process

    made = []

    class Doubler:  # an actor: constructed once, called per batch
        def __init__(self, factor: int) -> None:
            made.append(factor)
            self.factor = factor

        def __call__(self, batch: pa.Table) -> pa.Table:
            return pa.table({"x": pa.compute.multiply(batch.column("x"), self.factor)})

    def split(batch: pa.Table, copies: int):  # a decoder: several tables per input
        for _ in range(copies):
            yield batch

    blocks = [pa.table({"x": [1, 2, 3]}), pa.table({"x": [4]})]
    data = InProcess(iter(blocks)).map_batches(split, fn_kwargs={"copies": 2}, batch_size=1)
    data = data.map_batches(Doubler, fn_constructor_kwargs={"factor": 10}, batch_size=3, compute="ignored")
    out = [b.column("x").to_pylist() for b in data.iter_batches(batch_format="pyarrow")]
    assert out == [[10, 10, 20], [20, 30, 30], [40, 40]] and made == [10]
    assert in_process(ActorOptions(in_process_below=9), 8) and not in_process(ActorOptions(in_process_below=9), 9)
    assert not in_process(ActorOptions(in_process_below=100), 17) and not in_process(ActorOptions(), 1)
