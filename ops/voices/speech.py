"""Finding speech in 16 kHz audio and cutting it into segments of bounded length.

``SpeechSegmenter`` takes the chunks ``ops.media.audio.decode_mono`` yields and keeps at most one analysis block and
one open segment in memory; the detector is webrtcvad (fast, GE2E's original front end) or the Silero VAD port
(learned: rejects music and noise).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import webrtcvad

from ops.media.audio import TARGET_RATE

INT16_MAX = 2**15 - 1
VAD_WINDOW = 480  # 30 ms at 16 kHz: webrtcvad takes 10, 20 or 30 ms frames
VAD_SMOOTHING = 8  # windows in the moving average that smooths the raw decisions
VAD_BRIDGE = 6  # silent windows (180 ms) a speech stretch may contain: pauses between words stay inside


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
    """Silero VAD (a learned detector): silence, noise and music-only stretches stay below ``threshold``.

    Speech is each stretch whose probability stays at or above ``low`` and reaches ``threshold`` somewhere in it
    (hysteresis, with the silero-vad package's own gap of 0.15). A plain threshold cut the onsets the detector's
    LSTM is slow to call (after music most of all) and the fading ends of words: speaker evidence the encoder
    missed (measured by ``benchmarks/bench_vad.py``). Short pauses are then bridged as for webrtcvad.
    """

    def __init__(
        self, model: torch.nn.Module, threshold: float = 0.5, low: float = 0.35, bridge_windows: int = 6
    ) -> None:
        from ops.voices.silero import WINDOW

        if not 0 < low <= threshold < 1:
            raise ValueError(f"Silero VAD thresholds: need 0 < low ({low}) <= threshold ({threshold}) < 1")
        self.model, self.window = model.eval(), WINDOW
        self.threshold, self.low, self.bridge_windows = threshold, low, bridge_windows

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
        return bridge(hysteresis(probs[:n], self.threshold, self.low), self.bridge_windows)


def hysteresis(probs: np.ndarray, high: float, low: float) -> np.ndarray:
    """The windows of every run of ``probs >= low`` that holds a window ``>= high``, both edges included."""
    above = probs >= low
    if not above.any():
        return above
    edges = np.flatnonzero(np.diff(np.concatenate([[False], above, [False]]).astype(np.int8)))
    starts, ends = edges[::2], edges[1::2]
    peaks = np.maximum.reduceat(probs, starts)  # each run's maximum (runs are contiguous from their starts)
    keep = np.zeros(len(probs) + 1, np.int64)
    np.add.at(keep, starts[peaks >= high], 1)
    np.add.at(keep, ends[peaks >= high], -1)
    return np.cumsum(keep[:-1]) > 0


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
