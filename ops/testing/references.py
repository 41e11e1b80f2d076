"""The reference implementations our face ports are measured against, on the same real photos.

- facenet-pytorch's MTCNN (the implementation our MTCNN weights come from), run as its README shows;
- dlib's whole face pipeline (dlib-bin): HOG detector, 5-point shape predictor, ``get_face_chip``, ResNet.

``detection_agreement`` compares two detectors' faces photo by photo: faces found, box IoU, and landmark distance as
a share of the eye distance; ``chip_geometry`` how our chips show a face against dlib's chips of it; the one-person
photos (``labelled_photos``) give verification pairs. Used by the fidelity tests, ``benchmarks/fidelity_faces.py``
and ``benchmarks/bench_faces.py``; the product never imports it.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ops.faces.align import dlib_unit, similarity
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


@dataclass
class DlibFace:
    box: np.ndarray  # (4,) the HOG detector's rectangle, edge coordinates
    chips: dict[int, np.ndarray]  # size -> (2, 3) what get_face_chip(size, 0.25) samples: chip -> image pixel centres
    descriptor: np.ndarray  # (128,) compute_face_descriptor, as dlib returns it (not unit length)


class DlibPipeline:
    """dlib's whole face pipeline, as face_recognition runs it: HOG detector (one upsampling), the 5-point shape
    predictor, ``get_face_chip(size=150, padding=0.25)`` and the ResNet (``compute_face_descriptor``)."""

    def __init__(self, recogniser: Path, shapes: Path) -> None:
        import dlib

        self.dlib = dlib
        self.detector = dlib.get_frontal_face_detector()
        self.shapes = dlib.shape_predictor(str(shapes))
        self.recogniser = dlib.face_recognition_model_v1(str(recogniser))

    def __call__(self, rgb: np.ndarray, sizes: tuple[int, ...] = (150, 300)) -> list[DlibFace]:
        """Every face dlib finds; its chips' geometry at ``sizes`` (150: the recogniser's, 300: FairFace's)."""
        rgb = np.ascontiguousarray(rgb)
        faces = []
        for rect in self.detector(rgb, 1):
            shape = self.shapes(rgb, rect)
            chips = {size: chip_mapping(self.dlib.get_face_chip_details(shape, size, 0.25)) for size in sizes}
            descriptor = np.array(self.recogniser.compute_face_descriptor(rgb, shape), np.float32)
            box = np.array([rect.left(), rect.top(), rect.right() + 1, rect.bottom() + 1], np.float32)
            faces.append(DlibFace(box, chips, descriptor))
        return faces


def dlib_files(folder: Path) -> tuple[Path, Path]:
    """dlib's recogniser and 5-point shape predictor files, from the verified package of ``dlib-resnet-v1``, kept in
    ``folder``."""
    from ops.models.catalogue import source_members

    names = ("dlib_face_recognition_resnet_model_v1.dat", "shape_predictor_5_face_landmarks.dat")
    paths = tuple(folder / name for name in names)
    if not all(p.exists() for p in paths):
        folder.mkdir(parents=True, exist_ok=True)
        members = source_members("dlib-resnet-v1", tuple(f"face_recognition_models/models/{n}" for n in names))
        for path in paths:
            path.write_bytes(members[f"face_recognition_models/models/{path.name}"])
    return paths


def chip_mapping(details) -> np.ndarray:
    """The affine map dlib's ``extract_image_chip`` samples with (``get_mapping_to_chip``, inverted): chip pixels
    (0, 0), (cols - 1, 0), (cols - 1, rows - 1) onto the corners of the chip's rectangle rotated about its centre."""
    r, angle = details.rect, details.angle
    centre = np.array([(r.left() + r.right()) / 2, (r.top() + r.bottom()) / 2])
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    corners = np.array([[r.left(), r.top()], [r.right(), r.top()], [r.right(), r.bottom()]])
    image = (corners - centre) @ rot.T + centre
    chip = np.array([[0, 0, 1], [details.cols - 1, 0, 1], [details.cols - 1, details.rows - 1, 1]], np.float64)
    return np.linalg.solve(chip, image).T


