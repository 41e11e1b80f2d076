"""jobs.train_face: a Siamese face encoder trained with triplet loss on Ray Train, evaluated on unseen identities.

    python -m jobs.train_face ROOT [--embeddings-run-id RUN] [--loss batch-hard] [--margin 0.2] [--epochs 10]
        [--workers 1] [--name face-head] [--models out/models]

A projection head over a frozen backbone: it reads labelled face embeddings (``faces/`` under ROOT, one face per
source: the clearest; labels from the manifest or --labels uri,label), holds a seeded share of identities out, and
trains on the rest with P x K batches (P identities, K faces each) and the chosen loss: batch-hard or semi-hard
triplet (anchor, positive, negative: d(a,p) + margin <= d(a,n)), contrastive, or a softmax identity head. Both
branches of the Siamese pair are the one head. After each epoch the held-out identities are verified (all pairs:
EER, AUC), a checkpoint goes to ``<output>/checkpoints/<run_id>/`` and a rerun with the same run id resumes from it.
The trained head is stored in the registry with a card naming the backbone it was trained on and the threshold for
0.1% false accepts on held-out pairs; ``training/`` holds each epoch's metrics, the untrained head's among them
(epoch -1) for comparison. ``jobs.match --head NAME`` and ``jobs.calibrate --head NAME`` compare through it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from jobs.runtime import trainer
from jobs.runtime.cluster import ensure_ray
from jobs.runtime.launch import JobContext, run_job, run_module
from jobs.runtime.options import EmbeddingsInput, LabelledInput, PKBatches
from ops.io.errors import JobFailed
from ops.io.storage import resolve
from ops.matching.embeddings import read_embeddings, read_labels
from ops.matching.heads import PROJECTION_HEAD, ProjectionHead, project
from ops.training import losses
from ops.training import protocols as training

JOB = "train_face"
LOSSES = ("batch-hard", "semi-hard", "contrastive", "softmax")


@dataclass
class TrainFaceConfig(EmbeddingsInput, LabelledInput, PKBatches, trainer.TrainingConfig):
    loss: str = field(default="batch-hard", metadata={"run_key": True, "help": f"one of {', '.join(LOSSES)}"})
    margin: float = field(default=0.2, metadata={"run_key": True, "help": "triplet or contrastive margin"})
    holdout: float = field(default=0.2, metadata={"run_key": True, "help": "share of identities held out"})
    dim: int = field(default=128, metadata={"run_key": True, "help": "output dimension"})
    hidden: int = field(default=256, metadata={"run_key": True, "help": "hidden width"})


class Objective(torch.nn.Module):
    """The head and its loss as one module: DDP all-reduces gradients only through a wrapped module's forward."""

    def __init__(self, head: ProjectionHead, loss: str, margin: float, identities: int) -> None:
        super().__init__()
        self.head, self.loss, self.margin = head, loss, margin
        if loss == "softmax":
            self.classifier = losses.IdentityHead(head.net[3].out_features, identities)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        z = self.head(x)
        if self.loss == "batch-hard":
            return losses.batch_hard_triplet_loss(z, y, self.margin)
        if self.loss == "semi-hard":
            return losses.semi_hard_triplet_loss(z, y, self.margin)
        if self.loss == "contrastive":  # Siamese pairs: each row with its neighbour (in P x K: same, then different)
            other = torch.roll(torch.arange(len(y), device=y.device), 1)
            return losses.contrastive_loss(z, z[other], (y == y[other]).long(), self.margin)
        return self.classifier(z, y)


@dataclass(frozen=True)
class FaceLoop(trainer.LoopSettings):
    """The training loop's settings: the head's shape, its loss, and the P x K batches of an epoch."""

    dim: int
    hidden: int
    loss: str
    margin: float
    steps: int  # batches per epoch, per worker
    p: int
    k: int

    @classmethod
    def of(cls, config: TrainFaceConfig, data: Any, data_sha256: str, steps: int) -> FaceLoop:
        """The job's options, with the data put in Ray's object store and the batches an epoch takes."""
        return cls(
            **cls.shared(config, data, data_sha256),
            dim=config.dim,
            hidden=config.hidden,
            loss=config.loss,
            margin=config.margin,
            steps=steps,
            p=config.identities_per_batch,
            k=config.per_identity,
        )


