"""ECAPA-TDNN speaker encoder in SpeechBrain's checkpoint layout, with SpeechBrain's 80-bin fbank front end.

Desplanques et al., "ECAPA-TDNN: Emphasized Channel Attention, Propagation and Aggregation in TDNN Based Speaker
Verification" (Interspeech 2020). The module tree mirrors SpeechBrain's ``ECAPA_TDNN`` so that its
``embedding_model.ckpt`` (as in spkrec-ecapa-voxceleb: channels 1024x4 + 3072, 192-d) loads strictly by its own
key names: ``blocks.0.conv.conv.weight``, ``blocks.1.res2net_block.blocks.0.norm.norm.running_mean``, ``asp.tdnn``,
``asp_bn.norm``, ``fc.conv``. Convolutions pad "same" by reflection, as SpeechBrain's do.
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ops.models.device import best_device
from ops.models.registry import Architecture, LoadedModel

SAMPLE_RATE = 16000


class Conv1d(nn.Module):
    """A 1-d convolution with reflection 'same' padding; the inner ``conv`` gives SpeechBrain's key names."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1, groups: int = 1
    ) -> None:
        super().__init__()
        self.pad = dilation * (kernel_size - 1) // 2
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, dilation=dilation, groups=groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad:
            x = F.pad(x, (self.pad, self.pad), mode="reflect")
        return self.conv(x)


