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

from ops.faces.mtcnn import MTCNN  # noqa: E402
from ops.models.catalogue import load, models_root, pull  # noqa: E402
from ops.testing.references import Detections, FacenetMTCNN, detection_agreement, real_photos  # noqa: E402

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
    print(f"detections, {port.__file__} on {device}, against facenet-pytorch's MTCNN ({time.perf_counter() - start:.0f} s)")
    print(f"  {agreement.summary()}")
    for line in agreement.different:
        print(f"  different: {line}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--faces", type=Path, default=SHARED_FACES)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", choices=["detect", "chips", "embed"])
    args = parser.parse_args()
    if not args.faces.exists():
        sys.exit(f"{args.faces} is absent: this measurement needs real photos (../shared/data/faces)")
    photos = real_photos(args.faces)
    print(f"{len(photos)} real photos and clip frames from {args.faces}")
    device = torch.device(args.device)
    if args.only in (None, "detect"):
        detections(photos, device)


if __name__ == "__main__":
    main()
