"""jobs.embed_voices: find the speech in every audio and video source of a manifest and embed each speaker stretch.

    python -m jobs.embed_voices [MANIFEST_ROOT] [--model ge2e-resemblyzer] [--output out/results]

Sources are the committed manifest's audio and video objects. A CPU stage decodes each one in a stream (PyAV),
downmixes, resamples to 16 kHz (torchaudio), normalises loudness and cuts the speech into segments (webrtcvad);
encoder actors pinned to GPUs batch the segments of many sources together. ``voices/`` gets a row per segment and
a row per source (the pooled embedding, or status no_speech); a source that cannot be decoded at all is a row in
``errors/``. Every source ends as exactly one source row or one error row, checked by workers
(jobs/runtime/accounting.py): the driver holds paths and counts, never a row per source.
"""

from __future__ import annotations

import functools
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from jobs.runtime.accounting import (
    OUTCOME_FIELDS,
    OUTCOMES,
    Ledger,
    collect,
    ledger_of,
    plan_sources,
    settle,
    staged_rows,
)
from jobs.runtime.cli import JobConfig
from jobs.runtime.cluster import ActorOptions, actor_plan, ensure_ray, in_process, model_pipeline
from jobs.runtime.launch import JobContext, run_job, run_module
from jobs.runtime.options import ManifestInput, ModelsOnWorkers
from jobs.runtime.output import WRITE_ROWS, JobOutput, RowWriter, error_row, file_row
from jobs.runtime.progress import ItemClock
from jobs.runtime.reuse import Reuse, reusable_run, reuse_key
from ops.io.custody import open_verified
from ops.io.errors import AudioError, ItemTimeout, JobFailed
from ops.io.schemas import voices
from ops.io.storage import Store, resolve
from ops.io.tables import DataFile
from ops.matching.vectors import unit_or_zero
from ops.media.audio import decode_mono
from ops.models import catalogue
from ops.voices.speech import SileroDetector, SpeechSegmenter, WebRTCDetector

JOB = "embed_voices"
# Compressed speech is about 25 KB per second of audio: a shard of this many bytes is a few seconds of work.
ROWS_VERSION = 2  # bump when a code change alters the rows this job makes: no earlier run's rows are reused then
MIN_SHARD_BYTES = 256 << 10
ROWS_PER_YIELD = 32  # segments per block handed on by the decode stage: bounded memory for hours-long sources


@dataclass
class EmbedVoicesConfig(ModelsOnWorkers, ManifestInput, ActorOptions, JobConfig):
    model: str = field(
        default="ge2e-resemblyzer",
        metadata={"run_key": True, "help": "speaker encoder: registry name or URI of a pulled model"},
    )
    min_segment_seconds: float = field(default=0.5, metadata={"help": "drop segments with less speech"})
    max_segment_seconds: float = field(default=10.0, metadata={"help": "seconds of speech per segment at most"})
    max_gap_seconds: float = field(default=1.0, metadata={"help": "a longer silence starts a new segment"})
    vad: str = field(
        default="silero",
        metadata={
            "help": "speech detector: silero (learned; rejects music and noise) or webrtc (fast; takes music "
            "for speech)"
        },
    )
    vad_model: str = field(default="silero-vad", metadata={"help": "the Silero VAD model: registry name or URI"})
    vad_mode: int = field(default=3, metadata={"help": "webrtcvad aggressiveness, 0 (lenient) to 3 (strict)"})
    vad_threshold: float = field(
        default=0.5, metadata={"help": "Silero: speech where a stretch's probability reaches this somewhere"}
    )
    vad_low: float = field(
        default=0.35, metadata={"help": "Silero: a speech stretch extends while its probability stays at this"}
    )
    max_source_seconds: float = field(
        default=12 * 3600.0, metadata={"help": "embed at most this much of one source (the rest is reported)"}
    )
    item_timeout: float = field(default=900.0, metadata={"help": "seconds of decoding per source at most (0: none)"})
    batch_size: int = field(default=64, metadata={"help": "segments per encoder batch"})
    reuse: bool = field(
        default=True,
        metadata={
            "help": "copy the rows of sources an earlier run under --output embedded with the same content, models "
            "and settings instead of embedding them again (--no-reuse: embed every source)"
        },
    )


