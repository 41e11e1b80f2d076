"""The FairFace adapter, tested as the face recogniser adapters are: random weights saved in the released file's
exact layout (torchvision's ResNet-34 with an 18-way last layer, a plain state dict), imported strictly."""

import io

import numpy as np
import pytest
import torch
import torchvision

from ops.attributes.fairface import GROUPS, FairFace
from ops.io.errors import ModelError
from ops.io.storage import resolve
from ops.models import catalogue

# Key names as FairFace's predict.py loads them: torchvision resnet34, fc replaced by Linear(512, 18).
FAIRFACE_KEYS = {"conv1.weight", "bn1.running_var", "layer1.0.conv1.weight", "layer2.0.downsample.0.weight"}
FAIRFACE_KEYS |= {"layer3.5.bn2.weight", "layer4.2.bn2.running_mean", "fc.weight", "fc.bias"}


def released(fc_outputs: int = 18) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    net = torchvision.models.resnet34(weights=None)
    net.fc = torch.nn.Linear(512, fc_outputs)
    return net.state_dict()


def saved(state: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def test_the_released_layout_imports_strictly_and_predicts_three_groups(tmp_path):
    state = released()
    assert FAIRFACE_KEYS <= set(state) and state["fc.weight"].shape == (18, 512)
    (tmp_path / "res34_fair_align_multi_7_20190809.pt").write_bytes(saved(state))
    models = resolve(str(tmp_path / "models"))
    card = catalogue.import_checkpoint(
        str(tmp_path / "res34_fair_align_multi_7_20190809.pt"), "fairface-resnet34", "fairface", models
    )
    assert card["task"] == "face-attributes" and card["groups"]["age"][-1] == "70+"
    net = catalogue.build(catalogue.load("fairface", models, expect="face-attributes"), "cpu")
    assert isinstance(net, FairFace)
    chips = torch.rand(2, 3, 224, 224) * 255
    found = net.predict(chips)
    assert list(found) == list(GROUPS)
    for name, classes in GROUPS.items():
        p = found[name]["probabilities"]
        assert p.shape == (2, len(classes)) and abs(p.sum(1) - 1).max() < 1e-5
    # the same numbers as the released network run the way FairFace's predict.py runs it
    reference = torchvision.models.resnet34(weights=None)
    reference.fc = torch.nn.Linear(512, 18)
    reference.load_state_dict(state)
    mean, std = (
        torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1),
        torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1),
    )
    with torch.no_grad():
        expected = reference.eval()((chips / 255 - mean) / std)
    assert torch.allclose(net(chips), expected, atol=1e-4)


def test_another_layout_is_refused(tmp_path):
    models = resolve(str(tmp_path / "models"))
    (tmp_path / "imagenet.pt").write_bytes(saved(released(1000)))  # an ImageNet ResNet-34, not FairFace's
    with pytest.raises(ModelError, match="fc.weight"):
        catalogue.import_checkpoint(str(tmp_path / "imagenet.pt"), "fairface-resnet34", "wrong", models)
    state = released()
    del state["layer3.0.conv1.weight"]
    (tmp_path / "broken.pt").write_bytes(saved(state))
    with pytest.raises(ModelError, match="layer3.0.conv1.weight"):
        catalogue.import_checkpoint(str(tmp_path / "broken.pt"), "fairface-resnet34", "broken", models)


def test_chips_are_dlibs_300_pixel_chip_shrunk_to_224_as_pillow_shrinks_it():
    """Landmarks placed where dlib's get_face_chip(size=300, padding=0.25) puts its template, 37 and 21 pixels in:
    the 300-pixel chip is then exactly that crop of the image, and FairFace's predict.py shrinks it with Pillow."""
    from PIL import Image

    from ops.attributes.fairface import cut_chips
    from ops.faces.align import dlib_template

    rng = np.random.default_rng(0)
    smooth = torch.nn.functional.interpolate(torch.tensor(rng.random((1, 3, 40, 48)) * 255), size=(360, 400))
    image = smooth.round().to(torch.uint8)
    marks = (dlib_template(300, 0.25) + 0.5 + torch.tensor([37.0, 21.0])).view(1, 5, 2)  # pixel edges
    chip = cut_chips(image, torch.zeros(1, dtype=torch.long), marks)[0]
    crop = image[0, :, 21:321, 37:337].permute(1, 2, 0).numpy()
    expected = np.asarray(Image.fromarray(crop).resize((224, 224), Image.BILINEAR)).astype(int)
    difference = np.abs(chip.permute(1, 2, 0).numpy().astype(int) - expected)
    assert chip.dtype == torch.uint8 and chip.shape == (3, 224, 224)
    assert difference.max() <= 1 and difference.mean() < 0.1


def test_frames_are_cut_together_by_size_and_their_chips_come_back_in_frame_order():
    from ops.attributes.fairface import cut_chips, cut_frames
    from ops.testing.samples import portrait

    rng = np.random.default_rng(1)
    frames = [
        torch.from_numpy(portrait(rng, i, size)).permute(2, 0, 1) for i, size in enumerate([(160, 128), (200, 160)] * 3)
    ]
    face = torch.tensor([[44, 62], [84, 62], [64, 84], [48, 104], [80, 104]], dtype=torch.float32)
    marks = [face[None] + torch.rand(k, 1, 2) * 4 for k in (1, 2, 0, 1, 3, 1)]
    together = cut_frames(frames, marks, together=2)
    alone = torch.cat(
        [cut_chips(f[None], torch.zeros(len(m), dtype=torch.long), m) for f, m in zip(frames, marks, strict=True)]
    )
    assert together.shape == (8, 3, 224, 224) and torch.equal(together, alone)
    assert cut_frames([], []).shape == (0, 3, 224, 224)
