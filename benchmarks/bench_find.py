"""Probe to answer: `jobs.find` against the four commands it replaces, on the demo archive, in one run, interleaved.

    python benchmarks/bench_find.py [--rounds 3] [--models out/models] [--warm]

Builds the demo archive and its results once (`jobs.sample`, `jobs.pipeline`), then, each round, one photo of a
person as a new probe (new bytes each round, so nothing is reused by content): the one command (`python -m
jobs.find PROBE --results ROOT`) beside the four a user typed before it (`jobs.manifest` of the probe's folder,
`jobs.embed_faces`, `jobs.match search --queries --gallery`, `jobs.report`), each command a fresh process as a user
runs it (Ray's start-up included: each starts its own local cluster; with --warm every command joins one local
cluster started before, through RAY_ADDRESS, as on a workstation that keeps one running). Prints each round's wall
times and the medians, and find's time as a ratio of the four commands'.
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


ENV = dict(os.environ)


def command(*args: str) -> float:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, env=ENV)
    if done.returncode != 0:
        sys.exit(f"{' '.join(args[:2])} failed:\n{done.stderr[-3000:]}")
    return time.monotonic() - started


def probe(folder: Path, archive: Path, n: int) -> Path:
    """A copy of an archive photo with one more byte after its end (a new file to every job, the same face)."""
    folder.mkdir(parents=True)
    target = folder / f"probe-{n}.png"
    target.write_bytes((archive / "photos" / "alice" / "portrait-2.png").read_bytes() + bytes([n]))
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--models", default=str(REPO / "out" / "models"))
    parser.add_argument("--warm", action="store_true", help="every command joins one local cluster started first")
    args = parser.parse_args()
    if args.warm:
        ray = str(Path(sys.executable).parent / "ray")
        start = [ray, "start", "--head", "--include-dashboard=false", "--disable-usage-stats"]
        subprocess.run(start, check=True, capture_output=True)
        ENV["RAY_ADDRESS"] = "auto"
    try:
        measure(args)
    finally:
        if args.warm:
            subprocess.run([ray, "stop"], check=False, capture_output=True)


def measure(args: argparse.Namespace) -> None:
    base = Path(tempfile.mkdtemp(prefix="bench-find-"))
    archive, results = base / "archive", base / "results"
    command("jobs.sample", str(archive))
    demo = ["--label-pattern", "*/{label}/*", "--models", args.models, "--run-id", "demo"]  # as `make demo`
    command("jobs.pipeline", str(archive), "--output", str(results), *demo)
    times: dict[str, list[float]] = {"find": [], "four commands": []}
    for n in range(args.rounds):
        one = probe(base / f"find-{n}", archive, 2 * n)
        times["find"].append(command("jobs.find", str(one), "--results", str(results), "--models", args.models))
        folder = probe(base / f"four-{n}", archive, 2 * n + 1).parent
        out, run = str(folder / "results"), f"four-{n}"
        steps = [
            ("jobs.manifest", str(folder), "--output", out, "--run-id", f"{run}.manifest"),
            ("jobs.embed_faces", out, "--output", out, "--models", args.models, "--run-id", f"{run}.faces"),
            (
                "jobs.match",
                "search",
                "--queries",
                out,
                "--queries-run-id",
                f"{run}.faces",
                "--gallery",
                str(results),
                "--gallery-run-id",
                "demo.faces",
                "--calibration",
                str(results),
                "--output",
                out,
                "--run-id",
                f"{run}.search",
                "--k",
                "100",
            ),
            ("jobs.report", out, "--output", out, "--run-id", f"{run}.report"),
        ]
        times["four commands"].append(sum(command(*step) for step in steps))
        print(f"round {n + 1}: find {times['find'][-1]:.1f} s, four commands {times['four commands'][-1]:.1f} s")
    find, four = statistics.median(times["find"]), statistics.median(times["four commands"])
    print(f"median: find {find:.1f} s, four commands {four:.1f} s: find takes {find / four:.2f}x their time")


if __name__ == "__main__":
    main()
