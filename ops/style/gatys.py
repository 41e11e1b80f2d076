"""Optimisation-based style transfer (Gatys, Ecker and Bethge 2016): change an image's pixels to minimise

    J = alpha * J_content + beta * J_style + tv * J_tv

with VGG19 features: content at conv4_2, style at conv1_1 ... conv5_1 as Gram matrices normalised by the layer's
size. Several images are optimised together in one batch (their losses add, so each keeps its own optimum), with
L-BFGS or Adam, coarse to fine over ``scales`` (each scale starts from the previous result, upsampled), and
optionally luminance only, keeping the content's colours (Gatys et al. 2017, "Controlling perceptual factors").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from ops.style.vgg import LossNetwork

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
    coarse_steps: int | None = None  # evaluations at each scale but the last (default: steps shared equally)
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


# Called after every evaluation with (scale, evaluations so far at this scale, the images, their objective per image);
# returning True ends that scale's optimisation there (the benchmark stops at a target loss, the job logs progress).
Progress = Callable[[float, int, Tensor, Tensor], bool | None]


class _Stop(Exception):
    pass


def transfer(
    net: LossNetwork, content: Tensor, style: Tensor, settings: Settings, progress: Progress | None = None
) -> tuple[Tensor, dict]:
    """Stylise ``content`` (N, 3, H, W, RGB 0..1) with ``style`` (1 or N, 3, Hs, Ws); returns the images (0..1) and
    per-image final losses (content, style, tv) of those images as returned (clamped) plus the evaluations made."""
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
    for scale, steps in zip(settings.scales, scale_steps(settings), strict=True):
        size = [max(16, round(d * scale)) for d in content.shape[-2:]]
        c = F.interpolate(content, size=size, mode="area") if scale != 1 else content
        s = F.interpolate(style, scale_factor=scale, mode="area") if scale != 1 else style
        losses = Losses(net, c, s)
        if x is None:
            x = c.clone() if settings.init == "content" else torch.rand(c.shape, generator=generator).to(c)
        else:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        x, used = _optimise(x.detach().requires_grad_(True), losses, settings, steps, scale, progress)
        evaluations += used
    image = x.detach().clamp(0, 1)
    if settings.scales[-1] != 1:  # else the last scale's targets are the full-size ones already
        losses = Losses(net, content, style)
    with torch.no_grad():
        final_content, final_style = losses(image)
        tv = total_variation(image)
    if settings.preserve_colour:
        image = with_luminance(target, luminance(image))
    stats = {
        "content_loss": final_content.tolist(),
        "style_loss": final_style.tolist(),
        "tv_loss": tv.tolist(),
        "evaluations": evaluations,
    }
    return image, stats


def scale_steps(settings: Settings) -> list[int]:
    """Evaluations per scale: ``coarse_steps`` at each coarse one and the rest of ``steps`` at full size, or an equal
    share each. Coarse evaluations are cheap (a quarter of the pixels at half size), so a long coarse phase pays."""
    n = len(settings.scales)
    if settings.coarse_steps is None:
        return [max(1, settings.steps // n)] * n
    return [settings.coarse_steps] * (n - 1) + [max(1, settings.steps - settings.coarse_steps * (n - 1))]


def objective(losses: Losses, x: Tensor, settings: Settings) -> Tensor:
    """J per image: alpha * content + beta * style + tv * total variation."""
    content, style = losses(x)
    return settings.alpha * content + settings.beta * style + settings.tv * total_variation(x)


def _optimise(
    x: Tensor, losses: Losses, settings: Settings, steps: int, scale: float, progress: Progress | None
) -> tuple[Tensor, int]:
    count = 0
    # The best image seen, per image: unit L-BFGS steps without a line search can overshoot (seen on one CPU: J
    # 9 at evaluation 40, 198 at 50), so the image returned is the lowest objective evaluated, never a late overshoot.
    best, best_j = x.detach().clone(), torch.full((len(x),), float("inf"), device=x.device)

    def closure() -> Tensor:
        nonlocal count
        count += 1
        with torch.no_grad():  # pixels stay in 0..1: the image judged is the image written
            x.clamp_(0, 1)
        optimizer.zero_grad()
        per_image = objective(losses, x, settings)
        with torch.no_grad():
            better = per_image < best_j
            best[better], best_j[better] = x[better], per_image[better]
        loss = per_image.sum()
        loss.backward()
        if progress is not None and progress(scale, count, x.detach(), per_image.detach()):
            raise _Stop
        return loss

    if settings.optimizer == "lbfgs":
        # Unit steps without a line search, in rounds of 20 iterations with the pixels clamped in the closure (as the
        # PyTorch tutorial runs it): measured here, a strong Wolfe line search on clamped pixels stops early, at a
        # third higher loss. Each round's evaluations are capped so that ``steps`` is never exceeded.
        optimizer = torch.optim.LBFGS([x], history_size=100)
        try:
            while count < steps:
                group, before = optimizer.param_groups[0], count
                group["max_iter"] = group["max_eval"] = min(20, steps - count)
                optimizer.step(closure)
                if count - before <= 1:  # converged: the gradient or the change fell below tolerance
                    break
        except _Stop:
            pass
    else:
        optimizer = torch.optim.Adam([x], lr=settings.lr)
        try:
            for _ in range(steps):
                optimizer.step(closure)
                with torch.no_grad():
                    x.clamp_(0, 1)
        except _Stop:
            pass
    return best, count
