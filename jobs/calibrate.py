"""jobs.calibrate: from labelled embeddings, the threshold for a target false accept rate, scores as log-likelihood
ratios, and the curves behind them; with --fuse, the same for face and voice evidence together.

    python -m jobs.calibrate [ROOT] [--table faces|voices] [--labels labels.csv] [--target-far 1e-3]
    python -m jobs.calibrate [ROOT] --fuse [--voices VOICES_ROOT] [--voice-labels labels.csv] [--fusion sum|linear]

Every pair of labelled sources (each source's embedding: its pooled voice, or its clearest face) is scored; pairs
of one label are genuine, others impostor. Writes a calibration record (ROC AUC, EER, TAR at FAR 1e-2/1e-3/1e-4,
the threshold for --target-far, pair counts, model provenance) as ``calibration/<run_id>/record.json`` beside ROC,
DET and score-histogram PNGs, and one ``calibrations/`` row; ``jobs.match verify|identify --calibration
<record.json>`` then decides at that threshold instead of the model card's. The record also maps a score to a
log-likelihood ratio (``ops.matching.calibration``: slope and offset, Cllr and min Cllr, Cllr held out by label).

--fuse reads the faces under ROOT and the voices under --voices (default ROOT), each with its labels, and builds
identities of both (``ops.matching.fusion``: one label in both modalities, else chimeric face-voice pairs fixed by
--seed). Trials between them are scored by face alone, voice alone and fused (sum of calibrated log-LRs, and a
trained linear fusion), held out by identity; the record (``calibration/<run_id>/record.json``, kind ``fused``) gives
EER, TAR at FAR 1e-2/1e-3, Cllr and min Cllr of each, the per-modality calibrations, the fusion weights and the
log-LR threshold at --target-far for fused, face-only and voice-only decisions; ``roc.png`` and ``det.png`` show the
three systems together; one ``fusions/`` row. ``jobs.match verify|identify --fuse --calibration <record.json>``
decides by it.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from jobs.runtime.cli import JobConfig
from jobs.runtime.launch import JobContext, run_job, run_module
from jobs.runtime.options import EmbeddingsInput, LabelledInput, ModelsRoot, tailored
from jobs.runtime.output import JobOutput
from ops.io.errors import JobFailed, UninformativeLabels
from ops.io.root import inside
from ops.io.schemas import CALIBRATIONS, FUSIONS
from ops.io.storage import resolve
from ops.io.tables import committed_runs
from ops.matching import fusion, metrics
from ops.matching.calibration import LinearCalibration, cllr, enough_labels, min_cllr
from ops.matching.decisions import choose_threshold, published_threshold
from ops.matching.embeddings import read_embeddings, read_labels, through_head
from ops.matching.reviews import newest_review, reviewed_scores

JOB = "calibrate"
FARS = (1e-2, 1e-3, 1e-4)
# Below this AUC the scores barely tell the labels apart: a calibration of them would state evidence there is not.
MIN_AUC = 0.6


@dataclass
class CalibrateConfig(EmbeddingsInput, LabelledInput, ModelsRoot, JobConfig):
    embeddings: str = tailored(EmbeddingsInput, "embeddings", help="root with the embeddings")
    embeddings_run_id: str | None = tailored(EmbeddingsInput, "embeddings_run_id", help="this run of the table")
    labels: str | None = tailored(LabelledInput, "labels", help="CSV uri,label (default: the manifest's labels)")
    models: str | None = tailored(ModelsRoot, "models", help="models root, for --head")
    table: str = field(default="faces", metadata={"run_key": True, "help": "embedding table: faces or voices"})
    target_far: float = field(
        default=1e-3, metadata={"run_key": True, "help": "false accept rate to set the threshold at"}
    )
    head: str | None = field(
        default=None, metadata={"run_key": True, "help": "a trained face head (jobs.train_face), name or URI"}
    )
    recalibrate: bool = field(
        default=False,
        metadata={"help": "compute it again even when an earlier calibration had the same sample, vectors and target"},
    )
    max_sources: int = field(
        default=5000, metadata={"help": "score all pairs of at most this many sources (a seeded sample beyond)"}
    )
    reviews: bool = field(
        default=True,
        metadata={
            "run_key": True,
            "help": "add the analysts' confirmed and rejected pairs kept under ROOT (jobs.review) that this model "
            "scored, as same and different pairs",
        },
    )
    reviews_through: str | None = field(
        default=None,
        metadata={"run_key": True, "help": "those up to this review run (default: every committed one)"},
    )
    fuse: bool = field(default=False, metadata={"run_key": True, "help": "calibrate face and voice evidence together"})
    voices: str | None = field(
        default=None, metadata={"run_key": True, "help": "--fuse: root with the voice embeddings (default: ROOT)"}
    )
    voices_run_id: str | None = field(default=None, metadata={"run_key": True, "help": "--fuse: this voices run"})
    voice_labels: str | None = field(
        default=None,
        metadata={
            "run_key": True,
            "help": "--fuse: CSV uri,label for the voices (default: --labels, or the manifest's)",
        },
    )
    fusion: str = field(
        default="sum", metadata={"run_key": True, "help": "--fuse: what decides: sum (of log-LRs) or linear (trained)"}
    )
    seed: int = field(default=0, metadata={"run_key": True, "help": "--fuse: identity pairing, trials and folds"})
    trials_per_pair: int = field(
        default=50, metadata={"run_key": True, "help": "--fuse: trials drawn per pair of identities at most"}
    )


def _thinned(far: np.ndarray, tar: np.ndarray, points: int = 4000) -> tuple[np.ndarray, np.ndarray]:
    """The ROC's points at most ``points`` of them, spread evenly over log FAR: what a figure can show of millions
    of pairs (plotting every threshold made matplotlib hold gigabytes)."""
    if len(far) <= points:
        return far, tar
    grid = np.geomspace(max(far[far > 0].min(initial=1.0), 1e-9), 1.0, points)
    keep = np.unique(np.concatenate([[0, len(far) - 1], np.searchsorted(far, grid).clip(0, len(far) - 1)]))
    return far[keep], tar[keep]


def _figures(scores: np.ndarray, same: np.ndarray, threshold: float, title: str) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    far, tar = _thinned(*metrics.roc(scores, same)[:2])
    out = {}
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(np.maximum(far, 1e-6), tar)
    ax.set(xscale="log", xlabel="false accept rate", ylabel="true accept rate", title=f"ROC: {title}", ylim=(0, 1.01))
    ax.grid(True, alpha=0.3)
    out["roc.png"] = fig
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(np.maximum(far, 1e-6), np.maximum(1 - tar, 1e-6))
    ax.set(xscale="log", yscale="log", xlabel="false accept rate", ylabel="false reject rate", title=f"DET: {title}")
    ax.grid(True, which="both", alpha=0.3)
    out["det.png"] = fig
    fig, ax = plt.subplots(figsize=(5, 4))
    bins = np.linspace(min(scores.min(), threshold) - 0.02, max(scores.max(), threshold) + 0.02, 60)
    ax.hist(scores[~same], bins=bins, alpha=0.6, density=True, label=f"different ({(~same).sum()})")
    ax.hist(scores[same], bins=bins, alpha=0.6, density=True, label=f"same ({same.sum()})")
    ax.axvline(threshold, color="k", linestyle="--", label=f"threshold {threshold:.3f}")
    ax.set(xlabel="cosine score", ylabel="density", title=f"Scores: {title}")
    ax.legend()
    out["scores.png"] = fig
    return _encoded(out)


def _encoded(figures: dict) -> dict[str, bytes]:
    """Matplotlib figures as PNG bytes, each closed (a figure left open holds its memory)."""
    import matplotlib.pyplot as plt

    encoded = {}
    for name, fig in figures.items():
        buf = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buf, format="png", dpi=100)
        plt.close(fig)
        encoded[name] = buf.getvalue()
    return encoded


def labelled_sources(uris: list[str], labels: dict[str, str], max_sources: int) -> tuple[list[int], np.ndarray]:
    """The positions of labelled sources (beyond ``max_sources``, the ``max_sources`` whose uri hashes lowest: the
    same sample whatever the order) and their labels."""
    labelled = [i for i, u in enumerate(uris) if u in labels]
    if len(labelled) > max_sources:
        rank = {i: hashlib.sha256(uris[i].encode()).digest() for i in labelled}
        labelled = sorted(sorted(labelled, key=rank.__getitem__)[:max_sources])
    return labelled, np.array([labels[uris[i]] for i in labelled])


def _labelled(
    root_uri: str, table: str, run_id: str | None, labels_csv: str | None, config, head=None, manifest_run_id=None
):
    """The labelled sample of ``table`` under ``root_uri``: its embeddings (through ``head`` when given), the
    positions of the labelled sources and their labels."""
    root = resolve(root_uri)
    # Only a sample of the labelled sources is scored: their labels and embeddings alone are read (twice the
    # sample's size of labels, as some labelled sources have no embedding: no face, no speech).
    labels = read_labels(root, labels_csv, manifest_run_id, run_id, sample=2 * config.max_sources)
    if not labels:
        raise JobFailed(
            f"0 labelled sources under {root_uri}: calibration needs at least two labels and a label with "
            "two sources (--label-pattern on the manifest, or --labels uri,label)"
        )
    data = read_embeddings(root, table, run_id, per_source=True, uris=sorted(labels))
    if head:  # calibrate what matching through the head will compare
        data = through_head(data, head, config.models)
    labelled, names = labelled_sources(data.uris, labels, config.max_sources)
    if not enough_labels(names):
        raise JobFailed(
            f"{len(labelled)} labelled {table} sources under {root_uri} with {len(set(names))} labels: calibration "
            "needs at least two labels and a label with two sources"
        )
    return data, labelled, names


def run(config: CalibrateConfig, ctx: JobContext) -> dict:
    if not 0 < config.target_far < 1:
        raise JobFailed("--target-far must be between 0 and 1")
    out = JobOutput(ctx, config, {"fusions": FUSIONS} if config.fuse else {"calibrations": CALIBRATIONS})
    if config.fuse:
        return run_fused(config, ctx, out)
    data, labelled, names = _labelled(
        config.embeddings,
        config.table,
        config.embeddings_run_id,
        config.labels,
        config,
        config.head,
        config.manifest_run_id,
    )
    root = resolve(config.embeddings)
    through = (config.reviews_through or newest_review(root)) if config.reviews else None
    reviewed = reviewed_scores(root, (data.model_name, data.model_sha256), config.table, through) if through else None
    fingerprint = _fingerprint(data, labelled, names, config, reviewed)
    earlier = None if config.recalibrate else _calibrated(ctx.output, fingerprint, ctx.run_id)
    if earlier is not None:
        return _copy(earlier, fingerprint, config, ctx, out)
    scores, same, first, second = _scored_pairs(data.vectors[labelled], names, reviewed)
    area = metrics.auc(scores, same)
    if area < MIN_AUC:
        raise UninformativeLabels(
            f"the scores of {len(labelled)} labelled sources barely tell their labels apart (AUC {area:.3f} on "
            f"{int(same.sum())} same-label and {int((~same).sum())} different-label pairs, 0.5 is chance): the labels "
            "are likely not people (folder names such as dates or events: check --label-pattern or --labels), or the "
            "embeddings are not of the labelled people. No calibration was written"
        )
    card = published_threshold(config.head or data.model_name, config.models)
    choice = choose_threshold(scores, same, config.target_far, card, data.model_name)
    threshold = choice.threshold
    record = {
        "run_id": ctx.run_id,
        "model_name": data.model_name,
        "model_sha256": data.model_sha256,
        "table": config.table,
        "sources": len(labelled),
        "labels": len(set(names)),
        "same_pairs": int(same.sum()),
        "different_pairs": int((~same).sum()),
        "auc": area,
        "eer": metrics.equal_error_rate(scores, same),
        **{f"tar_at_far_{far:g}": metrics.tar_at_far(scores, same, far) for far in FARS},
        "target_far": config.target_far,
        "threshold": threshold,
        # With few impostor pairs a small FAR cannot be measured: which rule set the threshold, and why.
        "threshold_rule": choice.rule,
        "threshold_far": choice.far,
        "threshold_why": choice.why,
        "impostor_pairs_above_threshold": int((scores[~same] >= threshold).sum()),
        # The analysts' verdicts among those pairs (jobs.review): up to which review run, how many of each.
        "reviews_through": through,
        "reviewed_same_pairs": int(reviewed[1].sum()) if reviewed is not None else 0,
        "reviewed_different_pairs": int((~reviewed[1]).sum()) if reviewed is not None else 0,
    }
    record["llr"] = score_to_llr(scores, same, first, second, threshold, config.seed)
    folder = ctx.output.join("calibration", ctx.run_id)
    for name, png in _figures(scores, same, threshold, f"{data.model_name}, {config.table}").items():
        folder.join(name).put_atomic(png)
    folder.join("record.json").put_atomic(json.dumps(record, indent=1).encode())
    row = record | {"record_uri": inside(ctx.output, folder.join("record.json").uri)}
    out.write("calibrations", pa.Table.from_pylist([row], schema=CALIBRATIONS))
    _log_record(ctx, record)
    where = folder.join("record.json").uri
    return out.commit(
        record | {"sample_sha256": fingerprint}, f"calibration record: {where} (ROC, DET and score PNGs beside it)"
    )


def _scored_pairs(vectors: np.ndarray, names: np.ndarray, reviewed: tuple | None):
    """Every pair of the labelled sample scored once, whether it is one label, and each side's label code (for the
    held-out split); then the analysts' reviewed pairs, each a label of its own (two for a rejected pair)."""
    vectors = vectors.astype(np.float64)
    # Each pair once (the upper triangle) by a boolean mask and integer labels: index arrays and label strings per
    # pair held 1 GB at 5,000 sources.
    upper = np.triu(np.ones((len(vectors), len(vectors)), bool), 1)
    scores = (vectors @ vectors.T)[upper]
    codes = np.unique(names, return_inverse=True)[1]
    same = (codes[:, None] == codes[None, :])[upper]
    first = np.broadcast_to(codes[:, None].astype(np.int32), upper.shape)[upper]
    second = np.broadcast_to(codes[None, :].astype(np.int32), upper.shape)[upper]
    if reviewed is not None and len(reviewed[0]):
        fresh = len(set(names)) + 2 * np.arange(len(reviewed[0]), dtype=np.int32)
        scores, same = np.concatenate([scores, reviewed[0]]), np.concatenate([same, reviewed[1]])
        first, second = np.concatenate([first, fresh]), np.concatenate([second, fresh + ~reviewed[1]])
    return scores, same, first, second


