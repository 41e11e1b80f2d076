"""MTCNN face detection (Zhang et al. 2016): P-Net over an image pyramid, R-Net and O-Net on crops, five landmarks.

The weights are the ones facenet-pytorch ships (``facenet_pytorch/data/{pnet,rnet,onet}.pt``, converted from the
authors' Caffe models), loaded strictly under their own key names. The cascade is ours and batched: every image of
a group of equal size goes through each pyramid level in one P-Net call, and every candidate of the group through
R-Net and O-Net in one call each, on whatever device the model is on.

Coordinates are continuous pixel edges (x right, y down; pixel i spans [i, i+1)). Crops for R-Net and O-Net are
taken with ``roi_align`` from the raw 0-255 image, so pixels outside the image are black as in the reference
implementations, then normalised as the nets were trained: ``(x - 127.5) / 128``.
"""

from __future__ import annotations

import functools
import io
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms, roi_align

from ops.models.registry import Architecture, LoadedModel, ModelSpec, PackageSource


def _margin(logits: torch.Tensor) -> torch.Tensor:
    """Face logit minus background logit: the face probability is its sigmoid. Ranked by this, strong candidates
    do not tie (the float32 probability of many is exactly 1.0, and NMS would then keep whichever sorts first)."""
    return logits[:, 1] - logits[:, 0]


def _nms(boxes: torch.Tensor, margins: torch.Tensor, idxs: torch.Tensor, threshold: float) -> torch.Tensor:
    # Exact ties left (flat image regions) are broken by candidate order, which is the same for an image alone
    # or anywhere in a batch: detection does not depend on the batch.
    rank = torch.arange(len(margins), device=margins.device, dtype=torch.float64)
    order = torch.zeros_like(rank)
    for i in idxs.unique():
        sel = idxs == i
        order[sel] = rank[: int(sel.sum())]
    keys = margins.double() - order * 1e-9
    return batched_nms(boxes.double(), keys, idxs, threshold)


class PNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1, self.conv4_2 = nn.Conv2d(32, 2, 1), nn.Conv2d(32, 4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 2, 2, ceil_mode=True)
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return _margin(self.conv4_1(x)), self.conv4_2(x)


class RNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1, self.dense5_2 = nn.Linear(128, 2), nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
        x = self.prelu3(self.conv3(x))
        x = self.prelu4(self.dense4(x.permute(0, 3, 2, 1).flatten(1)))  # Caffe's (w, h, c) flattening order
        return _margin(self.dense5_1(x)), self.dense5_2(x)


class ONet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1, self.dense6_2, self.dense6_3 = nn.Linear(256, 2), nn.Linear(256, 4), nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu3(self.conv3(x)), 2, 2, ceil_mode=True)
        x = self.prelu4(self.conv4(x))
        x = self.prelu5(self.dense5(x.permute(0, 3, 2, 1).flatten(1)))
        return _margin(self.dense6_1(x)), self.dense6_2(x), self.dense6_3(x)


@dataclass
class Faces:
    """Detections in one image, best score first."""

    boxes: torch.Tensor  # (K, 4) x1, y1, x2, y2
    scores: torch.Tensor  # (K,)
    landmarks: torch.Tensor  # (K, 5, 2): eyes, nose tip, mouth corners; each pair image-left first

    def __len__(self) -> int:
        return len(self.scores)

    def cpu(self) -> Faces:
        return Faces(self.boxes.cpu(), self.scores.cpu(), self.landmarks.cpu())


@dataclass(frozen=True)
class DetectorConfig:
    min_face: float = 20.0  # pixels: the smallest face side searched for
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)  # P-Net, R-Net, O-Net face probability
    factor: float = 0.709  # pyramid scale step
    nms: tuple[float, float, float, float] = (0.5, 0.7, 0.7, 0.7)  # per scale, across scales, R-Net, O-Net (min)


def _logit(p: float) -> float:
    p = min(max(p, 1e-12), 1 - 1e-12)
    return math.log(p / (1 - p))


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return (x - 127.5) * 0.0078125


def _square(boxes: torch.Tensor) -> torch.Tensor:
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    side = (boxes[:, 2:] - boxes[:, :2]).max(dim=1, keepdim=True).values
    return torch.cat([centre - side / 2, centre + side / 2], dim=1)


def _regress(boxes: torch.Tensor, reg: torch.Tensor) -> torch.Tensor:
    size = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
    return boxes + reg * size


def _nms_min(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, threshold: float) -> torch.Tensor:
    """NMS by intersection over the smaller box (the final MTCNN step): drops boxes nested in a better one."""
    order = scores.argsort(descending=True, stable=True)
    boxes, idxs = boxes[order], idxs[order]
    lt = torch.maximum(boxes[:, None, :2], boxes[None, :, :2])
    rb = torch.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=2)
    area = (boxes[:, 2:] - boxes[:, :2]).prod(dim=1)
    overlap = inter / torch.minimum(area[:, None], area[None, :]).clamp(min=1e-6)
    suppress = (overlap > threshold) & (idxs[:, None] == idxs[None, :])
    keep = torch.ones(len(boxes), dtype=torch.bool, device=boxes.device)
    for i in range(len(boxes)):  # K is small after O-Net
        if keep[i]:
            later = suppress[i].clone()
            later[: i + 1] = False
            keep &= ~later
    return order[keep]


