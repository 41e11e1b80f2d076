"""jobs.persons: face identities and voice identities linked into persons, by what videos show while someone speaks.

    python -m jobs.persons [RESULTS] --faces-run-id RUN --voices-run-id RUN [--min-videos 2] [--min-share 0.5]
                           [--joint-model NAME [--joint-margin 0.1]]

Both runs are ``jobs.identities`` runs over items (faces by frame, voices by speech segment), not whole sources:
linking needs to know who is on screen when. For every speech segment of a video, the sampled frames inside it say who
was seen: when all the faces in them belong to one face identity, the segment is evidence that its voice identity and
that face identity are one person (a span: the video, its sha256, start and end). A segment with several faces on
screen is left undecided (who of them speaks is a guess), unless a joint voice-face model is given
(``jobs.train_crossmodal``): then the segment's voice and each face identity seen (the mean of its faces inside the
segment) are mapped into the joint space, and the face that out-scores every other by --joint-margin is the speaker
(the span says so, with the score). A segment with nobody on screen (or no picture: an audio file) is unseen, and one
with a face that no identity holds (no valid embedding) is undecided whatever the model says, since that face may be
the speaker; neither undecided nor unseen links anything.

Each (face identity, voice identity) pair with evidence is a candidate, a ``persons/`` row carrying all its spans.
Its voice share is the part of the voice's decided seconds spent with this face, its face share the part of the
face's decided seconds spent with this voice; a candidate is linked when both shares exceed --min-share (each is
the other's main partner) and the evidence comes from at least --min-videos videos (a voice-over in one video is
not a person). A candidate that is not linked says why. Linked rows name the person by a hash of the two identities,
so the person keeps its id while both identities keep theirs.

A Ray task reads four narrow column sets (members of both runs, frame times, segment spans), links, and writes the
rows; the driver holds counts.
"""

from __future__ import annotations

import hashlib
import sys
from collections import defaultdict
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from jobs.runtime.cli import JobConfig
from jobs.runtime.cluster import ensure_ray
from jobs.runtime.launch import JobContext, run_job, run_module
from jobs.runtime.options import ModelsRoot, tailored
from jobs.runtime.output import JobOutput, RowWriter
from ops.io.errors import JobFailed
from ops.io.root import locate
from ops.io.schemas import PERSONS
from ops.io.storage import Store, resolve
from ops.io.tables import committed_runs, read_table
from ops.matching.embeddings import identity_of
from ops.matching.items import face_key, segment_key

JOB = "persons"


@dataclass
class PersonsConfig(ModelsRoot, JobConfig):
    models: str | None = tailored(ModelsRoot, "models", help="models root, for --joint-model")
    results: str = field(
        default="out/results", metadata={"positional": True, "run_key": True, "help": "root with both identities runs"}
    )
    faces_run_id: str | None = field(default=None, metadata={"run_key": True, "help": "jobs.identities run of faces"})
    voices_run_id: str | None = field(default=None, metadata={"run_key": True, "help": "jobs.identities run of voices"})
    min_videos: int = field(default=2, metadata={"run_key": True, "help": "videos a link needs evidence from"})
    min_share: float = field(
        default=0.5, metadata={"run_key": True, "help": "each side's share of its decided seconds a link needs"}
    )
    joint_model: str | None = field(
        default=None, metadata={"run_key": True, "help": "voice-face model deciding who speaks among several faces"}
    )
    joint_margin: float = field(
        default=0.1, metadata={"run_key": True, "help": "joint model: the speaker's lead over the next face, cosine"}
    )


@dataclass(frozen=True)
class LinkRules:
    """What a face identity and a voice identity need to be linked as one person: evidence from ``min_videos``
    videos, each the other's main partner (more than ``min_share`` of its decided seconds); and the joint model's
    lead over the next face (``joint_margin``, cosine) to decide a segment with several faces. Frozen and small: it
    travels to the linking task."""

    min_videos: int
    min_share: float
    joint_margin: float

    @classmethod
    def of(cls, config: PersonsConfig) -> LinkRules:
        """The job's options."""
        return cls(min_videos=config.min_videos, min_share=config.min_share, joint_margin=config.joint_margin)


@dataclass(frozen=True)
class Side:
    """One identities run: where its members' rows are and which embedding rows they came from."""

    table: str
    run_id: str
    embeddings: Store
    embeddings_run: str | None
    model: tuple[str, str]


