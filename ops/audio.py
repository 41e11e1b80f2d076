"""Audio in a stream: decode any audio or video track, downmix, resample, normalise loudness, find the speech.

Nothing here holds a whole recording: ``decode_mono`` yields chunks of 16 kHz mono float32 as PyAV decodes them,
and ``SpeechSegmenter`` turns chunks into speech segments of bounded length, keeping at most one analysis block
and one open segment in memory. Hours of audio therefore cost the same memory as minutes.
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
import webrtcvad

TARGET_RATE = 16000
INT16_MAX = 2**15 - 1
VAD_WINDOW = 480  # 30 ms at 16 kHz: webrtcvad takes 10, 20 or 30 ms frames
VAD_SMOOTHING = 8  # windows in the moving average that smooths the raw decisions
VAD_BRIDGE = 6  # silent windows (180 ms) a speech stretch may contain: pauses between words stay inside


class AudioError(Exception):
    """An input whose audio cannot be used; ``error_type`` is a stable name to count by."""

    error_type = "AudioError"


class NoAudioStream(AudioError):
    error_type = "NoAudioStream"


class EmptyAudio(AudioError):
    error_type = "EmptyAudio"


class DecodeError(AudioError):
    error_type = "DecodeError"


class TooLong(AudioError):
    error_type = "TooLong"


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
    mono float32 chunks. Raises NoAudioStream, DecodeError (also from the iterator), EmptyAudio, TooLong."""
    try:
        container = av.open(f, mode="r")
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise DecodeError(f"cannot open as audio or video: {exc}") from None
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
                raise DecodeError(f"decoding failed after {produced / TARGET_RATE:.2f} s: {exc}") from None
            for planar in to_float.resample(frame):
                x = planar.to_ndarray()
                mono = x.mean(axis=0, dtype=np.float32) if x.shape[0] > 1 else x[0].astype(np.float32)
                if resampler is None:
                    resampler = StreamResampler(planar.sample_rate, TARGET_RATE)
                elif planar.sample_rate != resampler.orig:
                    raise DecodeError(f"the sample rate changes mid-stream ({resampler.orig} -> {planar.sample_rate})")
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


def loudness_normalise(wav: np.ndarray, target_dbfs: float = -30.0) -> np.ndarray:
    """Raise quiet audio to ``target_dbfs`` RMS (never lower loud audio): the encoder was trained at this level."""
    rms = float(np.sqrt(np.mean(np.square(wav, dtype=np.float64)))) if len(wav) else 0.0
    if rms <= 0:
        return wav
    change = target_dbfs - 20 * math.log10(rms)
    return wav if change <= 0 else (wav * 10 ** (change / 20)).astype(np.float32)


