"""jobs.train_crossmodal: the joint voice-face model on Ray Train: a voice ranks faces, a face ranks voices.

    python -m jobs.train_crossmodal ROOT [--mode supervised|video] [--loss triplet|infonce] [--epochs 10]
        [--faces-run-id RUN] [--voices-run-id RUN] [--workers 1] [--name voice-face] [--models out/models]

Two projection heads map face embeddings (``faces/``, one per source: the clearest) and voice embeddings
(``voices/``, each source's pooled one) into one space. Two ways to learn the link:

- ``supervised``: identity labels on both tables (the manifest's, or --labels uri,label); each batch holds P
  identities with K faces and K voices each, from any of their sources;
- ``video``: no labels in training; a face and the speech of the same video are a positive pair, other videos
  negatives. Labels, when the archive has them, only decide which people are held out and score them.

Losses: symmetric InfoNCE over batches of distinct identities (or videos), one face-voice pair each (the default:
it learns fast and steadily), or bidirectional batch-hard triplet (voice anchors against faces and face anchors
against voices, K of each per identity; it starts collapsed, every score alike, and needs several hundred steps to
leave that state, as Hermans et al. observed). A seeded share of identities (of videos, without
labels) is held out; after each epoch it is scored with the 1:2 protocol both ways, verification AUC and retrieval
mAP, a checkpoint goes to ``<output>/checkpoints/<run_id>/``, and a rerun with the same run id resumes from it. The
model lands in the registry with a card naming the face and voice models it was trained on and a threshold at 1%
false accepts on the held-out pairs; ``jobs.match crossmatch`` uses it.
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
from jobs.runtime.options import LabelledInput, PKBatches, tailored
from ops.io.errors import JobFailed
from ops.io.storage import resolve
from ops.matching.embeddings import EmbeddingSet, read_embeddings, read_labels
from ops.matching.heads import JOINT_MODEL, JointModel, project
from ops.training import losses
from ops.training import protocols as training

JOB = "train_crossmodal"
MODES = ("supervised", "video")
LOSSES = ("triplet", "infonce")


@dataclass
class TrainCrossmodalConfig(LabelledInput, PKBatches, trainer.TrainingConfig):
    identities_per_batch: int = tailored(PKBatches, "identities_per_batch", default=64, help="P: identities or videos")
    per_identity: int = tailored(PKBatches, "per_identity", default=2, help="K: faces and voices each (triplet)")
    embeddings: str = field(
        default="out/results", metadata={"positional": True, "run_key": True, "help": "root with faces/, voices/"}
    )
    faces_run_id: str | None = field(default=None, metadata={"run_key": True, "help": "this run of faces/"})
    voices_run_id: str | None = field(default=None, metadata={"run_key": True, "help": "this run of voices/"})
    mode: str = field(default="supervised", metadata={"run_key": True, "help": "supervised (labels) or video"})
    loss: str = field(default="infonce", metadata={"run_key": True, "help": "infonce or triplet"})
    margin: float = field(default=0.3, metadata={"run_key": True, "help": "triplet margin"})
    temperature: float = field(default=0.2, metadata={"run_key": True, "help": "InfoNCE temperature"})
    holdout: float = field(default=0.2, metadata={"run_key": True, "help": "share of identities (videos) held out"})
    dim: int = field(default=128, metadata={"run_key": True, "help": "joint space dimension"})
    hidden: int = field(default=256, metadata={"run_key": True, "help": "hidden width of each head"})


class Objective(torch.nn.Module):
    """The joint model and its loss as one module (DDP all-reduces through a wrapped module's forward)."""

    def __init__(self, model: JointModel, loss: str, margin: float, temperature: float) -> None:
        super().__init__()
        self.model, self.loss, self.margin, self.temperature = model, loss, margin, temperature

    def forward(self, faces: torch.Tensor, voices: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        f, v = self.model(faces, voices)
        if self.loss == "infonce":  # row i of each is a pair; batches hold one pair per group
            return losses.info_nce(v, f, self.temperature)
        return losses.batch_hard_triplet_loss(v, groups, self.margin, f, groups) + losses.batch_hard_triplet_loss(
            f, groups, self.margin, v, groups
        )


@dataclass(frozen=True)
class JointLoop(trainer.LoopSettings):
    """The training loop's settings: the joint model's shape, its loss, and the batches of an epoch (P groups,
    K of each side per group for the triplet loss)."""

    dim: int
    hidden: int
    loss: str
    margin: float
    temperature: float
    steps: int  # batches per epoch, per worker
    p: int
    k: int

    @classmethod
    def of(cls, config: TrainCrossmodalConfig, data: Any, data_sha256: str, loss: str, steps: int) -> JointLoop:
        """The job's options, with the data put in Ray's object store, the loss the mode takes and the batches an
        epoch takes."""
        return cls(
            **cls.shared(config, data, data_sha256),
            dim=config.dim,
            hidden=config.hidden,
            loss=loss,
            margin=config.margin,
            temperature=config.temperature,
            steps=steps,
            p=config.identities_per_batch,
            k=config.per_identity,
        )


def _loop(cfg: dict) -> None:
    """One Ray Train worker: batches of P groups (identities or videos) from its share; rank 0 evaluates."""
    import ray.train.torch

    settings, data, worker = trainer.start_worker(cfg, JointLoop)
    joint = JointModel(data["face_x"].shape[1], data["voice_x"].shape[1], settings.dim, settings.hidden)
    model = ray.train.torch.prepare_model(Objective(joint, settings.loss, settings.margin, settings.temperature))
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    face_x, voice_x = torch.tensor(data["face_x"]), torch.tensor(data["voice_x"])  # copies: ray.get is read-only
    face_groups, voice_groups = _members(data["face_g"]), _members(data["voice_g"])
    shared = sorted(set(face_groups) & set(voice_groups))[worker.rank :: worker.world]  # each worker its own groups
    k = 1 if settings.loss == "infonce" else settings.k

    def batches(rng: np.random.Generator):
        for _ in range(settings.steps):
            chosen = rng.choice(len(shared), min(settings.p, len(shared)), replace=False)
            f_rows, v_rows, groups = [], [], []
            for c in chosen:
                g = shared[c]
                f_rows += rng.choice(face_groups[g], k).tolist()
                v_rows += rng.choice(voice_groups[g], k).tolist()
                groups += [g] * k
            device = worker.device
            yield face_x[f_rows].to(device), voice_x[v_rows].to(device), torch.tensor(groups, device=device)

    trainer.train_epochs(model, optimizer, settings, worker, batches, lambda: _evaluate(joint, data, worker.device))


def _members(groups: np.ndarray) -> dict[int, np.ndarray]:
    order = np.argsort(groups, kind="stable")
    ids, starts = np.unique(groups[order], return_index=True)
    return {int(g): part for g, part in zip(ids, np.split(order, starts[1:]), strict=True)}


def _evaluate(joint: JointModel, data: dict, device: torch.device) -> dict:
    f = project(joint.face, data["test_face_x"], str(device)).numpy()
    v = project(joint.voice, data["test_voice_x"], str(device)).numpy()
    joint.train()
    return training.crossmodal(
        f, v, data["test_face_y"], data["test_voice_y"], data["test_face_src"], data["test_voice_src"]
    )


def _pairs(faces: EmbeddingSet, voices: EmbeddingSet, config: TrainCrossmodalConfig, root) -> dict[str, np.ndarray]:
    """Rows of each modality with their training group (an identity; in video mode, a video) and their identity for
    evaluation, split by identity so that held-out people are never trained on. In video mode the labels, when the
    archive has any, are used only for that split and the scoring; without labels a video stands for its person."""
    labels = read_labels(root, config.labels, config.manifest_run_id, config.faces_run_id)
    if config.mode == "supervised":
        face_keep = [i for i, u in enumerate(faces.uris) if u in labels]
        voice_keep = [i for i, u in enumerate(voices.uris) if u in labels]
        face_group = np.array([labels[faces.uris[i]] for i in face_keep])
        voice_group = np.array([labels[voices.uris[i]] for i in voice_keep])
        face_who, voice_who = face_group, voice_group
    else:
        common = sorted(set(faces.uris) & set(voices.uris))
        where_f, where_v = {u: i for i, u in enumerate(faces.uris)}, {u: i for i, u in enumerate(voices.uris)}
        face_keep, voice_keep = [where_f[u] for u in common], [where_v[u] for u in common]
        face_group = voice_group = np.array(common)
        face_who = voice_who = np.array([labels.get(u, u) for u in common])
    shared = set(face_group) & set(voice_group)
    if len(shared) < 4:
        what = "identities" if config.mode == "supervised" else "videos"
        fix = "label both tables (--label-pattern or --labels)" if config.mode == "supervised" else "need videos"
        raise JobFailed(f"{len(shared)} {what} have both a face and a voice under {root.uri}: {fix}")
    people = np.unique(np.concatenate([face_who, voice_who]))
    train_people, _ = training.split_identities(people, config.holdout, config.seed)
    held = set(people[~train_people])
    f_out, v_out = np.array([w in held for w in face_who]), np.array([w in held for w in voice_who])
    groups = {g: n for n, g in enumerate(np.unique(np.concatenate([face_group, voice_group])))}
    ids = {w: n for n, w in enumerate(people)}
    fx, vx = faces.vectors[face_keep], voices.vectors[voice_keep]
    return {
        "face_x": fx[~f_out],
        "face_g": np.array([groups[g] for g in face_group])[~f_out],
        "voice_x": vx[~v_out],
        "voice_g": np.array([groups[g] for g in voice_group])[~v_out],
        "test_face_x": fx[f_out],
        "test_face_y": np.array([ids[w] for w in face_who])[f_out],
        "test_face_src": np.array([faces.uris[i] for i in face_keep])[f_out],
        "test_voice_x": vx[v_out],
        "test_voice_y": np.array([ids[w] for w in voice_who])[v_out],
        "test_voice_src": np.array([voices.uris[i] for i in voice_keep])[v_out],
    }


def run(config: TrainCrossmodalConfig, ctx: JobContext) -> dict:
    config.check()
    if config.mode not in MODES:
        raise JobFailed(f"unknown mode {config.mode!r}: use {' or '.join(MODES)}")
    loss = config.loss
    if loss not in LOSSES:
        raise JobFailed(f"unknown loss {loss!r}: use {' or '.join(LOSSES)}")
    root = resolve(config.embeddings)
    faces = read_embeddings(root, "faces", config.faces_run_id, per_source=True)
    voices = read_embeddings(root, "voices", config.voices_run_id, per_source=True)
    try:
        data = _pairs(faces, voices, config, root)
    except ValueError as exc:
        raise JobFailed(str(exc)) from None
    ctx.log.info(
        "%s, %s loss: %d faces and %d voices to train on, %d and %d held out (%s + %s)",
        config.mode,
        loss,
        len(data["face_x"]),
        len(data["voice_x"]),
        len(data["test_face_x"]),
        len(data["test_voice_x"]),
        faces.model_name,
        voices.model_name,
    )
    ensure_ray()
    import ray

    steps = config.steps or max(1, len(data["face_x"]) // (config.identities_per_batch * config.workers))
    settings = JointLoop.of(config, ray.put(data), trainer.fingerprint(data), loss, steps)
    state = trainer.fit(_loop, settings, ctx, config)
    last = state["history"][-1]
    untrained = next((h for h in state["history"] if h["epoch"] == -1), {})
    weights = {k.removeprefix("model."): v for k, v in state["model"].items() if k.startswith("model.")}
    card = {
        "modality": "voice-face",
        "inputs": {
            "faces": {"model_name": faces.model_name, "model_sha256": faces.model_sha256, "dim": faces.dim},
            "voices": {"model_name": voices.model_name, "model_sha256": voices.model_sha256, "dim": voices.dim},
        },
        "embedding_dim": config.dim,
        "metric": "cosine",
        "default_threshold": last["threshold_far_0.01"],
        "threshold_note": "1% false accepts on the held-out voice-face pairs",
        "training": {
            "run_id": ctx.run_id,
            "mode": config.mode,
            "loss": loss,
            "epochs": last["epoch"] + 1,
            "holdout": {k: v for k, v in last.items() if k not in ("epoch", "loss", "samples_per_s")},
            "untrained_holdout": {k: v for k, v in untrained.items() if k != "epoch"},
        },
    }
    marker = trainer.finish(ctx, config, state["history"], JOINT_MODEL, weights, card)
    ctx.log.info(
        "held out: 1:2 voice->face %.3f, face->voice %.3f (untrained %.3f, %.3f), AUC %.3f, mAP %.3f after %d epochs",
        last["v2f_1of2"],
        last["f2v_1of2"],
        untrained.get("v2f_1of2", float("nan")),
        untrained.get("f2v_1of2", float("nan")),
        last["auc"],
        last["map_v2f"],
        last["epoch"] + 1,
    )
    return marker


def main(argv: list[str] | None = None) -> int:
    return run_job(JOB, TrainCrossmodalConfig, run, argv, description=__doc__.split("\n")[0])


if __name__ == "__main__":
    sys.exit(run_module(__spec__.name))