def _side(root: Store, run_id: str | None, table: str) -> Side:
    """A committed identities run of ``table`` items, with the embeddings its search read."""
    flag = f"--{table}-run-id"
    if not run_id:
        raise JobFailed(f"{flag} is needed: a run of `python -m jobs.identities` over {table}")
    runs = {m["run_id"]: m for m in committed_runs(root)}
    marker = runs.get(run_id)
    if marker is None or marker["job"] != "identities":
        raise JobFailed(f"{flag} {run_id}: no committed identities run of that id under {root.uri}")
    summary = marker.get("summary") or {}
    if summary.get("table") != table:
        raise JobFailed(f"{flag} {run_id} clustered {summary.get('table')}, not {table}")
    if summary.get("identities_key", {}).get("per_source", True):
        raise JobFailed(
            f"{flag} {run_id} clustered whole sources: linking needs who is seen and heard when, so search and "
            f"cluster the {table} items (`jobs.match search` without --per-source)"
        )
    search = runs.get(summary["search_run_id"]) or {}
    config = search.get("config") or {}
    model = tuple(summary["identities_key"]["model"])
    return Side(table, run_id, locate(root, config.get("queries")), config.get("queries_run_id"), model)


def run(config: PersonsConfig, ctx: JobContext) -> dict:
    if config.min_videos < 1 or not 0.5 <= config.min_share < 1:
        # Below a half, one face could be the main partner of two voices: a person would not be one.
        raise JobFailed("--min-videos must be at least 1 and --min-share in [0.5, 1)")
    out = JobOutput(ctx, config, {"persons": PERSONS})
    root = resolve(config.results)
    faces, voices = _side(root, config.faces_run_id, "faces"), _side(root, config.voices_run_id, "voices")
    joint = _joint(config, faces, voices) if config.joint_model else None
    ensure_ray()
    import ray

    writer = out.row_writer("persons")
    rules = LinkRules.of(config)
    done = ray.get(ray.remote(num_cpus=1)(link_persons).remote(root, faces, voices, rules, writer, joint))
    out.add_files("persons", done.pop("files"))
    summary = {"faces_run_id": faces.run_id, "voices_run_id": voices.run_id, **done}
    ctx.log.info(
        "%d persons from %d candidates; speech segments in videos: %d decided (%d by the joint model), %d with "
        "several faces (undecided), %d with nobody on screen",
        done["persons"],
        done["candidates"],
        done["segments_decided"],
        done["segments_by_joint_model"],
        done["segments_undecided"],
        done["segments_unseen"],
    )
    return out.commit(summary)


def _joint(config: PersonsConfig, faces: Side, voices: Side) -> Store:
    """The joint model's folder, refused unless it was trained on these very face and voice models."""
    from ops.models import catalogue

    model = catalogue.load(config.joint_model, config.models, expect="voice-face-model")
    for side in (faces, voices):
        wanted = model.card["inputs"][side.table]
        if (wanted["model_name"], wanted["model_sha256"]) != side.model:
            raise JobFailed(
                f"joint model {model.name} maps {wanted['model_name']} ({wanted['model_sha256'][:12]}) {side.table}, "
                f"but identities run {side.run_id} clustered {side.model[0]} ({side.model[1][:12]}): use a joint model "
                "trained on the same embeddings"
            )
    return catalogue.locate(config.joint_model, config.models)