def chip_agreement(ours: np.ndarray, theirs: np.ndarray, size: int) -> tuple[float, np.ndarray]:
    """How our chip (chip -> image map ``ours``, 2x3) shows a face against dlib's (``theirs``): the ratio of face
    sizes in the chips (> 1: our face is larger), and where our chip's centre lies in theirs, (dx, dy) chip pixels
    from its centre."""
    scale = np.linalg.norm(theirs[:, 0]) / np.linalg.norm(ours[:, 0])
    centre = np.array([(size - 1) / 2, (size - 1) / 2, 1.0])
    inverse = np.linalg.inv(np.vstack([theirs, [0, 0, 1]]))[:2]
    where = inverse @ np.append(ours @ centre, 1.0)
    return float(scale), where - centre[:2]


# Who is in the one-person photos of ../shared/data/faces (face_recognition's examples): the folder names of
# knn_examples/train, and these. The two-person photos are left out: which face is whom is not written anywhere.
_PEOPLE = {
    "knn_examples/test/alex_lacamoire1.jpg": "alex_lacamoire",
    "knn_examples/test/johnsnow_test1.jpg": "kit_harington",
    "knn_examples/test/obama1.jpg": "obama",
    "obama-240p.jpg": "obama",
    "obama-1080p.jpg": "obama",
    "alex-lacamoire.png": "alex_lacamoire",
    "lin-manuel-miranda.png": "lin_manuel_miranda",
}


def labelled_photos(faces: Path) -> list[tuple[str, str, np.ndarray]]:
    """The one-person photos under ``faces`` as (name, person, RGB uint8)."""
    out = []
    for path in sorted(p for p in faces.rglob("*") if p.suffix.lower() in PHOTO_SUFFIXES):
        name = str(path.relative_to(faces))
        parts = path.relative_to(faces).parts
        person = _PEOPLE.get(name) or (parts[-2] if parts[:2] == ("knn_examples", "train") else None)
        if person:
            out.append((name, person, decode_image(path.read_bytes()).rgb))
    return out


def largest(boxes: np.ndarray) -> int | None:
    """The index of the largest box (the photo's subject), None when there is none."""
    if len(boxes) == 0:
        return None
    return int(np.argmax((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))


def verification_pairs(people: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair of faces (i < j) and whether they are the same person."""
    i, j = np.triu_indices(len(people), 1)
    return i, j, np.array([people[a] == people[b] for a, b in zip(i, j, strict=True)])


def euclidean_scores(vectors: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Minus the Euclidean distance of each pair (higher is more alike): dlib's own measure, 0.6 its threshold."""
    return -np.linalg.norm(vectors[i] - vectors[j], axis=1)


def paired_faces(photos: list[tuple[str, np.ndarray]], pipeline, dlib: DlibPipeline) -> list[tuple]:
    """Our whole face path (a ``FacePipeline`` with dlib's ResNet) and dlib's on every photo; the faces both find,
    paired by box overlap: (photo name, our ``FrameFaces``, the face's index there, dlib's ``DlibFace``)."""
    pairs = []
    for name, rgb in photos:
        (ours,) = pipeline([rgb])
        theirs = dlib(rgb)
        for i, j, _ in pair_faces(ours.boxes, np.array([f.box for f in theirs]).reshape(-1, 4)):
            pairs.append((name, ours, i, theirs[j]))
    return pairs


def chip_geometry(pairs: list, points: torch.Tensor, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per face: our chip's face size / dlib's, and our chip centre's (dx, dy) in dlib's chip (pixels)."""
    ratios, offsets = [], []
    for _, ours, i, theirs in pairs:
        mapping = similarity(points, torch.from_numpy(ours.landmarks[i : i + 1]).double() - 0.5)[0].numpy()
        ratio, offset = chip_agreement(mapping, theirs.chips[size], size)
        ratios.append(ratio)
        offsets.append(offset)
    return np.array(ratios), np.array(offsets)


def fit_template(pairs: list) -> np.ndarray:
    """The mean over faces of our five points mapped into dlib's chip, in dlib's unit face frame."""
    units = []
    for _, ours, i, theirs in pairs:
        image = ours.landmarks[i].astype(np.float64) - 0.5  # pixel centres
        inverse = np.linalg.inv(np.vstack([theirs.chips[150], [0, 0, 1]]))[:2]
        chip = np.c_[image, np.ones(5)] @ inverse.T
        units.append(dlib_unit(torch.from_numpy(chip), 150, 0.25).numpy())
    return np.mean(units, axis=0)
