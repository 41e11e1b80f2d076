import numpy as np
import pytest
import torch

from ops.samples import portrait
from ops.transformer_net import Norm, TransformerNet, convert_checkpoint, stylize, stylize_tiled


def _net() -> TransformerNet:
    """Seeded weights with outputs spread over 0..255 (a trained network's range), not clamped to black."""
    torch.manual_seed(0)
    net = TransformerNet().eval()
    with torch.no_grad():
        net.deconv3.conv2d.weight.mul_(400.0)
        net.deconv3.conv2d.bias.fill_(128.0)
    return net


def _image() -> torch.Tensor:
    rng = np.random.default_rng(0)
    row = np.concatenate([portrait(rng, i) for i in range(3)], 1)
    return torch.tensor(np.concatenate([row, row[::-1]], 0)).permute(2, 0, 1).float()  # 3 x 320 x 384


def test_norm_is_instance_norm_and_records_and_reuses_statistics():
    norm, ref = Norm(8), torch.nn.InstanceNorm2d(8, affine=True)
    with torch.no_grad():
        for layer in (norm, ref):
            layer.weight.copy_(torch.linspace(0.5, 2, 8))
            layer.bias.copy_(torch.linspace(-1, 1, 8))
    x = torch.randn(2, 8, 5, 7)
    assert torch.allclose(norm(x), ref(x), atol=1e-5)
    norm.mode = "record"
    norm(x[:1])
    norm.mode = "fixed"
    part = x[:1, :, :2, :3]
    assert torch.allclose(norm(part), ref(x[:1])[:, :, :2, :3], atol=1e-5)  # a crop normalised as the whole


def test_pytorch_examples_checkpoints_load_without_their_legacy_statistics():
    state = TransformerNet().state_dict()
    legacy = dict(state) | {"in1.running_mean": torch.zeros(32), "res3.in2.running_var": torch.ones(128)}
    assert set(convert_checkpoint(legacy)) == set(state)
    with pytest.raises(RuntimeError, match="Missing key"):
        convert_checkpoint({k: v for k, v in state.items() if k != "deconv3.conv2d.bias"})
    with pytest.raises(RuntimeError, match="Unexpected key"):
        convert_checkpoint(dict(state) | {"fc.weight": torch.zeros(1)})


def test_any_size_in_the_same_size_out():
    out = stylize(_net(), torch.rand(2, 3, 67, 101) * 255)
    assert out.shape == (2, 3, 67, 101) and out.min() >= 0 and out.max() <= 255


def test_tiles_with_shared_statistics_and_blended_overlap_match_the_whole_image():
    net, image = _net(), _image()
    whole = stylize(net, image[None])[0]
    spread = whole.std().item()
    assert spread > 20  # the test network's output is not flat
    tiled = stylize_tiled(net, image, tile=160, overlap=64, stats_side=4096)
    assert (tiled - whole).abs().mean().item() < 0.05 * spread
    # Tiles normalised on their own, side by side, are far off: that is the seam the shared statistics remove.
    naive = torch.zeros_like(whole)
    for top in range(0, 320, 160):
        for left in range(0, 384, 128):
            naive[:, top : top + 160, left : left + 128] = stylize(
                net, image[None, :, top : top + 160, left : left + 128]
            )[0]
    assert (naive - whole).abs().mean().item() > 5 * (tiled - whole).abs().mean().item()
