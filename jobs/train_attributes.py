"""jobs.train_attributes: heads that read attributes (an age, an expression, any label a lab gives) off frozen face
embeddings, trained on Ray Train and measured on people held out.

    python -m jobs.train_attributes ROOT --labels LABELS [--attributes age,expression] [--numeric-loss gaussian]
        [--label-smoothing 0] [--holdout 0.2] [--epochs 20] [--batch 256] [--name NAME] [--models out/models]

LABELS is a CSV or Parquet file (or a folder of Parquet files) with a ``uri`` column (a source: its clearest face)
or an ``item`` column (a face's item key) and one column per attribute: numbers make a numeric attribute, anything
else a categorical one (``ops/attributes/heads.py``: cross-entropy with inverse-frequency class weights and optional
label smoothing; MSE, L1 or, by default, the Gaussian negative log-likelihood, which gives each estimate its own
uncertainty). A seeded share of the people (the manifest's identity labels) is held out; without identity labels,
of the sources. Every epoch scores the held-out faces (the untrained head as epoch -1) against the baseline that
always says the training majority class or mean: accuracy, balanced accuracy, MAE, RMSE, the share within
--within, and the share of true values inside the predicted 90% interval. The head goes to the registry with a card
naming the backbone and the attributes (classes, scales, losses) and the final held-out figures and confusion
matrices; ``training/`` holds every epoch's figures; a rerun with the same run id resumes from its checkpoint.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as pads
import torch

from jobs.runtime import trainer
from jobs.runtime.cluster import ensure_ray
from jobs.runtime.launch import JobContext, run_job, run_module
from jobs.runtime.options import EmbeddingsInput
from ops.attributes import metrics
from ops.attributes.heads import (
    ATTRIBUTE_HEAD,
    NUMERIC_LOSSES,
    AttributeHead,
    AttributeSpec,
    recalibrate,
    specs_from_labels,
    targets,
)
from ops.io.errors import EmbeddingError, JobFailed, StorageError
from ops.io.storage import resolve, storage_errors
from ops.matching.embeddings import read_embeddings, read_labels
from ops.training import protocols as training

JOB = "train_attributes"
KEYS = ("uri", "item")
CALIBRATION_SHARE = 0.15  # of the training people: where the predicted spreads are recalibrated


@dataclass
class TrainAttributesConfig(EmbeddingsInput, trainer.TrainingConfig):
    labels: str | None = field(
        default=None, metadata={"run_key": True, "help": "CSV or Parquet: uri or item, then one column per attribute"}
    )
    attributes: str | None = field(
        default=None, metadata={"run_key": True, "help": "comma-separated columns to learn (default: all of them)"}
    )
    identity_labels: str | None = field(
        default=None, metadata={"run_key": True, "help": "CSV uri,label of people (default: the manifest's labels)"}
    )
    numeric_loss: str = field(
        default="gaussian", metadata={"run_key": True, "help": f"numeric attributes: {', '.join(NUMERIC_LOSSES)}"}
    )
    label_smoothing: float = field(default=0.0, metadata={"run_key": True, "help": "categorical attributes"})
    holdout: float = field(default=0.2, metadata={"run_key": True, "help": "share of people held out"})
    batch: int = field(default=256, metadata={"run_key": True, "help": "faces per batch"})
    hidden: int = field(default=256, metadata={"run_key": True, "help": "the shared trunk's width"})
    within: float = field(default=5.0, metadata={"help": "numeric attributes: the share within +- this is reported"})


def read_attribute_labels(uri: str) -> pa.Table:
    """A labels table: CSV with a header, a Parquet file, or a folder of Parquet files."""
    store = resolve(uri)
    try:
        with storage_errors(store.uri):
            if store.fs.isdir(store.path):
                return pads.dataset(store.path, format="parquet", filesystem=store.arrow).to_table()
            with store.open("rb") as f:
                if f.read(4) == b"PAR1":
                    return pads.dataset(store.path, format="parquet", filesystem=store.arrow).to_table()
            return pacsv.read_csv(pa.BufferReader(store.read_bytes()))
    except (StorageError, pa.ArrowInvalid, OSError) as exc:
        raise JobFailed(f"cannot read the labels table {uri}: {exc}") from None


class Objective(torch.nn.Module):
    """The head and its loss as one module (DDP all-reduces gradients through a wrapped module's forward)."""

    def __init__(self, head: AttributeHead) -> None:
        super().__init__()
        self.head = head

    def forward(self, x: torch.Tensor, *ys: torch.Tensor) -> torch.Tensor:
        names = [s.name for s in self.head.specs]
        return self.head.loss(self.head(x), dict(zip(names, ys, strict=True)))


@dataclass(frozen=True)
class AttributesLoop(trainer.LoopSettings):
    """The training loop's settings: the attributes (as ``AttributeSpec.to_dict``: each worker builds its own, which
    its evaluation recalibrates), the trunk's width, the batch and the reported tolerance."""

    specs: tuple[dict, ...]
    hidden: int
    batch: int
    within: float

    @classmethod
    def of(
        cls, config: TrainAttributesConfig, data: Any, data_sha256: str, specs: list[AttributeSpec]
    ) -> AttributesLoop:
        """The job's options, with the data put in Ray's object store and the attributes to learn."""
        return cls(
            **cls.shared(config, data, data_sha256),
            specs=tuple(s.to_dict() for s in specs),
            hidden=config.hidden,
            batch=config.batch,
            within=config.within,
        )


def _loop(cfg: dict) -> None:
    """One Ray Train worker: shuffled batches of its share of the training faces; rank 0 evaluates."""
    import ray.train.torch

    settings, data, worker = trainer.start_worker(cfg, AttributesLoop)
    specs = [AttributeSpec(**s) for s in settings.specs]
    head = AttributeHead(data["train_x"].shape[1], specs, settings.hidden)
    model = ray.train.torch.prepare_model(Objective(head))
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    # Every worker the same number of faces, so the same number of steps: DDP's all-reduces stay in step.
    mine = np.arange(len(data["train_x"]))[worker.rank :: worker.world][: len(data["train_x"]) // worker.world]
    x = torch.tensor(data["train_x"])
    ys = [torch.tensor(data[f"train_{s.name}"]) for s in specs]

    def batches(rng: np.random.Generator):
        order = rng.permutation(mine)
        for start in range(0, len(order), settings.batch):
            rows = torch.from_numpy(order[start : start + settings.batch])
            yield (x[rows].to(worker.device), *(y[rows].to(worker.device) for y in ys))

    evaluate = lambda: evaluation(head, specs, data, settings.within, worker.device)  # noqa: E731
    trainer.train_epochs(model, optimizer, settings, worker, batches, evaluate)


def evaluation(head: AttributeHead, specs: list[AttributeSpec], data: dict, within: float, device=None) -> dict:
    """Held-out figures of every attribute (flat: ``<attribute>_<metric>``), the spreads first recalibrated on the
    calibration people's faces."""
    head = head.to(device or "cpu")
    calibration = {s.name: data[f"calib_{s.name}"] for s in specs}
    scales = recalibrate(head, torch.tensor(data["calib_x"]).to(device or "cpu"), calibration)
    found = head.predict(torch.tensor(data["test_x"]).to(device or "cpu"))
    head.train()
    out = {}
    for spec in specs:
        truth = data[f"test_{spec.name}"]
        if spec.kind == "categorical":
            known = truth >= 0
            predicted = found[spec.name]["probabilities"].argmax(1)
            out |= class_figures(spec.name, truth[known], predicted[known], len(spec.classes))
        else:
            known = ~np.isnan(truth)
            value, std = found[spec.name]["value"][known], found[spec.name]["std"][known]
            out |= number_figures(spec.name, truth[known], value, std, within)
            if spec.name in scales:
                out[f"{spec.name}_std_scale"] = scales[spec.name]
    return out


def class_figures(name: str, truth: np.ndarray, predicted: np.ndarray, classes: int) -> dict:
    return {
        f"{name}_accuracy": metrics.accuracy(truth, predicted),
        f"{name}_balanced_accuracy": metrics.balanced_accuracy(truth, predicted, classes),
    }


def number_figures(name: str, truth: np.ndarray, value: np.ndarray, std: np.ndarray, within: float) -> dict:
    out = {
        f"{name}_mae": metrics.mae(truth, value),
        f"{name}_rmse": metrics.rmse(truth, value),
        f"{name}_within_{within:g}": metrics.within(truth, value, within),
    }
    if not np.isnan(std).any():
        out[f"{name}_coverage_90"] = metrics.coverage(truth, value, std)
    return out


def baseline(specs: list[AttributeSpec], data: dict, within: float) -> dict:
    """What saying the training majority class (or mean, with the training spread as the uncertainty) scores."""
    out = {}
    for spec in specs:
        truth, train = data[f"test_{spec.name}"], data[f"train_{spec.name}"]
        if spec.kind == "categorical":
            known = truth >= 0
            majority = np.bincount(train[train >= 0], minlength=len(spec.classes)).argmax()
            guess = np.full(int(known.sum()), majority)
            out |= class_figures(spec.name, truth[known], guess, len(spec.classes))
        else:
            known = ~np.isnan(truth)
            seen = train[~np.isnan(train)]
            value, std = np.full(int(known.sum()), seen.mean()), np.full(int(known.sum()), seen.std())
            out |= number_figures(spec.name, truth[known], value, std, within)
    return out


def confusions(head: AttributeHead, specs: list[AttributeSpec], data: dict) -> dict:
    found = head.eval().predict(torch.tensor(data["test_x"]))
    out = {}
    for spec in specs:
        if spec.kind == "categorical":
            truth = data[f"test_{spec.name}"]
            known = truth >= 0
            predicted = found[spec.name]["probabilities"].argmax(1)[known]
            out[spec.name] = metrics.confusion(truth[known], predicted, len(spec.classes)).tolist()
    return out


def _labelled_faces(config: TrainAttributesConfig, ctx: JobContext):
    """The faces with attribute labels: (vectors, columns by attribute, people, the embedding set, key)."""
    table = read_attribute_labels(config.labels)
    key = next((k for k in KEYS if k in table.column_names), None)
    if key is None:
        raise JobFailed(f"{config.labels} needs a uri or an item column; it has {table.column_names}")
    wanted = config.attributes.split(",") if config.attributes else [c for c in table.column_names if c not in KEYS]
    missing = [a for a in wanted if a not in table.column_names]
    if missing or not wanted:
        raise JobFailed(f"{config.labels} has no column {', '.join(missing) or '(no attribute columns)'}")
    root = resolve(config.embeddings)
    try:
        faces = read_embeddings(root, "faces", config.embeddings_run_id, per_source=key == "uri")
    except EmbeddingError as exc:
        raise JobFailed(str(exc)) from None
    keys = table.column(key).to_pylist()
    rows: dict[str, int] = {}
    for i, k in enumerate(keys):  # a key labelled twice: the same labels are one row, different ones are refused
        if k in rows and any(table.column(a)[rows[k]] != table.column(a)[i] for a in wanted):
            raise JobFailed(f"{config.labels} labels {k} twice, differently: one row per {key}")
        rows.setdefault(k, i)
    at = np.array([rows.get(k, -1) for k in (faces.uris if key == "uri" else faces.items)])
    kept = np.flatnonzero(at >= 0)
    if len(kept) < 10:
        raise JobFailed(f"{len(kept)} faces under {root.uri} have attribute labels in {config.labels}: need 10 or more")
    columns = {}
    for name in wanted:
        column = table.column(name)
        if pa.types.is_dictionary(column.type):  # pandas categories: decoded, or nulls would read as classes
            column = pa.chunked_array([c.dictionary_decode() for c in column.chunks], column.type.value_type)
        numeric = pa.types.is_integer(column.type) or pa.types.is_floating(column.type)
        values = (
            column.to_numpy(zero_copy_only=False).astype(np.float64)
            if numeric
            else np.array(column.to_pylist(), object)
        )
        columns[name] = values[at[kept]]
    labelled = np.zeros(len(kept), bool)  # faces with no label for any wanted attribute teach nothing
    for values in columns.values():
        labelled |= ~np.isnan(values) if values.dtype == np.float64 else np.array([v not in (None, "") for v in values])
    kept = kept[labelled]
    columns = {n: v[labelled] for n, v in columns.items()}
    people = None
    try:
        identity = read_labels(root, config.identity_labels, None, config.embeddings_run_id)
        people = np.array([identity.get(faces.uris[i], faces.uris[i]) for i in kept])
    except EmbeddingError:
        ctx.log.warning("no identity labels under %s: held out by source, not by person", root.uri)
        people = np.array([faces.uris[i] for i in kept])
    return faces.vectors[kept], columns, people, faces, key


def run(config: TrainAttributesConfig, ctx: JobContext) -> dict:
    config.check()
    if not config.labels:
        raise JobFailed("--labels is needed: a CSV or Parquet table with uri (or item) and one column per attribute")
    if config.batch < 2 or config.hidden < 1:
        raise JobFailed("--batch must be at least 2 and --hidden at least 1")
    x, columns, people, faces, key = _labelled_faces(config, ctx)
    train, calib, test, specs, data = _split(x, columns, people, config)
    ctx.log.info(
        "%d labelled faces (%s) of %d people from %s (%s): %d faces trained on, %d of %d people held out; %s",
        len(x),
        key,
        len(set(people)),
        faces.model_name,
        faces.model_sha256[:12],
        int(train.sum()),
        int(test.sum()),
        len(set(people[test])),
        "; ".join(f"{s.name}: {s.kind}, {s.loss}" for s in specs),
    )
    ensure_ray()
    import ray

    settings = AttributesLoop.of(config, ray.put(data), trainer.fingerprint(data), specs)
    state = trainer.fit(_loop, settings, ctx, config)
    last = state["history"][-1]
    untrained = next((h for h in state["history"] if h["epoch"] == -1), {})
    weights = {k.removeprefix("head."): v for k, v in state["model"].items() if k.startswith("head.")}
    head = AttributeHead.from_state(weights, [s.to_dict() for s in specs])
    recalibrate(head, torch.tensor(data["calib_x"]), {s.name: data[f"calib_{s.name}"] for s in specs})
    specs = head.specs  # with their spreads' scales
    base = baseline(specs, data, config.within)
    card = {
        "modality": "face",
        "input": {"model_name": faces.model_name, "model_sha256": faces.model_sha256, "dim": faces.dim, "key": key},
        "attributes": [s.to_dict() for s in specs],
        "held_out": {k: v for k, v in last.items() if k not in ("epoch", "loss", "samples_per_s")},
        "untrained": {k: v for k, v in untrained.items() if k != "epoch"},
        "baseline": base,
        "confusion": confusions(head, specs, data),
        "training": {
            "run_id": ctx.run_id,
            "epochs": last["epoch"] + 1,
            "faces": int(train.sum()),
            "calibration_faces": int(calib.sum()),
            "held_out_faces": int(test.sum()),
            "held_out_people": len(set(people[test])),
        },
    }
    marker = trainer.finish(ctx, config, state["history"], ATTRIBUTE_HEAD, weights, card)
    for name, value in card["held_out"].items():
        ctx.log.info(
            "held out %-28s %.4f (untrained %.4f, baseline %.4f)",
            name,
            value,
            untrained.get(name, float("nan")),
            base.get(name, float("nan")),
        )
    return marker


def _split(x: np.ndarray, columns: dict, people: np.ndarray, config: TrainAttributesConfig):
    """The labelled faces split by person: trained on, kept back to recalibrate the predicted spreads on, held
    out; the attributes' specs (from the training rows' labels) and each part's inputs and targets."""
    try:
        learn, test = training.split_identities(people, config.holdout, config.seed)
        inner_train, inner_calib = training.split_identities(people[learn], CALIBRATION_SHARE, config.seed + 1)
        train, calib = np.zeros(len(x), bool), np.zeros(len(x), bool)
        train[np.flatnonzero(learn)[inner_train]] = True
        calib[np.flatnonzero(learn)[inner_calib]] = True
        specs = specs_from_labels(
            {n: v[train] for n, v in columns.items()}, config.numeric_loss, config.label_smoothing
        )
    except ValueError as exc:
        raise JobFailed(str(exc)) from None
    ys = targets(specs, columns)
    data = {"train_x": x[train], "calib_x": x[calib], "test_x": x[test]}
    for spec in specs:
        for part, rows in (("train", train), ("calib", calib), ("test", test)):
            data[f"{part}_{spec.name}"] = ys[spec.name][rows]
    return train, calib, test, specs, data


def main(argv: list[str] | None = None) -> int:
    return run_job(JOB, TrainAttributesConfig, run, argv, description=__doc__.split("\n")[0])


if __name__ == "__main__":
    sys.exit(run_module(__spec__.name))
