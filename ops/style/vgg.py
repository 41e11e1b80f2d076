"""The loss network of style transfer: torchvision's VGG16/VGG19 convolutional part, its weights from a
torchvision-format checkpoint imported through the registry, or explicitly seeded random weights.

ImageNet weights cannot be downloaded at run time here, so a job either names an imported checkpoint
(``python -m jobs.models import vgg19.pth --architecture vgg19-torchvision --name vgg19``) or asks for a seeded
random network, which is fine for textures and the demo and is labelled as such wherever its results go.
"""

from __future__ import annotations

import hashlib
import io

import torch
import torchvision
from torch import Tensor, nn

from ops.models.registry import IMAGENET_MEAN, IMAGENET_STD, Architecture, LoadedModel, read_state_dict

# Rectified outputs by Gatys et al.'s names: the index in ``features`` of the ReLU after each convolution.
VGG19_LAYERS = {"conv1_1": 1, "conv2_1": 6, "conv3_1": 11, "conv4_1": 20, "conv4_2": 22, "conv5_1": 29}
VGG16_LAYERS = {"relu1_2": 3, "relu2_2": 8, "relu3_3": 15, "relu4_3": 22}
KINDS = {"vgg19": VGG19_LAYERS, "vgg16": VGG16_LAYERS}


def features(kind: str) -> nn.Sequential:
    """The convolutional part of torchvision's ``kind``, uninitialised weights."""
    return getattr(torchvision.models, kind)(weights=None).features


class LossNetwork(nn.Module):
    """Frozen VGG features at named layers, from RGB in 0..1 (normalised here), computing only as deep as needed."""

    def __init__(self, kind: str, state: dict[str, Tensor], name: str, sha256: str) -> None:
        super().__init__()
        self.kind, self.name, self.sha256 = kind, name, sha256
        self.layers = KINDS[kind]
        self.features = features(kind)
        self.features.load_state_dict(state, strict=True)
        self.requires_grad_(False).eval()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN)[None, :, None, None])
        self.register_buffer("std", torch.tensor(IMAGENET_STD)[None, :, None, None])

    @property
    def random(self) -> bool:
        return self.name.startswith("random-")

    def forward(self, x: Tensor, names: list[str]) -> dict[str, Tensor]:
        wanted = {self.layers[n]: n for n in names}
        out, y = {}, (x - self.mean) / self.std
        for i, layer in enumerate(self.features[: max(wanted) + 1]):
            y = layer(y)
            if i in wanted:
                out[wanted[i]] = y
        return out


def from_registry(model: LoadedModel) -> LossNetwork:
    kind = model.card["architecture"].split("-")[0]
    return LossNetwork(kind, model.state, model.name, model.sha256)


def random_network(kind: str, seed: int) -> LossNetwork:
    """A seeded random VGG (Kaiming-initialised, as torchvision initialises): explicit, reproducible, and named
    ``random-<kind>-seed<seed>`` so that nobody takes its results for ImageNet features'."""
    torch.manual_seed(seed)
    state = features(kind).state_dict()
    buf = io.BytesIO()
    torch.save(state, buf)
    return LossNetwork(kind, state, f"random-{kind}-seed{seed}", hashlib.sha256(buf.getvalue()).hexdigest())


def _convert(kind: str):
    def convert(data: bytes) -> dict[str, Tensor]:
        state = read_state_dict(data)
        kept = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
        features(kind).load_state_dict(kept, strict=True)  # names every missing or unexpected key
        return kept

    return convert


def _card(kind: str) -> dict:
    return {
        "modality": "image",
        "task": "style-loss-network",
        "input": "RGB in 0..1",
        "normalisation": f"ImageNet mean {IMAGENET_MEAN} and std {IMAGENET_STD}",
        "layers": KINDS[kind],
        "note": "the convolutional part only (classifier dropped)",
    }


ARCHITECTURES = tuple(
    Architecture(
        name=f"{kind}-torchvision",
        task="style-loss-network",
        build=lambda model, device: from_registry(model).to(device),
        convert=_convert(kind),
        card=lambda state, k=kind: _card(k),
    )
    for kind in KINDS
)
