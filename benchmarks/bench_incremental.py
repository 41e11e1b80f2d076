"""A nightly run after 1% growth against a full run of the same archive, side by side: wall times and their ratio.

    python benchmarks/bench_incremental.py [--photos 1000] [--growth 0.01] [--rounds 2] [--search-sources 40000]

An archive of generated portraits (160x128 JPEG, one face each) is listed and embedded once (manifest, then
embed_faces). Then, each round: 1% more photos are added and the night's run (manifest by difference, embeddings
reused by content) is timed beside a full run over the same archive (``--full``, ``--no-reuse``), beside a run
with nothing new (Ray's start, listing, the joins, the commit) and beside a run with one new photo (the same, plus
starting the model actors at all). Each job is its own process, as a scheduled run is. Prints medians and ratios:
incremental / full, and (incremental - one new) / full, the part that grows with the new objects.

The search part alone: ``--search-sources`` synthetic sources (``jobs.synthesize``) searched all against all
(``jobs.match search --per-source``), then 1% more sources, then the night's search by difference (added sources
against all, kept sources' lists merged) timed beside a full search of the same tables (``--no-reuse``), each from a
copy of the same output root, and beside the same search once more with nothing new (its fixed cost). ``--photos 0``
or ``--search-sources 0`` skips a part.
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


def add_photos(folder: Path, first: int, n: int) -> None:
    """``n`` photos of distinct content (a byte of difference each: the same decode cost)."""
    import numpy as np

    from ops.media.encode import encode_image
    from ops.testing.samples import portrait

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    faces = [encode_image(portrait(rng, i), "jpeg") for i in range(7)]
    for i in range(first, first + n):
        path = folder / f"p{i:06d}.jpg"
        path.write_bytes(faces[i % 7] + i.to_bytes(4, "big"))
        old = time.time() - 3600  # not written "just now": see jobs/archive/manifest_diff.py on racily clean objects
        os.utime(path, (old, old))


def timed(argv: list[str], env: dict) -> float:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *argv, "--log-level", "WARNING"], cwd=REPO, env=env, capture_output=True)
    if done.returncode:
        print(done.stderr.decode()[-3000:], file=sys.stderr)
        raise SystemExit(f"{' '.join(argv[:2])} failed")
    return time.perf_counter() - start


def night(archive: Path, out: Path, run_id: str, models: str, env: dict, full: bool = False) -> float:
    """One night: the manifest and the face embeddings, timed together."""
    manifest = ["-m", "jobs.manifest", str(archive), "--output", str(out), "--run-id", f"{run_id}.m"]
    faces = ["-m", "jobs.embed_faces", str(out), "--output", str(out), "--manifest-run-id", f"{run_id}.m"]
    faces += ["--run-id", f"{run_id}.f", "--models", models]
    if full:
        manifest, faces = [*manifest, "--full"], [*faces, "--no-reuse"]
    return timed(manifest, env) + timed(faces, env)


def search_part(sources: int, growth: float, rounds: int, env: dict) -> None:
    """The search alone: the night's search by difference against a full search, from copies of one root."""
    import json

    from ops.io.storage import resolve
    from ops.io.tables import committed_runs

    work = Path(tempfile.mkdtemp(prefix="bench-search-diff-"))
    base = work / "base"
    people = max(1, sources // 4)

    def synthesize(run_id: str, n: int, seed: int, first: int) -> None:
        argv = [
            "-m",
            "jobs.synthesize",
            "--output",
            str(base),
            "--identities",
            n,
            "--seed",
            seed,
            "--first-identity",
            first,
        ]
        timed([*map(str, argv), "--run-id", run_id], env)

    def search(out: Path, run_id: str, *extra: str) -> tuple[float, dict]:
        argv = ["-m", "jobs.match", "search", "--queries", str(out), "--output", str(out), "--per-source", "--k", "10"]
        took = timed([*argv, "--run-id", run_id, *extra], env)
        (marker,) = [m for m in committed_runs(resolve(str(out))) if m["run_id"] == run_id]
        return took, marker["summary"]

    times: dict[str, list[float]] = {"full": [], "by difference": [], "nothing new": []}
    try:
        synthesize("night-1", people, 1, 0)
        first, _ = search(base, "search-1")
        synthesize("growth", max(1, round(people * growth)), 2, people)
        print(f"search, {people * 4} sources: first night {first:.1f} s", flush=True)
        summary = {}
        for r in range(rounds):
            for name, extra in (("by difference", ()), ("full", ("--no-reuse",))):
                copy = work / f"r{r}-{name.replace(' ', '-')}"
                shutil.copytree(base, copy)
                took, summary[name] = search(copy, "search-2", *extra)
                times[name].append(took)
                if not extra:  # the same search again: nothing changed since (the fixed cost of a night's search)
                    times["nothing new"].append(search(copy, "search-3")[0])
                shutil.rmtree(copy, ignore_errors=True)
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in times.items()), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    full, diff, fixed = (statistics.median(times[k]) for k in ("full", "by difference", "nothing new"))
    done = summary["by difference"]
    print(f"\nsearch, medians of {rounds} rounds, {os.cpu_count()} cores, each its own process:")
    whole = summary["full"]
    print(f"  full search      {full:7.1f} s   {whole['queries']} queries x {whole['gallery']}")
    print(
        f"  by difference    {diff:7.1f} s   {diff / full:6.1%} of full  ({done['queries_searched']} searched, "
        f"{done['queries_merged']} merged, {done['gallery_added']} added)"
    )
    print(f"  nothing new      {fixed:7.1f} s   {fixed / full:6.1%} of full  (fixed: Ray, staging, the diff, rows)")
    print(f"  growth part      {diff - fixed:7.1f} s   {(diff - fixed) / full:6.1%} of full")
    print(json.dumps({"full_s": full, "by_difference_s": diff, "nothing_new_s": fixed, "ratio": diff / full}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=int, default=1000)
    parser.add_argument("--growth", type=float, default=0.01)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--search-sources", type=int, default=40_000)
    parser.add_argument("--models", default=os.environ.get("CROSSMATCH_MODELS", str(REPO / "out" / "models")))
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": ""}
    if args.search_sources:
        search_part(args.search_sources, args.growth, args.rounds, env)
    if not args.photos:
        return
    work = Path(tempfile.mkdtemp(prefix="bench-incremental-"))
    archive, out = work / "archive", work / "out"
    times: dict[str, list[float]] = {"full": [], "incremental": [], "one new": [], "nothing new": []}
    try:
        add_photos(archive, 0, args.photos)
        first = night(archive, out, "n0", args.models, env)
        print(f"first night, {args.photos} photos: {first:.1f} s", flush=True)
        count = args.photos
        for r in range(1, args.rounds + 1):
            new = max(1, round(count * args.growth))
            add_photos(archive, count, new)
            count += new
            times["incremental"].append(night(archive, out, f"n{r}", args.models, env))
            times["nothing new"].append(night(archive, out, f"n{r}-again", args.models, env))
            add_photos(archive, count, 1)
            count += 1
            times["one new"].append(night(archive, out, f"n{r}-one", args.models, env))
            times["full"].append(night(archive, out, f"n{r}-full", args.models, env, full=True))
            last = ", ".join(f"{name} {got[-1]:.1f} s" for name, got in times.items())
            print(f"round {r}: {count} photos, {new} new: {last}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    full, incremental, one, nothing = (
        statistics.median(times[k]) for k in ("full", "incremental", "one new", "nothing new")
    )
    print(f"\nmedians of {args.rounds} rounds, {os.cpu_count()} cores, manifest + embed_faces, each its own process:")
    print(f"  full run                  {full:7.1f} s")
    print(f"  incremental ({args.growth:.0%} new)     {incremental:7.1f} s   {incremental / full:6.1%} of full")
    print(f"  nothing new               {nothing:7.1f} s   {nothing / full:6.1%} of full  (fixed: Ray, listing, joins)")
    print(f"  one new photo             {one:7.1f} s   {one / full:6.1%} of full  (fixed, and the model actors' start)")
    print(f"  growth part               {incremental - one:7.1f} s   {(incremental - one) / full:6.1%} of full")


if __name__ == "__main__":
    main()