def link_persons(
    root: Store, faces: Side, voices: Side, rules: LinkRules, writer: RowWriter, joint: Store | None = None
) -> dict:
    """One worker: who is seen during each speech segment (among several faces, the joint model's choice, when it
    is given and sure), the candidates with their evidence, the links."""
    seen = _seen(root, faces)  # (uri, sha256) -> {time: [(face identity or None, face item), ...]}
    heard = _heard(root, voices)  # (uri, sha256, start, end, voice identity, segment item)
    evidence: dict[tuple[str, str], list[dict]] = defaultdict(list)
    counts = {"segments_decided": 0, "segments_by_joint_model": 0, "segments_undecided": 0, "segments_unseen": 0}
    counts["segments_unidentified_face"] = 0
    several = []
    for uri, sha, start, end, voice, segment in heard:
        frames = seen.get((uri, sha), {})
        on_screen = [face for t, faces_at in frames.items() if start <= t <= end for face in faces_at]
        identities = {identity for identity, _ in on_screen}
        span = {"uri": uri, "sha256": sha, "start": start, "end": end}
        if not on_screen:
            counts["segments_unseen"] += 1
        elif len(identities) == 1 and None not in identities:
            counts["segments_decided"] += 1
            evidence[(on_screen[0][0], voice)].append(span | {"by": "one identity on screen", "score": None})
        elif None in identities:  # a face nobody clustered (no valid embedding) may be the speaker: no guess
            counts["segments_unidentified_face"] += 1
        else:
            several.append((span, voice, segment, on_screen))
    if several and joint is not None:
        left = _speakers(root, faces, voices, joint, several, rules.joint_margin, evidence)
        counts["segments_by_joint_model"] = len(several) - len(left)
        counts["segments_decided"] += counts["segments_by_joint_model"]
        several = left
    counts["segments_undecided"] = len(several) + counts.pop("segments_unidentified_face")
    rows = _candidates(evidence, rules)
    for row in rows:
        row |= {
            "run_id": writer.run_id,
            "faces_run_id": faces.run_id,
            "voices_run_id": voices.run_id,
            "face_model_name": faces.model[0],
            "face_model_sha256": faces.model[1],
            "voice_model_name": voices.model[0],
            "voice_model_sha256": voices.model[1],
        }
    files = writer.write(pa.Table.from_pylist(rows, schema=PERSONS)) if rows else []
    persons = sum(r["linked"] for r in rows)
    return counts | {"candidates": len(rows), "persons": persons, "files": files}


def _speakers(
    root: Store,
    faces: Side,
    voices: Side,
    joint: Store,
    several: list[tuple[dict, str, str, list[tuple[str, str]]]],
    margin: float,
    evidence: dict[tuple[str, str], list[dict]],
) -> list:
    """Segments with several faces on screen, decided by the joint model where the best face identity (the mean of
    its faces in the segment, mapped) out-scores the next by ``margin``: their spans join ``evidence``. Returns the
    segments still undecided."""
    import numpy as np

    from ops.matching.heads import project
    from ops.matching.search import normalise
    from ops.models import catalogue

    model = catalogue.build(catalogue.load_folder(joint, expect="voice-face-model"), "cpu")
    face_items = {item for *_, faces_on in several for _, item in faces_on}
    segment_items = {segment for _, _, segment, _ in several}
    uris = sorted({span["uri"] for span, *_ in several})
    face_vectors = _vectors(faces.embeddings, "faces", faces.embeddings_run, uris, face_items)
    voice_vectors = _vectors(voices.embeddings, "voices", voices.embeddings_run, uris, segment_items)
    mapped_faces = dict(
        zip(face_vectors, project(model.face, np.stack(list(face_vectors.values()))).numpy(), strict=True)
    )
    mapped_voices = dict(
        zip(voice_vectors, project(model.voice, np.stack(list(voice_vectors.values()))).numpy(), strict=True)
    )
    left = []
    for span, voice, segment, faces_on in several:
        by_identity: dict[str, list] = defaultdict(list)
        for identity, item in faces_on:
            by_identity[identity].append(mapped_faces[item])
        scores = sorted(
            (
                (float(normalise(np.mean(v, axis=0)[None])[0] @ mapped_voices[segment]), who)
                for who, v in by_identity.items()
            ),
            reverse=True,
        )
        if len(scores) > 1 and scores[0][0] - scores[1][0] >= margin:
            evidence[(scores[0][1], voice)].append(span | {"by": "joint model", "score": scores[0][0]})
        else:
            left.append((span, voice, segment, faces_on))
    return left


