"""Synthetic identities whose faces and voices share latent traits, so that a voice-face link exists to be learnt.

Each identity has traits of three kinds: shared (what a face and a voice both reveal: age, sex, build), face-only
and voice-only. A recording adds its own nuisance (pose and light for a face, channel and noise for a voice), strong
and confined to a few directions, plus a little isotropic noise. A face embedding is a fixed random map of the shared
and face-only traits plus face nuisance; a voice embedding likewise, through different maps; both L2-normalised.
So: the raw face embeddings verify identities only as well as the nuisance allows (a trained face encoder can learn
to ignore it), and raw faces and voices live in unrelated spaces (a joint model must find the shared traits).
The maps are fixed by the world's seed; identities and recordings by the caller's generator.

A world with ``attributes`` also gives each identity an age (5 to 80 years) and each recording an expression
(neutral, happy, sad or surprised, neutral most often), and both shape the face embedding through their own maps:
ground truth for attribute heads. Age enters through a curved feature (its standardised value and that value
squared), so a linear read-out is not enough; how clearly a recording shows it varies from recording to recording,
so an honest uncertainty varies too. Without ``attributes`` nothing is drawn for them: the embeddings are those of
a world without.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class World:
    """The fixed maps from traits to embeddings."""

    seed: int = 0
    shared: int = 6
    face_only: int = 24
    voice_only: int = 24
    nuisance: int = 6
    face_dim: int = 128
    voice_dim: int = 256
    nuisance_scale: float = 2.0  # a recording's nuisance against an identity's traits (unit variance)
    noise: float = 1.0
    attributes: bool = False  # ages and expressions that shape the faces
    age_scale: float = 1.5  # how strongly age shows in a face, against the traits' unit variance
    expression_scale: float = 0.6
    _maps: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def maps(self) -> dict[str, np.ndarray]:
        if not self._maps:
            rng = np.random.default_rng(self.seed)

            def m(rows: int, cols: int) -> np.ndarray:
                return rng.standard_normal((rows, cols)) / np.sqrt(cols)

            self._maps.update(
                face_shared=m(self.face_dim, self.shared),
                face_own=m(self.face_dim, self.face_only),
                face_nuisance=m(self.face_dim, self.nuisance),
                voice_shared=m(self.voice_dim, self.shared),
                voice_own=m(self.voice_dim, self.voice_only),
                voice_nuisance=m(self.voice_dim, self.nuisance),
            )
            if self.attributes:  # drawn after the others: the maps above are those of a world without
                self._maps.update(face_age=m(self.face_dim, 2), face_expression=m(self.face_dim, len(EXPRESSIONS)))
        return self._maps


EXPRESSIONS = ("neutral", "happy", "sad", "surprised")
EXPRESSION_SHARES = (0.55, 0.25, 0.12, 0.08)  # imbalanced, as an archive's are
AGES = (5.0, 80.0)


@dataclass
class Recordings:
    """Recordings of identities: one face and one voice embedding per recording (a video with a face track and
    speech), with the identity and the recording's index."""

    identity: np.ndarray  # (N,) int
    faces: np.ndarray  # (N, face_dim) float32, unit rows
    voices: np.ndarray  # (N, voice_dim) float32, unit rows
    age: np.ndarray | None = None  # (N,) years: the identity's age (a world with attributes)
    expression: np.ndarray | None = None  # (N,) index into EXPRESSIONS