# What the decode stage hands to the encoder stage: segment rows (with their samples), source rows, error rows.
_STAGED = pa.schema(
    [
        ("kind", pa.string()),
        ("uri", pa.string()),
        ("sha256", pa.string()),
        ("segment_index", pa.int32()),
        ("start", pa.float64()),
        ("end", pa.float64()),
        ("speech_seconds", pa.float64()),
        ("samples", pa.binary()),
        ("duration", pa.float64()),
        ("status", pa.string()),
        ("stage", pa.string()),
        ("error_type", pa.string()),
        ("message", pa.string()),
    ]
)


@dataclass(frozen=True)
class SegmentDecoding:
    """How the decode stage cuts a source into speech segments: the speech detector and its settings, the
    segments' bounds, how much of a source is read and the time allowed for it. Frozen and small: it travels to
    every decode task."""

    vad: str  # silero or webrtc
    vad_mode: int
    vad_threshold: float
    vad_low: float
    min_segment_seconds: float
    max_segment_seconds: float
    max_gap_seconds: float
    max_source_seconds: float
    item_timeout: float

    @classmethod
    def of(cls, config: EmbedVoicesConfig) -> SegmentDecoding:
        """The job's decoding options."""
        return cls(
            vad=config.vad,
            vad_mode=config.vad_mode,
            vad_threshold=config.vad_threshold,
            vad_low=config.vad_low,
            min_segment_seconds=config.min_segment_seconds,
            max_segment_seconds=config.max_segment_seconds,
            max_gap_seconds=config.max_gap_seconds,
            max_source_seconds=config.max_source_seconds,
            item_timeout=config.item_timeout,
        )


def speech_detector(decoding: SegmentDecoding, model_folder: Store | None) -> WebRTCDetector | SileroDetector:
    """The detector the job's settings name (the Silero model loaded once per worker process)."""
    if decoding.vad == "webrtc":
        return WebRTCDetector(decoding.vad_mode)
    return SileroDetector(_silero(model_folder), decoding.vad_threshold, decoding.vad_low)


@functools.lru_cache(maxsize=4)
def _silero(model_folder: Store):
    # On the CPU: the decode stage runs it, on CPU workers, beside the decoding.
    return catalogue.build(catalogue.load_folder(model_folder, "speech-detection"), "cpu")


def decode_segments(
    batch: pa.Table, endpoint_url: str | None, decoding: SegmentDecoding, vad_folder: Store | None = None
) -> Iterator[pa.Table]:
    """Decode each source of the batch into speech segments, then one source row; or one error row."""
    detector = speech_detector(decoding, vad_folder)
    for uri, sha, size in zip(*(batch.column(c).to_pylist() for c in ("uri", "sha256", "size")), strict=True):
        rows: list[dict] = []
        segmenter = SpeechSegmenter(
            decoding.min_segment_seconds,
            decoding.max_segment_seconds,
            decoding.max_gap_seconds,
            detector=detector,
        )
        status, message, clock = "ok", None, ItemClock(decoding.item_timeout)
        try:
            with open_verified(resolve(uri, endpoint_url), sha, size) as f:
                _, chunks = decode_mono(f, max_seconds=decoding.max_source_seconds)
                try:
                    for chunk in chunks:
                        rows += [_segment_row(uri, sha, s) for s in segmenter.push(chunk)]
                        clock.check(f"decoding {segmenter.total_seconds:.0f} s of audio")
                        if len(rows) >= ROWS_PER_YIELD:
                            yield pa.Table.from_pylist(rows, schema=_STAGED)
                            rows = []
                except (AudioError, ItemTimeout) as exc:
                    if segmenter.total_samples == 0:
                        raise
                    status, message = "truncated", f"{exc.error_type}: {exc}"  # keep what was decoded, say why
            rows += [_segment_row(uri, sha, s) for s in segmenter.finish()]
            if status == "ok" and segmenter.speech_samples == 0:
                status = "no_speech"
            rows.append(
                {
                    "kind": "source",
                    "uri": uri,
                    "sha256": sha,
                    "duration": segmenter.total_seconds,
                    "speech_seconds": segmenter.speech_seconds,
                    "status": status,
                    "message": message,
                }
            )
        except Exception as exc:  # noqa: BLE001 - one source's failure is that source's error row
            rows = [error_row(exc, "decode", uri=uri, sha256=sha)]
        yield pa.Table.from_pylist(rows, schema=_STAGED)


def _segment_row(uri: str, sha: str, s) -> dict:
    return {
        "kind": "segment",
        "uri": uri,
        "sha256": sha,
        "segment_index": s.index,
        "start": s.start,
        "end": s.end,
        "speech_seconds": s.speech_seconds,
        "samples": s.samples.astype(np.float32).tobytes(),
    }


