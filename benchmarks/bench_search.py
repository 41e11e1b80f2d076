"""Exact top-K search throughput against faiss-cpu ``IndexFlatIP`` on the same vectors, interleaved, with the
machine's GEMM rate as the ceiling.

    python benchmarks/bench_search.py [--queries 10000] [--gallery 1000000] [--dims 128 256] [--k 10] [--rounds 3]

For each dimension: random unit vectors (the hardest case: nothing to prune), faiss with every core, our
``ExactSearch`` (fp32, one query block per core), and a bare fp32 matrix product of the same size (numpy's BLAS,
every core) as the ceiling no exact search can pass. Prints pairs scored per second, GFLOP/s, ratios, and whether
the top-K lists are identical (entries that differ are checked to be exact-score ties or fp32 misorderings).
On CUDA (``--device cuda``) our engine runs fp32, fp16 and bf16 products with exact re-scoring instead.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ops.matching.search import ExactSearch  # noqa: E402


def unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def gemm_ceiling(q: np.ndarray, g: np.ndarray, block: int = 4096) -> float:
    """Seconds for the bare products of every query block with the whole gallery, no selection."""
    out = np.empty((min(block, len(q)), 4096), np.float32)
    start = time.perf_counter()
    for i in range(0, len(q), block):
        qb = q[i : i + block]
        for j in range(0, len(g) - 4096 + 1, 4096):
            np.matmul(qb, g[j : j + 4096].T, out=out[: len(qb)])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queries", type=int, default=10000)
    parser.add_argument("--gallery", type=int, default=1_000_000)
    parser.add_argument("--dims", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--scaling",
        type=int,
        nargs="*",
        default=[1, 2, 4],
        help="shard actors to time jobs.match's sharded search with",
    )
    args = parser.parse_args()
    import faiss

    cores = os.cpu_count() or 1
    faiss.omp_set_num_threads(cores)
    rng = np.random.default_rng(0)
    print(f"{args.queries} queries x {args.gallery} gallery, K={args.k}, {cores} cores, medians of {args.rounds}")
    for d in args.dims:
        g, q = unit(rng, args.gallery, d), unit(rng, args.queries, d)
        index = faiss.IndexFlatIP(d)
        index.add(g)
        precisions = ["fp32"] if args.device == "cpu" else ["fp32", "fp16", "bf16"]
        engines = {p: ExactSearch(g, device=args.device, precision=p) for p in precisions}
        times: dict[str, list[float]] = {"faiss": [], "gemm": [], **{f"ours {p}": [] for p in precisions}}
        results = {}
        for _ in range(args.rounds):
            t = time.perf_counter()
            results["faiss"] = index.search(q, args.k)
            times["faiss"].append(time.perf_counter() - t)
            for p, engine in engines.items():
                t = time.perf_counter()
                results[p] = engine.search(q, args.k)
                times[f"ours {p}"].append(time.perf_counter() - t)
            times["gemm"].append(gemm_ceiling(q, g))
        flops = 2.0 * args.queries * args.gallery * d
        base, ceiling = statistics.median(times["faiss"]), statistics.median(times["gemm"])
        print(f"d={d}")
        for name, ts in times.items():
            s = statistics.median(ts)
            label = "bare fp32 GEMM (ceiling)" if name == "gemm" else name
            print(
                f"  {label:26s} {s:7.2f} s  {args.queries * args.gallery / s / 1e9:6.2f} G pairs/s  "
                f"{flops / s / 1e9:6.1f} GFLOP/s  {base / s:5.2f}x faiss  {ceiling / s:5.2f} of GEMM"
            )
        _, faiss_ids = results["faiss"]
        for p in precisions:
            ours = results[p]
            differ = np.argwhere(ours.ids != faiss_ids)
            # where the lists differ, faiss's fp32 scores misorder items whose exact scores are within 1e-6
            close = all(
                abs(float(q[r].astype(np.float64) @ g[faiss_ids[r, c]].astype(np.float64)) - ours.scores[r, c]) < 1e-6
                for r, c in differ
            )
            same = 1 - len(differ) / ours.ids.size
            print(
                f"  top-{args.k} {p} vs faiss: {same:.6%} identical; {len(differ)} others, all fp32 near-ties: {close}"
            )
    if args.scaling:
        scaling(args.scaling, min(args.queries, 4000), min(args.gallery, 400_000), args.dims[0], args.k, args.rounds)


def staged(store, name: str, vectors: np.ndarray, files: int) -> list[tuple[str, int]]:
    """Vectors as the item files ``jobs.archive.search`` stages (key, uri, sha256, id, unit vector)."""
    import pyarrow as pa

    from jobs.runtime.accounting import write_bucketed
    from ops.matching.embeddings import item_id

    out = []
    for f, part in enumerate(np.array_split(np.arange(len(vectors)), files)):
        keys = [f"{name}{i}" for i in part]
        flat = pa.array(vectors[part].ravel(), pa.float32())
        rows = pa.table(
            {
                "item": keys,
                "uri": keys,
                "sha256": ["0" * 64] * len(keys),
                "id": pa.array([item_id(k) for k in keys], pa.int64()),
                "vector": pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1]),
            }
        )
        target = store.join(name, f"{f:03d}.parquet")
        write_bucketed(rows, target)
        out.append((target.path, len(keys)))
    return out


def scaling(shard_counts: list[int], queries: int, gallery: int, d: int, k: int, rounds: int) -> None:
    """The archive search of jobs.match (``jobs.archive.search``: shard actors that read their own slice, query
    blocks searched, merged and written by tasks) on local Ray with 1, 2, 4 ... shard actors (one CPU, or one GPU,
    each), over staged item files in a scratch folder."""
    import shutil
    import tempfile

    import ray

    from jobs.archive.search import Prepared, Search, ShardLayout, search_archive
    from jobs.runtime.output import RowWriter
    from ops.io.schemas import MATCHES
    from ops.io.storage import resolve

    ray.init(num_cpus=max(shard_counts), include_dashboard=False, logging_level="ERROR")
    rng = np.random.default_rng(1)
    work = tempfile.mkdtemp(prefix="bench-search-")
    store = resolve(work)
    g = Prepared(staged(store, "g", unit(rng, gallery, d), 8))
    q = Prepared(staged(store, "q", unit(rng, queries, d), 4))
    fields = {"run_id": "bench", "model_name": "random", "model_sha256": "0" * 64, "threshold": None}
    fields["threshold_source"] = None
    gpus = int(ray.cluster_resources().get("GPU", 0))
    print(f"archive search (jobs.match) on local Ray, {queries} x {gallery}, d={d}, {os.cpu_count()} cores:")
    times: dict[int, list[float]] = {n: [] for n in shard_counts}
    try:
        for r in range(rounds):
            for n in shard_counts:
                writer = RowWriter(store, "matches", MATCHES, "bench", f"{r}-{n}")
                t = time.perf_counter()
                layout = ShardLayout(shards=n, gpus_per_shard=1.0 if gpus >= n else 0.0)
                how = Search(k=k, keep=k, same_set=False, store=store, fields=fields, writer=writer, layout=layout)
                search_archive(q, g, how)
                times[n].append(time.perf_counter() - t)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        ray.shutdown()
    one = statistics.median(times[shard_counts[0]])
    for n in shard_counts:
        s = statistics.median(times[n])
        print(f"  {n} shard(s): {s:6.2f} s  {queries * gallery / s / 1e9:5.2f} G pairs/s  {one / s:4.2f}x one shard")


if __name__ == "__main__":
    main()
