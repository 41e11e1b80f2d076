"""Face tracks in video: the faces of successive sampled frames linked into tracks of one face.

A face continues the track of the previous sampled frames whose last box overlaps it and whose last embedding
agrees with it; a track's clearest face (detector confidence times resolution) can stand for the whole track.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt, rb = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area = lambda x: (x[:, 2:] - x[:, :2]).prod(axis=1)  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-9)


def assign_tracks(rows: list[dict], max_gap: int = 2, min_iou: float = 0.3, min_cos: float = 0.7) -> list[int]:
    """Track ids for one video's face rows: a face continues the track of the previous sampled frames (up to
    ``max_gap`` samples back) whose last box overlaps it and whose last embedding agrees; greedy, best overlap first."""
    order = sorted(range(len(rows)), key=lambda i: (rows[i]["frame_index"], rows[i]["face_index"]))
    frames = sorted({rows[i]["frame_index"] for i in order})
    sample_of = {f: n for n, f in enumerate(frames)}
    ids = [-1] * len(rows)
    tracks: list[dict] = []  # last box, last unit embedding, last sample
    by_frame: dict[int, list[int]] = defaultdict(list)
    for i in order:
        by_frame[rows[i]["frame_index"]].append(i)
    live: list[int] = []  # tracks seen within max_gap samples: the only ones a face can continue (linear in frames)
    for f in frames:
        now = sample_of[f]
        members = by_frame[f]
        live = [t for t in live if now - tracks[t]["sample"] <= max_gap]
        boxes = np.array([rows[i]["box"] for i in members], np.float64)
        embs = np.array([rows[i]["embedding"] for i in members], np.float64)
        embs /= np.maximum(np.linalg.norm(embs, axis=1, keepdims=True), 1e-12)
        pairs = []
        if live:
            iou = _iou(boxes, np.array([tracks[t]["box"] for t in live]))
            cos = embs @ np.array([tracks[t]["emb"] for t in live]).T
            pairs = sorted(
                (
                    (iou[m, n], m, live[n])
                    for m in range(len(members))
                    for n in range(len(live))
                    if iou[m, n] >= min_iou and cos[m, n] >= min_cos
                ),
                reverse=True,
            )
        taken_m, taken_t = set(), set()
        for _, m, t in pairs:
            if m not in taken_m and t not in taken_t:
                taken_m.add(m)
                taken_t.add(t)
                ids[members[m]] = t
        for m, i in enumerate(members):
            if ids[i] < 0:
                tracks.append({})
                ids[i] = len(tracks) - 1
                live.append(ids[i])
            tracks[ids[i]] = {"box": boxes[m], "emb": embs[m], "sample": now}
    return ids


def clearest_per_track(rows: list[dict]) -> list[dict]:
    """One row per track (rows carry ``track_id``): the face with the highest detector score times eye distance."""
    tracks: dict[int, list[dict]] = defaultdict(list)
    for row in rows:
        tracks[row["track_id"]].append(row)
    return [max(tracks[t], key=lambda r: r["score"] * r["eye_distance"]) for t in sorted(tracks)]
