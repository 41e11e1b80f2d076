"""Feed-forward style transfer throughput: ours against a one-image-at-a-time fp32 loop like pytorch/examples'
``stylize``, on the same weights, interleaved, with the output difference.

    python benchmarks/bench_style.py [--size 512] [--images 8] [--rounds 3] [--no-compile] [--model NAME --models ROOT]

The peer is pytorch/examples' TransformerNet as it is written there (reflection padding modules, nn.InstanceNorm2d,
nearest upsampling then a 3x3 convolution), loading the same state dict, every core on one image at a time under
``torch.no_grad``. Ours is ops.style.transformer_net: the upsampling convolutions computed as four 2x2 sub-pixel
convolutions (16/36 of the multiply-adds, same sums), instance norm folded into one multiply-add with vectorised
statistics, ReLU in place; then the same one process per core with one thread each (how jobs.stylize runs without
GPUs), and both under ``torch.compile`` (its one-off compile time printed apart). Without --model the weights are
seeded random with non-trivial norm weights (speed does not depend on them). Prints images per second, ratios to the
peer and how far each output is from the peer's (0..255 levels). bf16 is not a lever on CPUs without native bf16
(measured on this AVX2 machine: 0.018 images/s at 256x256 under autocast against 3.3 in fp32): --bf16 times it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ops.style.transformer_net import TransformerNet, stylize  # noqa: E402


class PeerConv(nn.Module):
    """pytorch/examples' ConvLayer / UpsampleConvLayer: [nearest upsample], reflection pad, convolution."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, upsample: int | None = None) -> None:
        super().__init__()
        self.upsample = upsample
        self.reflection_pad = nn.ReflectionPad2d(kernel // 2)
        self.conv2d = nn.Conv2d(cin, cout, kernel, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.upsample:
            x = F.interpolate(x, mode="nearest", scale_factor=self.upsample)
        return self.conv2d(self.reflection_pad(x))


class PeerResidual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1, self.in1 = PeerConv(channels, channels, 3, 1), nn.InstanceNorm2d(channels, affine=True)
        self.conv2, self.in2 = PeerConv(channels, channels, 3, 1), nn.InstanceNorm2d(channels, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.in2(self.conv2(F.relu(self.in1(self.conv1(x)))))


class PeerNet(nn.Module):
    """pytorch/examples' fast_neural_style TransformerNet, module for module (the same state dict keys)."""

    def __init__(self) -> None:
        super().__init__()
        norm = lambda c: nn.InstanceNorm2d(c, affine=True)  # noqa: E731
        self.conv1, self.in1 = PeerConv(3, 32, 9, 1), norm(32)
        self.conv2, self.in2 = PeerConv(32, 64, 3, 2), norm(64)
        self.conv3, self.in3 = PeerConv(64, 128, 3, 2), norm(128)
        for i in range(1, 6):
            setattr(self, f"res{i}", PeerResidual(128))
        self.deconv1, self.in4 = PeerConv(128, 64, 3, 1, upsample=2), norm(64)
        self.deconv2, self.in5 = PeerConv(64, 32, 3, 1, upsample=2), norm(32)
        self.deconv3 = PeerConv(32, 3, 9, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.in1(self.conv1(x)))
        y = F.relu(self.in2(self.conv2(y)))
        y = F.relu(self.in3(self.conv3(y)))
        for i in range(1, 6):
            y = getattr(self, f"res{i}")(y)
        y = F.relu(self.in4(self.deconv1(y)))
        y = F.relu(self.in5(self.deconv2(y)))
        return self.deconv3(y)


def weights(model: str | None, models: str | None) -> dict[str, torch.Tensor]:
    """The imported network ``model``'s state dict, or seeded random weights with norm weights away from 1 and 0."""
    if model:
        from ops.models.catalogue import load, models_root

        return load(model, models_root(models)).state
    torch.manual_seed(0)
    state = TransformerNet().state_dict()
    for key, value in state.items():
        if ".in" in f".{key}" and key.split(".")[-2].startswith("in"):
            value.uniform_(0.5, 1.5) if key.endswith("weight") else value.uniform_(-0.5, 0.5)
    state["deconv3.conv2d.weight"] *= 60  # outputs spread over 0..255 like a trained network's, not clamped to 0
    state["deconv3.conv2d.bias"] += 128
    return state


def peer(net: PeerNet, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.stack([net(image[None]).clamp(0, 255)[0] for image in images])


def ours(net: TransformerNet, images: torch.Tensor) -> torch.Tensor:
    return torch.stack([stylize(net, image[None])[0] for image in images])


_WORKER: TransformerNet | None = None


def _start(state: dict, compiled: bool, size: int) -> None:
    """Pool initialiser: one thread, the network built once (and compiled and warmed up on one image)."""
    global _WORKER
    torch.set_num_threads(1)
    _WORKER = TransformerNet().eval()
    _WORKER.load_state_dict(state)
    if compiled:
        _WORKER.compile()
    stylize(_WORKER, torch.zeros(1, 3, size, size))


def _work(images: torch.Tensor) -> torch.Tensor:
    return ours(_WORKER, images)


def per_core(pool: ProcessPoolExecutor, images: torch.Tensor, cores: int) -> torch.Tensor:
    parts = list(pool.map(_work, [images[i::cores] for i in range(cores)]))
    merged = torch.empty_like(images)
    for i, out in enumerate(parts):
        merged[i::cores] = out
    return merged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile contenders")
    parser.add_argument("--bf16", action="store_true", help="also time bf16 autocast (~180x slower on AVX2 CPUs)")
    parser.add_argument("--model")
    parser.add_argument("--models")
    args = parser.parse_args()
    state = weights(args.model, args.models)
    reference_net, net = PeerNet().eval(), TransformerNet().eval()
    reference_net.load_state_dict(state, strict=True)
    net.load_state_dict(state, strict=True)
    images = torch.rand(args.images, 3, args.size, args.size, generator=torch.Generator().manual_seed(1)) * 255
    cores = torch.get_num_threads()
    compile_seconds: dict[str, float] = {}

    def pool(compiled: bool) -> ProcessPoolExecutor:
        started = time.perf_counter()
        executor = ProcessPoolExecutor(
            cores, mp_context=get_context("spawn"), initializer=_start, initargs=(state, compiled, args.size)
        )
        list(executor.map(time.sleep, [0.5] * cores))  # every worker started (and compiled) before timing
        compile_seconds[f"pool of {cores}, compiled={compiled}"] = time.perf_counter() - started
        return executor

    contenders = {
        "peer: pytorch/examples loop": lambda: peer(reference_net, images),
        "ours: fp32, one process": lambda: ours(net, images),
    }
    eager_pool = pool(False)
    contenders[f"ours: {cores} processes x 1 thread"] = lambda: per_core(eager_pool, images, cores)
    if not args.no_compile:
        compiled = TransformerNet().eval()
        compiled.load_state_dict(state)
        compiled.compile()
        started = time.perf_counter()
        ours(compiled, images[:1])
        compile_seconds["one process, compiled"] = time.perf_counter() - started
        compiled_pool = pool(True)
        contenders["ours: compiled, one process"] = lambda: ours(compiled, images)
        contenders[f"ours: compiled, {cores} processes"] = lambda: per_core(compiled_pool, images, cores)
    if args.bf16:
        contenders["ours: bf16 autocast"] = lambda: _bf16(net, images)
    rates: dict[str, list[float]] = {}
    diffs: dict[str, float] = {}
    for _ in range(args.rounds):  # interleaved: a noisy neighbour slows every contender alike
        reference = None
        for name, run in contenders.items():
            started = time.perf_counter()
            out = run()
            rates.setdefault(name, []).append(len(images) / (time.perf_counter() - started))
            reference = out if reference is None else reference
            diffs[name] = max(diffs.get(name, 0.0), float((out.float() - reference).abs().max()))
    base = statistics.median(rates["peer: pytorch/examples loop"])
    print(f"\nTransformerNet, {args.images} images of {args.size}x{args.size}, {cores} cores, medians of {args.rounds}")
    print(f"{'contender':<34} {'images/s':>9} {'vs peer':>8} {'max |diff|':>11}")
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"{name:<34} {median:>9.3f} {median / base:>7.2f}x {diffs[name]:>11.4f}")
    for name, seconds in compile_seconds.items():
        print(f"start-up (once per actor), {name}: {seconds:.1f} s")


def _bf16(net: TransformerNet, images: torch.Tensor) -> torch.Tensor:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return ours(net, images).float()


if __name__ == "__main__":
    main()
