import io

import numpy as np
import pytest
import torch
import torchvision

from ops.io.errors import ModelError
from ops.io.storage import resolve
from ops.models.catalogue import import_checkpoint, load
from ops.style.gatys import Losses, Settings, gram, luminance, transfer
from ops.style.vgg import from_registry, random_network
from ops.testing.samples import portrait


@pytest.fixture(scope="module")
def net():
    return random_network("vgg19", 0)


def _content(person: int = 0) -> torch.Tensor:
    rgb = portrait(np.random.default_rng(person), person, size=(64, 48))
    return torch.tensor(rgb).permute(2, 0, 1)[None].float() / 255


def _style() -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    return torch.stack([(torch.sin(xx / 3) + 1) / 2, (torch.cos(yy / 5) + 1) / 2, ((xx + yy) % 16 < 8).float()])[None]


def test_gram_is_normalised_by_the_layer_size():
    f = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]])  # N=1, C=2, H=1, W=2
    expected = torch.tensor([[[1 + 4, 3 + 8], [3 + 8, 9 + 16]]]) / (2 * 1 * 2)
    assert torch.allclose(gram(f), expected)


def test_transfer_lowers_the_style_loss_by_a_large_factor_and_keeps_the_content(net):
    content, style = _content(), _style()
    with torch.no_grad():
        _, before = Losses(net, content, style)(content)
    image, stats = transfer(net, content, style, Settings(steps=50))
    assert image.shape == content.shape and 0 <= image.min() and image.max() <= 1
    assert stats["style_loss"][0] < 0.2 * before.item()  # losses of the image as returned: clamped to 0..1
    assert stats["content_loss"][0] < 0.05 and stats["evaluations"] == 50


def test_steps_are_never_exceeded_and_progress_can_stop_early(net):
    seen = []

    def progress(scale, count, x, loss):
        seen.append((scale, count))
        return scale == 1.0 and count == 7

    _, stats = transfer(net, _content(), _style(), Settings(steps=30, scales=[0.5, 1.0], coarse_steps=12), progress)
    assert [c for s, c in seen if s == 0.5] == list(range(1, 13))
    assert [c for s, c in seen if s == 1.0] == list(range(1, 8)) and stats["evaluations"] == 19


def test_a_batch_is_each_image_optimised_on_its_own(net):
    a, b, style = _content(0), _content(1), _style()
    settings = Settings(steps=5, optimizer="adam")  # Adam is per pixel: batched equals one at a time
    together, _ = transfer(net, torch.cat([a, b]), style, settings)
    alone, _ = transfer(net, b, style, settings)
    # The same up to summation order; Adam's first steps move a pixel by about lr * sign(gradient), so where the
    # gradient is ~0 that order can flip a step: a few pixels differ by up to 2 x lr.
    diff = (together[1:] - alone).abs()
    assert diff.mean() < 1e-3 and (diff > 2e-3).float().mean() < 0.02 and diff.max() <= 2.5 * settings.lr


def test_colour_preservation_keeps_the_content_chroma(net):
    content = _content()
    image, _ = transfer(net, content, _style(), Settings(steps=5, preserve_colour=True))
    chroma_in, chroma_out = content - luminance(content), image - luminance(image)
    inside = (image > 0.02).all(1, keepdim=True) & (image < 0.98).all(1, keepdim=True)  # not clipped
    assert torch.allclose(chroma_in.masked_select(inside), chroma_out.masked_select(inside), atol=1e-4)


def test_coarse_to_fine_ends_at_full_size(net):
    image, stats = transfer(net, _content(), _style(), Settings(steps=10, scales=[0.5, 1.0]))
    assert image.shape == (1, 3, 64, 48) and stats["evaluations"] <= 12


def test_loss_networks_come_from_torchvision_checkpoints_or_are_labelled_random(tmp_path):
    assert random_network("vgg19", 3).name == "random-vgg19-seed3" and random_network("vgg19", 3).random
    assert random_network("vgg19", 3).sha256 == random_network("vgg19", 3).sha256 != random_network("vgg19", 4).sha256
    buf = io.BytesIO()
    torch.save(torchvision.models.vgg19(weights=None).state_dict(), buf)  # a torchvision file: classifier too
    (tmp_path / "vgg19.pth").write_bytes(buf.getvalue())
    root = resolve(str(tmp_path / "models"))
    card = import_checkpoint(str(tmp_path / "vgg19.pth"), "vgg19-torchvision", "vgg19", root)
    assert card["task"] == "style-loss-network"
    loaded = from_registry(load("vgg19", root))
    assert loaded.name == "vgg19" and not loaded.random
    assert set(loaded(torch.rand(1, 3, 32, 32), ["conv1_1", "conv5_1"])) == {"conv1_1", "conv5_1"}
    buf16 = io.BytesIO()
    torch.save(torchvision.models.vgg16(weights=None).state_dict(), buf16)
    (tmp_path / "vgg16.pth").write_bytes(buf16.getvalue())
    with pytest.raises(ModelError, match="not a vgg19-torchvision checkpoint"):
        import_checkpoint(str(tmp_path / "vgg16.pth"), "vgg19-torchvision", "wrong", root)
