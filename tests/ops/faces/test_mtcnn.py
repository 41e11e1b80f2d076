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


@pytest.mark.parametrize("height, width", [(12, 12), (13, 17), (24, 31), (101, 64), (385, 289)])
def test_pnet_output_size_is_the_maps_own(height, width):
    from ops.faces.mtcnn import PNet

    margin, _ = PNet()(torch.zeros(1, 3, height, width))
    assert PNet.output_size(height, width) == tuple(margin.shape[1:])


def test_images_of_mixed_sizes_detect_together_as_each_alone(mtcnn):
    """A photo archive's sizes all differ: they share P-Net calls (zero-padded, padding masked) and R-Net and O-Net
    calls, with the detections each image gives alone."""
    rng = np.random.default_rng(3)
    images = []
    for i, (h, w) in enumerate([(160, 128), (171, 133), (240, 320), (333, 250), (97, 145), (160, 128)]):
        canvas = np.full((h, w, 3), 100 + 20 * i, np.uint8)
        if h >= 160 and w >= 128:
            y, x = (h - 160) // 2, (w - 128) // 3
            canvas[y : y + 160, x : x + 128] = portrait(rng, i % 3)
        images.append(canvas)
    tensors = [torch.from_numpy(image).permute(2, 0, 1) for image in images]
    together = mtcnn.detect(tensors)
    found = 0
    for tensor, mixed in zip(tensors, together, strict=True):
        (alone,) = mtcnn.detect(tensor[None])
        assert len(alone) == len(mixed)
        torch.testing.assert_close(alone.boxes, mixed.boxes, atol=1e-3, rtol=0)
        torch.testing.assert_close(alone.landmarks, mixed.landmarks, atol=1e-3, rtol=0)
        found += len(alone)
    assert found >= 4  # the portraits are found; the small flat image has none
