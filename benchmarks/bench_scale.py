"""The driver's peak memory and wall time of each stage at archive sizes, against the bare job process measured in
the same run (and, with --before, against another commit, side by side).

    python benchmarks/bench_scale.py [--sources 10000 100000] [--photos 1000 4000] [--queries 10000]
    python benchmarks/bench_scale.py --jobs synthesize calibrate search identify report --sources 1000000
    python benchmarks/bench_scale.py --jobs manifest embed_faces --photos 1000 4000 --before 75fe8d4
    python benchmarks/bench_scale.py --jobs search-self identities --photos --sources 1000000

Each job runs as its own process with a local Ray cluster (Ray's workers are other processes); its driver's peak
resident memory is the process's VmHWM, its wall time the whole command, Ray's start included. ``bare`` is a process
that imports torch and the job modules and starts Ray, nothing else: the floor every job stands on. The goal is that
every job's peak stays within 1.5 GB of it at every size (flat, not growing with the archive).

- ``manifest`` and ``embed_faces`` run over an archive of generated photos (a portrait each, 160x128 JPEG, one
  face): ``--photos`` sizes, since embedding is hours per 100,000 photos on two cores.
- ``synthesize`` makes N synthetic sources (N/4 labelled people, 4 recordings each); ``calibrate`` calibrates on them;
  ``search`` searches ``--queries`` synthetic sources (other people, seed 2) against all N;
  ``identify`` enrols the N labelled sources as N/4 identities and identifies the same queries; ``verify`` scores N
  pairs (each source against a random other); ``crossmatch`` ranks the N sources' faces for each query's voice and
  the queries' voices for each of the N faces, through a joint model trained briefly on the queries (work linear in
  N); ``search-self`` searches all N against themselves (each source's exact top 10: the k-NN graph, its
  arithmetic against this machine's GEMM rate measured before and after) and ``identities`` clusters that graph;
  ``report`` reports the archive's root (each side works on its own copy of it) with the calibration, search
  and identification runs added.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PHOTO_JOBS = ("manifest", "embed_faces")
SYNTHETIC_JOBS = (
    "synthesize",
    "calibrate",
    "search",
    "identify",
    "verify",
    "crossmatch",
    "search-self",
    "identities",
    "report",
)
BARE = "import torch, jobs.embed_faces, jobs.match; from jobs.runtime.cluster import ensure_ray; ensure_ray()"


def make_archive(folder: Path, n: int) -> None:
    import numpy as np

    from ops.media.encode import encode_image
    from ops.testing.samples import portrait

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    faces = [encode_image(portrait(rng, i), "jpeg") for i in range(7)]
    for i in range(n):
        # A byte of difference each: distinct objects, distinct hashes, the same decode cost.
        (folder / f"p{i:06d}.jpg").write_bytes(faces[i % 7] + i.to_bytes(4, "big"))


def peak_of(cmd: list[str], cwd: Path, env: dict) -> tuple[float, float, int]:
    """(peak RSS MiB of the process, wall seconds, exit code)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = 0
    while proc.poll() is None:
        try:
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]))
        except (FileNotFoundError, ProcessLookupError):
            break
        time.sleep(0.1)
    err = proc.stderr.read()
    if proc.wait():
        print(err[-3000:], file=sys.stderr)
    return peak / 1024, time.perf_counter() - start, proc.returncode


