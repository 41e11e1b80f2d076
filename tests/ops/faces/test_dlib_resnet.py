"""The torch port of dlib's ResNet against dlib itself (dlib-bin), on the same chips."""

import numpy as np
import pytest
import torch

from ops.faces.dlib_resnet import DlibResNet, _add, convert_dlib_resnet
from ops.models.catalogue import load
from tests.conftest import shared_data


@pytest.fixture(scope="module")
def port(face_models):
    model = DlibResNet()
    model.load_state_dict(load("dlib-resnet-v1", face_models).state, strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def reference(dlib_files):
    import dlib  # the test extra pins dlib-bin: a broken install fails here (imported in tests, so that the device
    # check, which has no dlib and runs only cuda tests, can still collect this module)

    return dlib.face_recognition_model_v1(str(dlib_files["dlib"]))


def _embed(model, chips: list[np.ndarray]) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(np.stack(chips)).permute(0, 3, 1, 2).float()).numpy()


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_port_matches_dlib_on_the_same_chips(port, reference):
    from ops.testing.samples import portrait

    rng = np.random.default_rng(7)
    chips = [np.kron(rng.integers(0, 256, (15, 15, 3)), np.ones((10, 10, 1))).astype(np.uint8) for _ in range(3)]
    chips += [
        np.asarray(
            torch.nn.functional.interpolate(
                torch.from_numpy(portrait(rng, p)).permute(2, 0, 1)[None].float(), size=(150, 150), mode="bilinear"
            )[0]
            .permute(1, 2, 0)
            .round()
            .byte()
        )
        for p in range(3)
    ]
    chips = [np.ascontiguousarray(c) for c in chips]
    ours = _embed(port, chips)
    ref = np.array([np.array(reference.compute_face_descriptor(c)) for c in chips])
    assert _cosine(ours, ref).min() >= 0.9999
    assert np.abs(ours - ref).max() < 1e-4  # the same numbers, not just the same direction
    assert 1.0 < np.linalg.norm(ref, axis=1).min()  # dlib's descriptors are not unit length; neither are ours


def test_port_matches_dlib_on_real_aligned_faces(port, reference, dlib_files):
    import dlib
    from PIL import Image

    detector, shapes = dlib.get_frontal_face_detector(), dlib.shape_predictor(str(dlib_files["shape"]))
    chips = []
    for path in sorted(shared_data("faces", "knn_examples", "train").glob("*/*.jpg")):
        image = np.asarray(Image.open(path).convert("RGB"))
        chips += [dlib.get_face_chip(image, shapes(image, d), size=150, padding=0.25) for d in detector(image, 1)]
    assert len(chips) >= 6
    ours, ref = _embed(port, chips), np.array([np.array(reference.compute_face_descriptor(c)) for c in chips])
    assert _cosine(ours, ref).min() >= 0.9999


def test_add_pads_the_smaller_operand_with_zeros_like_dlib():
    a, b = torch.ones(1, 2, 3, 3), torch.ones(1, 4, 4, 4)
    out = _add(a, b)
    assert out.shape == (1, 4, 4, 4)
    assert out[0, :2, :3, :3].eq(2).all() and out[0, 2:].eq(1).all() and out[0, :, 3].eq(1).all()


def test_converter_refuses_other_networks():
    with pytest.raises(ValueError):
        convert_dlib_resnet(b"\x01\x01\x01\x0dloss_metric_2" + b"\x01\x01" * 3)
