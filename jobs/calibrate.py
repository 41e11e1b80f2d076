"""jobs.calibrate: from labelled embeddings, the threshold for a target false accept rate and the curves behind it.

    python -m jobs.calibrate [ROOT] [--table faces|voices] [--labels labels.csv] [--target-far 1e-3]

Every pair of labelled sources (each source's embedding: its pooled voice, or its clearest face) is scored; pairs
of one label are genuine, others impostor. Writes a calibration record (ROC AUC, EER, TAR at FAR 1e-2/1e-3/1e-4,
the threshold for --target-far, pair counts, model provenance) as ``calibration/<run_id>/record.json`` beside ROC,
DET and score-histogram PNGs, and one ``calibrations/`` row; ``jobs.match verify|identify --calibration
<record.json>`` then decides at that threshold instead of the model card's.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa

from jobs.cli import JobConfig
from jobs.runtime import JobContext, run_job, run_module
from ops.io.errors import JobFailed
from ops.io.schemas import CALIBRATIONS
from ops.io.storage import resolve
from ops.io.tables import OutputRun, committed_runs
from ops.matching import metrics
from ops.matching.embeddings import read_embeddings, read_labels, through_head

JOB = "calibrate"
FARS = (1e-2, 1e-3, 1e-4)


@dataclass
class CalibrateConfig(JobConfig):
    embeddings: str = field(
        default="out/results", metadata={"positional": True, "run_key": True, "help": "root with the embeddings"}
    )
    table: str = field(default="faces", metadata={"run_key": True, "help": "embedding table: faces or voices"})
    embeddings_run_id: str | None = field(default=None, metadata={"run_key": True, "help": "this run of the table"})
    labels: str | None = field(
        default=None, metadata={"run_key": True, "help": "CSV uri,label (default: the manifest's labels)"}
    )
    manifest_run_id: str | None = field(
        default=None,
        metadata={"run_key": True, "help": "labels from this manifest run (default: the newest under the root)"},
    )
    target_far: float = field(
        default=1e-3, metadata={"run_key": True, "help": "false accept rate to set the threshold at"}
    )
    head: str | None = field(
        default=None, metadata={"run_key": True, "help": "a trained face head (jobs.train_face), name or URI"}
    )
    models: str | None = field(default=None, metadata={"help": "models root, for --head"})
    recalibrate: bool = field(
        default=False,
        metadata={"help": "compute it again even when an earlier calibration had the same sample, vectors and target"},
    )
    max_sources: int = field(
        default=5000, metadata={"help": "score all pairs of at most this many sources (a seeded sample beyond)"}
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
    encoded = {}
    for name, fig in out.items():
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


def enough_labels(names: np.ndarray) -> bool:
    """Genuine and impostor pairs both exist: two labels or more, and a label with two sources."""
    return len(set(names)) >= 2 and any((names == n).sum() >= 2 for n in set(names))


def run(config: CalibrateConfig, ctx: JobContext) -> dict:
    if not 0 < config.target_far < 1:
        raise JobFailed("--target-far must be between 0 and 1")
    out = OutputRun(ctx.output, ctx.run_id, JOB)
    out.check_writable()
    root = resolve(config.embeddings)
    # Only a sample of the labelled sources is scored: their labels and embeddings alone are read (twice the
    # sample's size of labels, as some labelled sources have no embedding: no face, no speech).
    labels = read_labels(
        root, config.labels, config.manifest_run_id, config.embeddings_run_id, sample=2 * config.max_sources
    )
    if not labels:
        raise JobFailed(
            f"0 labelled sources under {config.embeddings}: calibration needs at least two labels and a label with "
            "two sources (--label-pattern on the manifest, or --labels uri,label)"
        )
    data = read_embeddings(root, config.table, config.embeddings_run_id, per_source=True, uris=sorted(labels))
    if config.head:  # calibrate what matching through the head will compare
        data = through_head(data, config.head, config.models)
    labelled, names = labelled_sources(data.uris, labels, config.max_sources)
    if not enough_labels(names):
        raise JobFailed(
            f"{len(labelled)} labelled sources under {config.embeddings} with {len(set(names))} labels: calibration "
            "needs at least two labels and a label with two sources"
        )
    fingerprint = _fingerprint(data, labelled, names, config)
    earlier = None if config.recalibrate else _calibrated(ctx.output, fingerprint, ctx.run_id)
    if earlier is not None:
        return _copy(earlier, fingerprint, config, ctx, out)
    vectors = data.vectors[labelled].astype(np.float64)
    # Each pair once (the upper triangle) by a boolean mask and integer labels: index arrays and label strings per
    # pair held 1 GB at 5,000 sources.
    upper = np.triu(np.ones((len(labelled), len(labelled)), bool), 1)
    scores = (vectors @ vectors.T)[upper]
    codes = np.unique(names, return_inverse=True)[1]
    same = (codes[:, None] == codes[None, :])[upper]
    threshold = metrics.threshold_at_far(scores, same, config.target_far)
    record = {
        "run_id": ctx.run_id,
        "model_name": data.model_name,
        "model_sha256": data.model_sha256,
        "table": config.table,
        "sources": len(labelled),
        "labels": len(set(names)),
        "same_pairs": int(same.sum()),
        "different_pairs": int((~same).sum()),
        "auc": metrics.auc(scores, same),
        "eer": metrics.equal_error_rate(scores, same),
        **{f"tar_at_far_{far:g}": metrics.tar_at_far(scores, same, far) for far in FARS},
        "target_far": config.target_far,
        "threshold": threshold,
        # With few impostor pairs a small FAR cannot be measured: say how many the target rests on.
        "impostor_pairs_above_threshold": int((scores[~same] >= threshold).sum()),
    }
    folder = ctx.output.join("calibration", ctx.run_id)
    for name, png in _figures(scores, same, threshold, f"{data.model_name}, {config.table}").items():
        folder.join(name).put_atomic(png)
    folder.join("record.json").put_atomic(json.dumps(record, indent=1).encode())
    row = record | {"record_uri": folder.join("record.json").uri}
    out.write("calibrations", pa.Table.from_pylist([row], schema=CALIBRATIONS))
    marker = out.commit(config=asdict(config), summary=record | {"sample_sha256": fingerprint})
    ctx.log.info(
        "%s on %d sources (%d same, %d different pairs): AUC %.4f, EER %.4f, threshold %.4f at FAR %g",
        data.model_name,
        len(labelled),
        record["same_pairs"],
        record["different_pairs"],
        record["auc"],
        record["eer"],
        threshold,
        config.target_far,
    )
    ctx.log.info("calibration record: %s (ROC, DET and score PNGs beside it)", folder.join("record.json").uri)
    return marker


def _fingerprint(data, labelled: list[int], names: np.ndarray, config: CalibrateConfig) -> str:
    """What a calibration is computed from, hashed: the sample's labels and exact vectors, the model (or head) that
    made them, the table and the target. Equal fingerprints give equal records."""
    digest = hashlib.sha256()
    head = {"model": [data.model_name, data.model_sha256], "table": config.table, "target_far": config.target_far}
    digest.update(json.dumps(head, sort_keys=True).encode())
    digest.update("\x00".join(str(n) for n in names).encode())
    digest.update(np.ascontiguousarray(data.vectors[labelled], np.float32).tobytes())
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


def _copy(earlier: dict, fingerprint: str, config: CalibrateConfig, ctx: JobContext, out: OutputRun) -> dict:
    """An earlier calibration of the same sample, committed as this run's: its record and figures copied (this run
    id, ``reused_from`` naming the earlier one), nothing scored again."""
    source, folder = ctx.output.join("calibration", earlier["run_id"]), ctx.output.join("calibration", ctx.run_id)
    record = json.loads(source.join("record.json").read_bytes()) | {"run_id": ctx.run_id}
    for name in ("roc.png", "det.png", "scores.png"):
        folder.join(name).put_atomic(source.join(name).read_bytes())
    folder.join("record.json").put_atomic(json.dumps(record | {"reused_from": earlier["run_id"]}, indent=1).encode())
    row = {k: v for k, v in record.items() if k in CALIBRATIONS.names} | {"record_uri": folder.join("record.json").uri}
    out.write("calibrations", pa.Table.from_pylist([row], schema=CALIBRATIONS))
    summary = record | {"sample_sha256": fingerprint, "reused_from": earlier["run_id"]}
    marker = out.commit(config=asdict(config), summary=summary)
    ctx.log.info(
        "the labelled sample, its embeddings and the target are those of calibration run %s: its record copied, "
        "threshold %.4f (--recalibrate computes it again)",
        earlier["run_id"],
        record["threshold"],
    )
    return marker


def main(argv: list[str] | None = None) -> int:
    return run_job(JOB, CalibrateConfig, run, argv, description=__doc__.split("\n")[0])


if __name__ == "__main__":
    sys.exit(run_module(__spec__.name))
