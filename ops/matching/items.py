"""The names of items: what a score is about, as one string key that match rows, reports and training share.

    uri#frame=F&face=I     a face: face I of frame F of a source (an image is frame 0)
    uri#track=T&t=S,E      a face track of a video, seen from S to E seconds (W3C media fragment time)
    uri#segment=S          a speech segment of a source
    uri                    a whole source: its pooled voice, or its clearest face (``clearest_faces``)
    uri#voice, uri#face    a source as one modality, in cross-modal matching

A uri can hold '#' itself (object keys are free text), so parsing reads the fragment from the last '#'.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

MODALITIES = ("voice", "face")
_FACE = re.compile(r"frame=(\d+)&face=(\d+)")
_SEGMENT = re.compile(r"segment=(\d+)")
_TRACK = re.compile(r"track=(\d+)&t=(-?[0-9.]+),(-?[0-9.]+)")  # a stream may start a little before 0 s


@dataclass(frozen=True)
class Item:
    """A parsed item key: its source, and which part of it (nothing for a whole source)."""

    uri: str
    frame: int | None = None
    face: int | None = None
    segment: int | None = None
    track: int | None = None
    span: tuple[float, float] | None = None  # a track's first and last sighting, seconds into the video
    modality: str | None = None  # "voice" or "face" in cross-modal matching


def face_key(uri: str, frame: int, face: int) -> str:
    return f"{uri}#frame={frame}&face={face}"


def track_key(uri: str, track: int, start: float, end: float) -> str:
    return f"{uri}#track={track}&t={start:.2f},{end:.2f}"


def segment_key(uri: str, segment: int) -> str:
    return f"{uri}#segment={segment}"


def modality_key(uri: str, modality: str) -> str:
    """A whole source as one modality: ``uri#voice`` or ``uri#face``."""
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}: use voice or face")
    return f"{uri}#{modality}"


def parse(key: str) -> Item:
    """The item a key names; a key with no fragment this module writes is a whole source."""
    uri, sep, fragment = key.rpartition("#")
    if sep:
        if m := _FACE.fullmatch(fragment):
            return Item(uri, frame=int(m.group(1)), face=int(m.group(2)))
        if m := _TRACK.fullmatch(fragment):
            return Item(uri, track=int(m.group(1)), span=(float(m.group(2)), float(m.group(3))))
        if m := _SEGMENT.fullmatch(fragment):
            return Item(uri, segment=int(m.group(1)))
        if fragment in MODALITIES:
            return Item(uri, modality=fragment)
    return Item(key)


def keys(table: pa.Table, name: str) -> list[str]:
    """The item key of every row of a ``faces/`` or ``voices/`` table (segment rows), or of ``tracked_faces``."""
    uris = table.column("uri").to_pylist()
    if name == "faces" and "track_end" in table.column_names:
        columns = ("frame_index", "face_index", "track_id", "timestamp", "track_end")
        rows = zip(uris, *(table.column(c).to_pylist() for c in columns), strict=True)
        return [face_key(u, f, i) if end is None else track_key(u, t, start, end) for u, f, i, t, start, end in rows]
    if name == "faces":
        frames, faces = table.column("frame_index").to_pylist(), table.column("face_index").to_pylist()
        return [face_key(u, f, i) for u, f, i in zip(uris, frames, faces, strict=True)]
    return [segment_key(u, s) for u, s in zip(uris, table.column("segment_index").to_pylist(), strict=True)]


def clearest_faces(faces: pa.Table) -> pa.Table:
    """One row per source: the face that stands for the whole source, the largest, then the most confident."""
    if faces.num_rows == 0:
        return faces
    order = pc.sort_indices(faces, [("uri", "ascending"), ("face_size", "descending"), ("score", "descending")])
    faces = faces.take(order)
    uris = faces.column("uri").to_pylist()
    first = [i for i, u in enumerate(uris) if i == 0 or u != uris[i - 1]]
    return faces.take(pa.array(first, pa.int64()))


def tracked_faces(faces: pa.Table) -> pa.Table:
    """Every face of a photo as it is, and each face track of a video as one row: the mean of its faces' unit
    embeddings (a template: a profile frame alone does not decide who the track is), its clearest face's other
    columns, its first sighting as ``timestamp`` and its last as ``track_end`` (null for photos). ``keys`` names the
    track rows ``uri#track=T&t=S,E``. Faces with a bad embedding stay out of a track's mean; a track with no good
    face keeps one zero vector, which matching sets aside with a reason."""
    if faces.num_rows == 0:
        return faces.append_column("track_end", pa.array([], pa.float64()))
    video = pc.is_valid(faces.column("track_id"))
    photos = faces.filter(pc.invert(video))
    photos = photos.append_column("track_end", pa.nulls(photos.num_rows, pa.float64()))
    rows = faces.filter(video).to_pylist()
    tracks: dict[tuple[str, str, int], list[dict]] = {}
    for row in rows:
        tracks.setdefault((row["uri"], row.get("sha256"), row["track_id"]), []).append(row)
    made = []
    for members in tracks.values():
        clearest = max(members, key=lambda m: (m["score"] or 0) * (m["eye_distance"] or 0))
        times = [m["timestamp"] for m in members if m["timestamp"] is not None] or [0.0]
        made.append(clearest | {"timestamp": min(times), "track_end": max(times)})
        if "embedding" in clearest:  # a report reads tracks without their vectors
            vectors = np.array([m["embedding"] for m in members], np.float64)
            good = np.isfinite(vectors).all(axis=1) & (np.linalg.norm(vectors, axis=1) > 0)
            unit = vectors[good] / np.linalg.norm(vectors[good], axis=1, keepdims=True)
            mean = unit.mean(axis=0) if len(unit) else np.zeros(vectors.shape[1])
            made[-1]["embedding"] = mean.astype(np.float32).tolist()
    schema = photos.schema
    return pa.concat_tables([photos, pa.Table.from_pylist(made, schema=schema)]) if made else photos
