"""Audio in a stream: decode any audio or video track, downmix and resample to 16 kHz mono.

Nothing here holds a whole recording: ``decode_mono`` yields chunks of 16 kHz mono float32 as PyAV decodes them
(``ops.voices.speech`` turns them into speech segments), so hours of audio cost the same memory as minutes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

import av
import numpy as np
import torch
import torchaudio

from ops.io.errors import AudioDecodeError, EmptyAudio, NoAudioStream, TooLong

TARGET_RATE = 16000


@dataclass(frozen=True)
class AudioTrack:
    """What the container says about the track we decode."""

    codec: str
    sample_rate: int
    channels: int
    declared_seconds: float | None


class StreamResampler:
    """torchaudio's sinc resampler applied chunk by chunk, with enough context that the output equals resampling
    the whole signal at once (chunks are cut at whole periods of the rate ratio, so no sample is shifted)."""

    def __init__(self, orig: int, new: int) -> None:
        self.orig, self.new = orig, new
        g = math.gcd(orig, new)
        self.step_in, self.step_out = orig // g, new // g
        # torchaudio's kernel reaches ceil(6 * orig / (0.99 * min(orig, new))) + orig samples (in reduced units).
        reach = math.ceil(6 * self.step_in / (0.99 * min(self.step_in, self.step_out))) + self.step_in
        self.context = self.step_in * math.ceil(2 * reach / self.step_in)
        self.transform = torchaudio.transforms.Resample(orig, new) if orig != new else None
        self.pending = np.zeros(0, np.float32)
        self.left = 0  # leading samples of ``pending`` that are context only (already emitted)
        self.min_chunk = self.step_in * max(1, orig // self.step_in)  # about a second per call

    def push(self, x: np.ndarray) -> np.ndarray:
        if self.transform is None:
            return x
        self.pending = np.concatenate([self.pending, x])
        usable = len(self.pending) - self.left - self.context
        n = (usable // self.step_in) * self.step_in
        if n < self.min_chunk:
            return np.zeros(0, np.float32)
        y = self._resample(self.pending[: self.left + n + self.context])
        out = y[self.left * self.step_out // self.step_in : (self.left + n) * self.step_out // self.step_in]
        self.pending = self.pending[self.left + n - self.context :]
        self.left = self.context
        return out

    def flush(self) -> np.ndarray:
        if self.transform is None:
            return np.zeros(0, np.float32)
        rest = len(self.pending) - self.left
        if rest <= 0:
            return np.zeros(0, np.float32)
        y = self._resample(self.pending)
        start = self.left * self.step_out // self.step_in
        self.pending, self.left = np.zeros(0, np.float32), 0
        return y[start : start + math.ceil(rest * self.new / self.orig)]

    def _resample(self, x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.transform(torch.from_numpy(np.ascontiguousarray(x))).numpy()


def decode_mono(f: IO[bytes], max_seconds: float | None = None) -> tuple[AudioTrack, Iterator[np.ndarray]]:
    """Open the first audio track of any container PyAV reads; returns its description and an iterator of 16 kHz
    mono float32 chunks. Raises NoAudioStream, AudioDecodeError (also from the iterator), EmptyAudio, TooLong."""
    try:
        container = av.open(f, mode="r")
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise AudioDecodeError(f"cannot open as audio or video: {exc}") from None
    if not container.streams.audio:
        kinds = ", ".join(sorted({s.type for s in container.streams})) or "none"
        container.close()
        raise NoAudioStream(f"the file has no audio track (streams: {kinds})")
    stream = container.streams.audio[0]
    ctx = stream.codec_context
    declared = float(stream.duration * stream.time_base) if stream.duration and stream.time_base else None
    if declared is None and container.duration:
        declared = container.duration / 1e6
    track = AudioTrack(ctx.name, int(ctx.sample_rate or 0), int(ctx.channels or 0), declared)
    return track, _chunks(container, stream, max_seconds)


def _chunks(container, stream, max_seconds: float | None) -> Iterator[np.ndarray]:
    to_float = av.AudioResampler(format="fltp")  # keeps the layout and rate: sample format only
    resampler: StreamResampler | None = None
    produced = 0
    try:
        frames = container.decode(stream)
        while True:
            try:
                frame = next(frames)
            except StopIteration:
                break
            except av.error.FFmpegError as exc:
                raise AudioDecodeError(f"decoding failed after {produced / TARGET_RATE:.2f} s: {exc}") from None
            for planar in to_float.resample(frame):
                x = planar.to_ndarray()
                mono = x.mean(axis=0, dtype=np.float32) if x.shape[0] > 1 else x[0].astype(np.float32)
                if resampler is None:
                    resampler = StreamResampler(planar.sample_rate, TARGET_RATE)
                elif planar.sample_rate != resampler.orig:
                    raise AudioDecodeError(
                        f"the sample rate changes mid-stream ({resampler.orig} -> {planar.sample_rate})"
                    )
                out = resampler.push(mono)
                produced += len(out)
                if max_seconds is not None and produced > max_seconds * TARGET_RATE:
                    raise TooLong(f"longer than the limit of {max_seconds:g} s")
                if len(out):
                    yield out
        if resampler is not None:
            tail = resampler.flush()
            produced += len(tail)
            if len(tail):
                yield tail
        if produced == 0:
            raise EmptyAudio("the audio track holds no samples")
    finally:
        container.close()
