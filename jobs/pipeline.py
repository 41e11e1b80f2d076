"""jobs.pipeline: forensic archive matching end to end, in one submission, resumable stage by stage.

    python -m jobs.pipeline ARCHIVE [--output out/results] [--label-pattern '*/{label}/*'] [--run-id ID]

Stages, each one of the suite's jobs, each committed under the run id ``<run id>.<stage>``:

    manifest -> voices -> faces
             -> calibrate-faces -> search-faces -> identities-faces -> identify-faces
             -> calibrate-voices -> search-voices -> identities-voices -> identify-voices
                (calibrate and identify: when there are labels; identities: when the search has a threshold)
             -> attributes       (with --attributes-model: heads' age, expression, ...; or FairFace's race, gender, age)
             -> crossmatch                                           (with --joint-model: voices rank faces and back)
             -> report

A rerun with the same run id (by default the same command gives the same one) keeps every stage already committed
with the same settings and resumes from the first that is not; a stage that runs again makes every later stage run
again, since its input changed. ``--restart-from STAGE`` redoes a stage and everything after it. A modality with
nothing to match (no faces, no speech) is skipped with the reason logged and recorded in the pipeline's own commit,
which lists every stage's run id and is written last.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import numpy as np
import pyarrow.compute as pc

from jobs import attributes, calibrate, embed_faces, embed_voices, identities, manifest, match, report
from jobs.runtime.cli import JobConfig
from jobs.runtime.cluster import TASK_CPUS, ensure_ray
from jobs.runtime.launch import JobContext, run_job, run_module
from jobs.runtime.options import ModelsOnWorkers
from jobs.runtime.output import JobOutput
from jobs.runtime.stages import STAGES, Stages
from ops.io.errors import JobFailed, ModelError, UninformativeLabels
from ops.io.root import locate
from ops.io.storage import Store
from ops.io.tables import committed_runs, iter_table, read_table
from ops.matching.calibration import enough_labels
from ops.matching.embeddings import read_labels
from ops.matching.reviews import newest_review
from ops.models import catalogue

JOB = "pipeline"


@dataclass
class PipelineConfig(ModelsOnWorkers, JobConfig):
    archive: str = field(
        default="",
        metadata={"positional": True, "run_key": True, "help": "the archive: a folder or s3://bucket/prefix"},
    )
    glob: str = field(default="**", metadata={"run_key": True, "help": "which objects below the archive to take"})
    label_pattern: str | None = field(
        default=None,
        metadata={"run_key": True, "help": "identity labels from paths, e.g. '*/{label}/*' (enables calibration)"},
    )
    pull_models: bool = field(
        default=True, metadata={"help": "fetch registry models missing from the models root (--no-pull-models: refuse)"}
    )
    face_model: str = field(default="dlib-resnet-v1", metadata={"run_key": True, "help": "face recogniser"})
    detector: str = field(default="mtcnn", metadata={"run_key": True, "help": "face detector"})
    voice_model: str = field(default="ge2e-resemblyzer", metadata={"run_key": True, "help": "speaker encoder"})
    fps: float = field(default=1.0, metadata={"run_key": True, "help": "video frames examined per second"})
    k: int = field(default=5, metadata={"run_key": True, "help": "matches per probe"})
    target_far: float = field(default=1e-3, metadata={"run_key": True, "help": "calibrated false accept rate"})
    min_llr: float = field(
        default=0.0,
        metadata={"run_key": True, "help": "matches, identities and identifications only above this log-LR too"},
    )
    joint_model: str | None = field(
        default=None,
        metadata={"run_key": True, "help": "joint voice-face model (jobs.train_crossmodal): adds crossmatch"},
    )
    attributes_model: str | None = field(
        default=None,
        metadata={
            "run_key": True,
            "help": "attribute heads (jobs.train_attributes) or FairFace (jobs.models import) applied to every face",
        },
    )
    max_probes: int = field(default=50, metadata={"help": "probes shown with their matches in the report"})
    previews: bool = field(
        default=True, metadata={"run_key": True, "help": "report: face thumbnails and speech clips (--no-previews)"}
    )
    restart_from: str | None = field(default=None, metadata={"help": f"redo this stage and later ones: {STAGES}"})
    pool_size: int | None = field(default=None, metadata={"help": "model actors per embedding stage (fixed pool)"})
    max_actors: int | None = field(
        default=None, metadata={"help": "each embedding stage's elastic pool ceiling (default: as the cluster grows)"}
    )
    gpus_per_actor: float | None = field(default=None, metadata={"help": "default: 1 when the cluster has GPUs"})


def ensure_models(config: PipelineConfig, log) -> None:
    """Every registry model the stages name is under the models root, pulled (verified) when missing."""
    root = catalogue.models_root(config.models)
    have = {card["name"] for card in catalogue.pulled(root)}
    wanted = [config.voice_model, "silero-vad", config.detector, config.face_model]
    if not have and config.pull_models:  # a typo in --models would otherwise fill a new root unannounced
        log.warning(
            "no model is under %s yet: filling this new models root with the pipeline's models (if you meant "
            "another root, stop now and pass its --models)",
            root.uri,
        )
    for name in (n for n in wanted if n in catalogue.MODEL_MODULES and n not in have):
        if not config.pull_models:
            raise JobFailed(f"model {name} is not under {root.uri}: run `python -m jobs.models pull {name}`")
        log.info("pulling model %s into %s", name, root.uri)
        try:
            catalogue.pull(name, root)
        except ModelError as exc:
            raise JobFailed(f"cannot pull {name}: {exc}") from None


def run(config: PipelineConfig, ctx: JobContext) -> dict:
    if not config.archive:
        raise JobFailed("no archive given: python -m jobs.pipeline ARCHIVE (a folder or s3://bucket/prefix)")
    if config.restart_from and config.restart_from not in STAGES:
        raise JobFailed(f"unknown stage {config.restart_from!r} for --restart-from: use one of {', '.join(STAGES)}")
    out = JobOutput(ctx, config)  # no table of its own: its stages commit theirs
    root = ctx.output.uri
    stages = Stages(ctx, config.restart_from, {m["run_id"]: m for m in committed_runs(ctx.output)}, config.shared_paths)
    # The analysts' verdicts the calibrations and identities apply, named: a new review runs those stages again.
    reviewed = newest_review(ctx.output)
    ensure_models(config, ctx.log)
    actors = {
        "pool_size": config.pool_size,
        "max_actors": config.max_actors,
        "gpus_per_actor": config.gpus_per_actor,
        "models": config.models,
    }

    stages.run(
        "manifest",
        manifest,
        manifest.ManifestConfig(archive=config.archive, glob=config.glob, label_pattern=config.label_pattern),
    )
    manifest_run = stages.done["manifest"]["run_id"]
    if config.label_pattern and not stages.done["manifest"]["summary"].get("labelled", 1):
        raise JobFailed(
            f"--label-pattern {config.label_pattern!r} matched none of the archive's objects, so nothing is labelled "
            "(the manifest run's log names two paths it did not match). It is matched against the path below the "
            "archive: for ARCHIVE/alice/1.jpg use '{label}/*', one folder deeper '*/{label}/*'"
        )
    voices = stages.run(
        "voices",
        embed_voices,
        embed_voices.EmbedVoicesConfig(manifest=root, manifest_run_id=manifest_run, model=config.voice_model, **actors),
    )
    faces = stages.run(
        "faces",
        embed_faces,
        embed_faces.EmbedFacesConfig(
            manifest=root,
            manifest_run_id=manifest_run,
            model=config.face_model,
            detector=config.detector,
            fps=config.fps,
            thumbnails=config.previews,  # --no-previews: no face pictures in the output either
            **actors,
        ),
    )
    for table, marker in {"faces": faces, "voices": voices}.items():
        if not marker["tables"].get(table, {}).get("rows"):
            for stage in (f"calibrate-{table}", f"search-{table}", f"identities-{table}", f"identify-{table}"):
                stages.skip(stage, f"no {table} were found in the archive")
        else:
            _match_stages(stages, config, table, manifest_run, reviewed)
    _attributes_stage(stages, config, faces, actors)
    _crossmatch_stage(stages, config, faces, voices)
    stages.run(
        "report",
        report,
        report.ReportConfig(
            results=root, pipeline_run_id=ctx.run_id, max_probes=config.max_probes, previews=config.previews
        ),
    )
    ctx.log.info(
        "pipeline %s: %s",
        ctx.run_id,
        ", ".join(f"{name} {entry['state']}" for name, entry in stages.done.items()),
    )
    report_uri = locate(ctx.output, stages.done["report"]["summary"].get("report_uri")).uri
    return out.commit(_summary(stages.done), f"report: {report_uri}", stages=stages.done)


def _match_stages(stages: Stages, config: PipelineConfig, table: str, manifest_run: str, reviewed: str | None) -> None:
    """One modality's matching: calibrate (with labels), search, who is in the archive, identify (calibrated)."""
    ctx, root = stages.ctx, stages.ctx.output.uri
    embeddings_run = stages.done[table]["run_id"]
    record = _calibrate_stage(stages, config, table, manifest_run, reviewed)
    # Search ranks either way; with a calibration its rows also carry the threshold they are judged by.
    _match(stages, "search", table, root, embeddings_run, manifest_run, config, record)
    search = stages.done[f"search-{table}"]
    first = read_table(ctx.output, "matches", search["run_id"], ["threshold"], limit=1)
    if first.num_rows == 0:
        stages.skip(f"identities-{table}", f"the search found no two {table} sources to link")
    elif first.column("threshold")[0].as_py() is None:
        reason = "no threshold links two sources: no calibration (no labels) and the model card gives none"
        stages.skip(f"identities-{table}", reason)
    else:  # who is in the archive: the search's lists above its threshold, clustered
        stages.run(
            f"identities-{table}",
            identities,
            identities.IdentitiesConfig(
                results=root,
                search_run_id=search["run_id"],
                manifest_run_id=manifest_run,
                min_llr=config.min_llr,
                separate_labels=config.label_pattern is not None,
                reviews_through=reviewed,
            ),
        )
    if record:
        _match(stages, "identify", table, root, embeddings_run, manifest_run, config, record)
    else:
        stages.skip(f"identify-{table}", f"no calibrated threshold (see calibrate-{table})")