def _vectors(root: Store, table: str, run_id: str | None, uris: list[str], wanted: set[str]) -> dict:
    """The unit embeddings of these items (face or segment keys) of these sources."""
    import numpy as np

    from ops.matching.search import normalise

    columns = ["uri", "frame_index", "face_index"] if table == "faces" else ["uri", "segment_index"]
    where = pc.field("uri").isin(uris)
    if table == "voices":
        where = where & (pc.field("level") == "segment")
    rows = read_table(root, table, run_id, [*columns, "embedding"], filter=where)
    found = {}
    for r in rows.to_pylist():
        key = (
            face_key(r["uri"], r["frame_index"], r["face_index"])
            if table == "faces"
            else segment_key(r["uri"], r["segment_index"])
        )
        if key in wanted and r["embedding"] is not None:
            found[key] = np.asarray(r["embedding"], np.float32)
    if len(found) < len(wanted):  # the run the identities came from lost rows since: nothing to decide on
        missing = sorted(wanted - set(found))
        raise JobFailed(f"{len(missing)} {table} items have no embedding under {root.uri} (first: {missing[0]})")
    return {k: v for k, v in zip(found, normalise(np.stack(list(found.values()))), strict=True)}


def _seen(root: Store, faces: Side) -> dict[tuple[str, str], dict[float, list[tuple[str, str]]]]:
    """Each video's sampled frame times, and the faces seen at each: (identity, item), one per face row."""
    identity = identity_of(root, faces.run_id)
    rows = read_table(
        faces.embeddings,
        "faces",
        faces.embeddings_run,
        ["uri", "sha256", "frame_index", "face_index", "timestamp"],
        filter=pc.is_valid(pc.field("timestamp")),  # video frames only: a photo has no time
    )
    seen: dict[tuple[str, str], dict[float, list[tuple[str | None, str]]]] = defaultdict(lambda: defaultdict(list))
    done = set()
    for uri, sha, frame, face, t in zip(*(rows.column(c).to_pylist() for c in rows.column_names), strict=True):
        key = (face_key(uri, frame, face), sha)
        if key not in done:  # one row per face, however many runs hold it; one no identity holds counts as None
            done.add(key)
            seen[(uri, sha)][t].append((identity.get(key), key[0]))
    return seen


def _heard(root: Store, voices: Side) -> list[tuple[str, str, float, float, str, str]]:
    """Every clustered speech segment, with its voice identity and item key."""
    identity = identity_of(root, voices.run_id)
    rows = read_table(
        voices.embeddings,
        "voices",
        voices.embeddings_run,
        ["uri", "sha256", "segment_index", "start", "end"],
        filter=pc.field("level") == "segment",
    )
    heard = {}
    for uri, sha, segment, start, end in zip(*(rows.column(c).to_pylist() for c in rows.column_names), strict=True):
        key = (segment_key(uri, segment), sha)
        if key in identity:
            heard[key] = (uri, sha, start, end, identity[key], key[0])
    return sorted(heard.values())


def _candidates(evidence: dict[tuple[str, str], list[dict]], rules: LinkRules) -> list[dict]:
    """A row per (face identity, voice identity) with evidence: shares, videos, and the decision with its reason."""
    seconds = {pair: sum(s["end"] - s["start"] for s in spans) for pair, spans in evidence.items()}
    face_total: dict[str, float] = defaultdict(float)
    voice_total: dict[str, float] = defaultdict(float)
    for (face, voice), s in seconds.items():
        face_total[face] += s
        voice_total[voice] += s
    rows = []
    for (face, voice), spans in sorted(evidence.items()):
        s = seconds[(face, voice)]
        face_share = s / face_total[face] if face_total[face] > 0 else 0.0
        voice_share = s / voice_total[voice] if voice_total[voice] > 0 else 0.0
        videos = len({span["sha256"] for span in spans})
        reason = None
        if min(face_share, voice_share) <= rules.min_share:
            reason = f"not each other's main partner (shares {face_share:.2f}, {voice_share:.2f})"
        elif videos < rules.min_videos:
            reason = f"seen together in {videos} video(s), fewer than {rules.min_videos}"
        person = "person-" + hashlib.sha256(f"{face}\n{voice}".encode()).hexdigest()[:16] if reason is None else None
        rows.append(
            {
                "person": person,
                "face_identity": face,
                "voice_identity": voice,
                "linked": reason is None,
                "reason": reason,
                "link_score": min(face_share, voice_share),
                "face_share": face_share,
                "voice_share": voice_share,
                "seconds": s,
                "videos": videos,
                "evidence": sorted(spans, key=lambda span: (span["uri"], span["start"])),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    return run_job(JOB, PersonsConfig, run, argv, description=__doc__.split("\n")[0])


if __name__ == "__main__":
    sys.exit(run_module(__spec__.name))