class VoiceEncoderActor:
    """Loads the encoder once per actor; embeds the segments of each batch together, passes other rows on."""

    def __init__(self, model_folder: Store) -> None:
        self.embedder = catalogue.build(catalogue.load_folder(model_folder, "speaker-embedding"))

    def __call__(self, batch: pa.Table) -> pa.Table:
        kinds = batch.column("kind").to_pylist()
        rows = [i for i, k in enumerate(kinds) if k == "segment"]
        samples = batch.column("samples")
        waves = [np.frombuffer(samples[i].as_py(), dtype=np.float32) for i in rows]
        sums, counts = self.embedder.partial_sums(waves)
        sum_col: list = [None] * len(kinds)
        count_col: list = [None] * len(kinds)
        for j, i in enumerate(rows):
            sum_col[i], count_col[i] = sums[j], int(counts[j])
        # The sums of partial embeddings, not their mean: the driver pools a source's segments exactly.
        out = batch.drop_columns(["samples"])
        out = out.append_column("partial_sum", pa.array(sum_col, pa.list_(pa.float32())))
        return out.append_column("partials", pa.array(count_col, pa.int32()))


POOLED = "pooled"  # the ledger's kind of this job, besides outcomes: a source's sums of partial embeddings
OUTCOME_COLUMNS = ["duration", "speech_seconds", "status"]  # a voice source's outcome, beyond the core


def write_segments(batch: pa.Table, writer: RowWriter, ledger: Ledger, provenance: dict, dim: int) -> pa.Table:
    """The segment rows of the batch written to ``voices/`` by this worker; staged in the ledger: one "pooled" row
    per source of the batch (the sum of its segments' partial embeddings, their count in ``partials`` and the
    segments' in ``segments``, from which the source's row is pooled exactly when its slice is settled) and each
    source's outcome. The driver gets the paths and row counts."""
    kinds = np.asarray(batch.column("kind").to_pylist())
    made: list[dict] = []
    if (is_segment := kinds == "segment").any():
        segments = batch.filter(pa.array(is_segment))
        made += [
            {"kind": "file", "path": file_row(f), "rows": f.rows}
            for f in writer.write(_segment_table(segments, provenance, dim))
        ]
        pooled: dict[str, list] = {}
        pool(pooled, segments, dim)
        sums = pa.Table.from_pylist(
            [
                {"uri": uri, "partial_sum": acc[0].tolist(), "partials": acc[1], "segments": acc[2]}
                for uri, acc in pooled.items()
            ],
            schema=_POOLED,
        )
        made.append({"kind": POOLED, "path": ledger.stage(POOLED, sums), "rows": sums.num_rows})
    if (ended := (kinds == "source") | (kinds == "error")).any():
        rows = batch.filter(pa.array(ended))
        rows = rows.select([n for n, _ in OUTCOME_FIELDS if n != "key"] + OUTCOME_COLUMNS)
        rows = rows.append_column("key", rows.column("uri"))
        made.append({"kind": OUTCOMES, "path": ledger.stage(OUTCOMES, rows), "rows": rows.num_rows})
    return staged_rows(made)


_POOLED = pa.schema(
    [("uri", pa.string()), ("partial_sum", pa.list_(pa.float64())), ("partials", pa.int64()), ("segments", pa.int64())]
)


def pool(pooled: dict[str, list], rows: pa.Table, dim: int) -> None:
    """Add the rows' sums of partial embeddings into ``pooled`` (uri -> [sum, partials, segments]): segment rows
    count one segment each, staged "pooled" rows the segments they say."""
    counted = rows.column("segments").to_pylist() if "segments" in rows.column_names else [None] * rows.num_rows
    for uri, psum, n, k in zip(
        rows.column("uri").to_pylist(),
        rows.column("partial_sum").to_numpy(zero_copy_only=False),
        rows.column("partials").to_pylist(),
        counted,
        strict=True,
    ):
        acc = pooled.setdefault(uri, [np.zeros(dim, np.float64), 0, 0])
        acc[0] += psum
        acc[1] += n
        acc[2] += 1 if k is None else k


def finish(
    lo: int,
    hi: int,
    ledger: Ledger,
    paths: dict[str, list[str]],
    outcomes: pa.Table | None,
    writer: RowWriter,
    provenance: dict,
    dim: int,
) -> tuple[list[DataFile], dict]:
    """One slice of the sources, settled: a source row in ``voices/`` per source that did not fail, its embedding
    pooled exactly from its segments' partial sums."""
    if outcomes is None:
        return [], {}
    pooled: dict[str, list] = {}
    if (sums := ledger.read(paths.get(POOLED, []), lo, hi)) is not None:
        pool(pooled, sums, dim)
    ended = [r for r in outcomes.to_pylist() if r["kind"] == "source"]
    table = _source_table(ended, pooled, provenance, dim)
    counts = source_counts(table) | {"segments": sum(pooled[r["uri"]][2] for r in ended if r["uri"] in pooled)}
    return writer.write(table), counts