def speech_windows(wav: np.ndarray, mode: int = 3) -> np.ndarray:
    """Per 30 ms window of 16 kHz audio: speech or not (webrtcvad, smoothed, short pauses bridged)."""
    n = len(wav) // VAD_WINDOW
    if n == 0:
        return np.zeros(0, bool)
    pcm = (np.clip(wav[: n * VAD_WINDOW], -1.0, 1.0) * INT16_MAX).round().astype("<i2").tobytes()
    vad = webrtcvad.Vad(mode)
    step = VAD_WINDOW * 2
    flags = np.fromiter((vad.is_speech(pcm[i * step : (i + 1) * step], TARGET_RATE) for i in range(n)), bool, n)
    # Moving average over VAD_SMOOTHING windows (zero-padded at the edges), rounded: isolated flips vanish.
    w = VAD_SMOOTHING
    padded = np.concatenate([np.zeros((w - 1) // 2), flags, np.zeros(w // 2)])
    sums = np.convolve(padded, np.ones(w), mode="valid")
    smoothed = np.round(sums / w).astype(bool)
    return bridge(smoothed, VAD_BRIDGE)


def bridge(mask: np.ndarray, windows: int) -> np.ndarray:
    """Widen speech by ``windows // 2`` on each side, which bridges pauses of up to ``windows`` windows."""
    return np.convolve(mask, np.ones(windows + 1), mode="same") > 0 if len(mask) else mask


class WebRTCDetector:
    """webrtcvad (GMM-based, WebRTC's): fast, and what GE2E's front end used; it takes music for speech."""

    window = VAD_WINDOW

    def __init__(self, mode: int = 3) -> None:
        self.mode = mode

    def __call__(self, wav: np.ndarray) -> np.ndarray:
        return speech_windows(wav, self.mode)


class SileroDetector:
    """Silero VAD (a learned detector): speech where its probability reaches ``threshold``; silence, noise and
    music-only stretches fall below. Short pauses are bridged as for webrtcvad."""

    def __init__(self, model: torch.nn.Module, threshold: float = 0.5, bridge_windows: int = 6) -> None:
        from ops.silero import WINDOW

        self.model, self.threshold, self.bridge_windows, self.window = model.eval(), threshold, bridge_windows, WINDOW

    def __call__(self, wav: np.ndarray) -> np.ndarray:
        n = len(wav) // self.window
        if n == 0:
            return np.zeros(0, bool)
        # One thread: the network is small, and intra-op threads cost more than they save (measured: 0.15 s per
        # minute of audio on one thread, 1 s on two).
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with torch.inference_mode():
                probs = self.model(torch.from_numpy(np.ascontiguousarray(wav[: n * self.window]))).numpy()
        finally:
            torch.set_num_threads(threads)
        return bridge(probs[:n] >= self.threshold, self.bridge_windows)


@dataclass
class Segment:
    """A stretch of speech: ``samples`` are its speech-only samples, ``start``/``end`` its span in the source."""

    index: int
    start: float
    end: float
    samples: np.ndarray

    @property
    def speech_seconds(self) -> float:
        return len(self.samples) / TARGET_RATE

    @property
    def speech_ratio(self) -> float:
        return min(1.0, self.speech_seconds / max(self.end - self.start, 1e-9))


class SpeechSegmenter:
    """Chunks of 16 kHz audio in, speech segments out.

    A segment gathers speech (pauses cut out, as the GE2E front end expects) until it holds ``max_seconds`` of it
    or a silence longer than ``max_gap_seconds`` follows; segments with less than ``min_seconds`` of speech are
    dropped and counted. Loudness is normalised and speech found per analysis block of ``block_seconds``.
    """

    def __init__(
        self,
        min_seconds: float = 0.5,
        max_seconds: float = 10.0,
        max_gap_seconds: float = 1.0,
        block_seconds: float = 30.0,
        detector=None,
    ) -> None:
        self.min_samples = int(min_seconds * TARGET_RATE)
        self.max_samples = int(max_seconds * TARGET_RATE)
        self.max_gap = int(max_gap_seconds * TARGET_RATE)
        self.detector = detector or WebRTCDetector()
        self.window = self.detector.window
        self.block = int(block_seconds * TARGET_RATE) // self.window * self.window
        self.buffer = np.zeros(0, np.float32)
        self.buffer_start = 0  # absolute sample index of buffer[0]
        self.pieces: list[np.ndarray] = []  # speech of the open segment
        self.open_start = self.open_end = 0
        self.open_len = 0
        self.index = 0
        self.total_samples = 0
        self.speech_samples = 0  # in emitted segments
        self.dropped_samples = 0  # speech in segments shorter than min_seconds

    def push(self, chunk: np.ndarray) -> list[Segment]:
        self.total_samples += len(chunk)
        self.buffer = np.concatenate([self.buffer, chunk])
        out: list[Segment] = []
        while len(self.buffer) >= self.block:
            out += self._analyse(self.buffer[: self.block])
            self.buffer = self.buffer[self.block :]
            self.buffer_start += self.block
        return out

    def finish(self) -> list[Segment]:
        out = self._analyse(self.buffer) if len(self.buffer) else []
        self.buffer = np.zeros(0, np.float32)
        return out + self._close()

    @property
    def total_seconds(self) -> float:
        return self.total_samples / TARGET_RATE

    @property
    def speech_seconds(self) -> float:
        return self.speech_samples / TARGET_RATE

    def _analyse(self, block: np.ndarray) -> list[Segment]:
        block = loudness_normalise(block)
        mask = self.detector(block)
        out: list[Segment] = []
        edges = np.flatnonzero(np.diff(np.concatenate([[False], mask, [False]]).astype(np.int8)))
        for a, b in zip(edges[::2], edges[1::2], strict=True):
            run = block[a * self.window : b * self.window]
            at = self.buffer_start + a * self.window
            if self.open_len and at - self.open_end > self.max_gap:  # a long silence ends the segment
                out += self._close()
            while len(run):
                room = self.max_samples - self.open_len
                take = run[:room]
                if self.open_len == 0:
                    self.open_start = at
                self.pieces.append(take)
                self.open_len += len(take)
                self.open_end = at + len(take)
                run, at = run[room:], at + len(take)
                if self.open_len >= self.max_samples:
                    out += self._close()
        return out

    def _close(self) -> list[Segment]:
        if self.open_len == 0:
            return []
        samples = np.concatenate(self.pieces)
        self.pieces, length, self.open_len = [], self.open_len, 0
        if length < self.min_samples:
            self.dropped_samples += length
            return []
        self.speech_samples += length
        segment = Segment(self.index, self.open_start / TARGET_RATE, self.open_end / TARGET_RATE, samples)
        self.index += 1
        return [segment]
