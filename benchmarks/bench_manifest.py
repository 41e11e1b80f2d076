"""Manifest hashing throughput against coreutils `sha256sum` on the same files, in one run, interleaved.

    python benchmarks/bench_manifest.py [--files 128] [--mib 8] [--rounds 3]

Prints MiB/s for: sha256sum on one core, sha256sum on every core (xargs -P), a plain hashlib loop on one core
(the per-core ceiling for our own hashing), and the manifest job (Ray Data, every core, listing, sniffing and
commit included; Ray's start-up excluded), then the job's throughput per core as ratios of those.
Files are read once before timing, so every contender reads from the page cache.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs import manifest  # noqa: E402
from jobs.runtime.cluster import ensure_ray  # noqa: E402
from ops.io.storage import resolve  # noqa: E402
from ops.io.tables import read_table  # noqa: E402


def make_corpus(folder: Path, files: int, mib: int) -> list[Path]:
    paths = []
    for i in range(files):
        path = folder / f"f{i:04d}.bin"
        # A WAV header so every file is "media" and the job takes its normal path; the rest is random.
        path.write_bytes(b"RIFF\x00\x00\x00\x00WAVE" + os.urandom(mib * 2**20 - 12))
        paths.append(path)
    return paths


def sha256sum(paths: list[Path], jobs: int) -> tuple[float, dict[str, str]]:
    started = time.perf_counter()
    out = subprocess.run(
        ["xargs", "-0", "-P", str(jobs), "-n", str(max(1, len(paths) // (jobs * 4))), "sha256sum"],
        input=b"\0".join(str(p).encode() for p in paths),
        capture_output=True,
        check=True,
    ).stdout.decode()
    elapsed = time.perf_counter() - started
    return elapsed, {line.split()[1]: line.split()[0] for line in out.splitlines()}


def hashlib_loop(paths: list[Path]) -> tuple[float, dict[str, str]]:
    """The floor of the job's per-object work: one process, OpenSSL's SHA-256 (SHA extensions where present)."""
    started = time.perf_counter()
    digests = {}
    for path in paths:
        with open(path, "rb") as f:
            digests[str(path)] = hashlib.file_digest(f, "sha256").hexdigest()
    return time.perf_counter() - started, digests


def manifest_job(archive: Path, output: Path, round_: int) -> tuple[float, dict[str, str]]:
    started = time.perf_counter()
    code = manifest.main(
        [str(archive), "--output", str(output), "--run-id", f"bench{round_}", "--log-level", "WARNING"]
    )
    elapsed = time.perf_counter() - started
    assert code == 0, "the manifest job failed"
    rows = read_table(resolve(str(output)), "manifest", run_id=f"bench{round_}")
    return elapsed, dict(zip(rows.column("uri").to_pylist(), rows.column("sha256").to_pylist(), strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=128)
    parser.add_argument("--mib", type=int, default=8, help="size of each file")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="bench-manifest-") as tmp:
        archive, output = Path(tmp, "archive"), Path(tmp, "out")
        archive.mkdir()
        paths = make_corpus(archive, args.files, args.mib)
        total_mib = args.files * args.mib
        for p in paths:  # warm the page cache for everyone
            p.read_bytes()
        ensure_ray()
        manifest_job(archive, output, -1)  # warm-up: Ray workers start and import once, as on a long-lived cluster
        times: dict[str, list[float]] = {
            "sha256sum, 1 core": [],
            f"sha256sum, {cores} cores": [],
            "hashlib loop, 1 core": [],
            "manifest job": [],
        }
        for round_ in range(args.rounds):  # interleaved, so that a noisy neighbour hits every contender alike
            t1, ref = sha256sum(paths, 1)
            tn, _ = sha256sum(paths, cores)
            th, _ = hashlib_loop(paths)
            tj, ours = manifest_job(archive, output, round_)
            assert ours == {str(k): v for k, v in ref.items()}, "the job's digests differ from sha256sum's"
            times["sha256sum, 1 core"].append(t1)
            times[f"sha256sum, {cores} cores"].append(tn)
            times["hashlib loop, 1 core"].append(th)
            times["manifest job"].append(tj)
        print(
            f"\n{args.files} files x {args.mib} MiB = {total_mib} MiB, {cores} cores, {args.rounds} rounds "
            "(median; digests identical)"
        )
        rates = {name: total_mib / statistics.median(ts) for name, ts in times.items()}
        for name, rate in rates.items():
            print(f"  {name:<22} {rate:8.1f} MiB/s   (runs: {', '.join(f'{t:.2f}s' for t in times[name])})")
        single = rates["sha256sum, 1 core"]
        print(f"  manifest job per core / sha256sum on one core:   {rates['manifest job'] / cores / single:.2f}")
        print(
            f"  manifest job / sha256sum on {cores} cores:           "
            f"{rates['manifest job'] / rates[f'sha256sum, {cores} cores']:.2f}"
        )
        print(
            f"  manifest job per core / hashlib loop on one core:  "
            f"{rates['manifest job'] / cores / rates['hashlib loop, 1 core']:.2f}  (1.0 = no overhead at all)"
        )


if __name__ == "__main__":
    main()
