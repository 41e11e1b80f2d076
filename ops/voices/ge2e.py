"""The GE2E speaker encoder: the LSTM (Resemblyzer's pretrained weights), its mel front end, and batched embedding.

GE2E: Wan et al., "Generalized End-to-End Loss for Speaker Verification" (ICASSP 2018). The network is three LSTM
layers (40 mel bins -> 256), a linear layer, ReLU and L2 normalisation; an utterance is cut into partials of 160
frames (1.6 s) at 1.3 partials per second, each partial is embedded, and the utterance embedding is the
L2-normalised mean of its partials. The front end is a linear (not log) 40-bin Slaney mel power spectrogram with
25 ms windows and 10 ms hops at 16 kHz, as Resemblyzer computes it with librosa.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import torch
import torchaudio
from torch import nn

from ops.matching.vectors import unit_or_zero
from ops.models.device import best_device
from ops.models.registry import Architecture, LoadedModel, ModelSpec, PackageSource

SAMPLE_RATE = 16000
HOP = 160  # 10 ms
PARTIAL_FRAMES = 160  # 1.6 s
PARTIALS_PER_SECOND = 1.3
MIN_COVERAGE = 0.75  # a last partial with less real audio than this is dropped (unless it is the only one)
# Partials per forward pass: large enough to keep a GPU busy, small enough for the LSTM's activations to fit.
MAX_PARTIALS_PER_PASS = 2048


class GE2EEncoder(nn.Module):
    """Mel partials (batch, 160, 40) -> L2-normalised 256-d embeddings."""

    def __init__(self, n_mels: int = 40, hidden: int = 256, layers: int = 3, dim: int = 256) -> None:
        super().__init__()
        self.lstm = nn.LSTM(n_mels, hidden, layers, batch_first=True)
        self.linear = nn.Linear(hidden, dim)

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        _, (hidden, _) = self.lstm(mels)
        out = torch.relu(self.linear(hidden[-1]))
        return out / out.norm(dim=1, keepdim=True).clamp_min(1e-12)


class GE2EFrontEnd(nn.Module):
    """16 kHz waveform (samples,) -> linear mel power frames (frames, 40), matching librosa's defaults."""

    def __init__(self) -> None:
        super().__init__()
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=SAMPLE_RATE,
            n_fft=400,
            hop_length=HOP,
            n_mels=40,
            power=2.0,
            center=True,
            pad_mode="constant",  # librosa >= 0.10 pads with zeros
            norm="slaney",
            mel_scale="slaney",
        )

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        return self.mel(wav).transpose(-1, -2)


def partial_starts(n_samples: int) -> tuple[list[int], int]:
    """Frame offsets of the partials of an utterance of ``n_samples``, and the length its last partial reaches."""
    n_frames = math.ceil((n_samples + 1) / HOP)
    step = round(SAMPLE_RATE / PARTIALS_PER_SECOND / HOP)  # 77 frames
    starts = list(range(0, max(1, n_frames - PARTIAL_FRAMES + step + 1), step))
    coverage = (n_samples - starts[-1] * HOP) / (PARTIAL_FRAMES * HOP)
    if coverage < MIN_COVERAGE and len(starts) > 1:
        starts.pop()
    return starts, (starts[-1] + PARTIAL_FRAMES) * HOP