def _calibrate_stage(
    stages: Stages, config: PipelineConfig, table: str, manifest_run: str, reviewed: str | None
) -> str | None:
    """The calibration of one modality from the labels (and the analysts' verdicts): its record's uri, or None
    when there is none to make (the reason recorded as the stage's skip)."""
    ctx = stages.ctx
    embeddings_run = stages.done[table]["run_id"]
    earlier = stages.settled(f"calibrate-{table}")  # a rerun with nothing new decides without Ray
    if earlier is not None:
        reason = earlier.get("reason") if earlier["state"] == "skipped" else None
    else:
        reason = _why_not_calibrated(ctx, table, embeddings_run, manifest_run)
    if reason:
        stages.skip(f"calibrate-{table}", reason)
        return None
    try:
        stages.run(
            f"calibrate-{table}",
            calibrate,
            calibrate.CalibrateConfig(
                embeddings=ctx.output.uri,
                table=table,
                embeddings_run_id=embeddings_run,
                manifest_run_id=manifest_run,
                target_far=config.target_far,
                reviews_through=reviewed,
            ),
        )
    except UninformativeLabels as exc:  # the labels are not people: match without a calibration
        stages.skip(f"calibrate-{table}", str(exc))
        return None
    return ctx.output.join("calibration", stages.done[f"calibrate-{table}"]["run_id"], "record.json").uri


