"""Feed-forward style transfer throughput: our paths against a one-image-at-a-time fp32 loop like pytorch/examples'
``stylize`` on the same weights, interleaved, with the output difference.

    python benchmarks/bench_style.py [--size 512] [--images 8] [--rounds 3] [--model NAME --models ROOT]

Without --model the weights are seeded random (speed does not depend on them). Contenders: the peer (fp32,
``torch.no_grad``, every core on one image at a time), ours in fp32 (inference mode, one image at a time), one
process per core each with one thread (how jobs.stylize runs without GPUs), and with --bf16 ours under bf16
autocast (measured here: 0.018 images/s at 256x256 against 3.3 in fp32 on this AVX2-only CPU, so off by default). Prints
images per second, ratios to the peer, and how far each output is from the peer's (0..255 levels).
Still to come here: the Gatys comparison with the PyTorch tutorial loop (time to the same loss).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ops.transformer_net import TransformerNet, stylize  # noqa: E402


def network(model: str | None, models: str | None) -> TransformerNet:
    """The imported network ``model``, or seeded random weights."""
    torch.manual_seed(0)
    net = TransformerNet().eval()
    if model:
        from ops.registry import load, models_root

        net.load_state_dict(load(model, models_root(models)).state, strict=True)
    return net


def peer(net: TransformerNet, images: torch.Tensor) -> tuple[float, torch.Tensor]:
    start, outs = time.perf_counter(), []
    with torch.no_grad():
        for image in images:
            outs.append(net(image[None]).clamp(0, 255)[0])
    return len(images) / (time.perf_counter() - start), torch.stack(outs)


def ours(net: TransformerNet, images: torch.Tensor, bf16: bool) -> tuple[float, torch.Tensor]:
    start, outs = time.perf_counter(), []
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for image in images:
            outs.append(stylize(net, image[None])[0].float())
    return len(images) / (time.perf_counter() - start), torch.stack(outs)


def _worker(args: tuple) -> torch.Tensor:
    state, images = args
    torch.set_num_threads(1)
    net = TransformerNet().eval()
    net.load_state_dict(state)
    return torch.stack([stylize(net, image[None])[0] for image in images])


def per_core(net: TransformerNet, images: torch.Tensor, pool, cores: int) -> tuple[float, torch.Tensor]:
    parts = [images[i::cores] for i in range(cores)]
    start = time.perf_counter()
    outs = pool.map(_worker, [(net.state_dict(), p) for p in parts])
    rate = len(images) / (time.perf_counter() - start)
    merged = torch.empty_like(images)
    for i, out in enumerate(outs):
        merged[i::cores] = out
    return rate, merged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--bf16", action="store_true", help="also time bf16 autocast (on AVX2-only CPUs it is ~180x slower: off)"
    )
    parser.add_argument("--model")
    parser.add_argument("--models")
    args = parser.parse_args()
    net = network(args.model, args.models)
    images = torch.rand(args.images, 3, args.size, args.size, generator=torch.Generator().manual_seed(1)) * 255
    cores = torch.get_num_threads()
    rates: dict[str, list[float]] = {}
    diffs: dict[str, float] = {}
    with mp.get_context("spawn").Pool(cores) as pool:
        for _ in range(args.rounds):  # interleaved: a noisy neighbour slows every contender alike
            rate, reference = peer(net, images)
            rates.setdefault("peer: fp32 loop, no_grad", []).append(rate)
            contenders = [
                ("ours: fp32, inference mode", lambda: ours(net, images, False)),
                (f"ours: {cores} processes x 1 thread", lambda: per_core(net, images, pool, cores)),
            ]
            if args.bf16:
                contenders.append(("ours: bf16 autocast", lambda: ours(net, images, True)))
            for name, run in contenders:
                rate, out = run()
                rates.setdefault(name, []).append(rate)
                diffs[name] = float((out - reference).abs().max())
    base = statistics.median(rates["peer: fp32 loop, no_grad"])
    print(f"\nTransformerNet, {args.images} images of {args.size}x{args.size}, {cores} cores, medians of {args.rounds}")
    print(f"{'contender':<34} {'images/s':>9} {'vs peer':>8} {'max |diff|':>11}")
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"{name:<34} {median:>9.3f} {median / base:>7.2f}x {diffs.get(name, 0.0):>11.3f}")


if __name__ == "__main__":
    main()
