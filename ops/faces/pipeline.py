"""The face path for a batch of images: detect (MTCNN), align (five landmarks onto the recogniser's template), embed.

``FacePipeline`` holds the two models on one device and works on lists of RGB frames: every frame goes through one
detection cascade whatever its size (MTCNN batches mixed sizes), and the chips of every frame are embedded together,
so a GPU sees large batches whatever mix of photos and video frames arrives.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from ops.faces.align import eye_distance, sharpness, template, warp
from ops.faces.mtcnn import MTCNN, DetectorConfig
from ops.faces.recogniser import FaceRecogniser
from ops.models.device import memory_budget

# MTCNN's working memory per input pixel, measured loosely (pyramid of about twice the pixels, P-Net's feature maps
# in float32, padding of mixed sizes) and rounded up: what sizes a detection pass from the device's free memory.
DETECT_BYTES_PER_PIXEL = 1024
# Pictures larger than this on their longer side are shrunk to it before detection (boxes stay in source pixels):
# jobs.embed_faces' default --max-side, and what jobs.attributes assumes of a faces run that does not record its own.
DETECT_MAX_SIDE = 4096


@dataclass
class FrameFaces:
    """The faces of one frame, best detection first; coordinates in the frame's pixels."""

    boxes: np.ndarray  # (K, 4) float32 x1 y1 x2 y2
    scores: np.ndarray  # (K,) float32
    landmarks: np.ndarray  # (K, 5, 2) float32
    embeddings: np.ndarray  # (K, D) float32
    sharpness: np.ndarray  # (K,) float32, variance of the Laplacian of the chip
    eye_distance: np.ndarray  # (K,) float32, pixels