def source_counts(rows: pa.Table) -> dict:
    """The run's counts that ``voices/`` rows add up to (made here, or reused): sources by status, those with an
    embedding, segments, seconds of audio and of speech."""
    sources = rows.filter(pc.equal(rows.column("level"), "source"))
    statuses = Counter(sources.column("status").to_pylist())
    return {
        "ok": statuses["ok"],
        "no_speech": statuses["no_speech"],
        "truncated": statuses["truncated"],
        "with_speech": int(pc.sum(pc.is_valid(sources.column("embedding"))).as_py() or 0),
        "segments": rows.num_rows - sources.num_rows,
        "audio_seconds": float(pc.sum(sources.column("duration")).as_py() or 0.0),
        "speech_seconds": float(pc.sum(sources.column("speech_seconds")).as_py() or 0.0),
    }


def run(config: EmbedVoicesConfig, ctx: JobContext) -> dict:
    manifest_root = resolve(config.manifest)
    folder, card = catalogue.verified(config.model, config.models, "speaker-embedding")
    if config.vad not in ("silero", "webrtc"):
        raise JobFailed(f"--vad {config.vad!r}: use silero or webrtc")
    if not 0 < config.vad_low <= config.vad_threshold < 1:
        raise JobFailed(
            f"--vad-low {config.vad_low} and --vad-threshold {config.vad_threshold}: need 0 < low <= threshold < 1"
        )
    vad_folder = None
    models = {card["name"]: card["checkpoint_sha256"]}
    if config.vad == "silero":
        vad_folder, vad_card = catalogue.verified(config.vad_model, config.models, "speech-detection")
        models[vad_card["name"]] = vad_card["checkpoint_sha256"]
    dim = int(card["output_dim"])
    job = JobOutput(ctx, config, {"voices": voices(dim)}, errors="counted")
    writer = job.row_writer("voices")
    ensure_ray()
    plan = actor_plan(config)
    ledger = ledger_of(job.out)
    key = reuse_key(config, models, ROWS_VERSION, {"inference": "gpu" if plan.gpus_per_actor > 0 else "cpu"})
    previous = reusable_run(ctx.output, JOB, key, run_id=ctx.run_id) if config.reuse else None
    reuse = None
    if previous is not None:  # a truncated source (a timeout, a stream cut short) is decoded again, like an error
        done = (pc.field("level") == "source") & (pc.field("status") != "truncated")
        reuse = Reuse(previous, {"voices": writer}, "voices", done, source_counts)
    try:
        sources = plan_sources(
            manifest_root,
            config.manifest_run_id,
            ("audio", "video"),
            ["uri", "sha256", "size"],
            MIN_SHARD_BYTES,
            plan.parallelism,
            ledger,
            reuse,
        )
        ctx.log.info(
            "%d audio and video sources of %d manifest rows; model %s (%s)",
            sources.count,
            sources.manifest_rows,
            card["name"],
            card["checkpoint_sha256"][:12],
        )
        if previous is not None:
            ctx.log.info(
                "%d sources reused from run %s (same content, models and settings)", sources.reused.reused, previous
            )
        if not sources.count:
            return job.commit({"sources": 0, "reuse_key": key})
        job.add_settled(sources.reused.files, Counter())
        return _embed(config, ctx, job, plan, sources, ledger, (folder, vad_folder, card, writer, key, previous))
    finally:
        ledger.remove()


