"""How close our face path is to the references its models come from, on the same real photos.

    python benchmarks/fidelity_faces.py [--faces ../shared/data/faces] [--device cpu|cuda] [--only detect]

- detections: our MTCNN against facenet-pytorch's (whose weights we load) on every photo and 1 fps frames of the
  clip: faces found per photo, box IoU, landmark distance as a share of the eye distance;
- chips: our dlib-template chip of each face against dlib's ``get_face_chip`` of the same face: scale and centre;
- embeddings: our whole path (MTCNN, template, ResNet port) against dlib's whole pipeline (HOG, 5-point shape
  predictor, chip, ResNet) on every face both find: the cosine of the two descriptors.

To measure an earlier commit's detector, run this file with that commit's tree first on the path:
``git worktree add /tmp/old a6dfb44 && PYTHONPATH=/tmp/old python benchmarks/fidelity_faces.py --only detect``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

if not any(Path(p, "ops").is_dir() for p in sys.path[1:] if p):  # an explicit PYTHONPATH tree wins
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ops.faces.align import dlib_template  # noqa: E402
from ops.faces.mtcnn import MTCNN  # noqa: E402
from ops.faces.pipeline import FacePipeline  # noqa: E402
from ops.models.catalogue import build, load, models_root, pull  # noqa: E402
from ops.testing.references import (  # noqa: E402
    Detections,
    DlibPipeline,
    FacenetMTCNN,
    chip_geometry,
    detection_agreement,
    dlib_files,
    fit_template,
    paired_faces,
    real_photos,
)

SHARED_FACES = Path(__file__).resolve().parents[2] / "shared" / "data" / "faces"


def our_detector(device: torch.device) -> MTCNN:
    root = models_root()
    if not root.join("mtcnn", "card.json").exists():
        pull("mtcnn", root)
    model = MTCNN()
    model.load_state_dict(load("mtcnn", root).state, strict=True)
    return model.to(device).eval()


def detect_ours(model: MTCNN, rgb: np.ndarray) -> Detections:
    device = next(model.parameters()).device
    (faces,) = model.detect([torch.from_numpy(np.array(rgb)).permute(2, 0, 1).to(device)])
    faces = faces.cpu()
    return Detections(faces.boxes.numpy(), faces.landmarks.numpy())


def detections(photos: list[tuple[str, np.ndarray]], device: torch.device) -> None:
    import ops.faces.mtcnn as port

    model, reference = our_detector(device), FacenetMTCNN()
    names = [name for name, _ in photos]
    start = time.perf_counter()
    ours = [detect_ours(model, rgb) for _, rgb in photos]
    theirs = [reference(rgb) for _, rgb in photos]
    agreement = detection_agreement(names, ours, theirs)
    seconds = time.perf_counter() - start
    print(f"detections, {port.__file__} on {device}, against facenet-pytorch's MTCNN ({seconds:.0f} s)")
    print(f"  {agreement.summary()}")
    for line in agreement.different:
        print(f"  different: {line}")


def _quantiles(values: list[float], fmt: str = ".4f") -> str:
    v = np.asarray(values)
    return (
        f"median {np.median(v):{fmt}}, 5th-95th pct {np.percentile(v, 5):{fmt}} to {np.percentile(v, 95):{fmt}}, "
        f"range {v.min():{fmt}} to {v.max():{fmt}}"
    )


def _geometry_line(ratios: np.ndarray, offsets: np.ndarray) -> str:
    dx, dy = offsets.mean(axis=0)
    return (
        f"systematic: size x{np.exp(np.log(ratios).mean()):.4f}, centre ({dx:+.2f}, {dy:+.2f}) px; per face: size "
        f"ratio {_quantiles(list(ratios))}; centre offset {_quantiles(list(np.linalg.norm(offsets, axis=1)), '.2f')} px"
    )


def chips(pairs: list, fit: bool) -> None:
    """Our chips' geometry against dlib's get_face_chip of the same faces, at the recogniser's 150 pixels and
    FairFace's 300, on the photos and on the clip's frames apart. Per face, the two differ by where MTCNN and dlib's
    5-point model put each face's points (noise no template removes, larger on the clip's turned heads); the
    systematic part is the template's. With ``fit``, the template fitted to the photos' faces."""
    groups = {
        "photos": [p for p in pairs if "#t=" not in p[0]],
        "clip frames": [p for p in pairs if "#t=" in p[0]],
    }
    print(f"chips: {len(pairs)} faces both pipelines find; our chip against dlib's get_face_chip")
    for name, members in groups.items():
        for size in (150, 300):
            if members:
                line = _geometry_line(*chip_geometry(members, dlib_template(size), size))
                print(f"  {name} ({len(members)} faces), {size} px: {line}")
    if fit:
        print(f"  fitted over the {len(groups['photos'])} faces of the photos (dlib's unit face frame):")
        for x, y in fit_template(groups["photos"]):
            print(f"    ({x:.6f}, {y:.6f}),")


def embeddings(pairs: list) -> None:
    cosines = []
    for _, ours, i, theirs in pairs:
        a, b = ours.embeddings[i], theirs.descriptor
        cosines.append(float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)))
    print(f"embeddings: cosine of our descriptor and dlib's, {len(cosines)} faces: {_quantiles(cosines)}")
    worst = sorted(zip(cosines, [p[0] for p in pairs], strict=True))[:3]
    print("  lowest: " + ", ".join(f"{name} {c:.4f}" for c, name in worst))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--faces", type=Path, default=SHARED_FACES)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", choices=["detect", "chips"], help="detections only, or chips and embeddings only")
    parser.add_argument("--fit", action="store_true", help="print the dlib template fitted to these faces")
    args = parser.parse_args()
    if not args.faces.exists():
        sys.exit(f"{args.faces} is absent: this measurement needs real photos (../shared/data/faces)")
    photos = real_photos(args.faces)
    print(f"{len(photos)} real photos and clip frames from {args.faces}")
    device = torch.device(args.device)
    if args.only in (None, "detect"):
        detections(photos, device)
    if args.only in (None, "chips"):
        root = models_root()
        for name in ("mtcnn", "dlib-resnet-v1"):
            if not root.join(name, "card.json").exists():
                pull(name, root)
        pipeline = FacePipeline(build(load("mtcnn", root), device), build(load("dlib-resnet-v1", root), device))
        pairs = paired_faces(photos, pipeline, DlibPipeline(*dlib_files(Path(root.path) / "_dlib_reference")))
        chips(pairs, args.fit)
        embeddings(pairs)


if __name__ == "__main__":
    main()
