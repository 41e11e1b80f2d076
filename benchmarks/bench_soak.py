"""Soak: a few thousand generated items through the manifest, face and voice jobs on a real S3 server (moto),
clean and then with faults injected at random, side by side; items per second, faults, retries, accounting.

    python benchmarks/bench_soak.py [--items 2000] [--rate 0.05] [--kill-every 20] [--hostile]

Items are portraits (JPEG) and speech (WAV) of synthetic people, half each, plus with --hostile the kinds of
ops/testing/hostile.py (but a newline in a key, which moto refuses). The faulty run goes through
ops/testing/faultproxy.py (503 SlowDown, 500, dropped connections on --rate of requests) while a thread SIGKILLs a
model actor every --kill-every seconds. Prints, per job: items/s clean and faulty and their ratio; then the faults
injected, actors killed, and the accounting of the faulty run against the clean one (expected: zero lost, zero
duplicated).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs import embed_faces, embed_voices, manifest  # noqa: E402
from jobs.runtime.cluster import ensure_ray  # noqa: E402
from ops.io.storage import resolve  # noqa: E402
from ops.io.tables import read_table  # noqa: E402
from ops.media.encode import encode_audio, encode_image  # noqa: E402
from ops.models.catalogue import pull  # noqa: E402
from ops.testing.faultproxy import FaultProxy  # noqa: E402
from ops.testing.hostile import KINDS, write_corpus  # noqa: E402
from ops.testing.samples import portrait, speech  # noqa: E402


def make_items(archive, items: int, hostile: bool) -> int:
    rng = np.random.default_rng(0)
    for i in range(items // 2):
        person = i % 50
        archive.join(f"faces/p{person:02d}/{i:05d}.jpg").put_atomic(encode_image(portrait(rng, person), "jpeg"))
        wav = speech(rng, 100.0 + 2 * person, seconds=2.0)
        archive.join(f"voices/p{person:02d}/{i:05d}.wav").put_atomic(encode_audio(wav, 16000, "wav"))
    # moto answers 404 to a key with a newline (real S3 takes it); the local hostile tests keep that kind.
    kinds = [k for k in KINDS if k != "name-with-newline"]
    extra = len(write_corpus(archive, kinds)) if hostile else 0
    return 2 * (items // 2) + extra


def killer(stop: threading.Event, every: float, killed: list[str]) -> None:
    """SIGKILL one of Ray Data's model actors every ``every`` seconds while ``stop`` is not set."""
    while not stop.wait(every):
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                title = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if title.startswith("ray::") and "MapWorker" in title and ("Actor" in title):
                os.kill(int(entry), signal.SIGKILL)
                killed.append(title.split()[0])
                break


def run_jobs(archive_uri: str, out_uri: str, models: str) -> dict[str, float]:
    seconds = {}
    for name, main, argv in (
        ("manifest", manifest.main, [archive_uri, "--output", out_uri, "--run-id", "m"]),
        ("faces", embed_faces.main, [out_uri, "--models", models, "--output", out_uri, "--run-id", "f"]),
        ("voices", embed_voices.main, [out_uri, "--models", models, "--output", out_uri, "--run-id", "v"]),
    ):
        started = time.perf_counter()
        if main([*argv, "--log-level", "WARNING"]) != 0:
            raise SystemExit(f"{name} failed on {out_uri}")
        seconds[name] = time.perf_counter() - started
    return seconds


def accounting(out_uri: str) -> dict[str, Counter]:
    """Per job, how many times each archive object (by its path below the archive) ended as a row or error row."""
    out = resolve(out_uri)
    errors = read_table(out, "errors").to_pylist()
    voices = [r for r in read_table(out, "voices", "v").to_pylist() if r["level"] == "source"]
    results = {
        "manifest": read_table(out, "manifest", "m").to_pylist(),
        "faces": read_table(out, "face_sources", "f").to_pylist(),
        "voices": voices,
    }
    jobs = {"manifest": "manifest", "faces": "embed_faces", "voices": "embed_voices"}
    rel = lambda uri: uri.split("/archive/", 1)[-1]  # noqa: E731 - the clean and faulty runs share the archive
    return {
        name: Counter([rel(r["uri"]) for r in rows] + [rel(e["uri"]) for e in errors if e["job"] == jobs[name]])
        for name, rows in results.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=0.05, help="fraction of S3 requests that fail transiently")
    parser.add_argument("--kill-every", type=float, default=20.0, help="seconds between actor kills (0: none)")
    parser.add_argument("--hostile", action="store_true", help="add the hostile corpus")
    args = parser.parse_args()
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "soak-key")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "soak-secret")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    resolve("s3://soak").fs.mkdir("soak")
    models = resolve("s3://soak/models")
    for name in ("mtcnn", "dlib-resnet-v1", "ge2e-resemblyzer", "silero-vad"):
        pull(name, models)
    archive = resolve("s3://soak/archive")
    total = make_items(archive, args.items, args.hostile)
    ensure_ray()
    print(f"{total} items on moto at {endpoint}", flush=True)

    clean = run_jobs(archive.uri, "s3://soak/clean", models.uri)
    proxy = FaultProxy(endpoint, rate=args.rate, seed=1).start()
    os.environ["AWS_ENDPOINT_URL"] = proxy.url
    stop, killed = threading.Event(), []
    thread = threading.Thread(target=killer, args=(stop, args.kill_every, killed), daemon=True)
    if args.kill_every:
        thread.start()
    try:
        faulty = run_jobs(archive.uri, "s3://soak/faulty", models.uri)
    finally:
        stop.set()
        proxy.stop()
        os.environ["AWS_ENDPOINT_URL"] = endpoint
    print(f"\n{'job':<10} {'clean items/s':>14} {'faulty items/s':>15} {'faulty/clean':>13}")
    for job in clean:
        print(f"{job:<10} {total / clean[job]:>14.1f} {total / faulty[job]:>15.1f} {clean[job] / faulty[job]:>12.2f}x")
    injected = {k: proxy.stats[k] for k in ("slow_down", "internal_error", "dropped")}
    print(f"\nS3 requests through the proxy: {proxy.stats['requests']}, faults injected (all retried): {injected}")
    print(f"actors killed: {len(killed)} ({dict(Counter(killed))})")
    a, b = accounting("s3://soak/clean"), accounting("s3://soak/faulty")
    for job in a:
        lost = sum((a[job] - b[job]).values())
        duplicated = sum(n - 1 for n in b[job].values() if n > 1)
        accounted, expected = sum(b[job].values()), sum(a[job].values())
        print(f"{job}: {accounted} accounted of {expected} clean; lost {lost}, duplicated {duplicated}")
    server.stop()


if __name__ == "__main__":
    main()
