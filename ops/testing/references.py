"""The reference implementations our face ports are measured against, on the same real photos.

- facenet-pytorch's MTCNN (the implementation our MTCNN weights come from), run as its README shows;
- dlib's whole face pipeline (dlib-bin): HOG detector, 5-point shape predictor, ``get_face_chip``, ResNet.

``detection_agreement`` compares two detectors' faces photo by photo: faces found, box IoU, and landmark distance as
a share of the eye distance. Used by the fidelity tests and ``benchmarks/fidelity_faces.py``; the product never
imports it.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ops.media.images import decode_image, sample_video

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass
class Detections:
    """One photo's faces: edge coordinates (pixel i spans [i, i+1)), landmarks eyes, nose, mouth corners."""

    boxes: np.ndarray  # (K, 4)
    landmarks: np.ndarray  # (K, 5, 2)


def real_photos(faces: Path, clip_fps: float = 1.0) -> list[tuple[str, np.ndarray]]:
    """Every photo under ``faces`` (``../shared/data/faces``) and frames of its clips, as (name, RGB uint8)."""
    out = []
    for path in sorted(p for p in faces.rglob("*") if p.suffix.lower() in PHOTO_SUFFIXES):
        out.append((str(path.relative_to(faces)), decode_image(path.read_bytes()).rgb))
    for path in sorted(faces.rglob("*.mp4")):
        with path.open("rb") as f:
            for frame in sample_video(f, clip_fps, max_frames=1000):
                out.append((f"{path.relative_to(faces)}#t={frame.timestamp:.1f}", frame.rgb))
    return out


class FacenetMTCNN:
    """facenet-pytorch's MTCNN with its own weights and defaults, every face kept, best first."""

    def __init__(self) -> None:
        from facenet_pytorch import MTCNN

        self.model = MTCNN(keep_all=True, select_largest=False, post_process=False, device="cpu")

    def __call__(self, rgb: np.ndarray) -> Detections:
        from PIL import Image

        boxes, _, points = self.model.detect(Image.fromarray(rgb), landmarks=True)
        if boxes is None:
            return Detections(np.zeros((0, 4), np.float32), np.zeros((0, 5, 2), np.float32))
        # Its boxes are MATLAB's 1-based inclusive pixel indices (the first pixel is 1): the left and top edges are one
        # less. Its landmarks are already edge coordinates (x1 - 1 + p * width).
        boxes = boxes.astype(np.float64) - np.array([1, 1, 0, 0])
        return Detections(boxes.astype(np.float32), points.astype(np.float32))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    lt, rb = np.maximum(a[:2], b[:2]), np.minimum(a[2:], b[2:])
    inter = float(np.prod(np.clip(rb - lt, 0, None)))
    return inter / (float(np.prod(a[2:] - a[:2])) + float(np.prod(b[2:] - b[:2])) - inter)


def pair_faces(ours: np.ndarray, theirs: np.ndarray, min_iou: float = 0.3) -> list[tuple[int, int, float]]:
    """Greedy one-to-one pairing of two box sets by IoU, best pairs first: (our index, their index, IoU)."""
    pairs = sorted(((iou(a, b), i, j) for i, a in enumerate(ours) for j, b in enumerate(theirs)), reverse=True)
    used_a, used_b, out = set(), set(), []
    for overlap, i, j in pairs:
        if overlap >= min_iou and i not in used_a and j not in used_b:
            used_a.add(i)
            used_b.add(j)
            out.append((i, j, overlap))
    return out


@dataclass
class Agreement:
    photos: int
    photos_same_count: int
    faces_ours: int
    faces_theirs: int
    paired: int
    ious: list[float]
    landmark_errors: list[float]  # mean landmark distance / the reference's eye distance, per paired face
    box_shifts: list[float]  # the largest difference of a box coordinate, pixels, per paired face
    different: list[str]  # photos whose face counts differ, with the counts

    def summary(self) -> str:
        q = _quantiles
        return (
            f"{self.photos_same_count}/{self.photos} photos with the same faces ({self.faces_ours} ours, "
            f"{self.faces_theirs} reference, {self.paired} paired); box IoU {q(self.ious, min)}; "
            f"landmark error / eye distance {q(self.landmark_errors, max)}; box coordinates within 1 px on "
            f"{np.mean(np.array(self.box_shifts) <= 1) if self.box_shifts else 1:.1%} of paired faces "
            f"(largest difference {max(self.box_shifts, default=0):.2f} px)"
        )


def _quantiles(values: list[float], worst) -> str:
    if not values:
        return "-"
    return (
        f"median {statistics.median(values):.3f}, 5th/95th pct {np.percentile(values, 5):.3f}/"
        f"{np.percentile(values, 95):.3f}, worst {worst(values):.3f}"
    )


def detection_agreement(names: list[str], ours: list[Detections], theirs: list[Detections]) -> Agreement:
    ious, errors, shifts, different, same = [], [], [], [], 0
    paired = 0
    for name, a, b in zip(names, ours, theirs, strict=True):
        if len(a.boxes) == len(b.boxes):
            same += 1
        else:
            different.append(f"{name} ({len(a.boxes)} ours, {len(b.boxes)} reference)")
        for i, j, overlap in pair_faces(a.boxes, b.boxes):
            paired += 1
            ious.append(overlap)
            shifts.append(float(np.abs(a.boxes[i] - b.boxes[j]).max()))
            eyes = float(np.linalg.norm(b.landmarks[j, 1] - b.landmarks[j, 0]))
            errors.append(float(np.linalg.norm(a.landmarks[i] - b.landmarks[j], axis=1).mean()) / max(eyes, 1e-6))
    return Agreement(
        photos=len(names),
        photos_same_count=same,
        faces_ours=sum(len(a.boxes) for a in ours),
        faces_theirs=sum(len(b.boxes) for b in theirs),
        paired=paired,
        ious=ious,
        landmark_errors=errors,
        box_shifts=shifts,
        different=different,
    )
