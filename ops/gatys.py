"""Optimisation-based style transfer (Gatys, Ecker and Bethge 2016): change an image's pixels to minimise

    J = alpha * J_content + beta * J_style + tv * J_tv

with VGG19 features: content at conv4_2, style at conv1_1 ... conv5_1 as Gram matrices normalised by the layer's
size. Several images are optimised together in one batch (their losses add, so each keeps its own optimum), with
L-BFGS or Adam, coarse to fine over ``scales`` (each scale starts from the previous result, upsampled), and
optionally luminance only, keeping the content's colours (Gatys et al. 2017, "Controlling perceptual factors").
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from ops.vgg import LossNetwork

CONTENT_LAYERS = ["conv4_2"]
STYLE_LAYERS = ["conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1"]


@dataclass
class Settings:
    alpha: float = 1.0  # content weight
    beta: float = 1e5  # style weight
    tv: float = 1e-4  # total variation weight
    steps: int = 300  # optimiser evaluations in all, shared out over the scales
    optimizer: str = "lbfgs"  # or "adam"
    lr: float = 0.02  # Adam's step, on pixels in 0..1
    init: str = "content"  # or "noise"
    preserve_colour: bool = False
    scales: list[float] = field(default_factory=lambda: [1.0])  # e.g. [0.5, 1.0]: coarse to fine
    seed: int = 0


def gram(f: Tensor) -> Tensor:
    """Gram matrices (N, C, C) of feature maps (N, C, H, W), divided by C * H * W."""
    n, c, h, w = f.shape
    flat = f.reshape(n, c, h * w)
    return flat @ flat.transpose(1, 2) / (c * h * w)


def total_variation(x: Tensor) -> Tensor:
    """Per image: the mean squared difference between neighbouring pixels."""
    return (x[..., 1:, :] - x[..., :-1, :]).pow(2).mean((1, 2, 3)) + (x[..., :, 1:] - x[..., :, :-1]).pow(2).mean(
        (1, 2, 3)
    )


def luminance(rgb: Tensor) -> Tensor:
    """ITU-R BT.601 luma of RGB in 0..1, (N, 1, H, W)."""
    r, g, b = rgb[:, 0:1], rgb[:, 1:2], rgb[:, 2:3]
    return 0.299 * r + 0.587 * g + 0.114 * b


def with_luminance(rgb: Tensor, y: Tensor) -> Tensor:
    """``rgb`` with its luma replaced by ``y`` (chroma kept): YIQ's I and Q are unchanged."""
    return (rgb + (y - luminance(rgb))).clamp(0, 1)


class Losses:
    """Content and style targets for a batch, and the loss of a candidate batch against them (per image)."""

    def __init__(self, net: LossNetwork, content: Tensor, style: Tensor) -> None:
        self.net = net
        with torch.no_grad():
            self.content = net(content, CONTENT_LAYERS)
            self.style = {k: gram(v) for k, v in net(style, STYLE_LAYERS).items()}

    def __call__(self, x: Tensor) -> tuple[Tensor, Tensor]:
        feats = self.net(x, CONTENT_LAYERS + STYLE_LAYERS)
        content = sum(F.mse_loss(feats[k], self.content[k], reduction="none").mean((1, 2, 3)) for k in CONTENT_LAYERS)
        style = sum(
            (gram(feats[k]) - self.style[k].expand(len(x), -1, -1)).pow(2).sum((1, 2)) for k in STYLE_LAYERS
        ) / len(STYLE_LAYERS)
        return content, style


def transfer(net: LossNetwork, content: Tensor, style: Tensor, settings: Settings) -> tuple[Tensor, dict]:
    """Stylise ``content`` (N, 3, H, W, RGB 0..1) with ``style`` (1 or N, 3, Hs, Ws); returns the images (0..1) and
    per-image final losses (content, style, tv) plus the evaluations made."""
    if settings.optimizer not in ("lbfgs", "adam"):
        raise ValueError(f"unknown optimizer {settings.optimizer!r}: use lbfgs or adam")
    content, style = content.contiguous(), style.contiguous()  # L-BFGS flattens with view()
    target = content
    if settings.preserve_colour:  # transfer on luminance: a grey style, matched to the content's luma statistics
        y_c, y_s = luminance(content), luminance(style)
        y_s = (y_s - y_s.mean((2, 3), keepdim=True)) / (y_s.std((2, 3), keepdim=True) + 1e-6)
        y_s = y_s * y_c.std((2, 3), keepdim=True).mean(0, keepdim=True) + y_c.mean((2, 3), keepdim=True).mean(0, True)
        content, style = y_c.expand(-1, 3, -1, -1), y_s.clamp(0, 1).expand(-1, 3, -1, -1)
    generator = torch.Generator(device="cpu").manual_seed(settings.seed)
    x = None
    evaluations = 0
    per_scale = max(1, settings.steps // len(settings.scales))
    for scale in settings.scales:
        size = [max(16, round(d * scale)) for d in content.shape[-2:]]
        c = F.interpolate(content, size=size, mode="area") if scale != 1 else content
        s = F.interpolate(style, scale_factor=scale, mode="area") if scale != 1 else style
        losses = Losses(net, c, s)
        if x is None:
            x = c.clone() if settings.init == "content" else torch.rand(c.shape, generator=generator).to(c)
        else:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        x, used = _optimise(x.detach().requires_grad_(True), losses, settings, per_scale)
        evaluations += used
    with torch.no_grad():
        final_content, final_style = Losses(net, content, style)(x)
        tv = total_variation(x)
    image = x.detach().clamp(0, 1)
    if settings.preserve_colour:
        image = with_luminance(target, luminance(image))
    stats = {
        "content_loss": final_content.tolist(),
        "style_loss": final_style.tolist(),
        "tv_loss": tv.tolist(),
        "evaluations": evaluations,
    }
    return image, stats


def _optimise(x: Tensor, losses: Losses, settings: Settings, steps: int) -> tuple[Tensor, int]:
    count = 0

    def objective() -> Tensor:
        nonlocal count
        count += 1
        optimizer.zero_grad()
        content, style = losses(x)
        loss = (settings.alpha * content + settings.beta * style + settings.tv * total_variation(x)).sum()
        loss.backward()
        return loss

    if settings.optimizer == "lbfgs":
        optimizer = torch.optim.LBFGS(
            [x], max_iter=steps, max_eval=steps, history_size=50, line_search_fn="strong_wolfe"
        )
        optimizer.step(objective)
    else:
        optimizer = torch.optim.Adam([x], lr=settings.lr)
        for _ in range(steps):
            optimizer.step(objective)
            with torch.no_grad():
                x.clamp_(0, 1)
    return x, count