class MTCNN(nn.Module):
    """``detect(images)``: uint8 or float (N, 3, H, W) RGB 0-255, all of one size -> one ``Faces`` per image."""

    def __init__(self) -> None:
        super().__init__()
        self.pnet, self.rnet, self.onet = PNet(), RNet(), ONet()

    def _scales(self, height: int, width: int, config: DetectorConfig) -> list[float]:
        m = 12.0 / config.min_face
        side, scales = min(height, width) * m, []
        while side >= 12:
            scales.append(m * config.factor ** len(scales))
            side *= config.factor
        return scales

    def _crops(self, images: torch.Tensor, boxes: torch.Tensor, image_idx: torch.Tensor, size: int) -> torch.Tensor:
        rois = torch.cat([image_idx[:, None].to(boxes.dtype), boxes], dim=1)
        return _normalise(roi_align(images, rois, (size, size), spatial_scale=1.0, sampling_ratio=-1, aligned=True))

    @torch.inference_mode()
    def detect(self, images: torch.Tensor, config: DetectorConfig = DetectorConfig()) -> list[Faces]:
        device = next(self.parameters()).device
        images = images.to(device=device, dtype=torch.float32)
        n, _, height, width = images.shape
        t1, t2, t3 = config.thresholds
        # Stage 1: P-Net, a 12x12 window with stride 2 at each pyramid scale.
        found = []
        for scale in self._scales(height, width, config):
            size = (int(height * scale + 1), int(width * scale + 1))
            margin, reg = self.pnet(_normalise(F.interpolate(images, size=size, mode="area")))
            b, y, x = torch.nonzero(margin >= _logit(t1), as_tuple=True)
            if len(b) == 0:
                continue
            cells = torch.stack([x, y, x, y], dim=1).to(images.dtype) * 2 + torch.tensor([0, 0, 12, 12], device=device)
            boxes, scores = cells / scale, margin[b, y, x]
            offsets = reg[b, :, y, x]
            keep = _nms(boxes, scores, b, config.nms[0])
            found.append((boxes[keep], scores[keep], offsets[keep], b[keep]))
        if not found:
            return [self._empty(device) for _ in range(n)]
        boxes, scores, offsets, idx = (torch.cat(parts) for parts in zip(*found, strict=True))
        keep = _nms(boxes, scores, idx, config.nms[1])
        boxes, idx = _square(_regress(boxes[keep], offsets[keep])), idx[keep]
        # Stage 2: R-Net on 24x24 crops.
        margin, reg = self.rnet(self._crops(images, boxes, idx, 24))
        keep = margin >= _logit(t2)
        boxes, scores, reg, idx = boxes[keep], margin[keep], reg[keep], idx[keep]
        keep = _nms(boxes, scores, idx, config.nms[2])
        boxes, idx = _square(_regress(boxes[keep], reg[keep])), idx[keep]
        # Stage 3: O-Net on 48x48 crops: final score, box and five landmarks.
        margin, reg, marks = self.onet(self._crops(images, boxes, idx, 48))
        keep = margin >= _logit(t3)
        boxes, scores, reg, marks, idx = boxes[keep], margin[keep], reg[keep], marks[keep], idx[keep]
        size = boxes[:, 2:] - boxes[:, :2]
        landmarks = torch.stack([marks[:, :5], marks[:, 5:]], dim=2) * size[:, None, :] + boxes[:, None, :2]
        boxes = _regress(boxes, reg)
        keep = _nms_min(boxes, scores, idx, config.nms[3])
        boxes, scores, landmarks, idx = boxes[keep], torch.sigmoid(scores[keep]), landmarks[keep], idx[keep]
        return [Faces(boxes[idx == i], scores[idx == i], landmarks[idx == i]) for i in range(n)]

    @staticmethod
    def _empty(device: torch.device) -> Faces:
        zeros = functools.partial(torch.zeros, device=device)
        return Faces(zeros(0, 4), zeros(0), zeros(0, 5, 2))


def convert_mtcnn(members: dict[str, bytes]) -> dict[str, torch.Tensor]:
    """facenet-pytorch's three state dicts -> one MTCNN state dict (``pnet.*``, ``rnet.*``, ``onet.*``), strictly."""
    state = {}
    for path, data in members.items():
        net = path.rsplit("/", 1)[-1].removesuffix(".pt")
        part = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        state |= {f"{net}.{key}": value.float().contiguous() for key, value in part.items()}
    model = MTCNN()
    model.load_state_dict(state, strict=True)
    return model.state_dict()


MTCNN_SPEC = ModelSpec(
    name="mtcnn",
    architecture="mtcnn",
    source=PackageSource(
        package="facenet-pytorch",
        version="2.6.0",
        filename="facenet_pytorch-2.6.0-py3-none-any.whl",
        sha256="ecb82b27beb226d106f2219efe8f829b01b87a8595badd01545679bdb9f19cca",
        member=("facenet_pytorch/data/pnet.pt", "facenet_pytorch/data/rnet.pt", "facenet_pytorch/data/onet.pt"),
        license="MIT (facenet-pytorch); weights converted from the MTCNN authors' release",
    ),
    convert=convert_mtcnn,
    checkpoint_sha256="154e70c87dd9196b4426f436afb8c9812d501ea5fbbe1131fdc94625f0d0cd0a",
    card={
        "modality": "face",
        "task": "face-detection",
        "input": "RGB image, any size; pyramid from min_face 20 px, factor 0.709",
        "normalisation": "(pixel - 127.5) / 128",
        "output": "boxes, scores, five landmarks (eye centres, nose tip, mouth corners)",
        "default_threshold": [0.6, 0.7, 0.7],
    },
)


def _build(model: LoadedModel, device: torch.device) -> MTCNN:
    net = MTCNN()
    net.load_state_dict(model.state, strict=True)
    return net.to(device).eval()


ARCHITECTURES = (Architecture("mtcnn", "face-detection", build=_build),)
SPECS = (MTCNN_SPEC,)
