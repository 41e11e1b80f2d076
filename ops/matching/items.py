"""The names of items: what a score is about, as one string key that match rows, reports and training share.

    uri#frame=F&face=I     a face: face I of frame F of a source (an image is frame 0)
    uri#segment=S          a speech segment of a source
    uri                    a whole source: its pooled voice, or its clearest face (``clearest_faces``)
    uri#voice, uri#face    a source as one modality, in cross-modal matching

A uri can hold '#' itself (object keys are free text), so parsing reads the fragment from the last '#'.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

MODALITIES = ("voice", "face")
_FACE = re.compile(r"frame=(\d+)&face=(\d+)")
_SEGMENT = re.compile(r"segment=(\d+)")


@dataclass(frozen=True)
class Item:
    """A parsed item key: its source, and which part of it (nothing for a whole source)."""

    uri: str
    frame: int | None = None
    face: int | None = None
    segment: int | None = None
    modality: str | None = None  # "voice" or "face" in cross-modal matching


def face_key(uri: str, frame: int, face: int) -> str:
    return f"{uri}#frame={frame}&face={face}"


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
        if m := _SEGMENT.fullmatch(fragment):
            return Item(uri, segment=int(m.group(1)))
        if fragment in MODALITIES:
            return Item(uri, modality=fragment)
    return Item(key)


def keys(table: pa.Table, name: str) -> list[str]:
    """The item key of every row of a ``faces/`` or ``voices/`` table (segment rows)."""
    uris = table.column("uri").to_pylist()
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