def identities(world: World, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Traits of ``n`` new identities."""
    return {
        "shared": rng.standard_normal((n, world.shared)),
        "face_own": rng.standard_normal((n, world.face_only)),
        "voice_own": rng.standard_normal((n, world.voice_only)),
    }


def record(world: World, traits: dict[str, np.ndarray], per_identity: int, rng: np.random.Generator) -> Recordings:
    """``per_identity`` recordings of each identity, each with its own nuisance and noise."""
    maps = world.maps()
    n = len(traits["shared"])
    who = np.repeat(np.arange(n), per_identity)

    def embed(modality: str, own: str, dim: int) -> np.ndarray:
        signal = traits["shared"][who] @ maps[f"{modality}_shared"].T + traits[own][who] @ maps[f"{modality}_own"].T
        nuisance = world.nuisance_scale * rng.standard_normal((len(who), world.nuisance))
        return signal + nuisance @ maps[f"{modality}_nuisance"].T + world.noise * rng.standard_normal((len(who), dim))

    faces, voices = embed("face", "face_own", world.face_dim), embed("voice", "voice_own", world.voice_dim)
    age = expression = None
    if world.attributes:  # drawn after the rest: the embeddings' other parts are those of a world without
        age = rng.uniform(*AGES, n)[who]  # each identity's age
        expression = rng.choice(len(EXPRESSIONS), len(who), p=EXPRESSION_SHARES)
        z = (age - np.mean(AGES)) / (np.diff(AGES)[0] / np.sqrt(12))  # standardised over the uniform's range
        clarity = rng.uniform(0.3, 1.0, len(who))[:, None]  # how clearly this recording shows the age
        feature = np.stack([z, z**2 - 1], 1) * clarity
        faces = faces + world.age_scale * (feature @ maps["face_age"].T)
        faces = faces + world.expression_scale * (np.eye(len(EXPRESSIONS))[expression] @ maps["face_expression"].T)

    def unit(x: np.ndarray) -> np.ndarray:
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    return Recordings(who, unit(faces), unit(voices), age, expression)


def attribute_rows(rec: Recordings, uris: list[str]) -> list[dict]:
    """The attribute ground truth of ``rec``'s recordings (a world with attributes), by source uri: what a lab's
    labels table holds."""
    return [
        {"uri": uri, "age": float(a), "expression": EXPRESSIONS[e]}
        for uri, a, e in zip(uris, rec.age, rec.expression, strict=True)
    ]


def population(world: World, n: int, per_identity: int, seed: int) -> Recordings:
    """``n`` identities with ``per_identity`` recordings each, from ``seed`` (different seeds: different people)."""
    rng = np.random.default_rng(seed)
    return record(world, identities(world, n, rng), per_identity, rng)


def fingerprint(world: World) -> str:
    """sha256 of the world's maps: the "model" that made a synthetic embedding, for provenance."""
    import hashlib

    digest = hashlib.sha256()
    for name, matrix in sorted(world.maps().items()):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(matrix, np.float64).tobytes())
    return digest.hexdigest()


def rows(world: World, rec: Recordings, prefix: str, run_id: str, first_identity: int = 0) -> dict[str, list[dict]]:
    """Manifest, faces and voices rows for ``rec``, as the embed jobs would write them for videos that each hold one
    face track and one stretch of speech: ``<prefix>/id-NNNN/rec-RR.synthetic``, labelled ``id-NNNN``. There is no
    geometry (boxes and landmarks are zero) and no media behind the uris; the model is ``synthetic-face`` or
    ``synthetic-voice`` with the world's fingerprint as its sha256."""
    import hashlib

    sha_world = fingerprint(world)
    out: dict[str, list[dict]] = {"manifest": [], "faces": [], "voices": []}
    counts: dict[int, int] = {}
    for i, who in enumerate(rec.identity.tolist()):
        n = counts[who] = counts.get(who, -1) + 1
        label = f"id-{first_identity + who:04d}"
        relpath = f"{label}/rec-{n:02d}.synthetic"
        uri = f"{prefix.rstrip('/')}/{relpath}"
        sha = hashlib.sha256(rec.faces[i].tobytes() + rec.voices[i].tobytes()).hexdigest()
        out["manifest"].append(
            {
                "run_id": run_id,
                "uri": uri,
                "relpath": relpath,
                "size": 0,
                "modified": None,
                "etag": None,
                "sha256": sha,
                "media_kind": "synthetic",
                "media_category": "video",
                "mime": "application/x-crossmatch-synthetic",
                "label": label,
                "duplicate_of": None,
            }
        )
        common = {"run_id": run_id, "uri": uri, "sha256": sha}
        out["faces"].append(
            common
            | {
                "frame_index": 0,
                "timestamp": 0.0,
                "face_index": 0,
                "track_id": 0,
                "track_frames": 1,
                "box": [0.0] * 4,
                "landmarks": [0.0] * 10,
                "score": 1.0,
                "face_size": 0.0,
                "eye_distance": 0.0,
                "sharpness": 0.0,
                "embedding": rec.faces[i].tolist(),
                "detector_name": "synthetic",
                "detector_sha256": sha_world,
                "model_name": "synthetic-face",
                "model_sha256": sha_world,
            }
        )
        voice = common | {
            "start": 0.0,
            "end": 1.0,
            "duration": 1.0,
            "speech_seconds": 1.0,
            "speech_ratio": 1.0,
            "partials": 1,
            "embedding": rec.voices[i].tolist(),
            "status": "ok",
            "message": None,
            "model_name": "synthetic-voice",
            "model_sha256": sha_world,
        }
        out["voices"].append(voice | {"level": "segment", "segment_index": 0})
        out["voices"].append(voice | {"level": "source", "segment_index": None, "start": None, "end": None})
    return out