def _attributes_stage(stages: Stages, config: PipelineConfig, faces: dict, actors: dict) -> None:
    if not config.attributes_model:
        stages.skip(
            "attributes",
            "no --attributes-model given (train heads with jobs.train_attributes, or import FairFace)",
            asked=False,
        )
    elif not faces["tables"].get("faces", {}).get("rows"):
        stages.skip("attributes", "no faces were found in the archive")
    else:
        stages.run(
            "attributes",
            attributes,
            attributes.AttributesConfig(
                embeddings=stages.ctx.output.uri,
                model=config.attributes_model,
                embeddings_run_id=stages.done["faces"]["run_id"],
                **actors,
            ),
        )


def _crossmatch_stage(stages: Stages, config: PipelineConfig, faces: dict, voices: dict) -> None:
    if not config.joint_model:
        stages.skip("crossmatch", "no --joint-model given (train one with jobs.train_crossmodal)", asked=False)
    elif not all(m["tables"].get(t, {}).get("rows") for t, m in (("faces", faces), ("voices", voices))):
        stages.skip("crossmatch", "cross-modal matching needs both faces and voices in the archive")
    else:
        stages.run(
            "crossmatch",
            match,
            match.MatchConfig(
                mode="crossmatch",
                queries=stages.ctx.output.uri,
                queries_run_id=stages.done["voices"]["run_id"],
                gallery_run_id=stages.done["faces"]["run_id"],
                joint_model=config.joint_model,
                k=config.k,
                models=config.models,
            ),
        )


