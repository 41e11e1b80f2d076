"""What the training jobs share: the Ray Train run (TorchTrainer, DDP, one worker per GPU or CPU workers), the
epoch loop, the checkpoint each epoch ends with, resuming from the last one, and the model and metrics a finished
run leaves.

A training job gives ``fit`` a loop function that runs on every worker, and the loop's settings: a frozen
``LoopSettings`` of the job's own kind. The loop is three steps:

    settings, data, worker = start_worker(cfg, FaceLoop)   # the loop's settings and arrays, rank, device; seeded
    model = ray.train.torch.prepare_model(Objective(...))  # the job's model and loss as one module (DDP)
    train_epochs(model, optimizer, settings, worker, batches, evaluate)

``train_epochs`` resumes from the run's newest checkpoint, scores the untrained model (epoch -1), then per epoch
runs the job's batches through ``loss = model(*batch)``, evaluates on rank 0 and calls ``end_epoch``, which writes
the checkpoint under ``<output>/checkpoints/<run_id>/``. Rerunning a job with the same run id resumes: a stopped run
loses at most one epoch, and a finished run with more ``--epochs`` trains on from where it ended.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import torch

from jobs.runtime.cli import JobConfig
from jobs.runtime.cluster import ensure_ray
from jobs.runtime.launch import JobContext
from jobs.runtime.options import ModelsRoot, tailored
from jobs.runtime.output import JobOutput
from ops.io.errors import JobFailed
from ops.io.schemas import TRAINING
from ops.models import catalogue
from ops.models.registry import store_model

STATE = "state.pt"
DIGEST = "state.pt.sha256"  # written beside it: a checkpoint that changed since (torn copy, tampering) is refused


@dataclass
class TrainingConfig(ModelsRoot, JobConfig):
    """Options every training job takes."""

    models: str | None = tailored(ModelsRoot, "models", help="models root: models are read from and stored there")

    epochs: int = field(default=10, metadata={"help": "epochs in all (a rerun with more trains on)"})
    lr: float = field(default=1e-3, metadata={"run_key": True, "help": "Adam's learning rate"})
    seed: int = field(default=0, metadata={"run_key": True, "help": "split, initialisation and batch order"})
    workers: int = field(default=1, metadata={"help": "Ray Train workers (one per GPU on GPU clusters)"})
    gpus: bool | None = field(default=None, metadata={"help": "train on GPUs (default: when the cluster has them)"})
    name: str | None = field(default=None, metadata={"help": "registry name of the trained model (default: run id)"})

    def check(self) -> None:
        """Options every training job refuses the same way, before reading any data."""
        if self.workers < 1 or self.epochs < 1:
            raise JobFailed("--workers and --epochs must be at least 1")


@dataclass(frozen=True)
class LoopSettings:
    """What a training loop takes to its Ray Train workers: the job's arrays (put in Ray's object store once, read
    by every worker), their fingerprint (a checkpoint made from other data is not resumed), the seed, the epochs in
    all and Adam's learning rate. A job subclasses it with its loop's own settings."""

    data: Any  # a ray.ObjectRef of the job's dict of arrays
    data_sha256: str
    seed: int
    epochs: int
    lr: float

    @staticmethod
    def shared(config: TrainingConfig, data: Any, data_sha256: str) -> dict:
        """The fields every loop takes: the data, its fingerprint, and the training options every job shares."""
        return {"data": data, "data_sha256": data_sha256, "seed": config.seed, "epochs": config.epochs, "lr": config.lr}


S = TypeVar("S", bound=LoopSettings)


def fit(loop: Callable[[dict], None], settings: LoopSettings, ctx: JobContext, config: TrainingConfig) -> dict:
    """Run ``loop`` on ``--workers`` Ray Train workers (on GPUs when the cluster has them, or as ``--gpus`` says),
    with ``settings``; returns the state of the newest checkpoint (``model``, ``history``, ...)."""
    workers, gpus = config.workers, config.gpus
    ensure_ray()
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    use_gpu = bool(ray.cluster_resources().get("GPU", 0)) if gpus is None else gpus
    storage = ctx.output.join("checkpoints")  # not training/: that prefix is the committed metrics table
    trainer = TorchTrainer(
        loop,
        train_loop_config={"settings": settings},  # Ray Train hands its workers a dict: the settings are its entry
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu),
        run_config=RunConfig(
            name=ctx.run_id,
            storage_path=storage.path,
            storage_filesystem=storage.arrow if storage.scheme != "file" else None,
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            failure_config=FailureConfig(max_failures=2),  # a lost worker restarts from the last checkpoint
        ),
    )
    ctx.log.info("training on %d %s worker(s); checkpoints under %s", workers, "GPU" if use_gpu else "CPU", storage.uri)
    try:
        result = trainer.fit()
    except Exception as exc:  # noqa: BLE001 - Ray wraps the worker's error; say it plainly
        raise JobFailed(f"training failed: {exc}") from exc
    if result.checkpoint is None:
        raise JobFailed("training ended without a checkpoint")
    with result.checkpoint.as_directory() as folder:
        return load_state(folder)


@dataclass(frozen=True)
class Worker:
    """A Ray Train worker as its loop sees itself."""

    rank: int
    world: int
    device: torch.device


def start_worker(cfg: dict, kind: type[S]) -> tuple[S, dict, Worker]:
    """On a worker: the loop's settings (``fit``'s, of the job's ``kind``), the job's data (from Ray's object store;
    arrays read-only), who this worker is, and the seed set, so that every worker starts from the same weights (DDP
    also broadcasts them)."""
    import ray
    import ray.train
    import ray.train.torch

    settings = cfg["settings"]
    if not isinstance(settings, kind):
        raise TypeError(f"the loop expects {kind.__name__} settings, not {type(settings).__name__}")
    data = ray.get(settings.data)
    context = ray.train.get_context()
    torch.manual_seed(settings.seed)
    worker = Worker(context.get_world_rank(), context.get_world_size(), ray.train.torch.get_device())
    return settings, data, worker


def train_epochs(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    settings: LoopSettings,
    worker: Worker,
    batches: Callable[[np.random.Generator], Iterable[tuple[torch.Tensor, ...]]],
    evaluate: Callable[[], dict],
) -> None:
    """The epoch loop of every training job, on a worker. ``batches(rng)`` yields one epoch's batches (tensors on
    the worker's device, the first one a row per sample); ``model(*batch)`` is the loss; ``evaluate()`` gives the
    held-out metrics, on rank 0 only. Epoch -1 is the untrained model, scored before any step."""
    first, history = resume(model, optimizer, settings.data_sha256)
    if first == 0 and worker.rank == 0:
        history = [{"epoch": -1, **evaluate()}]
    for epoch in range(first, settings.epochs):
        rng = np.random.default_rng([settings.seed, worker.rank, epoch])  # each worker its own order, reproducibly
        speed, total, steps = Throughput(), 0.0, 0
        model.train()
        for batch in batches(rng):
            loss = model(*batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total, steps = total + loss.item(), steps + 1
            speed.add(len(batch[0]))
        metrics = {"epoch": epoch, "loss": total / max(steps, 1), "samples_per_s": speed.rate() * worker.world}
        if worker.rank == 0:
            metrics |= evaluate()
        history.append(metrics)
        end_epoch(model, optimizer, epoch, history, settings.data_sha256)


def load_state(folder: str) -> dict:
    """A training checkpoint's state: tensors and plain values only (``weights_only``), its sha256 checked."""
    with open(os.path.join(folder, STATE), "rb") as f:
        data = f.read()
    with open(os.path.join(folder, DIGEST)) as f:
        expected = f.read().strip()
    if hashlib.sha256(data).hexdigest() != expected:
        raise RuntimeError(f"the checkpoint in {folder} does not match its sha256: it changed after it was written")
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def fingerprint(data: dict) -> str:
    """sha256 of the training data (arrays by name): a checkpoint is only resumed on the data it was trained on."""
    digest = hashlib.sha256()
    for name in sorted(data):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(data[name]).tobytes())
    return digest.hexdigest()


