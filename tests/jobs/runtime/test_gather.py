"""jobs.runtime.gather: a task per part, results in the order of the calls, their summaries added up."""

from collections import Counter

from jobs.runtime.gather import add_up, gather


def _part(lo: int, hi: int) -> dict:
    values = list(range(lo, hi))
    return {"rows": len(values), "paths": [f"p{lo}"] if values else [], "seen": set(values), "kinds": Counter(values)}


def test_gather_returns_the_results_in_the_order_of_the_calls(ray_cluster):
    got = gather(_part, [(5, 9), (0, 2), (2, 2)])
    assert [r["paths"] for r in got] == [["p5"], ["p0"], []]
    assert gather(_part, []) == []


def test_add_up_sums_joins_unites_and_counts():
    parts = [_part(5, 9), _part(0, 2), _part(1, 3)]
    start = {"rows": 0, "paths": [], "seen": set(), "kinds": Counter()}
    total = add_up(parts, start)
    assert total["rows"] == 8 and total["paths"] == ["p5", "p0", "p1"] and total["seen"] == {0, 1, 2, 5, 6, 7, 8}
    assert total["kinds"][1] == 2 and total["kinds"][8] == 1
    assert start == {"rows": 0, "paths": [], "seen": set(), "kinds": Counter()}  # the start is left as it was
    assert add_up([], start) == start
