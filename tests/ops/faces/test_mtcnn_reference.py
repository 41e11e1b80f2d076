"""Our MTCNN against the implementation its weights come from (facenet-pytorch's), on real photos: the same faces,
the same boxes and landmarks, on the best device here (the GPU in the device check) against the reference on the
CPU. A change that moves a detection away from the reference fails here, whatever it buys elsewhere."""

import numpy as np
import pytest
import torch

from ops.faces.mtcnn import MTCNN, _nms
from ops.models.catalogue import load
from ops.models.device import best_device
from ops.testing.references import Detections, detection_agreement, real_photos
from tests.conftest import _models_root, shared_data

DEVICE = best_device()


@pytest.fixture(scope="module")
def mtcnn(tmp_path_factory):
    model = MTCNN()  # MTCNN alone: the device check carries no recogniser
    model.load_state_dict(load("mtcnn", _models_root(tmp_path_factory, "mtcnn-only", ("mtcnn",))).state, strict=True)
    return model.to(DEVICE).eval()


@pytest.mark.cuda
def test_detections_are_the_references_on_real_photos(mtcnn):
    from ops.testing.references import FacenetMTCNN

    photos = real_photos(shared_data("faces"))
    reference = FacenetMTCNN()
    frames = [torch.from_numpy(np.array(rgb)).permute(2, 0, 1).to(DEVICE) for _, rgb in photos]
    ours = [Detections(f.cpu().boxes.numpy(), f.cpu().landmarks.numpy()) for f in mtcnn.detect(frames)]
    theirs = [reference(rgb) for _, rgb in photos]
    agreement = detection_agreement([name for name, _ in photos], ours, theirs)
    assert agreement.different == [], agreement.summary()
    assert agreement.paired == agreement.faces_theirs >= 40, agreement.summary()
    assert min(agreement.ious) > 0.99, agreement.summary()
    assert max(agreement.landmark_errors) < 0.01, agreement.summary()
    assert np.mean(np.array(agreement.box_shifts) <= 1.0) >= 0.99, agreement.summary()


@pytest.mark.cuda
def test_a_pair_exactly_at_the_nms_threshold_is_kept_on_every_device():
    """Two 12-pixel windows 4 pixels apart overlap by exactly 0.5: the reference keeps both (only IoU above the
    threshold suppresses), and so must every device; one pixel closer, the weaker goes."""
    for device in {torch.device("cpu"), DEVICE}:
        boxes = torch.tensor([[0.0, 0, 12, 12], [4, 0, 16, 12], [3, 0, 15, 12]], device=device)  # IoU 0.5, 0.6
        scores = torch.tensor([0.9, 0.8, 0.7], device=device)
        idxs = torch.zeros(3, dtype=torch.long, device=device)
        assert _nms(boxes[:2], scores[:2], idxs[:2], 0.5).tolist() == [0, 1]
        assert _nms(boxes[[0, 2]], scores[[0, 2]], idxs[:2], 0.5).tolist() == [0]


def test_equal_scores_keep_the_first_candidate_as_the_reference_does():
    boxes = torch.tensor([[10.0, 10, 40, 40], [12, 10, 42, 40], [11, 11, 41, 41]])
    scores = torch.ones(3)
    assert _nms(boxes, scores, torch.zeros(3, dtype=torch.long), 0.5).tolist() == [0]
    # In a batch the tie is broken within each image, by its own candidate order.
    idxs = torch.tensor([1, 0, 1])
    assert sorted(_nms(boxes, scores, idxs, 0.5).tolist()) == [0, 1]


def test_boxes_beyond_an_images_top_left_do_not_reach_into_another_image():
    """Boxes squared at an image's edge have negative coordinates; images are still kept apart in NMS."""
    boxes = torch.tensor([[90.0, 90, 100, 100], [-15, -15, 6, 6]])  # image 0 near its corner, image 1 beyond its own
    scores = torch.tensor([0.8, 0.9])
    # Offset naively by the largest coordinate (101), the second would overlap the first by IoU 0.23.
    assert sorted(_nms(boxes, scores, torch.tensor([0, 1]), 0.2).tolist()) == [0, 1]


@pytest.mark.parametrize("seed", [0, 1])
def test_area_crops_are_the_references_area_resize_of_each_window(seed):
    """Each window's whole pixels resized by area averaging, as ``F.interpolate(crop, mode="area")`` does, for windows
    larger and smaller than the crop."""
    from ops.faces.mtcnn import _area_crops

    rng = np.random.default_rng(seed)
    image = torch.from_numpy(rng.integers(0, 256, (3, 90, 120)).astype(np.float32))
    windows = torch.tensor([[0, 0, 120, 90], [10, 20, 17, 31], [33, 5, 100, 80], [119, 89, 120, 90]])
    crops = _area_crops(image, windows, 24)
    for crop, (x0, y0, x1, y1) in zip(crops, windows.tolist(), strict=True):
        want = torch.nn.functional.interpolate(image[None, :, y0:y1, x0:x1], size=(24, 24), mode="area")[0]
        torch.testing.assert_close(crop, want, atol=1e-3, rtol=0)