def _embed(config, ctx, job, plan, sources, ledger, fixed: tuple) -> dict:
    """Run the pipeline (over the sources not reused), settle the accounting a slice of the sources at a time,
    commit."""
    folder, vad_folder, card, writer, key, previous = fixed
    dim = int(card["output_dim"])
    provenance = {"run_id": ctx.run_id, "model_name": card["name"], "model_sha256": card["checkpoint_sha256"]}
    embedded = None
    if sources.blocks:  # none when every source was reused
        embedded = _pipeline(config, plan, sources, folder, vad_folder, writer, ledger, provenance, dim)
    staged = collect(embedded, sources)
    finish_kwargs = {"writer": writer, "provenance": provenance, "dim": dim}
    settled = settle(ledger, staged, finish, finish_kwargs, job.row_writer("errors"), JOB)
    job.add_settled(staged.files + settled.files, settled.errors_by_type)
    counts = settled.counts + Counter(sources.reused.counts)
    summary = {
        "sources": sources.count,
        # ok + no_speech + truncated + errors == sources; with_speech counts the sources that have an embedding
        **{k: counts[k] for k in ("ok", "no_speech", "truncated", "with_speech", "segments")},
        "audio_hours": round(counts["audio_seconds"] / 3600, 4),
        "speech_hours": round(counts["speech_seconds"] / 3600, 4),
        "reused": sources.reused.reused,
        "reused_from": previous,
        "model": card["name"],
        "model_sha256": card["checkpoint_sha256"],
        "reuse_key": key,
    }
    errors = sum(job.errors_by_type.values())
    return job.commit(
        summary,
        f"{sources.count} sources: {summary['with_speech']} with speech, {summary['no_speech']} without, "
        f"{summary['truncated']} truncated, {errors} errors {dict(job.errors_by_type) or ''}; "
        f"{summary['segments']} segments",
    )


def _pipeline(config, plan, sources, folder, vad_folder, writer, ledger, provenance, dim: int):
    """The Ray Data pipeline over the sources to embed: decode and VAD, the encoder actors, the writing stage."""
    embedded = model_pipeline(
        sources.blocks,
        plan,
        VoiceEncoderActor,
        {"model_folder": folder},
        config.batch_size,
        decode=decode_segments,
        decode_kwargs={
            "endpoint_url": resolve(config.manifest).endpoint_url,
            "decoding": SegmentDecoding.of(config),
            "vad_folder": vad_folder,
        },
        what="encoder",
        in_process=in_process(config, sources.count - sources.reused.reused),
    )
    return embedded.map_batches(
        write_segments,
        fn_kwargs={"writer": writer, "ledger": ledger, "provenance": provenance, "dim": dim},
        batch_size=WRITE_ROWS,
        batch_format="pyarrow",
    )


def _segment_table(segments: pa.Table, provenance: dict, dim: int) -> pa.Table:
    n = segments.num_rows
    sums = np.stack(segments.column("partial_sum").to_numpy(zero_copy_only=False)).astype(np.float32)
    start, end = segments.column("start").to_numpy(), segments.column("end").to_numpy()
    speech = segments.column("speech_seconds").to_numpy()
    return pa.table(
        {
            "run_id": [provenance["run_id"]] * n,
            "uri": segments.column("uri"),
            "sha256": segments.column("sha256"),
            "level": ["segment"] * n,
            "segment_index": segments.column("segment_index"),
            "start": start,
            "end": end,
            "duration": end - start,
            "speech_seconds": speech,
            "speech_ratio": np.minimum(1.0, speech / np.maximum(end - start, 1e-9)).astype(np.float32),
            "partials": segments.column("partials"),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(unit_or_zero(sums).ravel()), dim),
            "status": ["ok"] * n,
            "message": pa.nulls(n, pa.string()),
            "model_name": [provenance["model_name"]] * n,
            "model_sha256": [provenance["model_sha256"]] * n,
        }
    )


def _source_table(ended: list[dict], pooled: dict, provenance: dict, dim: int) -> pa.Table:
    rows = []
    for r in sorted(ended, key=lambda r: r["uri"]):
        uri = r["uri"]
        acc = pooled.get(uri)
        embedding = unit_or_zero(acc[0] / acc[1]).tolist() if acc and acc[1] else None
        rows.append(
            {
                "run_id": provenance["run_id"],
                "uri": uri,
                "sha256": r["sha256"],
                "level": "source",
                "segment_index": None,
                "start": None,
                "end": None,
                "duration": r["duration"],
                "speech_seconds": r["speech_seconds"],
                "speech_ratio": r["speech_seconds"] / r["duration"] if r["duration"] else 0.0,
                "partials": acc[1] if acc else 0,
                "embedding": embedding,
                "status": r["status"] if embedding is not None or r["status"] != "ok" else "no_speech",
                "message": r["message"],
                "model_name": provenance["model_name"],
                "model_sha256": provenance["model_sha256"],
            }
        )
    return pa.Table.from_pylist(rows, schema=voices(dim))


def main(argv: list[str] | None = None) -> int:
    return run_job(JOB, EmbedVoicesConfig, run, argv, description=__doc__.split("\n")[0])


if __name__ == "__main__":
    sys.exit(run_module(__spec__.name))
