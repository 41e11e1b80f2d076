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
    pytest.importorskip("facenet_pytorch", reason="facenet-pytorch (the test extra) is the reference")
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
