"""Trainable heads over frozen embeddings: a projection head (the face encoder's Siamese branch) and the joint
voice-face model (one head per modality into one space), with their registry architectures.

Both read the embeddings the embed jobs write, so training and matching never touch pixels or audio: a backbone
stays the registry's, verified by its sha256, and the head records which backbone it was trained on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ops.models.registry import Architecture


class ProjectionHead(nn.Module):
    """Linear -> LayerNorm -> ReLU -> Linear, L2-normalised: a small MLP that reweighs what the backbone gives."""

    def __init__(self, in_dim: int, out_dim: int = 128, hidden: int = 256) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.LayerNorm(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim)
        )

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.net(x), dim=1)

    @classmethod
    def from_state(cls, state: dict[str, Tensor], prefix: str = "") -> ProjectionHead:
        """A head shaped as ``state`` says (keys under ``prefix``), its weights loaded strictly."""
        first, last = state[f"{prefix}net.0.weight"], state[f"{prefix}net.3.weight"]
        head = cls(first.shape[1], last.shape[0], first.shape[0])
        head.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}, strict=True)
        return head


class JointModel(nn.Module):
    """Face and voice embeddings into one space, where a cosine says how likely they are one person."""

    def __init__(self, face_dim: int, voice_dim: int, out_dim: int = 128, hidden: int = 256) -> None:
        super().__init__()
        self.face = ProjectionHead(face_dim, out_dim, hidden)
        self.voice = ProjectionHead(voice_dim, out_dim, hidden)

    def forward(self, faces: Tensor, voices: Tensor) -> tuple[Tensor, Tensor]:
        return self.face(faces), self.voice(voices)

    @classmethod
    def from_state(cls, state: dict[str, Tensor]) -> JointModel:
        face, voice = ProjectionHead.from_state(state, "face."), ProjectionHead.from_state(state, "voice.")
        dims = face.net[0].in_features, voice.net[0].in_features, face.net[3].out_features, face.net[0].out_features
        model = cls(*dims)
        model.face, model.voice = face, voice
        return model


def project(head: nn.Module, x: torch.Tensor | list, device: str | None = None, batch: int = 65536) -> Tensor:
    """``head`` applied to rows of ``x`` in batches, on ``device`` (default: where the head is), without gradients;
    float32 on the CPU."""
    x = torch.as_tensor(x, dtype=torch.float32)
    device = device or next(head.parameters()).device
    head = head.to(device).eval()
    with torch.inference_mode():
        return torch.cat([head(x[i : i + batch].to(device)).cpu() for i in range(0, len(x), batch)] or [x[:0]])


PROJECTION_HEAD = "projection-head"
JOINT_MODEL = "joint-voice-face"


def _ready(net: nn.Module, device: torch.device) -> nn.Module:
    return net.to(device).eval()


# Trained by crossmatch (jobs.train_face, jobs.train_crossmodal) and stored in the registry; never imported.
ARCHITECTURES = (
    Architecture(
        PROJECTION_HEAD, "face-head", build=lambda model, device: _ready(ProjectionHead.from_state(model.state), device)
    ),
    Architecture(
        JOINT_MODEL, "voice-face-model", build=lambda model, device: _ready(JointModel.from_state(model.state), device)
    ),
)
