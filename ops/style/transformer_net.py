"""Feed-forward style transfer (Johnson et al. 2016): the image transformation network of pytorch/examples'
fast_neural_style, under its checkpoints' key names, and tiled inference for images of any size without seams.

The network takes and gives RGB in 0..255. Its instance normalisation makes every output pixel depend on statistics
of the whole feature map, so tiles normalised on their own would each get their own colours: ``stylize_tiled``
first runs the network once on the whole image shrunk to ``stats_side`` and records every normalisation layer's
mean and variance, then runs the full-resolution tiles with those statistics fixed, and blends overlapping tiles
with linear ramps so that the reflection padding at tile borders does not show either.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ops.models.registry import Architecture, LoadedModel, read_state_dict

LEGACY_KEYS = ("running_mean", "running_var")  # InstanceNorm statistics old checkpoints carry and never used
# A picture with a shorter side is no scene (a 1-pixel spacer, a sliver): jobs.stylize refuses it by default
# (--min-side), jobs.train_style leaves it out of the training images.
MIN_SIDE = 32


class Norm(nn.Module):
    """Instance normalisation with affine weights (``weight``, ``bias``: the checkpoints' names) that can record
    its statistics from one image and then normalise other inputs (tiles) with them."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps
        self.mode = "instance"  # or "record" or "fixed"
        self.stats: tuple[Tensor, Tensor] | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self.mode == "fixed":
            mean, var = self.stats
        else:
            mean, var = moments(x)
            if self.mode == "record":
                self.stats = (mean, var)
        # One fused pass: x * scale + shift, the normalisation and the affine weights folded together.
        scale = self.weight[None, :, None, None] * torch.rsqrt(var + self.eps)
        return torch.addcmul(self.bias[None, :, None, None] - mean * scale, x, scale)


def moments(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and (biased) variance of (N, C, H, W), in two vectorised passes (the mean, then the norm of
    the deviations): about 5x faster on CPU than ``torch.var_mean``'s Welford pass and as exact."""
    flat = x.flatten(2)
    mean = flat.mean(2, keepdim=True)
    var = torch.linalg.vector_norm(flat - mean, dim=2, keepdim=True).square() / flat.shape[2]
    return mean[..., None], var[..., None]


def relu(x: Tensor) -> Tensor:
    """ReLU, in place when no gradient is being recorded (saves a pass over memory at inference)."""
    return F.relu(x, inplace=not torch.is_grad_enabled())


class ConvLayer(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int, upsample: int | None = None) -> None:
        super().__init__()
        if upsample not in (None, 2) or (upsample and kernel != 3):
            raise ValueError("only 3x3 convolutions upsample, and only by 2 (all TransformerNet has)")
        self.upsample = upsample
        self.pad = kernel // 2
        self.conv2d = nn.Conv2d(cin, cout, kernel, stride)

    def forward(self, x: Tensor) -> Tensor:
        if self.upsample:
            return upsample_conv(x, self.conv2d.weight, self.conv2d.bias)
        return self.conv2d(F.pad(x, (self.pad,) * 4, mode="reflect"))


def upsample_conv(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """A 3x3 convolution of ``x`` upsampled 2x (nearest) and reflection-padded by 1, computed without the upsampling.

    Each output pixel's phase (row and column parity) sees only 2x2 distinct input pixels, so the 3x3 kernel
    collapses to four 2x2 kernels over ``x`` padded by replication (which is what reflecting the upsampled border
    amounts to), run as one convolution and interleaved: the same sums in 16/36 of the multiply-adds.
    """
    n, _, h, w = x.shape
    cout = weight.shape[0]

    def phases(k: Tensor, dim: int) -> list[Tensor]:  # even outputs see taps (k0, k1+k2), odd ones (k0+k1, k2)
        k0, k1, k2 = k.unbind(dim)
        return [torch.stack([k0, k1 + k2], dim), torch.stack([k0 + k1, k2], dim)]

    kernels = torch.cat([kc for kr in phases(weight, 2) for kc in phases(kr, 3)])  # phases (0,0) (0,1) (1,0) (1,1)
    out = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernels, bias.repeat(4)).unflatten(1, (2, 2, cout))
    # Phase (a, b)'s window starts a rows and b columns further into the padded input.
    rows = [torch.stack([out[:, a, b, :, a : a + h, b : b + w] for b in (0, 1)], -1) for a in (0, 1)]
    return torch.stack(rows, 3).reshape(n, cout, 2 * h, 2 * w)


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1, self.in1 = ConvLayer(channels, channels, 3, 1), Norm(channels)
        self.conv2, self.in2 = ConvLayer(channels, channels, 3, 1), Norm(channels)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.in2(self.conv2(relu(self.in1(self.conv1(x)))))


class TransformerNet(nn.Module):
    """conv 9x9/32 -> 3x3/64 s2 -> 3x3/128 s2 -> 5 residual blocks -> upsample+conv 64 -> 32 -> conv 9x9/3."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.in1 = ConvLayer(3, 32, 9, 1), Norm(32)
        self.conv2, self.in2 = ConvLayer(32, 64, 3, 2), Norm(64)
        self.conv3, self.in3 = ConvLayer(64, 128, 3, 2), Norm(128)
        for i in range(1, 6):
            setattr(self, f"res{i}", ResidualBlock(128))
        self.deconv1, self.in4 = ConvLayer(128, 64, 3, 1, upsample=2), Norm(64)
        self.deconv2, self.in5 = ConvLayer(64, 32, 3, 1, upsample=2), Norm(32)
        self.deconv3 = ConvLayer(32, 3, 9, 1)

    def forward(self, x: Tensor) -> Tensor:
        y = relu(self.in1(self.conv1(x)))
        y = relu(self.in2(self.conv2(y)))
        y = relu(self.in3(self.conv3(y)))
        for i in range(1, 6):
            y = getattr(self, f"res{i}")(y)
        y = relu(self.in4(self.deconv1(y)))
        y = relu(self.in5(self.deconv2(y)))
        # Three output channels leave oneDNN's planar kernel at a fifth of its usual rate; channels-last runs this
        # layer (a quarter of the network's time) about 1.7x faster on CPU and costs nothing on CUDA.
        return self.deconv3(y.contiguous(memory_format=torch.channels_last)).contiguous()

    @contextmanager
    def norms(self, mode: str):
        """Every normalisation layer in ``mode`` ("record" or "fixed") inside the block, back to "instance" after."""
        layers = [m for m in self.modules() if isinstance(m, Norm)]
        for layer in layers:
            layer.mode = mode
        try:
            yield
        finally:
            for layer in layers:
                layer.mode = "instance"


def convert_checkpoint(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A pytorch/examples TransformerNet state dict as ours: legacy InstanceNorm statistics dropped, every other
    key required and no other allowed (strict loading is the check)."""
    kept = {k: v for k, v in state.items() if k.rsplit(".", 1)[-1] not in LEGACY_KEYS}
    TransformerNet().load_state_dict(kept, strict=True)
    return kept


def _run(net: TransformerNet, x: Tensor) -> Tensor:
    """The network on ``x`` of any size: padded (reflected) to a multiple of 4, which its two stride-2 stages and
    two 2x upsamplings give back exactly, and cropped to the input's size again."""
    h, w = x.shape[-2:]
    ph, pw = -h % 4, -w % 4
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="reflect")
    return net(x)[..., :h, :w]


def stylize(net: TransformerNet, images: Tensor) -> Tensor:
    """Images (N, 3, H, W) in 0..255 through the network, clamped to 0..255; any H and W, the same out."""
    with torch.inference_mode():
        return _run(net, images).clamp(0, 255)


def stylize_tiled(
    net: TransformerNet, image: Tensor, tile: int = 512, overlap: int = 64, stats_side: int = 1024
) -> Tensor:
    """One image (3, H, W) in 0..255 stylised tile by tile (``tile`` square, ``overlap`` pixels shared with each
    neighbour, blended), with normalisation statistics recorded from the whole image at ``stats_side`` at most."""
    _, h, w = image.shape
    if max(h, w) <= tile:
        return stylize(net, image[None])[0]
    overlap = min(overlap, tile // 4)  # small tiles: a quarter of each side shared at most
    scale = min(1.0, stats_side / max(h, w))
    small = F.interpolate(image[None], scale_factor=scale, mode="area") if scale < 1 else image[None]
    step = tile - overlap
    out = torch.zeros(3, h, w, dtype=image.dtype, device=image.device)
    weight = torch.zeros(1, h, w, dtype=image.dtype, device=image.device)
    with torch.inference_mode(), net.norms("record"):
        _run(net, small)
    with torch.inference_mode(), net.norms("fixed"):
        for top in _starts(h, tile, step):
            for left in _starts(w, tile, step):
                piece = image[:, top : top + tile, left : left + tile]
                styled = _run(net, piece[None])[0]
                ramp = _ramp(piece.shape[1], piece.shape[2], overlap, top, left, h, w).to(image)
                out[:, top : top + tile, left : left + tile] += styled * ramp
                weight[:, top : top + tile, left : left + tile] += ramp
    return (out / weight).clamp(0, 255)


def _starts(length: int, tile: int, step: int) -> list[int]:
    """Tile origins covering ``length``: every ``step``, the last one flush with the end."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, step))
    return starts + [length - tile]


def _ramp(th: int, tw: int, overlap: int, top: int, left: int, h: int, w: int) -> Tensor:
    """Blend weights of one tile: rising linearly over ``overlap`` pixels from each edge that has a neighbour,
    flat at the image's own edges, never zero."""

    def axis(n: int, start: int, full: int) -> Tensor:
        ramp = torch.ones(n)
        if overlap > 0:
            edge = torch.linspace(1.0 / (overlap + 1), 1.0, overlap)
            k = min(overlap, n)
            if start > 0:
                ramp[:k] = torch.minimum(ramp[:k], edge[:k])
            if start + n < full:
                ramp[n - k :] = torch.minimum(ramp[n - k :], edge[:k].flip(0))
        return ramp

    return (axis(th, top, h)[:, None] * axis(tw, left, w)[None, :])[None]


def _convert_file(data: bytes) -> dict[str, Tensor]:
    return convert_checkpoint(read_state_dict(data))


def _build(model: LoadedModel, device: torch.device) -> TransformerNet:
    net = TransformerNet()
    net.load_state_dict(model.state, strict=True)
    return net.to(device).eval()


ARCHITECTURE = Architecture(
    name="transformer-net-pytorch-examples",
    task="style-transfer",
    build=_build,
    convert=_convert_file,
    card=lambda state: {
        "modality": "image",
        "task": "style-transfer",
        "input": "RGB in 0..255, any size",
        "note": "pytorch/examples fast_neural_style TransformerNet; one network per style",
    },
)
ARCHITECTURES = (ARCHITECTURE,)
