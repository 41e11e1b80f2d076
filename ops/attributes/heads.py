"""Attribute heads over frozen face embeddings: several named attributes, categorical or numeric, in one multi-task
network, with the two loss families every face-understanding course starts from.

- A **categorical** attribute (an expression, an age group, any label a lab defines) is a softmax over its classes,
  trained with cross-entropy; class weights counter imbalance (inverse class frequency, normalised to mean 1) and
  label smoothing is an option.
- A **numeric** attribute (an age in years) is a regression on its standardised value, trained with squared error
  (``mse``), absolute error (``l1``) or the Gaussian negative log-likelihood (``gaussian``): the head then also
  predicts a variance per face, so each estimate comes with its own uncertainty. A network that fits its training
  faces closely grows overconfident on others (its training residuals shrink, and its variances with them), so the
  spread is recalibrated on people it did not train on (``recalibrate``: one scale, the root mean square of their
  standardised errors).

The attributes share a trunk (Linear, LayerNorm, ReLU); each has its own output layer. A sample missing a label
(NaN for a number, -1 for a class) adds nothing to that attribute's loss. The attribute specs (classes, the numeric
mean and spread, the loss) travel with the weights in the model card, so a stored head rebuilds itself.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ops.models.registry import Architecture

CATEGORICAL_LOSSES = ("ce",)
NUMERIC_LOSSES = ("mse", "l1", "gaussian")
Z90 = 1.6448536269514722  # the 95th percentile of the standard normal: a central 90% interval is mean +- Z90 sd


@dataclass
class AttributeSpec:
    """One attribute: its name, kind and loss; classes (categorical) or the mean and spread of its values in
    training (numeric: the head predicts the standardised value)."""

    name: str
    kind: str  # "categorical" or "numeric"
    loss: str
    classes: list[str] = field(default_factory=list)
    class_weights: list[float] = field(default_factory=list)
    label_smoothing: float = 0.0
    mean: float = 0.0
    std: float = 1.0
    std_scale: float = 1.0  # the predicted spread's recalibration (``recalibrate``)

    @property
    def outputs(self) -> int:
        if self.kind == "categorical":
            return len(self.classes)
        return 2 if self.loss == "gaussian" else 1

    def to_dict(self) -> dict:
        return asdict(self)


class AttributeHead(nn.Module):
    def __init__(self, in_dim: int, specs: list[AttributeSpec], hidden: int = 256) -> None:
        super().__init__()
        self.specs = specs
        self.trunk = nn.Sequential(nn.Linear(in_dim, hidden), nn.LayerNorm(hidden), nn.ReLU(inplace=True))
        self.outputs = nn.ModuleDict({s.name: nn.Linear(hidden, s.outputs) for s in specs})

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        h = self.trunk(x)
        return {name: layer(h) for name, layer in self.outputs.items()}

    def loss(self, outputs: dict[str, Tensor], targets: dict[str, Tensor]) -> Tensor:
        """The sum over attributes of each one's mean loss over the samples labelled for it."""
        # Every output joins the graph, labelled in this batch or not: DDP expects a gradient for every parameter,
        # and a batch with no label at all must still give a loss that backpropagates (to zero).
        total = sum(out.sum() for out in outputs.values()) * 0.0
        for spec in self.specs:
            out, target = outputs[spec.name], targets[spec.name]
            if spec.kind == "categorical":
                known = target >= 0
                if known.any():
                    weight = torch.tensor(spec.class_weights, device=out.device) if spec.class_weights else None
                    total = total + F.cross_entropy(
                        out[known], target[known], weight=weight, label_smoothing=spec.label_smoothing
                    )
                continue
            known = ~torch.isnan(target)
            if not known.any():
                continue
            z = ((target[known] - spec.mean) / spec.std).to(out.dtype)  # labels may come as float64
            mean = out[known, 0]
            if spec.loss == "mse":
                total = total + F.mse_loss(mean, z)
            elif spec.loss == "l1":
                total = total + F.l1_loss(mean, z)
            else:  # Gaussian NLL with a predicted log-variance (kept in a sane range)
                variance = torch.exp(out[known, 1].clamp(-10, 10))
                total = total + F.gaussian_nll_loss(mean, z, variance, full=True)
        return total

    @torch.inference_mode()
    def predict(self, x: Tensor) -> dict[str, dict[str, np.ndarray]]:
        """Per attribute: ``probabilities`` (n, classes) for a categorical one; ``value`` and ``std`` (n,) in the
        attribute's own units for a numeric one (``std`` NaN where the loss gives no uncertainty)."""
        self.eval()
        outputs = self(x)
        found: dict[str, dict[str, np.ndarray]] = {}
        for spec in self.specs:
            out = outputs[spec.name].float().cpu()
            if spec.kind == "categorical":
                found[spec.name] = {"probabilities": torch.softmax(out, 1).numpy()}
                continue
            value = out[:, 0].numpy() * spec.std + spec.mean
            std = (
                np.sqrt(np.exp(out[:, 1].clamp(-10, 10).numpy())) * spec.std * spec.std_scale
                if spec.loss == "gaussian"
                else np.full(len(value), np.nan)
            )
            found[spec.name] = {"value": value, "std": std}
        return found

    @classmethod
    def from_state(cls, state: dict[str, Tensor], specs: list[dict]) -> AttributeHead:
        """A head as its card describes it, its weights loaded strictly."""
        parsed = [AttributeSpec(**s) for s in specs]
        first = state["trunk.0.weight"]
        head = cls(first.shape[1], parsed, first.shape[0])
        head.load_state_dict(state, strict=True)
        return head


