"""A nightly run after 1% growth against a full run of the same archive, side by side: wall times and their ratio.

    python benchmarks/bench_incremental.py [--photos 1000] [--growth 0.01] [--rounds 2]

An archive of generated portraits (160x128 JPEG, one face each) is listed and embedded once (manifest, then
embed_faces). Then, each round: 1% more photos are added and the night's run (manifest by difference, embeddings
reused by content) is timed beside a full run over the same archive (``--full``, ``--no-reuse``), beside a run
with nothing new (Ray's start, listing, the joins, the commit) and beside a run with one new photo (the same, plus
starting the model actors at all). Each job is its own process, as a scheduled run is. Prints medians and ratios:
incremental / full, and (incremental - one new) / full, the part that grows with the new objects.
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
        old = time.time() - 3600  # not written "just now": see jobs/manifest_diff.py on racily clean objects
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=int, default=1000)
    parser.add_argument("--growth", type=float, default=0.01)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--models", default=os.environ.get("CROSSMATCH_MODELS", str(REPO / "out" / "models")))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-incremental-"))
    archive, out = work / "archive", work / "out"
    env = {**os.environ, "PYTHONPATH": ""}
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
