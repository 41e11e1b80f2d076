"""Every table's explicit pyarrow schema, in one place.

Each schema carries its table name and schema version in the Parquet file's key-value metadata, so a reader can
tell what a file holds and refuse one written by a newer, incompatible version. Every stored row also carries the
``attempt`` of its run that wrote it (``stored``): a row counts when its (run_id, attempt) is in ``runs``.
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 1
TABLE_KEY = b"crossmatch.table"
VERSION_KEY = b"crossmatch.schema_version"


def _table(name: str, *fields: pa.Field) -> pa.Schema:
    return pa.schema(list(fields), metadata={TABLE_KEY: name.encode(), VERSION_KEY: str(SCHEMA_VERSION).encode()})


def _f(name: str, type_: pa.DataType, nullable: bool = False, doc: str = "") -> pa.Field:
    return pa.field(name, type_, nullable=nullable, metadata={b"doc": doc.encode()} if doc else None)


SHA256 = pa.string()  # lowercase hex, 64 characters

MANIFEST = _table(
    "manifest",
    _f("run_id", pa.string(), doc="the run that wrote the row"),
    _f("uri", pa.string(), doc="the object's full URI"),
    _f("relpath", pa.string(), doc="path below the listed archive prefix"),
    _f("size", pa.int64(), doc="bytes"),
    _f("modified", pa.timestamp("ms", tz="UTC"), nullable=True, doc="last modification time, when the store has one"),
    _f("sha256", SHA256, doc="sha256 of the content"),
    _f("media_kind", pa.string(), doc="format from magic bytes: jpeg, png, wav, mp4, ..."),
    _f("media_category", pa.string(), doc="image, audio or video"),
    _f("mime", pa.string(), doc="MIME type from the content"),
    _f("label", pa.string(), nullable=True, doc="label taken from the path by the job's label pattern"),
    _f("duplicate_of", pa.string(), nullable=True, doc="for repeated content: the first uri (sorted) with it"),
    _f(
        "etag",
        pa.string(),
        nullable=True,
        doc="what the store says changes with the content, free with the listing: S3's ETag; a local file's inode "
        "and status-change time (ctime), which copies that keep the modification time (cp -p, rsync -a) cannot set",
    ),
)

CHANGES = _table(
    "changes",
    _f("run_id", pa.string(), doc="the manifest run that found the change"),
    _f("uri", pa.string()),
    _f("change", pa.string(), doc="new, modified or removed, against the previous manifest of the same archive"),
    _f("sha256", SHA256, nullable=True, doc="the content now (null: removed)"),
    _f("previous_sha256", SHA256, nullable=True, doc="the content before (null: new)"),
    _f("previous_run_id", pa.string(), doc="the manifest run compared with"),
)

ERRORS = _table(
    "errors",
    _f("run_id", pa.string()),
    _f("job", pa.string(), doc="the job that met the error"),
    _f("uri", pa.string(), doc="the input the error belongs to"),
    _f("sha256", SHA256, nullable=True, doc="the input's content hash, when it could be read"),
    _f("stage", pa.string(), doc="the step that failed: read, sniff, decode, ..."),
    _f("error_type", pa.string(), doc="a stable name to count by"),
    _f("message", pa.string(), doc="what went wrong, for a person"),
)


def voices(dim: int) -> pa.Schema:
    """Speaker embeddings: a row per speech segment and a row per source (the pooled embedding and the counts)."""
    return _table(
        "voices",
        _f("run_id", pa.string()),
        _f("uri", pa.string(), doc="the source"),
        _f("sha256", SHA256, doc="the source's content hash"),
        _f("level", pa.string(), doc="'segment' or 'source'"),
        _f("segment_index", pa.int32(), nullable=True, doc="0, 1, ... within the source; null on source rows"),
        _f("start", pa.float64(), nullable=True, doc="seconds from the start of the source to the first speech"),
        _f("end", pa.float64(), nullable=True, doc="seconds from the start of the source to the end of the speech"),
        _f("duration", pa.float64(), doc="seconds: the segment's span, or the source's decoded length"),
        _f("speech_seconds", pa.float64(), doc="seconds of speech embedded"),
        _f("speech_ratio", pa.float32(), doc="speech_seconds / duration"),
        _f("partials", pa.int32(), doc="1.6 s partials averaged into the embedding"),
        _f("embedding", pa.list_(pa.float32(), dim), nullable=True, doc="L2-normalised; null when no speech"),
        _f("status", pa.string(), doc="ok, no_speech, or truncated (decoding stopped early; see message)"),
        _f("message", pa.string(), nullable=True),
        _f("model_name", pa.string()),
        _f("model_sha256", SHA256, doc="sha256 of the model's checkpoint"),
    )


def faces(dim: int) -> pa.Schema:
    """Face embeddings: a row per detected face (per frame, or per track with --per-track)."""
    return _table(
        "faces",
        _f("run_id", pa.string()),
        _f("uri", pa.string(), doc="the source image or video"),
        _f("sha256", SHA256, doc="the source's content hash"),
        _f("frame_index", pa.int32(), doc="frame number in the video stream; 0 for images"),
        _f("timestamp", pa.float64(), nullable=True, doc="seconds into the video; null for images"),
        _f("face_index", pa.int32(), doc="0, 1, ... within the frame, best detection first"),
        _f("track_id", pa.int32(), nullable=True, doc="video: the face track the row belongs to"),
        _f("track_frames", pa.int32(), nullable=True, doc="video: sampled frames in the track"),
        _f("box", pa.list_(pa.float32(), 4), doc="x1, y1, x2, y2 in source pixels (upright image)"),
        _f("landmarks", pa.list_(pa.float32(), 10), doc="x, y of eyes, nose tip, mouth corners (image-left first)"),
        _f("score", pa.float32(), doc="detector probability (MTCNN O-Net)"),
        _f("face_size", pa.float32(), doc="shorter side of the box, source pixels"),
        _f("eye_distance", pa.float32(), doc="between the eye centres, source pixels"),
        _f("sharpness", pa.float32(), doc="variance of the Laplacian of the aligned chip: low means blurred"),
        _f("embedding", pa.list_(pa.float32(), dim), doc="the recogniser's output, as it gives it"),
        _f("detector_name", pa.string()),
        _f("detector_sha256", SHA256),
        _f("model_name", pa.string()),
        _f("model_sha256", SHA256, doc="sha256 of the recogniser's checkpoint"),
    )


FACE_SOURCES = _table(
    "face_sources",
    _f("run_id", pa.string()),
    _f("uri", pa.string()),
    _f("sha256", SHA256),
    _f("media_category", pa.string(), doc="image or video"),
    _f("width", pa.int32(), nullable=True, doc="upright pixels"),
    _f("height", pa.int32(), nullable=True),
    _f("frames", pa.int32(), doc="frames examined (1 for an image)"),
    _f("faces", pa.int32(), doc="faces found over all frames"),
    _f("face_rows", pa.int32(), doc="rows in faces/ (fewer than faces with --per-track)"),
    _f("status", pa.string(), doc="ok, no_face, or truncated (decoding stopped early; see message)"),
    _f("message", pa.string(), nullable=True),
    _f("detector_name", pa.string()),
    _f("detector_sha256", SHA256),
    _f("model_name", pa.string()),
    _f("model_sha256", SHA256),
)

FACE_THUMBNAILS = _table(
    "face_thumbnails",
    _f("run_id", pa.string()),
    _f("uri", pa.string()),
    _f("sha256", SHA256),
    _f("frame_index", pa.int32()),
    _f("face_index", pa.int32()),
    _f("thumbnail", pa.binary(), doc="JPEG of the face with some context, longer side 96 px, cut at embed time"),
)

MATCHES = _table(
    "matches",
    _f("run_id", pa.string()),
    _f("mode", pa.string(), doc="search, verify, identify or crossmatch"),
    _f("query_uri", pa.string()),
    _f("query_sha256", SHA256),
    _f("query_item", pa.string(), doc="a source uri, or uri#frame=F&face=I, uri#segment=S, uri#voice, uri#face"),
    _f("gallery_uri", pa.string(), nullable=True, doc="the matched item's source; null for identify"),
    _f("gallery_sha256", SHA256, nullable=True),
    _f("gallery_item", pa.string(), nullable=True),
    _f("identity", pa.string(), nullable=True, doc="identify: the enrolled identity"),
    _f("rank", pa.int32(), doc="1 = best; verify rows are rank 1"),
    _f("score", pa.float32(), doc="cosine similarity of the L2-normalised embeddings, exact"),
    _f("threshold", pa.float32(), nullable=True, doc="the decision threshold, when one applies"),
    _f("threshold_source", pa.string(), nullable=True, doc="--threshold, a calibration record, or the card"),
    _f(
        "decision",
        pa.string(),
        nullable=True,
        doc="verify, crossmatch: accept/reject; search: match/no match; identify: identity/unknown at rank 1; "
        "'below the evidence needed' where the score clears the threshold and the log-LR is not above --min-llr",
    ),
    _f("model_name", pa.string()),
    _f("model_sha256", SHA256),
    _f(
        "llr",
        pa.float64(),
        nullable=True,
        doc="the score as a natural-log likelihood ratio by the calibration record's map; null without one",
    ),
    _f(
        "verbal",
        pa.string(),
        nullable=True,
        doc="the log-LR in the forensic verbal scale ('moderate support for the same person'); null without one",
    ),
)

MATCH_ITEMS = _table(
    "match_items",
    _f("run_id", pa.string()),
    _f("side", pa.string(), doc="queries, gallery, or both (one set against itself); crossmatch: voices or faces"),
    _f("item", pa.string(), doc="the item key as in matches/ (identify's gallery: the identity)"),
    _f("uri", pa.string(), doc="the source ('' for an enrolled identity)"),
    _f("sha256", SHA256, doc="the source's content hash ('' for an enrolled identity)"),
    _f("vector_sha256", SHA256, doc="hash of the unit vector searched (an identity: of its centroid)"),
)

IDENTITIES = _table(
    "identities",
    _f("run_id", pa.string()),
    _f(
        "identity",
        pa.string(),
        doc="id-<hash of its members when founded>, carried on by the identity holding most of them",
    ),
    _f("modality", pa.string(), doc="faces or voices"),
    _f("item", pa.string(), doc="the member: an item key of the search it was clustered from"),
    _f("uri", pa.string()),
    _f("sha256", SHA256),
    _f("size", pa.int32(), doc="the identity's members"),
    _f("representative", pa.bool_(), doc="of the members mostly linked inside, the clearest face or longest speech"),
    _f("cohesion", pa.float64(), nullable=True, doc="mean score of the edges inside the identity (null: none)"),
    _f("confidence", pa.float64(), doc="share of the member's edge weight inside its identity (1: no edge out)"),
    _f("method", pa.string(), doc="whispers or components, over the k-NN graph of the search"),
    _f("threshold", pa.float32(), doc="edges at or above this cosine score link members"),
    _f("search_run_id", pa.string(), doc="the search run whose top-K lists are the graph"),
    _f("model_name", pa.string()),
    _f("model_sha256", SHA256),
)

EVIDENCE = pa.struct(
    [
        pa.field("uri", pa.string(), nullable=False),
        pa.field("sha256", SHA256, nullable=False),
        pa.field("start", pa.float64(), nullable=False),
        pa.field("end", pa.float64(), nullable=False),
        pa.field("by", pa.string(), nullable=False),  # "one identity on screen", or "joint model" (several)
        pa.field("score", pa.float64(), nullable=True),  # joint model: the speaker's score (the next one's: margin)
    ]
)

PERSONS = _table(
    "persons",
    _f("run_id", pa.string()),
    _f("person", pa.string(), nullable=True, doc="person-<hash of the two identities>; null when not linked"),
    _f("face_identity", pa.string(), doc="an identity of the faces identities run"),
    _f("voice_identity", pa.string(), doc="an identity of the voices identities run"),
    _f("linked", pa.bool_(), doc="true: one person; false: a candidate the evidence does not carry (see reason)"),
    _f("reason", pa.string(), nullable=True, doc="why a candidate is not linked; null when linked"),
    _f("link_score", pa.float64(), doc="the smaller of face_share and voice_share"),
    _f("face_share", pa.float64(), doc="of the face's seconds seen alone while one voice spoke, the share with this"),
    _f("voice_share", pa.float64(), doc="of the voice's seconds spoken while one face was seen, the share with this"),
    _f("seconds", pa.float64(), doc="speech seconds of this voice while this face alone was on screen"),
    _f("videos", pa.int32(), doc="distinct videos (by content) the evidence comes from"),
    _f("evidence", pa.list_(EVIDENCE), doc="every span: video, sha256, start, end, how decided (and the score)"),
    _f("faces_run_id", pa.string(), doc="the identities run of the faces"),
    _f("voices_run_id", pa.string(), doc="the identities run of the voices"),
    _f("face_model_name", pa.string()),
    _f("face_model_sha256", SHA256),
    _f("voice_model_name", pa.string()),
    _f("voice_model_sha256", SHA256),
)

CALIBRATIONS = _table(
    "calibrations",
    _f("run_id", pa.string()),
    _f("model_name", pa.string()),
    _f("model_sha256", SHA256),
    _f("table", pa.string(), doc="faces or voices"),
    _f("sources", pa.int64(), doc="labelled sources scored"),
    _f("labels", pa.int64()),
    _f("same_pairs", pa.int64()),
    _f("different_pairs", pa.int64()),
    _f("auc", pa.float64()),
    _f("eer", pa.float64()),
    _f("tar_at_far_0.01", pa.float64()),
    _f("tar_at_far_0.001", pa.float64()),
    _f("tar_at_far_0.0001", pa.float64()),
    _f("target_far", pa.float64()),
    _f("threshold", pa.float64(), doc="cosine threshold: accept score >= threshold"),
    _f("impostor_pairs_above_threshold", pa.int64(), doc="what the target FAR rests on"),
    _f("record_uri", pa.string(), doc="the JSON record beside the ROC, DET and score PNGs"),
)

ATTRIBUTES = _table(
    "attributes",
    _f("run_id", pa.string()),
    _f("item", pa.string(), doc="the face: uri#frame=F&face=I"),
    _f("uri", pa.string()),
    _f("sha256", SHA256),
    _f("attribute", pa.string(), doc="the attribute's name, as the head's card gives it"),
    _f("class", pa.string(), nullable=True, doc="categorical: the most likely class"),
    _f("probability", pa.float64(), nullable=True, doc="categorical: that class's probability"),
    _f("value", pa.float64(), nullable=True, doc="numeric: the estimate, in the attribute's units"),
    _f("uncertainty", pa.float64(), nullable=True, doc="numeric: one standard deviation (Gaussian heads)"),
    _f("interval_low", pa.float64(), nullable=True, doc="numeric: the central 90% interval"),
    _f("interval_high", pa.float64(), nullable=True),
    _f("model_name", pa.string(), doc="the attribute heads, or the network that read the face's picture (FairFace)"),
    _f("model_sha256", SHA256),
    _f(
        "backbone_name",
        pa.string(),
        doc="what made the model's input: heads, the recogniser of the embeddings; a picture network, the detector "
        "whose landmarks cut the face",
    ),
    _f("backbone_sha256", SHA256),
)

FUSIONS = _table(
    "fusions",
    _f("run_id", pa.string()),
    _f("face_model_name", pa.string()),
    _f("face_model_sha256", SHA256),
    _f("voice_model_name", pa.string()),
    _f("voice_model_sha256", SHA256),
    _f("pairing", pa.string(), doc="shared labels (one person in both modalities) or chimeric (face of A, voice of B)"),
    _f("identities", pa.int64(), doc="identities with two faces and two voices or more"),
    _f("same_trials", pa.int64()),
    _f("different_trials", pa.int64()),
    _f("fusion", pa.string(), doc="sum (of the calibrated log-LRs) or linear (trained weights): what decides"),
    _f("face_eer", pa.float64(), doc="held out, as are all the figures"),
    _f("voice_eer", pa.float64()),
    _f("fused_eer", pa.float64()),
    _f("face_cllr", pa.float64(), doc="bits: 0 perfect, 1 no information"),
    _f("voice_cllr", pa.float64()),
    _f("fused_cllr", pa.float64()),
    _f("fused_tar_at_far_0.01", pa.float64()),
    _f("fused_tar_at_far_0.001", pa.float64()),
    _f("target_far", pa.float64()),
    _f("llr_threshold", pa.float64(), doc="accept a fused log-LR at or above this (natural log)"),
    _f("record_uri", pa.string(), doc="the JSON record (calibrations, weights, every threshold) beside the figures"),
)

EVIDENCE = _table(
    "evidence",
    _f("run_id", pa.string()),
    _f("mode", pa.string(), doc="verify or identify"),
    _f("query", pa.string(), doc="the probe: the pairs table's side a, or the probe source"),
    _f("query_face_item", pa.string(), nullable=True, doc="the face compared (null: none)"),
    _f("query_face_sha256", SHA256, nullable=True),
    _f("query_voice_item", pa.string(), nullable=True, doc="the voice compared (null: none)"),
    _f("query_voice_sha256", SHA256, nullable=True),
    _f("gallery", pa.string(), doc="verify: the pairs table's side b; identify: the enrolled identity"),
    _f("gallery_face_item", pa.string(), nullable=True, doc="verify: the face compared with; identify: null"),
    _f("gallery_face_sha256", SHA256, nullable=True),
    _f("gallery_voice_item", pa.string(), nullable=True),
    _f("gallery_voice_sha256", SHA256, nullable=True),
    _f("rank", pa.int32(), doc="1 = best; verify rows are rank 1"),
    _f("modalities", pa.string(), doc="face+voice, or the one both sides had: face or voice"),
    _f("face_score", pa.float32(), nullable=True, doc="cosine of the faces"),
    _f("voice_score", pa.float32(), nullable=True, doc="cosine of the voices"),
    _f("face_llr", pa.float64(), nullable=True, doc="natural log-LR of the face score, calibrated"),
    _f("voice_llr", pa.float64(), nullable=True),
    _f("llr", pa.float64(), doc="the evidence: the fused log-LR, or the one modality's"),
    _f("llr_threshold", pa.float64(), doc="for these modalities, at the calibration's target false accept rate"),
    _f(
        "decision",
        pa.string(),
        nullable=True,
        doc="verify: accept/reject; identify: identity/unknown at rank 1; 'below the evidence needed' at or above "
        "the threshold on a log-LR not above --min-llr",
    ),
    _f("face_model_name", pa.string()),
    _f("face_model_sha256", SHA256),
    _f("voice_model_name", pa.string()),
    _f("voice_model_sha256", SHA256),
    _f("calibration", pa.string(), doc="the fused calibration record the log-LRs and thresholds come from"),
)

TRAINING = _table(
    "training",
    _f("run_id", pa.string()),
    _f("job", pa.string(), doc="train_face or train_crossmodal"),
    _f("epoch", pa.int32(), doc="0, 1, ...; each row is one metric at the end of that epoch"),
    _f("metric", pa.string(), doc="loss, samples_per_s, and held-out eer, auc, v2f_1of2, ..."),
    _f("value", pa.float64()),
)

STYLED = _table(
    "styled",
    _f("run_id", pa.string()),
    _f("uri", pa.string(), doc="the content image"),
    _f("sha256", SHA256, doc="the content image's content hash"),
    _f("style_uri", pa.string()),
    _f("style_sha256", SHA256),
    _f("method", pa.string(), doc="gatys or feedforward"),
    _f("parameters", pa.string(), doc="JSON: weights, steps, scales, optimizer, colour, size, tiles"),
    _f("seed", pa.int64()),
    _f("output_uri", pa.string(), doc="the styled image (named by the content and style hashes)"),
    _f("width", pa.int32()),
    _f("height", pa.int32()),
    _f("content_loss", pa.float64(), nullable=True, doc="gatys: final content loss (loss network features)"),
    _f("style_loss", pa.float64(), nullable=True, doc="gatys: final style loss (normalised Grams)"),
    _f("seconds", pa.float64(), doc="time spent on this image and style, decoding and encoding included"),
    _f("model_name", pa.string(), doc="the loss network (gatys) or the TransformerNet (feedforward)"),
    _f("model_sha256", SHA256),
    _f("random_weights", pa.bool_(), doc="true when the loss network is a seeded random one, not ImageNet's"),
)

RUNS = _table(
    "runs",
    _f("run_id", pa.string(), doc="the run; rows of every table with this run_id and attempt are its output"),
    _f("attempt", pa.string(), doc="the committed attempt; rows of other attempts of the run do not count"),
    _f("job", pa.string(), doc="the job that wrote the run"),
    _f("started_at", pa.timestamp("us", tz="UTC")),
    _f("committed_at", pa.timestamp("us", tz="UTC")),
    _f("schema_version", pa.int32(), doc="the schema version the run's tables were written with"),
    _f("crossmatch_version", pa.string(), doc="the version of crossmatch that wrote the run"),
    _f("tables", pa.string(), doc='JSON: {table: {"rows": n, "files": n}} for every table the run wrote'),
    _f("info", pa.string(), doc="JSON: the job's config, summary, models and their sha256, as the run reported"),
)

REVIEWS = _table(
    "reviews",
    _f("run_id", pa.string(), doc="the review's own run: one mark each"),
    _f("match_run_id", pa.string(), doc="the match run whose row was reviewed"),
    _f("query_item", pa.string()),
    _f("gallery_item", pa.string(), doc="the gallery item, or identify's identity"),
    _f("query_sha256", SHA256, doc="the sources as they were reviewed"),
    _f("gallery_sha256", SHA256, nullable=True),
    _f("score", pa.float32(), doc="the row's score as reviewed"),
    _f("llr", pa.float64(), nullable=True),
    _f("decision", pa.string(), nullable=True, doc="the row's decision as reviewed"),
    _f("verdict", pa.string(), doc="confirmed, rejected or unsure"),
    _f("reviewer", pa.string(), doc="who reviewed it"),
    _f("note", pa.string(), doc="why"),
    _f("reviewed_at", pa.timestamp("ms", tz="UTC")),
)

ATTEMPT = _f("attempt", pa.string(), doc="the attempt of the run that wrote the row (see the runs table)")

TABLES: dict[str, pa.Schema] = {
    "attributes": ATTRIBUTES,
    "calibrations": CALIBRATIONS,
    "evidence": EVIDENCE,
    "fusions": FUSIONS,
    "manifest": MANIFEST,
    "changes": CHANGES,
    "errors": ERRORS,
    "face_sources": FACE_SOURCES,
    "face_thumbnails": FACE_THUMBNAILS,
    "matches": MATCHES,
    "match_items": MATCH_ITEMS,
    "identities": IDENTITIES,
    "persons": PERSONS,
    "reviews": REVIEWS,
    "styled": STYLED,
    "training": TRAINING,
    "runs": RUNS,
}
# Tables whose embedding width depends on the model: their schema is built for a dimension.
SIZED_TABLES = {"voices": voices, "faces": faces}


def schema_for(table: str, dim: int | None = None) -> pa.Schema | None:
    """The schema of ``table`` (for sized tables, of embedding width ``dim``; None when no width is given)."""
    if table in SIZED_TABLES:
        return SIZED_TABLES[table](dim) if dim else None
    try:
        return TABLES[table]
    except KeyError:
        known = ", ".join(sorted([*TABLES, *SIZED_TABLES]))
        raise KeyError(f"unknown table {table!r}; known: {known}") from None


def conform(data: pa.Table, schema: pa.Schema) -> pa.Table:
    """``data`` with exactly the schema's columns, order, types and metadata; a missing column is an error."""
    missing = [name for name in schema.names if name not in data.column_names]
    if missing:
        raise ValueError(f"table {schema.metadata[TABLE_KEY].decode()} is missing columns {missing}")
    nulls = [f.name for f in schema if not f.nullable and data.column(f.name).null_count]
    if nulls:
        raise ValueError(f"table {schema.metadata[TABLE_KEY].decode()} has nulls in required columns {nulls}")
    return data.select(schema.names).cast(schema)


def stored(schema: pa.Schema) -> pa.Schema:
    """The schema as rows are stored: with the ``attempt`` column after ``run_id`` (the runs table has it)."""
    if "attempt" in schema.names:
        return schema
    at = schema.get_field_index("run_id") + 1
    return schema.insert(at, ATTEMPT).with_metadata(schema.metadata)
