"""Training throughput on Ray Train (1 and 2 workers) against a bare PyTorch loop of the same step, interleaved.

    python benchmarks/bench_training.py [--identities 2000] [--steps 200] [--rounds 3] [--gpus]

The step: the face projection head (128 -> 256 -> 128) with batch-hard triplet loss on P x K = 32 x 4 synthetic
face embeddings, Adam. The peer is the same step in one process without Ray (with one thread, and with every core);
Ray Train runs it through TorchTrainer with DDP on 1 and 2 workers (one CPU each, or one GPU each with --gpus).
Each Ray run trains two epochs of --steps batches per worker and the second epoch's rate counts (the first warms
up); the time to start the workers is printed apart. Prints medians of samples per second and ratios to the peer.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs import train_face  # noqa: E402
from jobs.runtime import trainer  # noqa: E402
from jobs.runtime.cluster import ensure_ray  # noqa: E402
from jobs.runtime.launch import JobContext  # noqa: E402
from ops.io.storage import resolve  # noqa: E402
from ops.matching.heads import ProjectionHead  # noqa: E402
from ops.testing import synthetic  # noqa: E402
from ops.training import protocols as training  # noqa: E402

P, K = 32, 4


def bare(data: dict, steps: int, threads: int, device: str) -> float:
    """Samples per second of the training step in this process."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = train_face.Objective(ProjectionHead(128), "batch-hard", 0.2, 1).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.tensor(data["train_x"]).to(device), torch.tensor(data["train_y"]).to(device)
    groups, rng = training.groups(data["train_y"]), np.random.default_rng(0)
    for _phase in ("warm", "timed"):  # the second pass is timed
        start = time.perf_counter()
        for _ in range(steps):
            rows = torch.from_numpy(training.pk_batch(groups, P, K, rng)).to(device)
            loss = model(x[rows], y[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
    return steps * P * K / elapsed


def ray_train(data_ref, steps: int, workers: int, gpus: bool, folder: str, tag: str) -> tuple[float, float]:
    """(samples per second in the second epoch, seconds from fit() to the end) for ``workers`` workers."""
    ctx = JobContext("bench", f"bench-{tag}", resolve(folder), logging.getLogger("bench"))
    settings = train_face.FaceLoop(
        data=data_ref,
        data_sha256=tag,
        seed=0,
        epochs=2,
        lr=1e-3,
        dim=128,
        hidden=256,
        loss="batch-hard",
        margin=0.2,
        steps=steps,
        p=P,
        k=K,
    )
    start = time.perf_counter()
    state = trainer.fit(train_face._loop, settings, ctx, trainer.TrainingConfig(workers=workers, gpus=gpus))
    return state["history"][-1]["samples_per_s"], time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--identities", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=200, help="batches per epoch (per worker under Ray)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--gpus", action="store_true", help="workers on GPUs; the peer on cuda")
    args = parser.parse_args()
    logging.getLogger("ray").setLevel(logging.ERROR)
    world = synthetic.World()
    rec = synthetic.population(world, args.identities, 4, seed=1)
    held = rec.identity >= int(args.identities * 0.9)
    data = {
        "train_x": rec.faces[~held],
        "train_y": rec.identity[~held].astype(np.int64),
        "test_x": rec.faces[held],
        "test_y": rec.identity[held],
    }
    ensure_ray()
    import ray

    cpus = int(ray.cluster_resources().get("CPU", 1))
    data_ref = ray.put(data)
    device = "cuda" if args.gpus else "cpu"
    results: dict[str, list[float]] = {}
    startup: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as folder:
        for r in range(args.rounds):  # interleaved: a noisy neighbour slows every contender alike
            results.setdefault("bare, 1 thread", []).append(bare(data, args.steps, 1, device))
            results.setdefault(f"bare, {cpus} threads", []).append(bare(data, args.steps, cpus, device))
            for workers in (1, 2):
                rate, seconds = ray_train(data_ref, args.steps, workers, args.gpus, folder, f"{r}-{workers}")
                results.setdefault(f"Ray Train, {workers} worker(s)", []).append(rate)
                startup.setdefault(f"Ray Train, {workers} worker(s)", []).append(seconds)
    peer = statistics.median(results["bare, 1 thread"])
    print(f"\ntraining step: head 128-256-128, batch-hard triplet, P x K = {P} x {K}, Adam, {device}, {cpus} CPUs")
    print(f"{'contender':<24} {'samples/s':>11} {'vs bare 1 thread':>17}  whole run (2 epochs, start included)")
    for name, rates in results.items():
        median = statistics.median(rates)
        whole = f"{statistics.median(startup[name]):.1f} s" if name in startup else ""
        print(f"{name:<24} {median:>11,.0f} {median / peer:>16.2f}x  {whole}")


if __name__ == "__main__":
    main()
