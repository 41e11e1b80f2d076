"""FairFace's attribute network (Kärkkäinen and Joo, 2021), under its public checkpoint layout, loaded strictly.

The released model (``res34_fair_align_multi_7_20190809.pt``) is torchvision's ResNet-34 with its last layer
replaced by ``Linear(512, 18)``, saved as a plain state dict: ``conv1, bn1, layer1-4.i.{conv1, bn1, conv2, bn2,
downsample.0/1}, fc``. Its 18 outputs are three softmax groups: race (7), gender (2) and age group (9), in the
order below. It reads 224x224 RGB face chips (aligned and cropped with margin, as its ``predict.py`` does with
dlib) normalised by ImageNet's mean and spread; this module takes chips in 0-255 and normalises inside ``forward``,
like every network in ``ops.faces``. ``cut_chips`` cuts those chips from our detector's five landmarks.

Import with ``python -m jobs.models import res34_fair_align_multi_7_20190809.pt --architecture fairface-resnet34``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from ops.faces.align import dlib_template, warp
from ops.models.registry import IMAGENET_MEAN, IMAGENET_STD, Architecture, read_state_dict

GROUPS = {
    "race": ("White", "Black", "Latino_Hispanic", "East Asian", "Southeast Asian", "Indian", "Middle Eastern"),
    "gender": ("Male", "Female"),
    "age": ("0-2", "3-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "70+"),
}
OUTPUTS = sum(len(c) for c in GROUPS.values())  # 18
# FairFace's predict.py: dlib.get_face_chips(img, shapes, size=300, padding=0.25), then transforms.Resize((224, 224)).
CUT, PADDING, SIZE = 300, 0.25, 224


class FairFace(nn.Module):
    """Chips (N, 3, 224, 224) RGB 0-255 -> the 18 logits (race 7, gender 2, age group 9)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torchvision.models.resnet34(weights=None)
        self.net.fc = nn.Linear(self.net.fc.in_features, OUTPUTS)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255, persistent=False)

    def forward(self, chips: torch.Tensor) -> torch.Tensor:
        return self.net((chips - self.mean) / self.std)

    @torch.inference_mode()
    def predict(self, chips: torch.Tensor) -> dict[str, dict[str, object]]:
        """Per group: its classes and their probabilities (N, classes)."""
        tf32 = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = False  # cuDNN's default TF32 moves probabilities by 1e-3: not by device
        try:
            logits = self.eval()(chips).float().cpu()
        finally:
            torch.backends.cudnn.allow_tf32 = tf32
        found, start = {}, 0
        for name, classes in GROUPS.items():
            part = logits[:, start : start + len(classes)]
            found[name] = {"classes": list(classes), "probabilities": torch.softmax(part, 1).numpy()}
            start += len(classes)
        return found


def cut_chips(images: torch.Tensor, image_idx: torch.Tensor, landmarks: torch.Tensor) -> torch.Tensor:
    """FairFace's chips (K, 3, 224, 224) uint8: face k of ``images[image_idx[k]]`` (N, 3, H, W) uint8, its five
    landmarks (K, 5, 2) in that image's pixel-edge coordinates. As its ``predict.py`` makes them: a dlib chip of 300
    pixels with a margin of 0.25 (our landmarks onto dlib's mean face, ``ops.faces.align``), rounded to 8 bits as
    dlib's are, then shrunk to 224 by bilinear filtering with antialiasing, as Pillow's resize does."""
    points = dlib_template(CUT, PADDING).to(images.device)
    cut = warp(images, image_idx, landmarks, points, CUT).round().clamp(0, 255)
    if not len(cut):
        return torch.zeros(0, 3, SIZE, SIZE, dtype=torch.uint8, device=images.device)
    small = F.interpolate(cut, size=(SIZE, SIZE), mode="bilinear", antialias=True, align_corners=False)
    return small.round().clamp(0, 255).to(torch.uint8)


def cut_frames(frames: list[torch.Tensor], landmarks: list[torch.Tensor], together: int = 8) -> torch.Tensor:
    """The chips of every face of ``frames`` ((3, H, W) uint8, on one device; ``landmarks[i]`` (K_i, 5, 2) in frame
    i's pixel-edge coordinates), frame by frame. Frames of one size are cut together, ``together`` at a time: the
    float copy of them that sampling takes bounds the memory of a call."""
    if not frames:
        return torch.zeros(0, 3, SIZE, SIZE, dtype=torch.uint8)
    device = frames[0].device
    found: list[torch.Tensor | None] = [None] * len(frames)
    sizes: dict[tuple[int, ...], list[int]] = {}
    for i, frame in enumerate(frames):
        sizes.setdefault(tuple(frame.shape), []).append(i)
    for members in sizes.values():
        for start in range(0, len(members), together):
            part = members[start : start + together]
            counts = [len(landmarks[i]) for i in part]
            index = torch.repeat_interleave(torch.arange(len(part)), torch.tensor(counts)).to(device)
            marks = torch.cat([landmarks[i].reshape(-1, 5, 2) for i in part])
            chips = cut_chips(torch.stack([frames[i] for i in part]), index, marks)
            for i, piece in zip(part, chips.split(counts), strict=True):
                found[i] = piece
    return torch.cat(found)


def _convert(data: bytes) -> dict[str, torch.Tensor]:
    """The released file -> this module's state dict (keys under ``net.``), every key checked."""
    state = {k.removeprefix("module."): v for k, v in read_state_dict(data).items()}
    model = FairFace()
    model.net.load_state_dict(state, strict=True)  # names every missing and unexpected key on failure
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def _build(model, device: torch.device) -> FairFace:
    net = FairFace()
    net.load_state_dict(model.state, strict=True)
    return net.to(device).eval()


FAIRFACE = Architecture(
    name="fairface-resnet34",
    task="face-attributes",
    build=_build,
    convert=_convert,
    card=lambda state: {
        "modality": "face",
        "task": "face-attributes",
        "input": "224x224 RGB face chip (FairFace's dlib alignment, margin 0.25), 0-255",
        "groups": {name: list(classes) for name, classes in GROUPS.items()},
        "source": "FairFace (github.com/joojs/fairface), CC BY 4.0",
    },
)
ARCHITECTURES = (FAIRFACE,)
