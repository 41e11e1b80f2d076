"""What a face recogniser is to the face pipeline: its network, and the chip it was trained on.

Each recogniser module's ``build`` (through ``ops.models.catalogue``) returns one of these, so that the pipeline
aligns every face onto the right template at the right size without knowing which network it runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class FaceRecogniser:
    encoder: nn.Module  # chips (N, 3, chip, chip) in 0..255 -> embeddings (N, dim)
    template: str  # alignment template family (ops.faces.align.template): dlib, arcface or facenet
    chip: int  # chip side in pixels
    dim: int


def ready(
    encoder: nn.Module, state: dict[str, torch.Tensor], template: str, chip: int, dim: int, device: torch.device
) -> FaceRecogniser:
    """``encoder`` with ``state`` loaded strictly, in eval mode on ``device``."""
    encoder.load_state_dict(state, strict=True)
    return FaceRecogniser(encoder.to(device).eval(), template, chip, dim)
