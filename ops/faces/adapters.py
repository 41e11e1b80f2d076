"""Face recognisers whose checkpoints users already hold, under their public key names, loaded strictly.

- arcface_torch (insightface) ``backbone.pth``: IResNet-50/100, 112x112 RGB chips, ``(x / 255 - 0.5) / 0.5``,
  512-d. Keys: stem ``conv1, bn1, prelu``; blocks ``layerN.i.{bn1, conv1, bn2, prelu, conv2, bn3, downsample.0/1}``;
  head ``bn2, fc, features``.
- facenet-pytorch ``InceptionResnetV1`` (VGGFace2 or CASIA-WebFace): 160x160 RGB chips, ``(x - 127.5) / 128``,
  512-d L2-normalised. Files saved with the classifier carry ``logits.*``, which embedding does not use: dropped.

Both take chips in 0-255 and normalise inside ``forward``, like every recogniser in ``ops.faces``.
Import them with ``python -m jobs.models import FILE --architecture arcface-iresnet50 --name NAME``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ops.faces.recogniser import FaceRecogniser, ready
from ops.models.registry import Architecture, LoadedModel, read_state_dict

IRESNET_LAYERS = {50: (3, 4, 14, 3), 100: (3, 13, 30, 3)}


class IBasicBlock(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-5)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-5)
        self.prelu = nn.PReLU(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-5)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes, eps=1e-5)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (self.downsample(x) if self.downsample is not None else x)


class ArcFaceIResNet(nn.Module):
    """arcface_torch's IResNet: chips (N, 3, 112, 112) RGB 0-255 -> (N, 512) embeddings (not normalised)."""

    def __init__(self, depth: int = 50, features: int = 512) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-5)
        self.prelu = nn.PReLU(64)
        inplanes = 64
        for n, (planes, blocks) in enumerate(zip((64, 128, 256, 512), IRESNET_LAYERS[depth], strict=True), start=1):
            layer = [IBasicBlock(inplanes, planes, 2)] + [IBasicBlock(planes, planes) for _ in range(blocks - 1)]
            setattr(self, f"layer{n}", nn.Sequential(*layer))
            inplanes = planes
        self.bn2 = nn.BatchNorm2d(512, eps=1e-5)
        self.fc = nn.Linear(512 * 7 * 7, features)
        self.features = nn.BatchNorm1d(features, eps=1e-5)

    def forward(self, chips: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1((chips / 255.0 - 0.5) / 0.5)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.features(self.fc(self.bn2(x).flatten(1)))


class BasicConv2d(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int | tuple[int, int], stride: int = 1, padding=0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class _Residual(nn.Module):
    """Inception-ResNet block: branches concatenated, a 1x1 conv back to the input width, scaled, added."""

    def __init__(self, scale: float, relu: bool = True) -> None:
        super().__init__()
        self.scale, self.relu = scale, relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [getattr(self, f"branch{i}") for i in range(3) if hasattr(self, f"branch{i}")]
        out = x + self.scale * self.conv2d(torch.cat([b(x) for b in branches], dim=1))
        return F.relu(out) if self.relu else out


class Block35(_Residual):
    def __init__(self, scale: float) -> None:
        super().__init__(scale)
        self.branch0 = BasicConv2d(256, 32, 1)
        self.branch1 = nn.Sequential(BasicConv2d(256, 32, 1), BasicConv2d(32, 32, 3, padding=1))
        self.branch2 = nn.Sequential(
            BasicConv2d(256, 32, 1), BasicConv2d(32, 32, 3, padding=1), BasicConv2d(32, 32, 3, padding=1)
        )
        self.conv2d = nn.Conv2d(96, 256, 1)


class Block17(_Residual):
    def __init__(self, scale: float) -> None:
        super().__init__(scale)
        self.branch0 = BasicConv2d(896, 128, 1)
        self.branch1 = nn.Sequential(
            BasicConv2d(896, 128, 1),
            BasicConv2d(128, 128, (1, 7), padding=(0, 3)),
            BasicConv2d(128, 128, (7, 1), padding=(3, 0)),
        )
        self.conv2d = nn.Conv2d(256, 896, 1)


class Block8(_Residual):
    def __init__(self, scale: float, relu: bool = True) -> None:
        super().__init__(scale, relu)
        self.branch0 = BasicConv2d(1792, 192, 1)
        self.branch1 = nn.Sequential(
            BasicConv2d(1792, 192, 1),
            BasicConv2d(192, 192, (1, 3), padding=(0, 1)),
            BasicConv2d(192, 192, (3, 1), padding=(1, 0)),
        )
        self.conv2d = nn.Conv2d(384, 1792, 1)


class Mixed6a(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.branch0 = BasicConv2d(256, 384, 3, stride=2)
        self.branch1 = nn.Sequential(
            BasicConv2d(256, 192, 1), BasicConv2d(192, 192, 3, padding=1), BasicConv2d(192, 256, 3, stride=2)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch0(x), self.branch1(x), F.max_pool2d(x, 3, 2)], dim=1)


class Mixed7a(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.branch0 = nn.Sequential(BasicConv2d(896, 256, 1), BasicConv2d(256, 384, 3, stride=2))
        self.branch1 = nn.Sequential(BasicConv2d(896, 256, 1), BasicConv2d(256, 256, 3, stride=2))
        self.branch2 = nn.Sequential(
            BasicConv2d(896, 256, 1), BasicConv2d(256, 256, 3, padding=1), BasicConv2d(256, 256, 3, stride=2)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [self.branch0(x), self.branch1(x), self.branch2(x), F.max_pool2d(x, 3, 2)]
        return torch.cat(parts, dim=1)


class InceptionResnetV1(nn.Module):
    """facenet-pytorch's InceptionResnetV1: chips (N, 3, 160, 160) RGB 0-255 -> (N, 512) unit embeddings."""

    def __init__(self) -> None:
        super().__init__()
        self.conv2d_1a = BasicConv2d(3, 32, 3, stride=2)
        self.conv2d_2a = BasicConv2d(32, 32, 3)
        self.conv2d_2b = BasicConv2d(32, 64, 3, padding=1)
        self.conv2d_3b = BasicConv2d(64, 80, 1)
        self.conv2d_4a = BasicConv2d(80, 192, 3)
        self.conv2d_4b = BasicConv2d(192, 256, 3, stride=2)
        self.repeat_1 = nn.Sequential(*[Block35(0.17) for _ in range(5)])
        self.mixed_6a = Mixed6a()
        self.repeat_2 = nn.Sequential(*[Block17(0.10) for _ in range(10)])
        self.mixed_7a = Mixed7a()
        self.repeat_3 = nn.Sequential(*[Block8(0.20) for _ in range(5)])
        self.block8 = Block8(1.0, relu=False)
        self.last_linear = nn.Linear(1792, 512, bias=False)
        self.last_bn = nn.BatchNorm1d(512, eps=0.001)

    def forward(self, chips: torch.Tensor) -> torch.Tensor:
        x = self.conv2d_2b(self.conv2d_2a(self.conv2d_1a((chips - 127.5) / 128.0)))
        x = self.conv2d_4b(self.conv2d_4a(self.conv2d_3b(F.max_pool2d(x, 3, 2))))
        x = self.block8(self.repeat_3(self.mixed_7a(self.repeat_2(self.mixed_6a(self.repeat_1(x))))))
        x = self.last_bn(self.last_linear(x.mean(dim=(2, 3))))
        return F.normalize(x, dim=1)


def _strict(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # Files written before torch 0.4.1 lack BatchNorm's step counters, which inference never reads.
    counters = {k: v for k, v in model.state_dict().items() if k.endswith("num_batches_tracked") and k not in state}
    model.load_state_dict(state | counters, strict=True)  # names every missing and unexpected key on failure
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def _ready(encoder: nn.Module, model: LoadedModel, template: str, chip: int, device: torch.device) -> FaceRecogniser:
    return ready(encoder, model.state, template, chip, int(model.card["output_dim"]), device)


def _read(data: bytes) -> dict[str, torch.Tensor]:
    state = read_state_dict(data)
    return {k.removeprefix("module."): v for k, v in state.items()}  # saved from DataParallel/DDP: same weights


def _iresnet(depth: int) -> Architecture:
    return Architecture(
        name=f"arcface-iresnet{depth}",
        task="face-embedding",
        build=lambda model, device: _ready(ArcFaceIResNet(depth), model, "arcface", 112, device),
        convert=lambda data: _strict(ArcFaceIResNet(depth), _read(data)),
        card=lambda state: {
            "modality": "face",
            "task": "face-embedding",
            "input": "112x112 RGB face chip, insightface arcface template",
            "normalisation": "(pixel / 255 - 0.5) / 0.5",
            "output_dim": int(state["fc.weight"].shape[0]),
            "metric": "cosine",
            "default_threshold": None,
        },
    )


IRESNET50, IRESNET100 = _iresnet(50), _iresnet(100)


def _facenet(data: bytes) -> dict[str, torch.Tensor]:
    state = {k: v for k, v in _read(data).items() if not k.startswith("logits.")}
    return _strict(InceptionResnetV1(), state)


FACENET = Architecture(
    name="facenet-inception-resnet-v1",
    task="face-embedding",
    build=lambda model, device: _ready(InceptionResnetV1(), model, "facenet", 160, device),
    convert=_facenet,
    card=lambda state: {
        "modality": "face",
        "task": "face-embedding",
        "input": "160x160 RGB face chip, arcface template scaled to 160",
        "normalisation": "(pixel - 127.5) / 128",
        "output_dim": 512,
        "metric": "cosine",
        "default_threshold": None,
    },
)

ARCHITECTURES = (IRESNET50, IRESNET100, FACENET)
