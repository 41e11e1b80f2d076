"""Face pipeline throughput against the dlib pipeline (face_recognition's) on the same 640x480 JPEGs, interleaved.

    python benchmarks/bench_faces.py [--rounds 3] [--batch 8] [--device cpu|cuda]

Contenders, each over every image, decoding included:
- dlib (dlib-bin): HOG detector with one upsampling (face_recognition's default), the 5-point shape predictor,
  ``compute_face_descriptor``; one image at a time, single-threaded as dlib-bin is;
- ours, in one process: Pillow decode, MTCNN, alignment, the dlib ResNet port, batches of --batch images; with all
  cores and with one thread (per-core figure), and where the time goes (decode, detect + align, embed).
Prints faces per second, the ratio to dlib, and whether both pipelines make the same verification decisions
(Euclidean distance 0.6 on every pair of faces both found). Images: ../shared/data/faces cut to 640x480 when
present, else synthetic portraits. With ../shared, also each pipeline's verification AUC and equal error rate on
every pair of its one-person photos at their own sizes (the subject: the largest face), the same pairs for both.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ops.faces.pipeline import FacePipeline  # noqa: E402
from ops.matching.metrics import auc, equal_error_rate  # noqa: E402
from ops.media.images import decode_image  # noqa: E402
from ops.models.catalogue import build, load, models_root, pull  # noqa: E402
from ops.models.device import best_device  # noqa: E402
from ops.testing.references import (  # noqa: E402
    DlibPipeline,
    dlib_files,
    euclidean_scores,
    labelled_photos,
    largest,
    verification_pairs,
)
from ops.testing.samples import portrait  # noqa: E402

SHARED_FACES = Path(__file__).resolve().parents[2] / "shared" / "data" / "faces"


def images_640x480() -> list[bytes]:
    """JPEGs of 640x480: the real photos fitted into that frame, or synthetic portraits placed in one."""
    out = []
    paths = sorted(SHARED_FACES.glob("**/*.jpg"))
    if paths:
        for path in paths:
            im = Image.open(path).convert("RGB")
            im.thumbnail((640, 480))
            canvas = Image.new("RGB", (640, 480), (128, 128, 128))
            canvas.paste(im, ((640 - im.width) // 2, (480 - im.height) // 2))
            out.append(canvas)
    else:
        rng = np.random.default_rng(0)
        for i in range(16):
            canvas = Image.new("RGB", (640, 480), tuple(int(v) for v in rng.integers(60, 200, 3)))
            for j in range(2):
                canvas.paste(Image.fromarray(portrait(rng, i + j)).resize((192, 240)), (80 + 280 * j, 120))
            out.append(canvas)
    encoded = []
    for im in out:
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=90)
        encoded.append(buf.getvalue())
    return encoded


def dlib_pipeline(images: list[bytes], files: dict[str, Path]):
    import dlib

    detector = dlib.get_frontal_face_detector()
    shapes = dlib.shape_predictor(str(files["shape"]))
    recogniser = dlib.face_recognition_model_v1(str(files["dlib"]))

    def run() -> list[list[tuple[np.ndarray, np.ndarray]]]:
        results = []
        for data in images:
            rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
            faces = []
            for d in detector(rgb, 1):
                descriptor = np.array(recogniser.compute_face_descriptor(rgb, shapes(rgb, d)))
                faces.append((np.array([d.left(), d.top(), d.right(), d.bottom()], np.float32), descriptor))
            results.append(faces)
        return results

    return run


def mixed_sizes(images: list[bytes], seed: int = 1) -> list[bytes]:
    """The same photos at other sizes and shapes (0.6x to 1.4x each side): a photo archive, where sizes differ."""
    rng, out = np.random.default_rng(seed), []
    for data in images:
        im = Image.open(io.BytesIO(data))
        w, h = (int(side * f) for side, f in zip(im.size, rng.uniform(0.6, 1.4, 2), strict=True))
        buf = io.BytesIO()
        im.resize((w, h), Image.Resampling.BILINEAR).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def our_pipeline(images: list[bytes], pipeline: FacePipeline, batch: int, clock: dict[str, float]):
    def run() -> list[list[tuple[np.ndarray, np.ndarray]]]:
        results = []
        for i in range(0, len(images), batch):
            t0 = time.perf_counter()
            frames = [decode_image(data).rgb for data in images[i : i + batch]]
            t1 = time.perf_counter()
            found = pipeline(frames, clock=clock)
            clock["decode"] += t1 - t0
            results += [[(f.boxes[k], f.embeddings[k]) for k in range(len(f.scores))] for f in found]
        return results

    return run


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    lt, rb = np.maximum(a[:2], b[:2]), np.minimum(a[2:], b[2:])
    inter = float(np.prod(np.clip(rb - lt, 0, None)))
    return inter / (np.prod(a[2:] - a[:2]) + np.prod(b[2:] - b[:2]) - inter)


def agreement(ours: list, theirs: list) -> tuple[int, float]:
    """Faces found by both (box overlap), and the share of their pairs given the same decision at 0.6."""
    a, b = [], []
    for mine, ref in zip(ours, theirs, strict=True):
        for box, emb in mine:
            best = max(ref, key=lambda r: _iou(box, r[0]), default=None)
            if best is not None and _iou(box, best[0]) > 0.3:
                a.append(emb)
                b.append(best[1])
    a, b = np.array(a), np.array(b)
    da = np.linalg.norm(a[:, None] - a[None], axis=2) < 0.6
    db = np.linalg.norm(b[:, None] - b[None], axis=2) < 0.6
    upper = np.triu_indices(len(a), 1)
    return len(a), float((da[upper] == db[upper]).mean()) if len(upper[0]) else 1.0


def verification(pipeline: FacePipeline, dlib: DlibPipeline) -> None:
    """AUC and EER of both pipelines on every pair of the one-person photos both find a face in."""
    ours, theirs, people = [], [], []
    for _, person, rgb in labelled_photos(SHARED_FACES):
        (found,) = pipeline([rgb])
        faces = dlib(rgb, sizes=(150,))
        k, kd = largest(found.boxes), largest(np.array([f.box for f in faces]).reshape(-1, 4))
        if k is not None and kd is not None:
            ours.append(found.embeddings[k])
            theirs.append(faces[kd].descriptor)
            people.append(person)
    i, j, same = verification_pairs(people)
    print(
        f"  verification, {len(people)} one-person photos of {len(set(people))} people, {len(same)} pairs "
        f"({same.sum()} same person), Euclidean distance:"
    )
    for name, vectors in (("ours", ours), ("dlib", theirs)):
        scores = euclidean_scores(np.array(vectors), i, j)
        errors = int(((scores > -0.6) != same).sum())
        print(
            f"    {name:5s} AUC {auc(scores, same):.4f}, EER {equal_error_rate(scores, same):.2%}, "
            f"{errors} wrong decisions at dlib's 0.6"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--device", default=str(best_device()))
    args = parser.parse_args()

    root = models_root()
    for name in ("mtcnn", "dlib-resnet-v1"):
        if not root.join(name, "card.json").exists():
            pull(name, root)
    recogniser, shapes = dlib_files(Path(root.path) / "_dlib_reference")
    files = {"dlib": recogniser, "shape": shapes}

    images = images_640x480()
    device = torch.device(args.device)
    pipeline = FacePipeline(build(load("mtcnn", root), device), build(load("dlib-resnet-v1", root), device))
    cores = torch.get_num_threads()
    clock = {"decode": 0.0, "detect": 0.0, "align": 0.0, "embed": 0.0}
    contenders = {"dlib": dlib_pipeline(images, files), "ours": our_pipeline(images, pipeline, args.batch, clock)}
    if device.type == "cpu" and cores > 1:
        contenders["ours, 1 thread"] = contenders["ours"]
    times = {k: [] for k in contenders}
    results = {}
    for _ in range(args.rounds):
        for name, run in contenders.items():
            torch.set_num_threads(1 if name.endswith("1 thread") else cores)
            if name == "ours":
                clock.update(decode=0.0, detect=0.0, align=0.0, embed=0.0)
            start = time.perf_counter()
            results[name] = run()
            times[name].append(time.perf_counter() - start)
            if name == "ours":
                last_clock = dict(clock)
    torch.set_num_threads(cores)

    faces = {k: sum(len(r) for r in v) for k, v in results.items()}
    print(
        f"{len(images)} JPEGs of 640x480, {args.rounds} rounds interleaved, medians; device {device}, {cores} threads"
    )
    base_faces = faces["dlib"] / statistics.median(times["dlib"])
    base_images = len(images) / statistics.median(times["dlib"])
    for name in contenders:
        rate, per_image = faces[name] / statistics.median(times[name]), len(images) / statistics.median(times[name])
        # images/s first: the same work for both; faces/s beside it, since the two detectors find different faces
        print(
            f"  {name:16s} {per_image:6.2f} images/s ({per_image / base_images:4.2f}x dlib)   "
            f"{faces[name]:4d} faces, {rate:7.2f} faces/s ({rate / base_faces:4.2f}x dlib)"
        )
    total = sum(last_clock.values())
    print("  ours, where the time goes: " + ", ".join(f"{k} {v / total:.0%}" for k, v in last_clock.items()))
    both, same = agreement(results["ours"], results["dlib"])
    print(f"  faces found by both: {both}; same verification decision (distance < 0.6) on {same:.1%} of their pairs")
    if SHARED_FACES.exists():
        verification(pipeline, DlibPipeline(files["dlib"], files["shape"]))

    # Mixed sizes, as in a photo archive: MTCNN batches them (padded, masked), against one image at a time.
    mixed = mixed_sizes(images)
    runs = {
        "one at a time": our_pipeline(mixed, pipeline, 1, dict(clock)),
        "batched": our_pipeline(mixed, pipeline, args.batch, dict(clock)),
    }
    seconds = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            found = run()
            seconds[name].append(time.perf_counter() - start)
    rates = {name: len(mixed) / statistics.median(s) for name, s in seconds.items()}
    sides = sorted(Image.open(io.BytesIO(d)).size for d in mixed)
    print(
        f"  mixed sizes ({len(mixed)} JPEGs, {sides[0][0]}x{sides[0][1]} to {sides[-1][0]}x{sides[-1][1]}, "
        f"{sum(len(f) for f in found)} faces): one at a time {rates['one at a time']:.2f} images/s, batched "
        f"{rates['batched']:.2f} images/s ({rates['batched'] / rates['one at a time']:.2f}x)"
    )


if __name__ == "__main__":
    main()