def _log_record(ctx: JobContext, record: dict) -> None:
    ctx.log.info(
        "%s on %d sources (%d same, %d different pairs): AUC %.4f, EER %.4f, threshold %.4f (%s)",
        record["model_name"],
        record["sources"],
        record["same_pairs"],
        record["different_pairs"],
        record["auc"],
        record["eer"],
        record["threshold"],
        record["threshold_why"],
    )
    if record["reviewed_same_pairs"] or record["reviewed_different_pairs"]:
        ctx.log.info(
            "of those, %d same and %d different pairs are analysts' verdicts (reviews through %s)",
            record["reviewed_same_pairs"],
            record["reviewed_different_pairs"],
            record["reviews_through"],
        )
    if record["threshold_rule"] != "target":
        ctx.log.warning("the threshold is not at --target-far %g: %s", record["target_far"], record["threshold_why"])
    llr = record["llr"]
    if "why_not" in llr:
        ctx.log.warning("no score-to-log-LR map: %s", llr["why_not"])
    else:
        _log_llr(ctx, llr)


def _log_llr(ctx: JobContext, llr: dict) -> None:
    ctx.log.info(
        "score to log-LR: %.3f x score %+.3f; Cllr %.3f bits (held out %s, min %.3f); threshold at log-LR %.2f",
        llr["slope"],
        llr["offset"],
        llr["cllr"],
        "n/a" if llr["cllr_held_out"] is None else f"{llr['cllr_held_out']:.3f}",
        llr["min_cllr"],
        llr["llr_at_threshold"],
    )


