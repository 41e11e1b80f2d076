"""Silero VAD v6 (16 kHz), ported: a learned speech detector that tells speech from silence, noise and music.

The network, as the silero-vad package describes it: 512-sample windows (32 ms) with the previous window's last
64 samples as context, reflection-padded by 64; STFT magnitudes (256-point periodic Hann, hop 128); four 1-d
convolutions with ReLU (strides 1, 2, 2, 1); an LSTM cell (128) carried from window to window; ReLU, a 1x1
convolution and a sigmoid: the probability of speech per window. The weights are those of the package's default
model (``silero_vad.jit``), taken out of it once at pull time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ops.models.registry import Architecture, LoadedModel, ModelSpec, PackageSource

WINDOW = 512  # samples at 16 kHz
CONTEXT = 64


class SileroVAD(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        # The package computes its STFT as a convolution with a fixed basis; that basis is a periodic-Hann DFT
        # (checked on conversion), so an FFT gives the same magnitudes for a fraction of the work.
        self.register_buffer("window", torch.hann_window(256, periodic=True), persistent=False)
        self.conv1 = nn.Conv1d(129, 128, 3, padding=1)
        self.conv2 = nn.Conv1d(128, 64, 3, stride=2, padding=1)
        self.conv3 = nn.Conv1d(64, 64, 3, stride=2, padding=1)
        self.conv4 = nn.Conv1d(64, 128, 3, padding=1)
        # The package's LSTMCell stepped window by window is an LSTM over the sequence of windows: same gates,
        # same weights (renamed on load), run in one call.
        self.lstm = nn.LSTM(128, 128, batch_first=True)
        self.final_conv = nn.Conv1d(128, 1, 1)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        """16 kHz mono (samples,) -> speech probability per 512-sample window (ceil(samples / 512),)."""
        n = -(-wav.shape[-1] // WINDOW)
        wav = F.pad(wav, (CONTEXT, n * WINDOW - wav.shape[-1]))
        # Window i is samples [i*512, i*512 + 576) of the context-padded signal: 64 of context, 512 new.
        frames = wav.unfold(0, WINDOW + CONTEXT, WINDOW)[:n]
        x = F.pad(frames, (0, CONTEXT), mode="reflect")
        x = torch.fft.rfft(x.unfold(-1, 256, 128) * self.window).abs().transpose(1, 2)  # (windows, 129, 4)
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        x = torch.relu(self.conv3(x))
        x = torch.relu(self.conv4(x)).squeeze(-1)  # (windows, 128): one step per window
        h, _ = self.lstm(x.unsqueeze(0))
        out = torch.sigmoid(self.final_conv(torch.relu(h[0]).unsqueeze(-1)))
        return out.reshape(-1)


def _convert(data: bytes) -> dict[str, torch.Tensor]:
    """The package's default model (``silero_vad.jit``, 16 kHz branch) -> SileroVAD's state dict.

    TorchScript is read with ``torch.jit.load`` once, here, from a wheel whose sha256 was already checked; only
    the tensors are kept, and every later load is ``weights_only``."""
    import io

    scripted = torch.jit.load(io.BytesIO(data), map_location="cpu")
    source = {k.removeprefix("_model."): v for k, v in scripted.state_dict().items() if k.startswith("_model.")}
    basis = source.pop("stft.forward_basis_buffer")[:, 0].double()
    n, k = torch.arange(256, dtype=torch.float64), torch.arange(129, dtype=torch.float64)[:, None]
    window = torch.hann_window(256, periodic=True, dtype=torch.float64)
    dft = torch.cat([torch.cos(2 * torch.pi * k * n / 256), -torch.sin(2 * torch.pi * k * n / 256)]) * window
    if basis.shape != dft.shape or (basis - dft).abs().max() > 1e-5:
        raise ValueError("the STFT basis is not a periodic-Hann DFT: this port would compute other features")
    names = {"decoder.decoder.2.weight": "final_conv.weight", "decoder.decoder.2.bias": "final_conv.bias"}
    for i in range(4):
        for p in ("weight", "bias"):
            names[f"encoder.{i}.reparam_conv.{p}"] = f"conv{i + 1}.{p}"
    for p in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        names[f"decoder.rnn.{p}"] = f"lstm.{p}_l0"
    if set(source) != set(names):
        missing, extra = set(names) - set(source), set(source) - set(names)
        raise ValueError(f"unexpected Silero keys: missing {missing}, extra {extra}")
    return {names[k]: v.detach().contiguous().clone() for k, v in sorted(source.items())}


SILERO = ModelSpec(
    name="silero-vad",
    architecture="silero-vad-v6-16k",
    source=PackageSource(
        package="silero-vad",
        version="6.2.3",
        filename="silero_vad-6.2.3-py3-none-any.whl",
        sha256="7b7f5436cfcb02fae583a05b512ea96467fd449fe54cb49a5e4f06c51a1e43b8",
        member="silero_vad/data/silero_vad.jit",
        license="MIT",
    ),
    convert=_convert,
    checkpoint_sha256="e52561e55bb75d8e25ba8923b674a284fc5fe412df59e71a98eabf659c23d4a1",
    card={
        "modality": "vad",
        "input": {"sample_rate": 16000, "window": WINDOW, "context": CONTEXT},
        "output": "speech probability per 32 ms window",
        "default_threshold": 0.5,
    },
)


def _build(model: LoadedModel, device: torch.device) -> SileroVAD:
    net = SileroVAD()
    net.load_state_dict(model.state, strict=True)
    return net.to(device).eval()


ARCHITECTURES = (Architecture(SILERO.architecture, "speech-detection", build=_build),)
SPECS = (SILERO,)