def _loop(cfg: dict) -> None:
    """One Ray Train worker: P x K batches from its share of the training identities; rank 0 evaluates."""
    import ray.train.torch

    settings, data, worker = trainer.start_worker(cfg, FaceLoop)
    head = ProjectionHead(data["train_x"].shape[1], settings.dim, settings.hidden)
    objective = Objective(head, settings.loss, settings.margin, int(data["train_y"].max()) + 1)
    model = ray.train.torch.prepare_model(objective)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    groups = training.groups(data["train_y"])[worker.rank :: worker.world]  # each worker its own identities
    x, y = torch.tensor(data["train_x"]), torch.tensor(data["train_y"])  # copies: ray.get gives read-only arrays

    def batches(rng: np.random.Generator):
        for _ in range(settings.steps):
            rows = torch.from_numpy(training.pk_batch(groups, settings.p, settings.k, rng))
            yield x[rows].to(worker.device), y[rows].to(worker.device)

    trainer.train_epochs(model, optimizer, settings, worker, batches, lambda: _evaluate(head, data, worker.device))


def _evaluate(head: torch.nn.Module, data: dict, device: torch.device) -> dict:
    z = project(head, data["test_x"], device=str(device)).numpy()
    head.train()
    return training.verification(z, data["test_y"])


def run(config: TrainFaceConfig, ctx: JobContext) -> dict:
    config.check()
    if config.loss not in LOSSES:
        raise JobFailed(f"unknown loss {config.loss!r}: use one of {', '.join(LOSSES)}")
    root = resolve(config.embeddings)
    faces = read_embeddings(root, "faces", config.embeddings_run_id, per_source=True)
    labels = read_labels(root, config.labels, config.manifest_run_id, config.embeddings_run_id)
    keep = np.array([u in labels for u in faces.uris])
    if keep.sum() < 4:
        raise JobFailed(f"{int(keep.sum())} labelled face sources under {root.uri}: training needs labelled faces")
    names = np.array([labels[u] for u, k in zip(faces.uris, keep, strict=True) if k])
    x = faces.vectors[keep]
    try:
        train, test = training.split_identities(names, config.holdout, config.seed)
    except ValueError as exc:
        raise JobFailed(str(exc)) from None
    _, y = np.unique(names, return_inverse=True)
    ctx.log.info(
        "%d faces of %d identities from %s (%s): %d identities trained on, %d held out",
        len(x),
        len(set(names)),
        faces.model_name,
        faces.model_sha256[:12],
        len(set(names[train])),
        len(set(names[test])),
    )
    ensure_ray()
    import ray

    _, train_y = np.unique(y[train], return_inverse=True)  # dense ids for the softmax head
    data = {"train_x": x[train], "train_y": train_y.astype(np.int64), "test_x": x[test], "test_y": y[test]}
    batch = config.identities_per_batch * config.per_identity
    steps = config.steps or max(1, int(train.sum()) // (batch * config.workers))
    settings = FaceLoop.of(config, ray.put(data), trainer.fingerprint(data), steps)
    state = trainer.fit(_loop, settings, ctx, config)
    last = state["history"][-1]
    untrained = next((h for h in state["history"] if h["epoch"] == -1), {})
    card = {
        "modality": "face",
        "input": {"model_name": faces.model_name, "model_sha256": faces.model_sha256, "dim": faces.dim},
        "embedding_dim": config.dim,
        "metric": "cosine",
        "default_threshold": last["threshold_far_0.001"],
        "threshold_note": "0.1% false accepts on the held-out identities' pairs",
        "training": {
            "run_id": ctx.run_id,
            "loss": config.loss,
            "margin": config.margin,
            "epochs": last["epoch"] + 1,
            "holdout_identities": int(len(set(names[test]))),
            "holdout_eer": last["eer"],
            "untrained_holdout_eer": untrained.get("eer"),
        },
    }
    weights = {k.removeprefix("head."): v for k, v in state["model"].items() if k.startswith("head.")}
    marker = trainer.finish(ctx, config, state["history"], PROJECTION_HEAD, weights, card)
    ctx.log.info(
        "held-out EER %.4f (untrained head %.4f), AUC %.4f after %d epochs",
        last["eer"],
        untrained.get("eer", float("nan")),
        last["auc"],
        last["epoch"] + 1,
    )
    return marker


def main(argv: list[str] | None = None) -> int:
    return run_job(JOB, TrainFaceConfig, run, argv, description=__doc__.split("\n")[0])


if __name__ == "__main__":
    sys.exit(run_module(__spec__.name))