class BatchNorm1d(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(channels, eps=1e-5, momentum=0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)


class TDNNBlock(nn.Module):
    """conv -> ReLU -> batch norm (the order SpeechBrain trains with)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int, groups: int = 1):
        super().__init__()
        self.conv = Conv1d(in_channels, out_channels, kernel_size, dilation, groups)
        self.norm = BatchNorm1d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(torch.relu(self.conv(x)))


class Res2NetBlock(nn.Module):
    """Channels split into ``scale`` groups; each group after the first sees the previous group's output."""

    def __init__(self, channels: int, scale: int, kernel_size: int, dilation: int) -> None:
        super().__init__()
        self.scale = scale
        width = channels // scale
        self.blocks = nn.ModuleList(TDNNBlock(width, width, kernel_size, dilation) for _ in range(scale - 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, prev = [], None
        for i, part in enumerate(torch.chunk(x, self.scale, dim=1)):
            prev = part if i == 0 else self.blocks[i - 1](part if i == 1 else part + prev)
            out.append(prev)
        return torch.cat(out, dim=1)


class SEBlock(nn.Module):
    """Squeeze (masked mean over time) and excitation (per-channel gates)."""

    def __init__(self, channels: int, se_channels: int) -> None:
        super().__init__()
        self.conv1 = Conv1d(channels, se_channels, 1)
        self.conv2 = Conv1d(se_channels, channels, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        s = (x * mask).sum(dim=2, keepdim=True) / mask.sum(dim=2, keepdim=True)
        return torch.sigmoid(self.conv2(torch.relu(self.conv1(s)))) * x


class SERes2NetBlock(nn.Module):
    def __init__(
        self, in_channels: int, out_channels: int, scale: int, se_channels: int, kernel_size: int, dilation: int
    ) -> None:
        super().__init__()
        self.tdnn1 = TDNNBlock(in_channels, out_channels, 1, 1)
        self.res2net_block = Res2NetBlock(out_channels, scale, kernel_size, dilation)
        self.tdnn2 = TDNNBlock(out_channels, out_channels, 1, 1)
        self.se_block = SEBlock(out_channels, se_channels)
        self.shortcut = Conv1d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        residual = self.shortcut(x) if self.shortcut is not None else x
        return self.se_block(self.tdnn2(self.res2net_block(self.tdnn1(x))), mask) + residual


class AttentiveStatisticsPooling(nn.Module):
    """Attention over time (with the utterance's global mean and std as context) -> weighted mean and std."""

    def __init__(self, channels: int, attention_channels: int) -> None:
        super().__init__()
        self.tdnn = TDNNBlock(channels * 3, attention_channels, 1, 1)
        self.conv = Conv1d(attention_channels, channels, 1)

    @staticmethod
    def _stats(x: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = (weights * x).sum(dim=2)
        std = torch.sqrt((weights * (x - mean.unsqueeze(2)).pow(2)).sum(dim=2).clamp(1e-12))
        return mean, std

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        frames = x.shape[-1]
        mean, std = self._stats(x, mask / mask.sum(dim=2, keepdim=True))
        context = torch.cat([x, mean.unsqueeze(2).expand(-1, -1, frames), std.unsqueeze(2).expand(-1, -1, frames)], 1)
        attention = self.conv(torch.tanh(self.tdnn(context))).masked_fill(mask == 0, float("-inf"))
        mean, std = self._stats(x, F.softmax(attention, dim=2))
        return torch.cat([mean, std], dim=1).unsqueeze(2)


class ECAPATDNN(nn.Module):
    """fbank frames (batch, time, 80) and relative lengths (batch,) -> embeddings (batch, lin_neurons)."""

    def __init__(
        self,
        input_size: int = 80,
        channels: tuple[int, ...] = (1024, 1024, 1024, 1024, 3072),
        kernel_sizes: tuple[int, ...] = (5, 3, 3, 3, 1),
        dilations: tuple[int, ...] = (1, 2, 3, 4, 1),
        attention_channels: int = 128,
        scale: int = 8,
        se_channels: int = 128,
        lin_neurons: int = 192,
    ):
        super().__init__()
        self.blocks = nn.ModuleList([TDNNBlock(input_size, channels[0], kernel_sizes[0], dilations[0])])
        for i in range(1, len(channels) - 1):
            self.blocks.append(
                SERes2NetBlock(channels[i - 1], channels[i], scale, se_channels, kernel_sizes[i], dilations[i])
            )
        self.mfa = TDNNBlock(channels[-2] * (len(channels) - 2), channels[-1], kernel_sizes[-1], dilations[-1])
        self.asp = AttentiveStatisticsPooling(channels[-1], attention_channels)
        self.asp_bn = BatchNorm1d(channels[-1] * 2)
        self.fc = Conv1d(channels[-1] * 2, lin_neurons, 1)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        x = feats.transpose(1, 2)
        mask = _mask(lengths, x.shape[0], x.shape[-1], x.device)
        outputs = []
        for i, block in enumerate(self.blocks):
            x = block(x) if i == 0 else block(x, mask)
            outputs.append(x)
        x = self.mfa(torch.cat(outputs[1:], dim=1))
        return self.fc(self.asp_bn(self.asp(x, mask))).squeeze(2)


def _mask(lengths: torch.Tensor | None, batch: int, frames: int, device: torch.device, eps: float = 0.0):
    """(batch, 1, frames) of 1.0 on each utterance's real frames: frame i is real when i < length * frames - eps,
    with ``lengths`` relative to the longest, as SpeechBrain counts them (eps 1e-6 in its input normalisation)."""
    if lengths is None:
        return torch.ones(batch, 1, frames, device=device)
    real = lengths.to(device)[:, None] * frames - eps
    return (torch.arange(frames, device=device)[None, :] < real).float().unsqueeze(1)


class SpeechBrainFbank(nn.Module):
    """16 kHz waveforms (batch, samples) -> 80 log-mel frames (batch, frames, 80), as SpeechBrain's ``Fbank``:
    periodic Hamming window of 25 ms, 10 ms hop, zero-padded centred frames, power spectrum, its own triangular
    filters on the HTK mel scale, 10*log10 clipped 80 dB below each utterance's peak; then the mean over each
    utterance's real frames removed (``InputNormalization(norm_type="sentence", std_norm=False)``)."""

    def __init__(self, n_mels: int = 80, n_fft: int = 400, hop: int = 160) -> None:
        super().__init__()
        self.n_fft, self.hop = n_fft, hop
        self.register_buffer("window", torch.hamming_window(n_fft), persistent=False)
        to_mel = lambda hz: 2595 * math.log10(1 + hz / 700)  # noqa: E731
        mel = torch.linspace(to_mel(0), to_mel(SAMPLE_RATE // 2), n_mels + 2)
        hz = 700 * (10 ** (mel / 2595) - 1)
        central, band = hz[1:-1], (hz[1:] - hz[:-1])[:-1]
        freqs = torch.linspace(0, SAMPLE_RATE // 2, n_fft // 2 + 1)
        slope = (freqs[None, :] - central[:, None]) / band[:, None]
        filters = torch.clamp(torch.minimum(slope + 1.0, 1.0 - slope), min=0.0).transpose(0, 1)
        self.register_buffer("filters", filters, persistent=False)

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        spec = torch.stft(
            wav, self.n_fft, self.hop, self.n_fft, self.window, center=True, pad_mode="constant", return_complex=True
        )
        power = spec.real.pow(2) + spec.imag.pow(2)
        db = 10 * torch.log10(torch.clamp(power.transpose(1, 2) @ self.filters, min=1e-10))
        db = torch.maximum(db, db.amax(dim=(-2, -1), keepdim=True) - 80.0)
        mask = _mask(lengths, db.shape[0], db.shape[1], db.device, eps=1e-6).transpose(1, 2)
        mean = (db * mask).sum(dim=1, keepdim=True) / mask.sum(dim=1, keepdim=True)
        return db - mean  # padding frames too, as SpeechBrain's normalisation does by default


class ECAPAEmbedder:
    """ECAPA-TDNN with its front end on one device: segments in, one L2-normalised embedding per segment."""

    def __init__(self, state: dict[str, torch.Tensor], device: str | torch.device | None = None) -> None:
        self.device = best_device(device)
        dim = state["fc.conv.weight"].shape[0]
        channels = tuple(
            state[f"blocks.{i}.conv.conv.weight" if i == 0 else f"blocks.{i}.tdnn1.conv.conv.weight"].shape[0]
            for i in range(4)
        ) + (state["mfa.conv.conv.weight"].shape[0],)
        self.encoder = ECAPATDNN(channels=channels, lin_neurons=dim)
        self.encoder.load_state_dict(state, strict=True)
        self.encoder.to(self.device).eval()
        self.front_end = SpeechBrainFbank().to(self.device)

    @torch.inference_mode()
    def partial_sums(self, waves: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Per segment its embedding (as a sum of one) and a count of 1: sources pool segments equally."""
        if not waves:
            return np.zeros((0, self.encoder.fc.conv.out_channels), np.float32), np.zeros(0, np.int64)
        # Only segments of equal length share a batch: padding would change the convolutions at the edges and
        # the front end's peak, so a segment's embedding would depend on its batch-mates. (Segments that reach
        # the maximum length, the bulk of long recordings, are all of one length.)
        groups: dict[int, list[int]] = {}
        for i, wave in enumerate(waves):
            groups.setdefault(len(wave), []).append(i)
        out = np.zeros((len(waves), self.encoder.fc.conv.out_channels), np.float32)
        for idx in groups.values():
            for start in range(0, len(idx), 32):
                chunk = idx[start : start + 32]
                batch = torch.as_tensor(np.stack([np.asarray(waves[i], np.float32) for i in chunk]))
                emb = self.encoder(self.front_end(batch.to(self.device)))
                out[chunk] = F.normalize(emb, dim=1).cpu().numpy()
        return out, np.ones(len(waves), np.int64)


def convert_speechbrain(data: bytes) -> dict[str, torch.Tensor]:
    """SpeechBrain's embedding_model.ckpt (a plain state dict) -> ours: the key sets must be equal."""
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    dim = state["fc.conv.weight"].shape[0]
    channels = tuple(
        state[f"blocks.{i}.conv.conv.weight" if i == 0 else f"blocks.{i}.tdnn1.conv.conv.weight"].shape[0]
        for i in range(4)
    ) + (state["mfa.conv.conv.weight"].shape[0],)
    expected = set(ECAPATDNN(channels=channels, lin_neurons=dim).state_dict())
    if set(state) != expected:
        raise ValueError(
            f"not an ECAPA-TDNN checkpoint in SpeechBrain's layout: missing "
            f"{sorted(expected - set(state))[:5]}, unexpected {sorted(set(state) - expected)[:5]}"
        )
    return {k: v.contiguous().clone() for k, v in sorted(state.items())}


def _card(state: dict[str, torch.Tensor]) -> dict:
    return {
        "modality": "voice",
        "input": {
            "sample_rate": SAMPLE_RATE,
            "features": "80 log-mel fbank (SpeechBrain Fbank), per-utterance mean removed",
        },
        "output_dim": int(state["fc.conv.weight"].shape[0]),
        "metric": "cosine",
        "default_threshold": 0.25,  # SpeechBrain's SpeakerRecognition.verify_batch default
    }


def _build(model: LoadedModel, device: torch.device) -> ECAPAEmbedder:
    return ECAPAEmbedder(model.state, device)


ARCHITECTURES = (
    Architecture("ecapa-tdnn-speechbrain", "speaker-embedding", build=_build, convert=convert_speechbrain, card=_card),
)