def _match(
    stages: Stages,
    mode: str,
    table: str,
    root: str,
    run_id: str,
    manifest_run: str,
    config: PipelineConfig,
    calibration: str | None = None,
) -> None:
    stages.run(
        f"{mode}-{table}",
        match,
        match.MatchConfig(
            mode=mode,
            queries=root,
            table=table,
            queries_run_id=run_id,
            gallery_run_id=run_id,
            # faces: every face of a photo, every track of a video is its own item; voices: a source's pooled voice
            per_source=mode == "search" and table == "voices",
            manifest_run_id=manifest_run,
            k=config.k,
            calibration=calibration,
            min_llr=config.min_llr,
            models=config.models,
        ),
    )


def _why_not_calibrated(ctx: JobContext, table: str, run_id: str, manifest_run: str) -> str | None:
    """Why ``table`` cannot be calibrated from the manifest's labels, or None when it can: decided by a task, which
    streams the labels and the embedded sources' uris (the driver never holds the archive's)."""
    ensure_ray()
    import ray

    task = ray.remote(num_cpus=TASK_CPUS)(why_not_calibrated)
    return ray.get(task.remote(ctx.output, table, run_id, manifest_run))


def why_not_calibrated(root: Store, table: str, run_id: str, manifest_run: str) -> str | None:
    labels = read_labels(root, manifest_run_id=manifest_run)
    embedded = pc.is_valid(pc.field("embedding"))
    if table == "voices":  # a source's own voice, when it has speech
        embedded &= pc.field("level") == "source"
    sources: dict[str, str] = {}  # each embedded, labelled source once (a source has many faces)
    for batch in iter_table(root, table, run_id, columns=["uri"], filter=embedded):
        sources.update((uri, labels[uri]) for uri in batch.column("uri").to_pylist() if uri in labels)
    found = np.array(list(sources.values()))
    if not enough_labels(found):
        return (
            f"{len(found)} labelled {table} sources with {len(set(found))} labels: calibration needs two labels "
            "and a label with two sources" + ("" if labels else " (no source has a label: pass --label-pattern)")
        )
    return None


def _summary(done: dict[str, dict]) -> dict:
    by_state: dict[str, int] = {}
    for entry in done.values():
        by_state[entry["state"]] = by_state.get(entry["state"], 0) + 1
    return {"stages": len(done), **by_state, "report_uri": done.get("report", {}).get("summary", {}).get("report_uri")}


def main(argv: list[str] | None = None) -> int:
    return run_job(JOB, PipelineConfig, run, argv, description=__doc__.split("\n")[0])


if __name__ == "__main__":
    sys.exit(run_module(__spec__.name))
