import numpy as np
import pytest
import torch

from ops.faces.dlib_resnet import DlibResNet
from ops.faces.pipeline import FacePipeline
from ops.faces.recogniser import FaceRecogniser, ready
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


def test_passes_cut_by_a_pixel_budget_give_what_one_pass_gives(pipeline):
    from ops.faces.pipeline import FacePipeline, _passes

    assert _passes([10, 10, 10, 50, 5], 25) == [[0, 1], [2], [3], [4]]
    assert _passes([10, 10], None) == [[0, 1]] and _passes([], 5) == []
    rng = np.random.default_rng(7)
    frames = [_frame(rng, h, w, i % 2) for i, (h, w) in enumerate([(240, 320), (200, 150), (240, 320)])]
    small = FacePipeline(
        pipeline.mtcnn, FaceRecogniser(pipeline.encoder, "dlib", pipeline.chip, pipeline.dim), pass_pixels=240 * 320
    )
    assert small.pass_pixels == 240 * 320 and pipeline.pass_pixels is None  # the CPU: one pass
    for one, cut in zip(pipeline(frames), small(frames), strict=True):
        np.testing.assert_allclose(cut.boxes, one.boxes, atol=1e-3)
        np.testing.assert_allclose(cut.embeddings, one.embeddings, atol=1e-4)
