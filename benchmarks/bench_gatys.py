"""Gatys style transfer: time for one image to reach the loss that the PyTorch tutorial's single-image loop reaches
after 300 L-BFGS evaluations ("Neural Transfer Using PyTorch": default L-BFGS, pixels clamped inside the closure).

    python benchmarks/bench_gatys.py [--size 512] [--peer-steps 300] [--scales 0.25,0.5,1] [--coarse-steps 100]
        [--loss-network vgg19 --models ROOT]

Both minimise the same objective J = alpha * content + beta * style + tv * TV (ops/style/gatys.py: VGG19 conv4_2 and
conv1_1 ... conv5_1) on the same network. The peer runs the tutorial's loop; its final J on the 512x512 image is the
target. Ours runs ops.style.gatys.transfer (the same L-BFGS steps, coarse to fine: --coarse-steps
evaluations per coarse scale, then full size until J of the clamped image reaches the target, checked every
--check evaluations with the clock stopped). Prints both times, the ratio, and the content and style losses at
the end of each. Content and style are ../shared's amber and candy when present, else generated pictures; the loss
network is a seeded random VGG19 unless --loss-network names an imported one (speed does not depend on the weights,
the loss landscape does: say which in any figure). The peer alone takes about 21 minutes at 512x512 here.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ops.style import gatys  # noqa: E402
from ops.style.vgg import LossNetwork, from_registry, random_network  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "style"


def picture(path: Path, size: int, seed: int) -> tuple[torch.Tensor, str]:
    """``path`` centre-cropped and resized to size x size, RGB 0..1; or, without it, a generated picture."""
    if path.exists():
        im = Image.open(path).convert("RGB")
        side = min(im.size)
        left, top = (im.width - side) // 2, (im.height - side) // 2
        rgb = np.asarray(im.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.LANCZOS))
        name = path.name
    else:
        rng = np.random.default_rng(seed)
        yy, xx = np.mgrid[0:size, 0:size] / size
        waves = [np.sin(2 * np.pi * (f * xx + g * yy)) for f, g in rng.uniform(1, 12, (3, 2))]
        rgb = ((np.stack(waves, -1) + 1) * 127.5).astype(np.uint8)
        name = f"generated (seed {seed})"
    return torch.tensor(np.array(rgb)).permute(2, 0, 1)[None].float().contiguous() / 255, name


def tutorial(net: LossNetwork, content, style, settings: gatys.Settings, steps: int) -> tuple[torch.Tensor, float]:
    """The tutorial's loop: LBFGS([input]) with its defaults, ``optimizer.step(closure)`` until ``steps`` closure
    calls, the input clamped to 0..1 at the start of each closure and once more at the end."""
    losses = gatys.Losses(net, content, style)
    x = content.clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS([x])
    run = [0]
    started = time.perf_counter()
    while run[0] < steps:

        def closure() -> torch.Tensor:
            with torch.no_grad():
                x.clamp_(0, 1)
            optimizer.zero_grad()
            loss = gatys.objective(losses, x, settings).sum()
            loss.backward()
            run[0] += 1
            return loss

        optimizer.step(closure)
    with torch.no_grad():
        x.clamp_(0, 1)
    return x.detach(), time.perf_counter() - started


def ours(net: LossNetwork, content, style, settings: gatys.Settings, target: float, check: int, coarse: int):
    """ops.style.gatys.transfer until J of the clamped full-size image is at most ``target``; seconds exclude the
    checks."""
    full = gatys.Losses(net, content, style)
    paused = 0.0
    reached: list[float] = []

    def progress(scale: float, count: int, x: torch.Tensor, _: torch.Tensor) -> bool:
        nonlocal paused
        if scale != 1.0 or count % check:
            return False
        started = time.perf_counter()
        with torch.no_grad():
            value = float(gatys.objective(full, x.clamp(0, 1), settings).sum())
        paused += time.perf_counter() - started
        reached.append(value)
        return value <= target

    settings.coarse_steps = coarse
    settings.steps += coarse * (len(settings.scales) - 1)  # the full-size share stays ``steps``
    started = time.perf_counter()
    image, stats = gatys.transfer(net, content, style, settings, progress)
    return image, time.perf_counter() - started - paused, stats, reached


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--peer-steps", type=int, default=300)
    parser.add_argument("--scales", default="0.25,0.5,1")
    parser.add_argument("--coarse-steps", type=int, default=100)
    parser.add_argument("--check", type=int, default=5, help="full-size evaluations between checks of the target")
    parser.add_argument("--loss-network")
    parser.add_argument("--models")
    args = parser.parse_args()
    if args.loss_network:
        from ops.models.catalogue import load, models_root

        net = from_registry(load(args.loss_network, models_root(args.models)))
    else:
        net = random_network("vgg19", 0)
    content, content_name = picture(SHARED / "content-images" / "amber.jpg", args.size, 1)
    style, style_name = picture(SHARED / "style-images" / "candy.jpg", args.size, 2)
    settings = gatys.Settings()
    print(
        f"{content_name} x {style_name}, {args.size}x{args.size}, loss network {net.name}, "
        f"{torch.get_num_threads()} threads"
    )

    peer_image, peer_seconds = tutorial(net, content, style, settings, args.peer_steps)
    with torch.no_grad():
        c, s = gatys.Losses(net, content, style)(peer_image)
        target = float(gatys.objective(gatys.Losses(net, content, style), peer_image, settings).sum())
    print(
        f"peer: {args.peer_steps} evaluations in {peer_seconds:.0f} s: J {target:.4g} (content {c.item():.4g}, "
        f"style {s.item():.4g})"
    )

    scales = [float(v) for v in args.scales.split(",")]
    ours_settings = gatys.Settings(scales=scales, steps=args.peer_steps)
    image, seconds, stats, reached = ours(net, content, style, ours_settings, target, args.check, args.coarse_steps)
    final = reached[-1] if reached else float("nan")
    status = "reached" if reached and final <= target else "NOT reached"
    print(
        f"ours: scales {scales}, {stats['evaluations']} evaluations in {seconds:.0f} s: J {final:.4g} "
        f"(content {stats['content_loss'][0]:.4g}, style {stats['style_loss'][0]:.4g}), target {status}"
    )
    if status == "reached":
        print(f"time to the peer's loss: {peer_seconds / seconds:.2f}x the peer's speed")
    else:
        print("time to the peer's loss: not reached within the evaluations given (--peer-steps at full size)")


if __name__ == "__main__":
    main()
