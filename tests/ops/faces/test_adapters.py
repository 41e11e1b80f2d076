"""Checkpoints users already hold: random weights saved in the public layouts load strictly and embed."""

import io

import pytest
import torch

from ops.faces.adapters import ArcFaceIResNet, InceptionResnetV1
from ops.faces.pipeline import FacePipeline
from ops.io.errors import ModelError
from ops.models import catalogue
from ops.models.catalogue import import_checkpoint, load

# Key names as the public code writes them (arcface_torch iresnet.py, facenet-pytorch inception_resnet_v1.py).
ARCFACE_KEYS = {
    "conv1.weight",
    "bn1.running_var",
    "prelu.weight",
    "layer1.0.bn1.weight",
    "layer1.0.conv1.weight",
    "layer1.0.prelu.weight",
    "layer1.0.conv2.weight",
    "layer1.0.bn3.bias",
    "layer1.0.downsample.0.weight",
    "layer1.0.downsample.1.running_mean",
    "layer3.13.conv2.weight",
    "bn2.weight",
    "fc.weight",
    "fc.bias",
    "features.weight",
    "features.running_var",
}
FACENET_KEYS = {
    "conv2d_1a.conv.weight",
    "conv2d_1a.bn.running_mean",
    "conv2d_4b.conv.weight",
    "repeat_1.4.branch2.2.conv.weight",
    "repeat_1.0.conv2d.bias",
    "mixed_6a.branch1.2.bn.weight",
    "repeat_2.9.branch1.2.conv.weight",
    "mixed_7a.branch2.2.conv.weight",
    "repeat_3.4.conv2d.weight",
    "block8.conv2d.bias",
    "last_linear.weight",
    "last_bn.running_var",
}


def _saved(state: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def test_layouts_use_the_public_key_names():
    assert ARCFACE_KEYS <= set(ArcFaceIResNet(50).state_dict())
    assert "layer2.12.conv1.weight" in ArcFaceIResNet(100).state_dict()
    assert FACENET_KEYS <= set(InceptionResnetV1().state_dict())


@pytest.mark.parametrize(
    ("architecture", "build", "extra"),
    [
        ("arcface-iresnet50", lambda: ArcFaceIResNet(50), {}),
        # facenet-pytorch's VGGFace2 file carries its 8631-way classifier; DataParallel saves add "module."
        ("facenet-inception-resnet-v1", InceptionResnetV1, {"logits.weight": torch.zeros(8631, 512)}),
    ],
)
def test_random_checkpoints_import_strictly_and_embed_faces(tmp_path, face_models, architecture, build, extra):
    torch.manual_seed(0)
    state = build().state_dict() | extra
    if architecture.startswith("facenet"):
        state = {f"module.{k}": v for k, v in state.items()}
    (tmp_path / "backbone.pth").write_bytes(_saved(state))
    card = import_checkpoint(str(tmp_path / "backbone.pth"), architecture, "mine", face_models)
    assert card["output_dim"] == 512 and card["source"]["sha256"]
    pipeline = FacePipeline(catalogue.build(load("mtcnn", face_models)), catalogue.build(load("mine", face_models)))
    import numpy as np

    from ops.testing.samples import portrait

    (faces,) = pipeline([portrait(np.random.default_rng(0), 0)])
    assert faces.embeddings.shape == (1, 512) and np.isfinite(faces.embeddings).all()


def test_a_missing_or_foreign_key_is_refused(tmp_path, face_models):
    state = ArcFaceIResNet(50).state_dict()
    del state["layer2.0.conv1.weight"]
    (tmp_path / "broken.pth").write_bytes(_saved(state))
    with pytest.raises(ModelError, match="layer2.0.conv1.weight"):
        import_checkpoint(str(tmp_path / "broken.pth"), "arcface-iresnet50", "broken", face_models)
    (tmp_path / "other.pth").write_bytes(_saved(InceptionResnetV1().state_dict()))
    with pytest.raises(ModelError, match="not a arcface-iresnet100 checkpoint"):
        import_checkpoint(str(tmp_path / "other.pth"), "arcface-iresnet100", "other", face_models)
