"""MTCNN face detection (Zhang et al. 2016): P-Net over an image pyramid, R-Net and O-Net on crops, five landmarks.

The weights are the ones facenet-pytorch ships (``facenet_pytorch/data/{pnet,rnet,onet}.pt``, converted from the
authors' Caffe models), loaded strictly under their own key names. The cascade is ours and batched, on whatever
device the model is on: images of any sizes go through each pyramid level together (each scaled on its own, then
zero-padded to a common size in batches that waste little, the padding masked so that every image's candidates are
its own), and every candidate of every image through R-Net and O-Net in one call each. A photo archive of mixed
sizes therefore runs in batches, with the detections each image gives alone.

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
    # Pyramid cells lie on a grid, so many pairs overlap by exactly the threshold (two 12-pixel windows 4 pixels
    # apart: IoU 0.5), and the CPU and CUDA kernels round such a pair's IoU to different sides of it. A pair within
    # 1e-6 of the threshold counts as at it (kept) on every device; the CUDA kernel takes the threshold as float32,
    # whose spacing near 0.5 is 6e-8, so a smaller allowance would vanish there.
    return batched_nms(boxes.double(), keys, idxs, threshold + 1e-6)


class PNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1, self.conv4_2 = nn.Conv2d(32, 2, 1), nn.Conv2d(32, 4, 1)

    def forward(self, x: torch.Tensor, sizes: list[tuple[int, int]] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``sizes``: each image's own (height, width) when the batch is zero-padded to a common size. The first
        layer's outputs beyond them are set to -inf before the ceil-mode pooling, so that the cells inside each
        image's own output map (``output_size``) are what that image alone gives; the cells beyond are not."""
        x = self.prelu1(self.conv1(x))
        if sizes is not None:
            rows = torch.arange(x.shape[2], device=x.device)
            cols = torch.arange(x.shape[3], device=x.device)
            h = torch.tensor([s[0] - 2 for s in sizes], device=x.device)
            w = torch.tensor([s[1] - 2 for s in sizes], device=x.device)
            outside = (rows[None, :, None] >= h[:, None, None]) | (cols[None, None, :] >= w[:, None, None])
            x = x.masked_fill(outside[:, None], float("-inf"))
        x = F.max_pool2d(x, 2, 2, ceil_mode=True)
        if sizes is not None:  # windows wholly in the padding: finite again, so that no convolution method (a
            x = x.nan_to_num(neginf=0.0)  # Winograd tile, say) carries inf into an image's own cells
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return _margin(self.conv4_1(x)), self.conv4_2(x)

    @staticmethod
    def output_size(height: int, width: int) -> tuple[int, int]:
        """The output map of an input of this size: 3x3 convolution, 2x2 ceil-mode pooling, two 3x3 convolutions."""

        def side(n: int) -> int:
            n -= 2
            pooled = -(-(n - 2) // 2) + 1
            if (pooled - 1) * 2 >= n:  # PyTorch: the last window must start inside the input
                pooled -= 1
            return pooled - 4

        return side(height), side(width)


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


# Images of different sizes share a P-Net call when, zero-padded to the largest, they cover at most this many times
# their own area (the padding adds at most half).
MAX_PADDING = 1.5


class MTCNN(nn.Module):
    """``detect(images)``: uint8 or float RGB 0-255, a (N, 3, H, W) batch or a list of (3, H, W) images of any
    sizes -> one ``Faces`` per image, the same as each image detected alone."""

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

    def _crops(
        self, images: list[torch.Tensor], boxes: torch.Tensor, image_idx: torch.Tensor, size: int
    ) -> torch.Tensor:
        """Crops of ``boxes`` (in their images' pixels), each from its own image: ``roi_align`` runs on images of one
        size together (its edge handling is the image's own, so a padded canvas would change crops at the edges)."""
        crops = torch.empty(len(boxes), 3, size, size, device=boxes.device)
        for members in _by_size(images).values():
            local = torch.full((len(images),), -1, dtype=torch.long, device=boxes.device)
            local[members] = torch.arange(len(members), device=boxes.device)
            sel = local[image_idx] >= 0
            if sel.any():
                rois = torch.cat([local[image_idx[sel]][:, None].to(boxes.dtype), boxes[sel]], dim=1)
                stack = torch.stack([images[j] for j in members])
                crops[sel] = roi_align(stack, rois, (size, size), spatial_scale=1.0, sampling_ratio=-1, aligned=True)
        return _normalise(crops)

    def _pnet_level(self, images: list[torch.Tensor], members: list[int], scale: float, threshold: float) -> list:
        """P-Net on ``members`` at one pyramid scale, batched with zero padding (see ``PNet.forward``): candidate
        cells as (image index, y, x, margin, offsets)."""
        scaled = [
            F.interpolate(images[j][None], size=(int(h * scale + 1), int(w * scale + 1)), mode="area")[0]
            for j in members
            for h, w in [images[j].shape[-2:]]
        ]
        out = []
        for chunk in _chunks(scaled):
            sizes = [tuple(scaled[i].shape[-2:]) for i in chunk]
            height, width = max(s[0] for s in sizes), max(s[1] for s in sizes)
            batch = torch.zeros(len(chunk), 3, height, width, device=scaled[0].device)
            for row, i in enumerate(chunk):
                batch[row, :, : sizes[row][0], : sizes[row][1]] = scaled[i]
            padded = any(s != (height, width) for s in sizes)
            margin, reg = self.pnet(_normalise(batch), sizes if padded else None)
            valid = torch.zeros_like(margin, dtype=torch.bool)
            for row, (h, w) in enumerate(sizes):
                oh, ow = PNet.output_size(h, w)
                valid[row, : max(oh, 0), : max(ow, 0)] = True
            b, y, x = torch.nonzero(valid & (margin >= threshold), as_tuple=True)
            owner = torch.tensor([members[i] for i in chunk], device=margin.device)[b]
            out.append((owner, y, x, margin[b, y, x], reg[b, :, y, x]))
        return out

    @torch.inference_mode()
    def detect(
        self, images: torch.Tensor | list[torch.Tensor], config: DetectorConfig = DetectorConfig()
    ) -> list[Faces]:
        # Full float32 convolutions: cuDNN's default TF32 moves P-Net's logits by ~4e-3, enough to move candidates
        # across the thresholds, and a detection must not depend on the device it ran on. These networks are
        # small enough that TF32 saves little.
        tf32 = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = False
        try:
            return self._detect(images, config)
        finally:
            torch.backends.cudnn.allow_tf32 = tf32

    def _detect(self, images: torch.Tensor | list[torch.Tensor], config: DetectorConfig) -> list[Faces]:
        device = next(self.parameters()).device
        images = [image.to(device=device, dtype=torch.float32) for image in images]
        n = len(images)
        t1, t2, t3 = config.thresholds
        # Stage 1: P-Net, a 12x12 window with stride 2 at each pyramid scale. The scales are one sequence for every
        # image (min_face and factor fix them); an image takes part in as many as its shorter side allows.
        levels = [self._scales(*image.shape[-2:], config) for image in images]
        found = []
        for level, scale in enumerate(max(levels, key=len) if levels else []):
            members = [j for j in range(n) if len(levels[j]) > level]
            for b, y, x, scores, offsets in self._pnet_level(images, members, scale, _logit(t1)):
                if len(b) == 0:
                    continue
                cells = torch.stack([x, y, x, y], dim=1).float() * 2 + torch.tensor([0, 0, 12, 12], device=device)
                boxes = cells / scale
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


def _by_size(images: list[torch.Tensor]) -> dict[tuple[int, int], list[int]]:
    groups: dict[tuple[int, int], list[int]] = {}
    for j, image in enumerate(images):
        groups.setdefault(tuple(image.shape[-2:]), []).append(j)
    return groups


def _chunks(scaled: list[torch.Tensor]) -> list[list[int]]:
    """Images (indices into ``scaled``) in batches whose zero padding to the batch's largest height and width adds at
    most MAX_PADDING times their own area in all: largest first, a new batch where the next would pad too much."""
    order = sorted(range(len(scaled)), key=lambda i: -scaled[i].shape[-2] * scaled[i].shape[-1])
    chunks: list[list[int]] = []
    height = width = area = 0
    for i in order:
        h, w = scaled[i].shape[-2:]
        grown = max(height, h) * max(width, w) * ((len(chunks[-1]) if chunks else 0) + 1)
        if chunks and grown <= MAX_PADDING * (area + h * w):
            chunks[-1].append(i)
            height, width, area = max(height, h), max(width, w), area + h * w
        else:
            chunks.append([i])
            height, width, area = h, w, h * w
    return chunks
