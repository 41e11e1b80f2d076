"""The driver's peak memory and wall time of the manifest, face and search jobs, before and after a change, side by
side.

    python benchmarks/bench_driver.py [--sources 1000 4000] [--before REV] [--after REV] [--rounds 1]
    python benchmarks/bench_driver.py --jobs search --sources 100000 200000 --before 11e2ce5

Makes an archive of N small photos (a generated portrait each, 160x128 JPEG, one face), then runs, interleaved,
``jobs.manifest`` and ``jobs.embed_faces`` from git worktrees of two commits ("after", default HEAD; "before",
default the commit before the Delta tables: the driver gathered and wrote every row), each as its own process with
a local Ray cluster, into a fresh output root. ``search`` is ``jobs.match search --per-source`` and ``calibrate``
``jobs.calibrate`` over N synthetic sources (``jobs.synthesize``: N/4 labelled people, 4 recordings each, made once
per size outside the timing). The driver's
peak resident memory is the job process's VmHWM (Ray's workers are other processes); wall time is the whole
command, Ray's start included. Prints a table and the ratios.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BEFORE = "316d0d4"  # main before the Delta tables: driver-written Parquet and commit markers


def make_archive(folder: Path, n: int) -> None:
    import numpy as np

    from ops.media.encode import encode_image
    from ops.testing.samples import portrait

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    faces = [encode_image(portrait(rng, i % 7), "jpeg") for i in range(7)]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sources", type=int, nargs="+", default=[1000, 4000])
    parser.add_argument("--before", default=BEFORE, help="the git revision to compare against")
    parser.add_argument("--after", default="HEAD", help="the git revision measured")
    parser.add_argument("--models", default=os.environ.get("CROSSMATCH_MODELS", str(REPO / "out" / "models")))
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--jobs",
        nargs="+",
        default=["manifest", "embed_faces"],
        help="manifest, embed_faces (needs manifest), calibrate, search",
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-driver-"))
    trees = {side: work / side for side in ("before", "after")}
    for side, rev in (("before", args.before), ("after", args.after)):
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(trees[side]), rev], cwd=REPO, check=True, capture_output=True
        )
    python = sys.executable
    env = {**os.environ, "PYTHONPATH": ""}
    results: dict[tuple, list] = {}
    try:
        for n in args.sources:
            archive = work / f"archive-{n}"
            if {"manifest", "embed_faces"} & set(args.jobs):
                make_archive(archive, n)
            embedded = work / f"synthetic-{n}"
            if {"search", "calibrate"} & set(args.jobs):
                synth = ["-m", "jobs.synthesize", "--output", str(embedded), "--identities", str(n // 4)]
                synth += ["--recordings", "4", "--run-id", "synth", "--log-level", "WARNING"]
                subprocess.run([python, *synth], cwd=trees["after"], env=env, check=True)
            for r in range(args.rounds):
                for side, cwd in trees.items():
                    out = work / f"out-{side}-{n}-{r}"
                    jobs = {
                        "manifest": ["-m", "jobs.manifest", str(archive), "--output", str(out)],
                        "embed_faces": [
                            "-m",
                            "jobs.embed_faces",
                            str(out),
                            "--output",
                            str(out),
                            "--models",
                            args.models,
                        ],
                        "calibrate": [
                            "-m",
                            "jobs.calibrate",
                            str(embedded),
                            "--embeddings-run-id",
                            "synth",
                            "--output",
                            str(out),
                        ],
                        "search": [
                            "-m",
                            "jobs.match",
                            "search",
                            "--queries",
                            str(embedded),
                            "--queries-run-id",
                            "synth",
                            "--gallery-run-id",
                            "synth",
                            "--per-source",
                            "--output",
                            str(out),
                        ],
                    }
                    for job, argv in jobs.items():
                        if job not in args.jobs:
                            continue
                        mib, wall, rc = peak_of([python, *argv, "--log-level", "WARNING"], cwd, env)
                        results.setdefault((n, job, side), []).append((mib, wall, rc))
                        print(f"{n:>7} {job:<12} {side:<6} peak {mib:7.0f} MiB  {wall:6.1f} s  exit {rc}", flush=True)
    finally:
        for tree in trees.values():
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO, capture_output=True)
    print("\n| sources | job | driver peak before | after | ratio | wall before | after | ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for n in args.sources:
        for job in args.jobs:
            b, a = results[(n, job, "before")], results[(n, job, "after")]
            bm, am = statistics.median(x[0] for x in b), statistics.median(x[0] for x in a)
            bw, aw = statistics.median(x[1] for x in b), statistics.median(x[1] for x in a)
            print(
                f"| {n} | {job} | {bm:.0f} MiB | {am:.0f} MiB | {am / bm:.2f} | {bw:.1f} s | {aw:.1f} s | "
                f"{aw / bw:.2f} |"
            )


if __name__ == "__main__":
    main()
