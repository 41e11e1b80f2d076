import numpy as np
import pytest
import torch

from ops.faces.dlib_resnet import DlibResNet
from ops.faces.pipeline import FacePipeline
from ops.faces.recogniser import ready
from ops.models import catalogue
from ops.testing.samples import portrait


@pytest.fixture(scope="module")
def pipeline(face_models):
    torch.manual_seed(0)  # a seeded random recogniser: what is checked here is batching, not identity
    recogniser = ready(DlibResNet(), DlibResNet().state_dict(), "dlib", 150, 128, torch.device("cpu"))
    return FacePipeline(catalogue.build(catalogue.load("mtcnn", face_models), "cpu"), recogniser)


def _frame(rng, h: int, w: int, person: int) -> np.ndarray:
    canvas = rng.integers(80, 170, (h, w, 3), dtype=np.uint8)
    y, x = (h - 160) // 2, (w - 128) // 2
    canvas[y : y + 160, x : x + 128] = portrait(rng, person)
    return canvas


def test_frames_of_mixed_sizes_give_what_each_gives_alone(pipeline):
    rng = np.random.default_rng(4)
    frames = [_frame(rng, h, w, i % 3) for i, (h, w) in enumerate([(480, 640), (200, 150), (333, 251), (480, 640)])]
    clock: dict[str, float] = {}
    together = pipeline(frames, clock)
    assert set(clock) == {"detect", "align", "embed"} and all(v >= 0 for v in clock.values())
    for frame, mixed in zip(frames, together, strict=True):
        (alone,) = pipeline([frame])
        assert len(alone.scores) == len(mixed.scores) == 1
        np.testing.assert_allclose(mixed.boxes, alone.boxes, atol=1e-3)
        np.testing.assert_allclose(mixed.embeddings, alone.embeddings, atol=1e-4)
