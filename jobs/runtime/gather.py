"""A Ray task per part, and the driver adds up what they return: how a job fans work out when each part hands back a
small summary (counts, paths of what it wrote, a few examples), never its rows.

    staged = gather(stage_file, [(path, root, committed) for path in paths])   # results in the order of the calls
    total = add_up(staged, {"files": [], "rows": 0, "kinds": Counter()})        # what the parts found, together

Every part is submitted before any result is awaited, so they run as wide as the cluster allows; the results come
back in the order of the calls, so nothing the driver builds from them depends on which task finished first. Work
that streams its output (``num_returns="streaming"``) or shows progress as parts finish (``ray.wait``) keeps its own
loop.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from jobs.runtime.cluster import TASK_CPUS

T = TypeVar("T")


def gather(fn: Callable[..., T], calls: Iterable[tuple], cpus: float = TASK_CPUS) -> list[T]:
    """``fn(*args)`` as a Ray task of ``cpus`` CPUs for each ``args`` in ``calls``, all submitted at once; their
    results in the order of ``calls``."""
    import ray

    task = ray.remote(num_cpus=cpus)(fn)
    return ray.get([task.remote(*args) for args in calls])


def add_up(results: Iterable[Mapping[str, Any]], start: Mapping[str, Any]) -> dict[str, Any]:
    """The values of ``start``'s keys in ``results`` added to it: numbers summed, lists joined in order, sets
    united, Counters updated."""
    total = {key: copy.copy(value) for key, value in start.items()}
    for result in results:
        for key, value in total.items():
            if isinstance(value, Counter):
                value.update(result[key])
            elif isinstance(value, set):
                value |= result[key]
            else:
                total[key] = value + result[key]
    return total
