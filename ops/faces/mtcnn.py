"""MTCNN face detection (Zhang et al. 2016): P-Net over an image pyramid, R-Net and O-Net on crops, five landmarks.

The weights are the ones facenet-pytorch ships (``facenet_pytorch/data/{pnet,rnet,onet}.pt``, converted from the
authors' Caffe models), loaded strictly under their own key names. The cascade follows facenet-pytorch's
``detect_face`` step by step, so that our detections are its detections (``benchmarks/fidelity_faces.py`` measures
it on real photos, ``tests/ops/faces/test_mtcnn_reference.py`` pins it):
- the pyramid's scales are multiplied out one by one, levels resized by area averaging;
- P-Net's cells become boxes on the integer pixel grid, ``floor((2 * cell + 1) / scale)`` to
  ``floor((2 * cell + 12) / scale)``, 1-based inclusive pixel indices as in the authors' MATLAB code;
- crops for R-Net and O-Net are the boxes' whole pixels truncated and clipped to the image, resized by area
  averaging (computed exactly from a summed-area table, every box at once);
- the same conventions of width (``x2 - x1`` in the first regression, ``x2 - x1 + 1`` after), thresholds (``>=``
  for P-Net, ``>`` after) and the last NMS by intersection over the smaller box.
What is ours is the batching, on whatever device the model is on: images of any sizes go through each pyramid level
together (each scaled on its own, then zero-padded to a common size in batches that waste little, the padding masked
so that every image's candidates are its own), and every candidate of every image through R-Net and O-Net in one
call each. A photo archive of mixed sizes therefore runs in batches, with the detections each image gives alone.

NMS is exact and the same on every device: the first stage's boxes are integers, so their IoU is a ratio of
integers, which float64 decides exactly against the threshold (a pair exactly at it is kept, as the reference keeps
it); the kernel runs in float64 on the host, since torchvision's CUDA kernel compares in float32.

Returned coordinates are continuous pixel edges (x right, y down; pixel i spans [i, i+1)): the reference's boxes
shifted by its 1-based first pixel, its landmarks as they are (already edge coordinates).
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms

from ops.models.registry import Architecture, LoadedModel, ModelSpec, PackageSource


def _probability(logits: torch.Tensor) -> torch.Tensor:
    """The face probability as the reference computes it: softmax over (background, face) logits, in float32. Many
    strong candidates tie at exactly 1.0; NMS then keeps the first in candidate order, as the reference does."""
    return F.softmax(logits, dim=1)[:, 1]


def _rank_keys(scores: torch.Tensor, idxs: torch.Tensor, later_first: bool = False) -> torch.Tensor:
    """Distinct float64 keys ordering candidates by score, best first, ties by candidate order within their image
    (the reference's stable sorts of one image's candidates; ``later_first`` where it takes the last of a tie): the
    same for an image alone or anywhere in a batch."""
    n = len(scores)
    position = torch.zeros(n, dtype=torch.int64, device=scores.device)
    for i in idxs.unique():
        sel = idxs == i
        position[sel] = torch.arange(int(sel.sum()), device=scores.device)
    by_position = position.argsort(descending=later_first, stable=True)
    by_score = scores[by_position].argsort(descending=True, stable=True)
    keys = torch.empty(n, dtype=torch.float64, device=scores.device)
    keys[by_position[by_score]] = torch.arange(n, 0, -1, dtype=torch.float64, device=scores.device)
    return keys


def _nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, threshold: float) -> torch.Tensor:
    """Greedy NMS by IoU (areas ``(x2 - x1) * (y2 - y1)``, as torchvision's): boxes are kept best first and drop
    every later box of their image whose IoU with them is above ``threshold``. Run in float64 on the host on every
    device: integer boxes are then decided exactly (see the module's docstring)."""
    idxs_host = idxs.cpu()
    keys = _rank_keys(scores.float().cpu(), idxs_host)
    boxes = boxes.double().cpu()
    # torchvision keeps images apart by offsetting each image's boxes by more than the largest coordinate, which
    # assumes none is negative (boxes squared at an image's edge are): shifted to start at 0 first (exact for the
    # integer boxes, IoU unchanged).
    if len(boxes):
        boxes = boxes - boxes.min()
    return batched_nms(boxes, keys, idxs_host, threshold).to(idxs.device)


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
        return _probability(self.conv4_1(x)), self.conv4_2(x)

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
        return _probability(self.dense5_1(x)), self.dense5_2(x)


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
        return _probability(self.dense6_1(x)), self.dense6_2(x), self.dense6_3(x)


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


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return (x - 127.5) * 0.0078125


def _square(boxes: torch.Tensor) -> torch.Tensor:
    """The reference's ``rerec``: a square of the longer side, centred on the box."""
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = torch.maximum(w, h)
    x1 = boxes[:, 0] + w * 0.5 - side * 0.5
    y1 = boxes[:, 1] + h * 0.5 - side * 0.5
    return torch.stack([x1, y1, x1 + side, y1 + side], dim=1)


def _regress(boxes: torch.Tensor, reg: torch.Tensor, inclusive: bool) -> torch.Tensor:
    """Offsets as fractions of the box's size: ``x2 - x1`` after P-Net, ``x2 - x1 + 1`` (inclusive pixels) after
    R-Net and O-Net, as the reference does."""
    size = (boxes[:, 2:] - boxes[:, :2] + (1 if inclusive else 0)).repeat(1, 2)
    return boxes + reg * size


def _nms_min(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, threshold: float) -> torch.Tensor:
    """NMS by intersection over the smaller box in inclusive pixels (the final MTCNN step): drops boxes nested in a
    better one. The reference takes the last of boxes with equal scores first (numpy's argsort, ascending)."""
    order = _rank_keys(scores, idxs, later_first=True).argsort(descending=True)
    boxes, idxs = boxes[order], idxs[order]
    lt = torch.maximum(boxes[:, None, :2], boxes[None, :, :2])
    rb = torch.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    inter = (rb - lt + 1).clamp(min=0).prod(dim=2)
    area = (boxes[:, 2:] - boxes[:, :2] + 1).prod(dim=1)
    overlap = inter / torch.minimum(area[:, None], area[None, :])
    suppress = (overlap > threshold) & (idxs[:, None] == idxs[None, :])
    keep = torch.ones(len(boxes), dtype=torch.bool, device=boxes.device)
    for i in range(len(boxes)):  # K is small after O-Net
        if keep[i]:
            later = suppress[i].clone()
            later[: i + 1] = False
            keep &= ~later
    return order[keep]


def _windows(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The reference's ``pad``: each box's whole pixels (truncated, clipped to the image) as 0-based half-open
    [x0, y0, x1, y1) windows, int64."""
    b = boxes.trunc().to(torch.int64)
    x0, y0 = b[:, 0].clamp(min=1) - 1, b[:, 1].clamp(min=1) - 1
    x1, y1 = b[:, 2].clamp(max=width), b[:, 3].clamp(max=height)
    return torch.stack([x0, y0, x1, y1], dim=1)


def _area_crops(image: torch.Tensor, windows: torch.Tensor, size: int) -> torch.Tensor:
    """Each window of ``image`` (3, H, W) resized to ``size`` x ``size`` by area averaging, exactly as
    ``F.interpolate(crop, mode="area")`` (adaptive average pooling: output cell i covers input
    [floor(i n / size), ceil((i + 1) n / size))), for every window at once from one float64 summed-area table."""
    # The table covers only the windows' bounding rectangle: on a 100-megapixel photo a whole table in float64 would
    # take 2.4 GB for a few faces.
    left, top = int(windows[:, 0].min()), int(windows[:, 1].min())
    right, bottom = int(windows[:, 2].max()), int(windows[:, 3].max())
    windows = windows - torch.tensor([left, top, left, top], device=windows.device)
    region = image[:, top:bottom, left:right]
    table = F.pad(region.double().cumsum(1).cumsum(2), (1, 0, 1, 0))  # (3, h + 1, w + 1)
    cells = torch.arange(size + 1, device=windows.device)

    def edges(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = (hi - lo)[:, None]
        start = lo[:, None] + (cells[None, :-1] * n) // size
        end = lo[:, None] + -((-(cells[None, 1:]) * n) // size)  # ceil
        return start, end

    xs, xe = edges(windows[:, 0], windows[:, 2])  # (K, size)
    ys, ye = edges(windows[:, 1], windows[:, 3])
    width = table.shape[2]

    def at(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:  # table values at (K, size, size) corners
        flat = (rows[:, :, None] * width + cols[:, None, :]).flatten()
        return table.flatten(1)[:, flat].view(3, *rows.shape[:1], size, size)

    sums = at(ye, xe) - at(ys, xe) - at(ye, xs) + at(ys, xs)
    area = ((ye - ys)[:, :, None] * (xe - xs)[:, None, :]).to(torch.float64)
    return (sums / area).permute(1, 0, 2, 3).float()


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
        # Multiplied out one by one as the reference does: factor ** k rounds differently, and a scale one ulp away
        # can change a level's size (int(h * scale + 1)) or a box's floor.
        m = 12.0 / config.min_face
        side, scale, scales = min(height, width) * m, m, []
        while side >= 12:
            scales.append(scale)
            scale *= config.factor
            side *= config.factor
        return scales

    def _crops(self, images: list[torch.Tensor], boxes: torch.Tensor, image_idx: torch.Tensor, size: int):
        """Crops of ``boxes`` (1-based inclusive pixel indices) from their own images, as the reference cuts them
        (see ``_windows`` and ``_area_crops``), normalised; and which boxes have a crop at all (a box wholly outside
        its image has none: the reference would misalign its crops, here it is dropped)."""
        crops = torch.empty(len(boxes), 3, size, size, device=boxes.device)
        valid = torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)
        for i in image_idx.unique().tolist():
            sel = (image_idx == i).nonzero(as_tuple=True)[0]
            windows = _windows(boxes[sel], *images[i].shape[-2:])
            ok = (windows[:, 2] > windows[:, 0]) & (windows[:, 3] > windows[:, 1])
            valid[sel] = ok
            if ok.any():
                crops[sel[ok]] = _area_crops(images[i], windows[ok], size)
        return _normalise(crops), valid

    def _pnet_level(self, images: list[torch.Tensor], members: list[int], scale: float, threshold: float) -> list:
        """P-Net on ``members`` at one pyramid scale, batched with zero padding (see ``PNet.forward``): candidate
        cells as (image index, y, x, probability, offsets)."""
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
            prob, reg = self.pnet(_normalise(batch), sizes if padded else None)
            valid = torch.zeros_like(prob, dtype=torch.bool)
            for row, (h, w) in enumerate(sizes):
                oh, ow = PNet.output_size(h, w)
                valid[row, : max(oh, 0), : max(ow, 0)] = True
            b, y, x = torch.nonzero(valid & (prob >= threshold), as_tuple=True)
            owner = torch.tensor([members[i] for i in chunk], device=prob.device)[b]
            out.append((owner, y, x, prob[b, y, x], reg[b, :, y, x]))
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
            for b, y, x, scores, offsets in self._pnet_level(images, members, scale, t1):
                if len(b) == 0:
                    continue
                cell = torch.stack([x, y], dim=1).float() * 2  # float32 as the reference computes them
                boxes = torch.cat([((cell + 1) / scale).floor(), ((cell + 12) / scale).floor()], dim=1)
                keep = _nms(boxes, scores, b, config.nms[0])
                found.append((boxes[keep], scores[keep], offsets[keep], b[keep]))
        if not found:
            return [self._empty(device) for _ in range(n)]
        boxes, scores, offsets, idx = (torch.cat(parts) for parts in zip(*found, strict=True))
        keep = _nms(boxes, scores, idx, config.nms[1])
        boxes, idx = _square(_regress(boxes[keep], offsets[keep], inclusive=False)), idx[keep]
        # Stage 2: R-Net on 24x24 crops.
        crops, valid = self._crops(images, boxes, idx, 24)
        prob, reg = self.rnet(crops)
        keep = valid & (prob > t2)
        boxes, scores, reg, idx = boxes[keep], prob[keep], reg[keep], idx[keep]
        keep = _nms(boxes, scores, idx, config.nms[2])
        boxes, idx = _square(_regress(boxes[keep], reg[keep], inclusive=True)), idx[keep]
        # Stage 3: O-Net on 48x48 crops: final score, box and five landmarks.
        crops, valid = self._crops(images, boxes, idx, 48)
        prob, reg, marks = self.onet(crops)
        keep = valid & (prob > t3)
        boxes, scores, reg, marks, idx = boxes[keep], prob[keep], reg[keep], marks[keep], idx[keep]
        size = boxes[:, 2:] - boxes[:, :2] + 1
        landmarks = torch.stack([marks[:, :5], marks[:, 5:]], dim=2) * size[:, None, :] + boxes[:, None, :2] - 1
        boxes = _regress(boxes, reg, inclusive=True)
        keep = _nms_min(boxes, scores, idx, config.nms[3])
        boxes, scores, landmarks, idx = boxes[keep], scores[keep], landmarks[keep], idx[keep]
        boxes = boxes - torch.tensor([1.0, 1.0, 0.0, 0.0], device=device)  # 1-based first pixel -> its left edge
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