@dataclass
class SpeakerEmbedder:
    """A speaker encoder with its front end on one device: waveforms in, embeddings out, partials batched."""

    encoder: nn.Module
    front_end: nn.Module
    device: torch.device

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor], device: str | torch.device | None = None) -> SpeakerEmbedder:
        device = best_device(device)
        encoder = GE2EEncoder()
        encoder.load_state_dict(state, strict=True)
        return cls(encoder.to(device).eval(), GE2EFrontEnd().to(device).eval(), device)

    @torch.inference_mode()
    def partial_sums(self, waves: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """For each 16 kHz waveform: the sum of its partial embeddings (n, 256) and its partial counts (n,).

        Sums, not means, so that callers can pool partials across segments exactly; partials of every waveform
        go through the encoder together, in passes of at most MAX_PARTIALS_PER_PASS.
        """
        partials, counts = [], []
        for wave in waves:
            starts, padded = partial_starts(len(wave))
            x = torch.zeros(max(padded, len(wave)), dtype=torch.float32)  # zero-padded up to the last partial
            x[: len(wave)] = torch.as_tensor(np.asarray(wave, dtype=np.float32).copy())
            frames = self.front_end(x.to(self.device))
            partials.append(torch.stack([frames[s : s + PARTIAL_FRAMES] for s in starts]))
            counts.append(len(starts))
        if not partials:
            return np.zeros((0, 256), np.float32), np.zeros(0, np.int64)
        batch = torch.cat(partials)
        embeds = torch.cat([self.encoder(chunk) for chunk in batch.split(MAX_PARTIALS_PER_PASS)])
        owner = torch.repeat_interleave(
            torch.arange(len(counts), device=self.device), torch.tensor(counts, device=self.device)
        )
        sums = torch.zeros(len(counts), embeds.shape[1], device=self.device).index_add_(0, owner, embeds)
        return sums.cpu().numpy(), np.asarray(counts)

    def embed(self, waves: list[np.ndarray]) -> np.ndarray:
        """Utterance embeddings: the L2-normalised mean of each waveform's partials."""
        sums, _ = self.partial_sums(waves)
        return unit_or_zero(sums)


def _convert_resemblyzer(data: bytes) -> dict[str, torch.Tensor]:
    """Resemblyzer's pretrained.pt -> GE2EEncoder's state dict. The file also holds the optimiser's state and the
    GE2E similarity scale and bias, which only training uses: they are dropped by name, everything else must map."""
    checkpoint = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    state = dict(checkpoint["model_state"])
    for unused in ("similarity_weight", "similarity_bias"):
        state.pop(unused)
    expected = set(GE2EEncoder().state_dict())
    if set(state) != expected:
        raise ValueError(f"unexpected GE2E keys: missing {expected - set(state)}, extra {set(state) - expected}")
    return {k: v.contiguous().clone() for k, v in sorted(state.items())}


GE2E = ModelSpec(
    name="ge2e-resemblyzer",
    architecture="ge2e-lstm-3x256",
    source=PackageSource(
        package="Resemblyzer",
        version="0.1.4",
        filename="Resemblyzer-0.1.4-py3-none-any.whl",
        sha256="8f12eb2f1a9982d32e8db7856de754709b59c93a77bcf0ff536584b619a9dd1f",
        member="resemblyzer/pretrained.pt",
        license="Apache-2.0",
    ),
    convert=_convert_resemblyzer,
    checkpoint_sha256="44f90448c6865479fc08aa7cc0286ed5ffa3ad71dbfd7716e226b041edbd108f",
    card={
        "modality": "voice",
        "input": {
            "sample_rate": SAMPLE_RATE,
            "features": "linear mel power, 40 Slaney bins, n_fft 400, hop 160",
            "partial_frames": PARTIAL_FRAMES,
            "partials_per_second": PARTIALS_PER_SECOND,
            "loudness": "-30 dBFS, increase only",
        },
        "output_dim": 256,
        "metric": "cosine",
        # Cosine similarity above which two utterances are called the same speaker, before calibration.
        "default_threshold": 0.75,
    },
)


def _build(model: LoadedModel, device: torch.device) -> SpeakerEmbedder:
    return SpeakerEmbedder.from_state(model.state, device)


ARCHITECTURES = (
    Architecture(
        GE2E.architecture,
        "speaker-embedding",
        build=_build,
        convert=_convert_resemblyzer,  # a GE2E encoder trained with Resemblyzer's or Real-Time-Voice-Cloning's code
        card=lambda state: dict(GE2E.card),
    ),
)
SPECS = (GE2E,)
