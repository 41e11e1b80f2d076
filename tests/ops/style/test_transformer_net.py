import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ops.style.transformer_net import (
    Norm,
    TransformerNet,
    convert_checkpoint,
    moments,
    stylize,
    stylize_tiled,
    upsample_conv,
)
from ops.testing.samples import portrait


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


def _examples_forward(net: TransformerNet, x: torch.Tensor) -> torch.Tensor:
    """pytorch/examples' formulation on our weights: upsample, reflection-pad, convolve; InstanceNorm2d's maths."""

    def conv(layer, y):
        if layer.upsample:
            y = F.interpolate(y, scale_factor=2, mode="nearest")
        return layer.conv2d(F.pad(y, (layer.pad,) * 4, mode="reflect"))

    def norm(layer, y):
        return F.instance_norm(y, weight=layer.weight, bias=layer.bias, eps=layer.eps)

    y = F.relu(norm(net.in1, conv(net.conv1, x)))
    y = F.relu(norm(net.in2, conv(net.conv2, y)))
    y = F.relu(norm(net.in3, conv(net.conv3, y)))
    for i in range(1, 6):
        r = getattr(net, f"res{i}")
        y = y + norm(r.in2, conv(r.conv2, F.relu(norm(r.in1, conv(r.conv1, y)))))
    y = F.relu(norm(net.in4, conv(net.deconv1, y)))
    y = F.relu(norm(net.in5, conv(net.deconv2, y)))
    return conv(net.deconv3, y)


def test_the_upsampling_convolution_is_upsample_pad_convolve_in_fewer_operations():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(5, 7, 3)
    x = torch.randn(2, 5, 9, 6, requires_grad=True)
    expected = conv(F.pad(F.interpolate(x, scale_factor=2, mode="nearest"), (1, 1, 1, 1), mode="reflect"))
    ours = upsample_conv(x, conv.weight, conv.bias)
    assert ours.shape == expected.shape == (2, 7, 18, 12)
    assert torch.allclose(ours, expected, atol=1e-5)
    # Training goes through it too: the same gradients for the input and the weights.
    grads = torch.autograd.grad(expected.square().sum(), [x, conv.weight])
    for a, b in zip(torch.autograd.grad(ours.square().sum(), [x, conv.weight]), grads, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-4)


def test_fast_moments_match_var_mean_even_far_from_zero():
    x = torch.randn(2, 16, 64, 64) * torch.logspace(-2, 1, 16)[None, :, None, None] + 30.0
    mean, var = moments(x)
    ref_var, ref_mean = torch.var_mean(x.double(), dim=(2, 3), keepdim=True, correction=0)
    assert torch.allclose(mean.double(), ref_mean, rtol=1e-6)
    assert torch.allclose(var.double(), ref_var, rtol=1e-4)  # even sd 0.01 at mean 30


def test_the_network_is_pytorch_examples_network_and_batches_are_each_image_alone():
    net = _net()
    with torch.no_grad():
        for norm in (m for m in net.modules() if isinstance(m, Norm)):
            norm.weight.uniform_(0.5, 1.5), norm.bias.uniform_(-0.5, 0.5)
    x = torch.rand(2, 3, 64, 92) * 255
    with torch.no_grad():
        expected = _examples_forward(net, x)
    assert torch.allclose(net(x), expected, atol=1e-3 * expected.abs().max().item())
    assert torch.allclose(stylize(net, x)[1:], stylize(net, x[1:]), atol=1e-3)