def resume(model: torch.nn.Module, optimizer: torch.optim.Optimizer, data_sha256: str) -> tuple[int, list[dict]]:
    """On a worker: load the run's newest checkpoint, if any; returns the first epoch to train and the history.
    A checkpoint of other data (the same run id over re-embedded or relabelled tables) is refused."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0, []
    with checkpoint.as_directory() as folder:
        state = load_state(folder)
    if state.get("data_sha256") != data_sha256:
        raise RuntimeError(
            "the checkpoints of this run id were trained on other data (the tables or labels changed): "
            "pass a new --run-id to train afresh"
        )
    _unwrap(model).load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return state["epoch"] + 1, state["history"]


def end_epoch(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, epoch: int, history: list[dict], data_sha256: str
) -> None:
    """On a worker: report the epoch's metrics (the last of ``history``) with a checkpoint from rank 0."""
    import ray.train

    metrics = history[-1]
    if ray.train.get_context().get_world_rank() != 0:
        ray.train.report(metrics)
        return
    state = {
        "model": {k: v.detach().cpu() for k, v in _unwrap(model).state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "epoch": epoch,
        "history": history,
        "data_sha256": data_sha256,
    }
    with tempfile.TemporaryDirectory() as folder:
        buf = io.BytesIO()
        torch.save(state, buf)
        with open(os.path.join(folder, STATE), "wb") as f:
            f.write(buf.getvalue())
        with open(os.path.join(folder, DIGEST), "w") as f:
            f.write(hashlib.sha256(buf.getvalue()).hexdigest())
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
    shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k != "epoch")
    print(f"epoch {epoch}: {shown}", flush=True)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