def recalibrate(head: AttributeHead, x: Tensor, truth: dict[str, np.ndarray]) -> dict[str, float]:
    """Scale each Gaussian attribute's predicted spread so that, on these faces (of people the head did not train
    on), the standardised errors have unit root mean square; returns the scales (also set on the head's specs)."""
    scales = {}
    for spec in head.specs:
        spec.std_scale = 1.0 if spec.loss == "gaussian" else spec.std_scale
    found = head.predict(x)
    for spec in head.specs:
        if spec.kind != "numeric" or spec.loss != "gaussian":
            continue
        known = ~np.isnan(truth[spec.name])
        if known.sum() < 2:
            continue
        z = (truth[spec.name][known] - found[spec.name]["value"][known]) / found[spec.name]["std"][known]
        spec.std_scale = scales[spec.name] = float(np.sqrt(np.mean(z**2)))
    return scales


def specs_from_labels(
    columns: dict[str, np.ndarray], numeric_loss: str = "gaussian", label_smoothing: float = 0.0
) -> list[AttributeSpec]:
    """Specs for labelled columns (name -> training values): a column of numbers is numeric (its mean and spread
    from these values), anything else categorical (its classes sorted, weights inverse to their frequency)."""
    if numeric_loss not in NUMERIC_LOSSES:
        raise ValueError(f"numeric loss {numeric_loss!r}: use one of {', '.join(NUMERIC_LOSSES)}")
    specs = []
    for name, values in columns.items():
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name) or name in dir(nn.ModuleDict()):
            raise ValueError(
                f"attribute {name!r}: name attributes with letters, digits and underscores, not a word PyTorch "
                "modules already use"
            )
        if values.dtype.kind in "fiu":
            known = values[~np.isnan(values.astype(np.float64))]
            if len(known) < 2:
                raise ValueError(f"attribute {name}: fewer than two labelled values")
            std = float(known.std()) or 1.0
            specs.append(AttributeSpec(name, "numeric", numeric_loss, mean=float(known.mean()), std=std))
            continue
        known = np.array([v for v in values if v is not None and v == v and v != ""])
        classes, counts = np.unique(known, return_counts=True)
        if len(classes) < 2:
            raise ValueError(f"attribute {name}: fewer than two classes among its labels")
        weights = len(known) / (len(classes) * counts)
        specs.append(
            AttributeSpec(
                name,
                "categorical",
                "ce",
                classes=[str(c) for c in classes],
                class_weights=[float(w) for w in weights / weights.mean()],
                label_smoothing=label_smoothing,
            )
        )
    return specs


def targets(specs: list[AttributeSpec], columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Training targets: a class index (-1: unlabelled or a class the head does not know) or a number (NaN)."""
    out = {}
    for spec in specs:
        values = columns[spec.name]
        if spec.kind == "categorical":
            index = {c: i for i, c in enumerate(spec.classes)}
            out[spec.name] = np.array([index.get(str(v), -1) for v in values], np.int64)
        else:
            out[spec.name] = values.astype(np.float64)
    return out


def interval(value: np.ndarray, std: np.ndarray, level: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
    """The central ``level`` interval of a Gaussian estimate."""
    z = Z90 if level == 0.9 else math.sqrt(2) * float(torch.erfinv(torch.tensor(level)))
    return value - z * std, value + z * std


ATTRIBUTE_HEAD = "attribute-head"
ARCHITECTURES = (
    Architecture(
        ATTRIBUTE_HEAD,
        "face-attributes",
        build=lambda model, device: AttributeHead.from_state(model.state, model.card["attributes"]).to(device).eval(),
    ),
)
