import numpy as np
import pytest
import torch

from ops.faces.mtcnn import MTCNN, DetectorConfig
from ops.models.catalogue import load
from ops.testing.samples import portrait
from tests.conftest import shared_data


@pytest.fixture(scope="module")
def mtcnn(face_models):
    model = MTCNN()
    model.load_state_dict(load("mtcnn", face_models).state, strict=True)
    return model.eval()


def _tensor(*images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)


def test_finds_a_face_with_its_landmarks_in_order(mtcnn):
    image = portrait(np.random.default_rng(0), 0)
    (faces,) = mtcnn.detect(_tensor(image))
    assert len(faces) == 1 and faces.scores[0] > 0.95
    x1, y1, x2, y2 = faces.boxes[0].tolist()
    assert 0 <= x1 < x2 <= 128 and 0 <= y1 < y2 <= 160
    (lx, ly), (rx, ry), (nx, ny), (mlx, mly), (mrx, mry) = faces.landmarks[0].tolist()
    assert lx < nx < rx and mlx < mrx  # image-left first
    assert ly < ny < mly and abs(ly - ry) < 4  # eyes level, above the nose, above the mouth


def test_batched_detection_equals_one_at_a_time(mtcnn):
    rng = np.random.default_rng(1)
    images = [portrait(rng, p) for p in range(3)] + [np.full((160, 128, 3), 127, np.uint8)]
    batched = mtcnn.detect(_tensor(*images))
    for image, together in zip(images, batched, strict=True):
        (alone,) = mtcnn.detect(_tensor(image))
        assert len(alone) == len(together)
        torch.testing.assert_close(alone.boxes, together.boxes, atol=1e-3, rtol=0)
    assert len(batched[3]) == 0  # a flat grey image has no face


def test_thresholds_and_minimum_size_are_honoured(mtcnn):
    image = portrait(np.random.default_rng(2), 1)
    assert len(mtcnn.detect(_tensor(image), DetectorConfig(min_face=200))[0]) == 0  # the face is ~80 px
    assert len(mtcnn.detect(_tensor(image), DetectorConfig(thresholds=(0.6, 0.7, 0.99999999)))[0]) == 0


def test_finds_both_people_in_a_real_photo(mtcnn):
    from PIL import Image

    image = np.asarray(Image.open(shared_data("faces", "two_people.jpg")).convert("RGB"))
    (faces,) = mtcnn.detect(_tensor(image))
    assert (faces.scores > 0.99).sum() == 2
    centres = sorted(((faces.boxes[:, 0] + faces.boxes[:, 2]) / 2)[faces.scores > 0.99].tolist())
    assert centres[0] < image.shape[1] / 2 < centres[1]  # one on each side
