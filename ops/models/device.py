"""Where models run: the GPU when the process sees one, else the CPU.

Ray sets ``CUDA_VISIBLE_DEVICES`` for an actor that asked for a GPU; an actor that got none (or a CPU-only node)
sees no device and runs on the CPU.
"""

from __future__ import annotations

import torch


def best_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` when given, else ``cuda`` when a GPU is visible, else ``cpu``."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def memory_budget(device: torch.device, fraction: float = 0.5) -> int | None:
    """Bytes of device memory one batch may use: ``fraction`` of what is free on the GPU now (the rest is left to
    the allocator's cache, the other model and fragmentation); None on the CPU, where a batch is sized by the job."""
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return int(free * fraction)