def commands(job: str, work: Path, n: int, out: Path, models: str, queries: int) -> list[str]:
    """The job's command line at size ``n``, writing into ``out``."""
    archive, probes = work / f"archive-{n}", work / f"probes-{queries}"
    gallery = ["--gallery", str(out), "--gallery-run-id", "synth"]
    return {
        "bare": ["-c", BARE],
        "manifest": ["-m", "jobs.manifest", str(archive), "--output", str(out)],
        "embed_faces": ["-m", "jobs.embed_faces", str(out), "--output", str(out), "--models", models],
        "synthesize": ["-m", "jobs.synthesize", "--output", str(out), "--identities", str(n // 4), "--run-id", "s"],
        "calibrate": ["-m", "jobs.calibrate", str(out), "--embeddings-run-id", "synth", "--output", str(out)],
        "search": ["-m", "jobs.match", "search", "--queries", str(probes), *gallery, "--per-source"]
        + ["--output", str(out), "--run-id", "search"],
        "identify": ["-m", "jobs.match", "identify", "--queries", str(probes), *gallery, "--threshold", "0.5"]
        + ["--output", str(out), "--run-id", "identify"],
        "verify": ["-m", "jobs.match", "verify", "--queries", str(out), "--queries-run-id", "synth"]
        + ["--pairs", str(work / f"pairs-{n}.parquet"), "--threshold", "0.5", "--output", str(out), "--run-id", "v"],
        "crossmatch": ["-m", "jobs.match", "crossmatch", "--queries", str(probes), *gallery]
        + ["--joint-model", "joint", "--models", str(work / "joint"), "--output", str(out), "--run-id", "x"],
        # Who is in the archive: every source's exact top 10 among all N (the k-NN graph), then clustered. Every
        # edge is kept (threshold 0): the densest graph k = 10 gives, the clustering's worst case. A shard per core:
        # a CPU shard holds one CPU, and Ray gives its actor one thread.
        "search-self": ["-m", "jobs.match", "search", "--queries", str(out), "--queries-run-id", "synth", *gallery]
        + ["--per-source", "--k", "10", "--threshold", "0", "--shards", str(os.cpu_count() or 1)]
        + ["--output", str(out), "--run-id", "self"],
        "identities": ["-m", "jobs.identities", str(out), "--search-run-id", "self", "--output", str(out)]
        + ["--run-id", "who"],
        "report": ["-m", "jobs.report", str(out), "--output", str(out)],
    }[job]


def gemm_rate(dim: int = 128, seconds: float = 3.0) -> float:
    """This machine's float32 GEMM rate (FLOP/s) in the search's shape, through numpy's BLAS (what the search uses
    on a CPU; torch's is about half as fast here): a block of queries against a block of the gallery, ``dim`` deep,
    on every core."""
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((4096, dim), np.float32)
    b = rng.standard_normal((dim, 65536), np.float32)
    a @ b
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        done += 1
    return 2 * 4096 * 65536 * dim * done / (time.perf_counter() - start)


def make_pairs(folder: Path, target: Path, seed: int = 0) -> None:
    """As many pairs as the archive has sources: each source against a random other."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ops.io.storage import resolve
    from ops.io.tables import read_table

    uris = read_table(resolve(str(folder)), "manifest", columns=["uri"]).column("uri")
    other = np.random.default_rng(seed).permutation(len(uris))
    pq.write_table(pa.table({"a": uris, "b": uris.take(pa.array(other))}), target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sources", type=int, nargs="*", default=[10_000, 100_000], help="synthetic sizes")
    parser.add_argument("--photos", type=int, nargs="*", default=[1000, 4000], help="photo archive sizes")
    parser.add_argument("--queries", type=int, default=10_000, help="synthetic queries for search and identify")
    parser.add_argument("--jobs", nargs="+", default=[*PHOTO_JOBS, *SYNTHETIC_JOBS])
    parser.add_argument("--before", default=None, help="a git revision to measure beside this checkout")
    parser.add_argument("--models", default=os.environ.get("CROSSMATCH_MODELS", str(REPO / "out" / "models")))
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    trees = {"after": REPO}
    if args.before:
        trees = {"before": work / "before", "after": REPO}
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(trees["before"]), args.before],
            cwd=REPO,
            check=True,
            capture_output=True,
        )
    python, env = sys.executable, {**os.environ, "PYTHONPATH": ""}
    results: dict[tuple, list] = {}

    def measure(n: int, job: str, side: str, cwd: Path, out: Path) -> None:
        argv = commands(job, work, n, out, args.models, args.queries)
        mib, wall, rc = peak_of(
            [python, *argv, "--log-level", "WARNING"] if job != "bare" else [python, *argv], cwd, env
        )
        results.setdefault((n, job, side), []).append((mib, wall, rc))
        print(f"{n:>8} {job:<12} {side:<6} peak {mib:7.0f} MiB  {wall:7.1f} s  exit {rc}", flush=True)

    def synthesize(folder: Path, identities: int, seed_args: list[str]) -> None:
        cmd = [python, "-m", "jobs.synthesize", "--output", str(folder), "--identities", str(identities)]
        cmd += ["--run-id", "synth", "--log-level", "WARNING", *seed_args]
        subprocess.run(cmd, cwd=REPO, env=env, check=True)

    rates = []
    if "search-self" in args.jobs:
        rates.append(gemm_rate())
        print(f"GEMM rate (float32, 128 deep): {rates[-1] / 1e9:.1f} GFLOP/s", flush=True)
    try:
        sizes = [(n, PHOTO_JOBS) for n in args.photos] + [(n, SYNTHETIC_JOBS) for n in args.sources]
        if {"search", "identify", "crossmatch"} & set(args.jobs) and args.sources:
            # Queries of other people (seed 2) in the same world: what the driver holds does not depend on who.
            synthesize(work / f"probes-{args.queries}", max(2, args.queries // 4), ["--seed", "2"])
        if "crossmatch" in args.jobs and args.sources:  # a joint model, briefly trained on the probes (not measured)
            cmd = [python, "-m", "jobs.train_crossmodal", str(work / f"probes-{args.queries}"), "--name", "joint"]
            cmd += ["--models", str(work / "joint"), "--output", str(work / "joint"), "--epochs", "1", "--no-gpus"]
            subprocess.run([*cmd, "--steps", "20", "--log-level", "WARNING"], cwd=REPO, env=env, check=True)
        for n, kind in sizes:
            wanted = [j for j in kind if j in args.jobs]
            if not wanted:
                continue
            if kind is PHOTO_JOBS:
                make_archive(work / f"archive-{n}", n)
            elif set(wanted) - {"synthesize"}:
                synthesize(work / f"synthetic-{n}", n // 4, [])
                if "verify" in wanted:
                    make_pairs(work / f"synthetic-{n}", work / f"pairs-{n}.parquet")
            for r in range(args.rounds):
                for side, cwd in trees.items():
                    out = work / f"out-{side}-{n}-{r}"
                    if kind is SYNTHETIC_JOBS and set(wanted) - {"synthesize"}:
                        shutil.copytree(work / f"synthetic-{n}", out)  # the jobs add their runs to the archive's root
                    measure(n, "bare", side, cwd, out)
                    for job in wanted:
                        measure(n, job, side, cwd, out if job != "synthesize" else work / f"made-{side}-{n}-{r}")
        if "search-self" in args.jobs:
            rates.append(gemm_rate())
            print(f"GEMM rate (float32, 128 deep), after: {rates[-1] / 1e9:.1f} GFLOP/s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # archives of a million files: gigabytes
        if args.before:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(trees["before"])], cwd=REPO, capture_output=True
            )

    def med(n: int, job: str, side: str) -> tuple[float, float]:
        got = results[(n, job, side)]
        return statistics.median(x[0] for x in got), statistics.median(x[1] for x in got)

    print(
        "\n| sources | job | driver peak | over the bare process | wall |"
        + (" peak before | wall before |" if args.before else "")
    )
    print("| --- | --- | --- | --- | --- |" + (" --- | --- |" if args.before else ""))
    for n, kind in sizes:
        for job in [j for j in kind if j in args.jobs]:
            if (n, job, "after") not in results:
                continue
            peak, wall = med(n, job, "after")
            bare, _ = med(n, "bare", "after")
            line = f"| {n:,} | {job} | {peak:,.0f} MiB | {peak - bare:+,.0f} MiB | {wall:,.1f} s |"
            if args.before:
                bp, bw = med(n, job, "before")
                line += f" {bp:,.0f} MiB | {bw:,.1f} s |"
            print(line)
            if job == "search-self" and rates:
                # The k-NN graph's arithmetic (every pair, 128 deep) over the whole job's wall, Ray's start included.
                rate = 2 * n * n * 128 / wall
                share = rate / statistics.median(rates)
                print(f"|  | k-NN graph: {rate / 1e9:.1f} GFLOP/s | {share:.0%} of GEMM rate | | |")


if __name__ == "__main__":
    main()