class Throughput:
    """Training samples per second on this worker, for the epoch's metrics."""

    def __init__(self) -> None:
        self.samples, self.started = 0, time.perf_counter()

    def add(self, n: int) -> None:
        self.samples += n

    def rate(self) -> float:
        return self.samples / max(time.perf_counter() - self.started, 1e-9)


def finish(
    ctx: JobContext,
    config: TrainingConfig,
    history: list[dict],
    architecture: str,
    weights: dict[str, torch.Tensor],
    card: dict,
    counts: dict[str, Any] | None = None,
    errors: list[dict] | None = None,
) -> dict:
    """Store the trained model in the registry (``--name``, default the run id, under ``--models``) and commit the
    run: per-epoch metrics in ``training/``, ``counts`` in its summary and ``errors`` (inputs left out, each with
    uri, sha256, stage, error_type and message) in ``errors/``. The model's source is the run's checkpoints."""
    job, name, models = ctx.job, config.name or ctx.run_id, catalogue.models_root(config.models)
    source = {"file": ctx.output.join("checkpoints", ctx.run_id).uri, "sha256": None}
    stored = store_model(models, name, architecture, weights, source, card)
    # errors/ is listed when the job accounts for its inputs, even empty; their count is in the job's ``counts``.
    out = JobOutput(ctx, config, {"training": TRAINING}, errors="table" if errors is not None else None)
    rows = [
        {"run_id": ctx.run_id, "job": job, "epoch": int(h["epoch"]), "metric": k, "value": float(v)}
        for h in history
        for k, v in h.items()
        if k != "epoch"
    ]
    out.write("training", pa.Table.from_pylist(rows, schema=TRAINING))
    out.write_errors(errors or [])
    summary: dict[str, Any] = {"model": name, "checkpoint_sha256": stored["checkpoint_sha256"], **history[-1]}
    headline = f"stored model {name} (sha256 {stored['checkpoint_sha256'][:12]}) under {models.join(name).uri}"
    return out.commit(summary | (counts or {}), headline, model_card=stored)