LLR_METHOD = "prior-weighted logistic regression on the cosine score (Platt's targets)"


def score_to_llr(
    scores: np.ndarray, same: np.ndarray, first: np.ndarray, second: np.ndarray, threshold: float, seed: int
) -> dict:
    """The map from a cosine score to a natural-log likelihood ratio, fitted on every pair, with Cllr on those pairs,
    min Cllr (what no monotone map beats) and Cllr held out: the labels split in two, each half's pairs scored by the
    map fitted on the other's (``first``, ``second``: each pair's label codes). A linear map, because it is
    monotone, has two parameters a few hundred pairs pin down, and extrapolates; the pool-adjacent-violators fit is
    a step function that overfits small sets and is infinite at its ends (it serves min Cllr)."""
    try:
        cal = LinearCalibration.fit(scores, same)
    except ValueError as exc:  # scores that do not rise with sameness: the record says so, the threshold stands
        return {"method": LLR_METHOD, "why_not": str(exc)}
    out = {
        "method": LLR_METHOD,
        **cal.to_dict(),
        "cllr": cllr(cal(scores), same),
        "min_cllr": min_cllr(scores, same),
        "llr_at_threshold": float(cal(threshold)),
        "cllr_held_out": None,
    }
    labels = int(max(first.max(), second.max())) + 1
    fold = np.zeros(labels, np.int8)
    fold[np.random.default_rng(seed).permutation(labels)[: labels // 2]] = 1
    a, b = fold[first], fold[second]
    held, truth = [], []
    for k in (0, 1):
        train, test = (a == k) & (b == k), (a == 1 - k) & (b == 1 - k)
        if not (same[train].any() and (~same[train]).any() and same[test].any() and (~same[test]).any()):
            out["cllr_held_out_why_not"] = "a half of the labels has no same or no different pairs"
            return out
        try:
            held.append(LinearCalibration.fit(scores[train], same[train])(scores[test]))
        except ValueError as exc:
            out["cllr_held_out_why_not"] = f"the map fitted on half the labels: {exc}"
            return out
        truth.append(same[test])
    out["cllr_held_out"] = cllr(np.concatenate(held), np.concatenate(truth))
    return out


def _fingerprint(
    data, labelled: list[int], names: np.ndarray, config: CalibrateConfig, reviewed: tuple | None = None
) -> str:
    """What a calibration is computed from, hashed: the sample's labels and exact vectors, the model (or head) that
    made them, the table, the target and the reviewed pairs' scores and verdicts. Equal fingerprints give equal
    records."""
    digest = hashlib.sha256()
    head = {"model": [data.model_name, data.model_sha256], "table": config.table, "target_far": config.target_far}
    head |= {"record": 3, "seed": config.seed}  # 2: with the score-to-log-LR map; 3: thresholds it can measure
    digest.update(json.dumps(head, sort_keys=True).encode())
    digest.update("\x00".join(str(n) for n in names).encode())
    digest.update(np.ascontiguousarray(data.vectors[labelled], np.float32).tobytes())
    if reviewed is not None and len(reviewed[0]):  # none: the fingerprint of a calibration made before reviews
        digest.update(np.ascontiguousarray(reviewed[0], np.float64).tobytes() + reviewed[1].tobytes())
    return digest.hexdigest()


def _calibrated(root, fingerprint: str, run_id: str) -> dict | None:
    """The newest committed calibration of the same fingerprint under ``root`` (another run: a rerun of this one
    computes it again), with a record that can be read."""
    for marker in reversed(committed_runs(root)):
        if marker.get("job") != JOB or marker["run_id"] == run_id:
            continue
        if (marker.get("summary") or {}).get("sample_sha256") == fingerprint:
            if root.join("calibration", marker["run_id"], "record.json").exists():
                return marker
    return None


def _copy(earlier: dict, fingerprint: str, config: CalibrateConfig, ctx: JobContext, out: JobOutput) -> dict:
    """An earlier calibration of the same sample, committed as this run's: its record and figures copied (this run
    id, ``reused_from`` naming the earlier one), nothing scored again."""
    source, folder = ctx.output.join("calibration", earlier["run_id"]), ctx.output.join("calibration", ctx.run_id)
    record = json.loads(source.join("record.json").read_bytes()) | {"run_id": ctx.run_id}
    for name in ("roc.png", "det.png", "scores.png"):
        folder.join(name).put_atomic(source.join(name).read_bytes())
    folder.join("record.json").put_atomic(json.dumps(record | {"reused_from": earlier["run_id"]}, indent=1).encode())
    row = {k: v for k, v in record.items() if k in CALIBRATIONS.names} | {
        "record_uri": inside(ctx.output, folder.join("record.json").uri)
    }
    out.write("calibrations", pa.Table.from_pylist([row], schema=CALIBRATIONS))
    summary = record | {"sample_sha256": fingerprint, "reused_from": earlier["run_id"]}
    return out.commit(
        summary,
        f"the labelled sample, its embeddings and the target are those of calibration run {earlier['run_id']}: its "
        f"record copied, threshold {record['threshold']:.4f} (--recalibrate computes it again)",
    )


def run_fused(config: CalibrateConfig, ctx: JobContext, out: JobOutput) -> dict:
    """Face and voice evidence calibrated together (``ops.matching.fusion``): the record, figures and row."""
    if config.fusion not in ("sum", "linear"):
        raise JobFailed(f"--fusion {config.fusion!r}: use sum or linear")
    if config.trials_per_pair < 1:
        raise JobFailed("--trials-per-pair must be at least 1")
    if config.head:
        raise JobFailed("--head with --fuse: fused matching compares the embeddings themselves; calibrate without it")
    voices_root = config.voices or config.embeddings
    same_root = voices_root == config.embeddings
    faces, f_at, f_names = _labelled(
        config.embeddings,
        "faces",
        config.embeddings_run_id,
        config.labels,
        config,
        None,
        config.manifest_run_id,
    )
    voices, v_at, v_names = _labelled(
        voices_root,
        "voices",
        config.voices_run_id,
        config.voice_labels or (config.labels if same_root else None),
        config,
        None,
        config.manifest_run_id if same_root else None,
    )
    face_set = fusion.Labelled(faces.vectors[f_at], f_names)
    voice_set = fusion.Labelled(voices.vectors[v_at], v_names)
    identities, pairing = fusion.pair_identities(face_set, voice_set, config.seed)
    try:
        fusion.enough_identities(identities)
        trials = fusion.make_trials(face_set, voice_set, identities, config.seed, config.trials_per_pair)
        evaluation = fusion.evaluate(face_set, voice_set, identities, trials, config.seed)
    except ValueError as exc:
        raise JobFailed(f"cannot calibrate faces and voices together: {exc}") from None
    systems = evaluation.figures(config.target_far)
    decider = f"fused {config.fusion}"
    thresholds = {"fused": systems[decider]["llr_threshold"]}
    thresholds |= {m: systems[m]["llr_threshold"] for m in ("face", "voice")}
    record = {
        "kind": "fused",
        "run_id": ctx.run_id,
        "models": {
            "faces": {"model_name": faces.model_name, "model_sha256": faces.model_sha256},
            "voices": {"model_name": voices.model_name, "model_sha256": voices.model_sha256},
        },
        "roots": {"faces": config.embeddings, "voices": voices_root},
        "pairing": pairing,
        "pairing_sha256": fusion.pairing_sha256(identities),
        "identities": [{"face_label": f, "voice_label": v} for f, v in identities[:500]],
        "identity_count": len(identities),
        "same_trials": int(trials.same.sum()),
        "different_trials": int((~trials.same).sum()),
        "held_out": "two folds of identities; each scored by the calibrations and weights fitted on the other",
        "systems": systems,
        "fusion": config.fusion,
        "calibration": evaluation.fusion.to_dict() | {"method": LLR_METHOD},
        "target_far": config.target_far,
        "llr_thresholds": thresholds,
    }
    folder = ctx.output.join("calibration", ctx.run_id)
    shown = {"face": "face alone", "voice": "voice alone", decider: f"face and voice ({config.fusion})"}
    curves = {label: evaluation.held_out[name] for name, label in shown.items()}
    for name, png in _fused_figures(curves, evaluation.same, thresholds["fused"], pairing).items():
        folder.join(name).put_atomic(png)
    folder.join("record.json").put_atomic(json.dumps(record, indent=1).encode())
    row = _fusions_row(record, systems[decider], ctx.output, folder.join("record.json").uri)
    out.write("fusions", pa.Table.from_pylist([row], schema=FUSIONS))
    summary = {k: v for k, v in record.items() if k not in ("identities", "systems", "calibration")}
    summary |= {f"{name.replace(' ', '_')}_eer": fig["eer"] for name, fig in systems.items()}
    summary |= {f"{name.replace(' ', '_')}_cllr": fig["cllr"] for name, fig in systems.items()}
    _log_fused(ctx, record)
    where = folder.join("record.json").uri
    return out.commit(summary, f"fused calibration record: {where} (ROC and DET of the three beside it)")


def _fusions_row(record: dict, fused: dict, root, record_uri: str) -> dict:
    """The ``fusions/`` row of a fused calibration record: models, trials, each system's EER and Cllr."""
    systems, models = record["systems"], record["models"]
    row = {
        "run_id": record["run_id"],
        "face_model_name": models["faces"]["model_name"],
        "face_model_sha256": models["faces"]["model_sha256"],
        "voice_model_name": models["voices"]["model_name"],
        "voice_model_sha256": models["voices"]["model_sha256"],
        "pairing": record["pairing"],
        "identities": record["identity_count"],
        "same_trials": record["same_trials"],
        "different_trials": record["different_trials"],
        "fusion": record["fusion"],
        "fused_eer": fused["eer"],
        "fused_cllr": fused["cllr"],
        "fused_tar_at_far_0.01": fused["tar_at_far_0.01"],
        "fused_tar_at_far_0.001": fused["tar_at_far_0.001"],
        "target_far": record["target_far"],
        "llr_threshold": record["llr_thresholds"]["fused"],
        "record_uri": inside(root, record_uri),
    }
    return row | {f"{m}_{k}": systems[m][k] for m in ("face", "voice") for k in ("eer", "cllr")}


def _log_fused(ctx: JobContext, record: dict) -> None:
    for name, fig in record["systems"].items():
        ctx.log.info(
            "%-12s held out: EER %.4f, TAR %.4f at FAR 1e-2, %.4f at 1e-3, Cllr %.3f bits (min %.3f)",
            name,
            fig["eer"],
            fig["tar_at_far_0.01"],
            fig["tar_at_far_0.001"],
            fig["cllr"],
            fig["min_cllr"],
        )
    ctx.log.info(
        "%d %s identities, %d same and %d different trials; fused (%s) log-LR threshold %.2f at FAR %g",
        record["identity_count"],
        record["pairing"],
        record["same_trials"],
        record["different_trials"],
        record["fusion"],
        record["llr_thresholds"]["fused"],
        record["target_far"],
    )


def _fused_figures(curves: dict[str, np.ndarray], same: np.ndarray, threshold: float, pairing: str) -> dict:
    """ROC and DET with one curve per system, and the fused log-LRs' histogram, as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    roc_fig, roc_ax = plt.subplots(figsize=(5, 4))
    det_fig, det_ax = plt.subplots(figsize=(5, 4))
    for label, llr in curves.items():
        far, tar = _thinned(*metrics.roc(llr, same)[:2])
        eer = metrics.equal_error_rate(llr, same)
        roc_ax.plot(np.maximum(far, 1e-6), tar, label=f"{label} (EER {100 * eer:.2f}%)")
        det_ax.plot(np.maximum(far, 1e-6), np.maximum(1 - tar, 1e-6), label=label)
    roc_ax.set(xscale="log", xlabel="false accept rate", ylabel="true accept rate", ylim=(0, 1.01))
    roc_ax.set_title(f"ROC, held out ({pairing})")
    det_ax.set(xscale="log", yscale="log", xlabel="false accept rate", ylabel="false reject rate")
    det_ax.set_title(f"DET, held out ({pairing})")
    for ax in (roc_ax, det_ax):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    hist_fig, ax = plt.subplots(figsize=(5, 4))
    fused = list(curves.values())[-1]
    bins = np.linspace(np.percentile(fused, 0.1) - 1, np.percentile(fused, 99.9) + 1, 60)
    ax.hist(np.clip(fused[~same], bins[0], bins[-1]), bins=bins, alpha=0.6, density=True, label="different people")
    ax.hist(np.clip(fused[same], bins[0], bins[-1]), bins=bins, alpha=0.6, density=True, label="same person")
    ax.axvline(threshold, color="k", linestyle="--", label=f"threshold {threshold:.2f}")
    ax.axvline(0, color="grey", linewidth=0.8)
    ax.set(xlabel="fused log-likelihood ratio (natural log)", ylabel="density", title="Fused evidence, held out")
    ax.legend(fontsize=8)
    return _encoded({"roc.png": roc_fig, "det.png": det_fig, "scores.png": hist_fig})


def main(argv: list[str] | None = None) -> int:
    return run_job(JOB, CalibrateConfig, run, argv, description=__doc__.split("\n")[0])


if __name__ == "__main__":
    sys.exit(run_module(__spec__.name))