class FacePipeline:
    """Models built once (per actor); ``__call__(frames)`` -> one ``FrameFaces`` per (H, W, 3) uint8 frame, a numpy
    array or a tensor already on the device (``ops.media.images.decode_jpegs``).

    Frames go through in passes of at most ``pass_pixels`` pixels (default: what half the GPU's free memory holds,
    see ``DETECT_BYTES_PER_PIXEL``; on the CPU the whole list), so a job's batch size is never a guess about the
    device. On a GPU, host frames are copied from pinned memory on a side stream, the next pass's while this one
    computes."""

    def __init__(
        self,
        detector: MTCNN,
        recogniser: FaceRecogniser,
        config: DetectorConfig | None = None,
        chip_batch: int = 256,
        pass_pixels: int | None = None,
    ) -> None:
        """``detector`` and ``recogniser`` as ``ops.models.catalogue.build`` makes them, on one device."""
        self.mtcnn, self.encoder = detector, recogniser.encoder
        self.device = next(detector.parameters()).device
        self.config, self.chip_batch = config or DetectorConfig(), chip_batch
        self.points = template(recogniser.template, recogniser.chip).to(self.device)
        self.chip, self.dim = recogniser.chip, recogniser.dim
        budget = memory_budget(self.device)
        self.pass_pixels = pass_pixels or (budget // DETECT_BYTES_PER_PIXEL if budget else None)
        self.copies = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

    @torch.inference_mode()
    def __call__(
        self, frames: list[np.ndarray | torch.Tensor], clock: dict[str, float] | None = None
    ) -> list[FrameFaces]:
        """``clock``, when given, gains the seconds spent in "detect", "align" and "embed" (timing waits for the
        device at each stage, so pass one only to measure)."""
        passes = _passes([f.shape[0] * f.shape[1] for f in frames], self.pass_pixels)
        results: list[FrameFaces] = []
        upload = self._upload([frames[i] for i in passes[0]]) if passes else None
        for k in range(len(passes)):
            tensors = self._ready(upload)
            if k + 1 < len(passes):  # queued behind this pass's copies, run while it computes
                upload = self._upload([frames[i] for i in passes[k + 1]])
            results += self._pass(tensors, clock)
        return results

    def _upload(self, frames: list[np.ndarray | torch.Tensor]) -> tuple[list[torch.Tensor], object]:
        if self.copies is None:
            return [_chw(frame, self.device) for frame in frames], None
        with torch.cuda.stream(self.copies):
            tensors = [_chw(frame, self.device, pinned=True) for frame in frames]
        return tensors, self.copies.record_event()

    def _ready(self, upload) -> list[torch.Tensor]:
        tensors, copied = upload
        if copied is not None:
            torch.cuda.current_stream(self.device).wait_event(copied)
            for t in tensors:  # allocated on the copy stream, used on this one: the allocator must know
                t.record_stream(torch.cuda.current_stream(self.device))
        return tensors

    def _pass(self, tensors: list[torch.Tensor], clock: dict[str, float] | None) -> list[FrameFaces]:
        timed = clock is not None
        t = self._tick() if timed else 0.0
        results: list[FrameFaces | None] = [None] * len(tensors)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, tensor in enumerate(tensors):
            groups.setdefault(tuple(tensor.shape), []).append(i)
        # Every frame in one detection cascade, whatever its size (MTCNN pads and masks); chips are cut from the
        # frames of each size together.
        detections = self.mtcnn.detect(tensors, self.config)
        t = self._lap(clock, "detect", t) if timed else t
        chips, owners, found = [], [], {}
        for members in groups.values():
            images = torch.stack([tensors[i] for i in members])
            idx = torch.cat([torch.full((len(detections[j]),), k, dtype=torch.long) for k, j in enumerate(members)])
            marks = torch.cat([detections[j].landmarks for j in members])
            chips.append(warp(images, idx.to(self.device), marks, self.points, self.chip))
            for j in members:
                found[j] = detections[j]
                owners += [j] * len(detections[j])
        t = self._lap(clock, "align", t) if timed else t
        chips_all = torch.cat(chips) if chips else torch.zeros(0, 3, self.chip, self.chip, device=self.device)
        step = self.chip_batch
        parts = [self.encoder(chips_all[i : i + step]).float() for i in range(0, len(chips_all), step)]
        embeddings = torch.cat(parts or [torch.zeros(0, self.dim, device=self.device)]).cpu().numpy()
        if timed:
            self._lap(clock, "embed", t)
        sharp = sharpness(chips_all).cpu().numpy() if len(chips_all) else np.zeros(0, np.float32)
        owners_arr = np.asarray(owners, dtype=np.int64)
        for j, d in found.items():
            sel = owners_arr == j
            d = d.cpu()
            results[j] = FrameFaces(
                boxes=d.boxes.numpy().astype(np.float32),
                scores=d.scores.numpy().astype(np.float32),
                landmarks=d.landmarks.numpy().astype(np.float32),
                embeddings=embeddings[sel].astype(np.float32),
                sharpness=sharp[sel].astype(np.float32),
                eye_distance=eye_distance(d.landmarks).numpy().astype(np.float32),
            )
        return results  # type: ignore[return-value]

    def _lap(self, clock: dict[str, float], stage: str, since: float) -> float:
        now = self._tick()
        clock[stage] = clock.get(stage, 0.0) + now - since
        return now

    def _tick(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # kernels run asynchronously: time what has finished
        return time.perf_counter()


def _passes(pixels: list[int], budget: int | None) -> list[list[int]]:
    """Frame indices in order, cut into passes of at most ``budget`` pixels (a larger frame alone); one pass when
    there is no budget."""
    if not pixels:
        return []
    passes, load = [[]], 0
    for i, n in enumerate(pixels):
        if budget and passes[-1] and load + n > budget:
            passes.append([])
            load = 0
        passes[-1].append(i)
        load += n
    return passes


def _chw(frame: np.ndarray | torch.Tensor, device: torch.device, pinned: bool = False) -> torch.Tensor:
    """A (H, W, 3) frame as a (3, H, W) tensor on ``device``. torch wants writable memory: a read-only numpy view
    (decoded frames often are) is copied, a small cost beside MTCNN. ``pinned``: a host frame goes through
    page-locked memory, so that its copy is a DMA that does not block the host."""
    if isinstance(frame, np.ndarray):
        frame = torch.from_numpy(np.require(frame, requirements="W"))
    if pinned and frame.device.type == "cpu":
        return frame.pin_memory().to(device, non_blocking=True).permute(2, 0, 1)
    return frame.to(device).permute(2, 0, 1)
