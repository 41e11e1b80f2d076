"""The catalogue: the one place that knows every model module, and builds ready modules from loaded models.

The registry core (``ops.models.registry``) imports none of its entries. Here each architecture and each pullable
model is named with the module that defines it, and that module is imported only when the entry is asked for:
loading a style network imports ``ops.style.transformer_net``, not torchaudio or the dlib reader. Jobs load a
model with ``load(ref, expect=TASK)``, which refuses a model built for another task, and turn it into a ready
module (on a device, in eval mode) with ``build(model)``.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch

from ops.io.errors import ModelError
from ops.io.storage import Store
from ops.models import registry, sources
from ops.models.device import best_device
from ops.models.registry import Architecture, LoadedModel, ModelSpec

# Architecture name -> the module that defines it (its ARCHITECTURES).
ARCHITECTURE_MODULES = {
    "mtcnn": "ops.faces.mtcnn",
    "dlib-resnet-29": "ops.faces.dlib_resnet",
    "arcface-iresnet50": "ops.faces.adapters",
    "arcface-iresnet100": "ops.faces.adapters",
    "facenet-inception-resnet-v1": "ops.faces.adapters",
    "ge2e-lstm-3x256": "ops.voices.ge2e",
    "ecapa-tdnn-speechbrain": "ops.voices.ecapa",
    "silero-vad-v6-16k": "ops.voices.silero",
    "projection-head": "ops.matching.heads",
    "joint-voice-face": "ops.matching.heads",
    "attribute-head": "ops.attributes.heads",
    "fairface-resnet34": "ops.attributes.fairface",
    "vgg16-torchvision": "ops.style.vgg",
    "vgg19-torchvision": "ops.style.vgg",
    "transformer-net-pytorch-examples": "ops.style.transformer_net",
}
# What to pass instead when a model is refused for its task.
HINTS = {
    "face-detection": "pass --detector mtcnn",
    "face-embedding": "pass a face recogniser such as dlib-resnet-v1",
    "face-head": "pass a head trained by jobs.train_face",
    "speaker-embedding": "pass a speaker encoder such as ge2e-resemblyzer",
    "speech-detection": "pass --vad-model silero-vad",
    "voice-face-model": "pass a joint model trained by jobs.train_crossmodal",
    "face-attributes": "pass attribute heads trained by jobs.train_attributes",
    "style-transfer": "pass a TransformerNet (jobs.train_style, or jobs.models import --architecture "
    "transformer-net-pytorch-examples)",
    "style-loss-network": "import VGG weights: jobs.models import vgg19.pth --architecture vgg19-torchvision",
}
# Registry models pulled from PyPI packages -> the module that defines their ModelSpec (its SPECS).
MODEL_MODULES = {
    "dlib-resnet-v1": "ops.faces.dlib_resnet",
    "ge2e-resemblyzer": "ops.voices.ge2e",
    "mtcnn": "ops.faces.mtcnn",
    "silero-vad": "ops.voices.silero",
}


def architecture(name: str) -> Architecture:
    """The architecture ``name``, its module imported now."""
    if name not in ARCHITECTURE_MODULES:
        known = ", ".join(sorted(ARCHITECTURE_MODULES))
        raise ModelError(f"unknown architecture {name!r}; known: {known}")
    module = importlib.import_module(ARCHITECTURE_MODULES[name])
    return next(a for a in module.ARCHITECTURES if a.name == name)


def spec(name: str) -> ModelSpec:
    """The registry entry of pullable model ``name``, its module imported now."""
    if name not in MODEL_MODULES:
        raise ModelError(f"unknown model {name!r}; registered: {', '.join(sorted(MODEL_MODULES))}")
    module = importlib.import_module(MODEL_MODULES[name])
    return next(s for s in module.SPECS if s.name == name)


def specs() -> dict[str, ModelSpec]:
    """Every pullable model by name (imports every model module: for listings, not for jobs)."""
    return {name: spec(name) for name in sorted(MODEL_MODULES)}


def architectures() -> dict[str, Architecture]:
    """Every architecture by name (imports every model module: for listings, not for jobs)."""
    return {name: architecture(name) for name in sorted(ARCHITECTURE_MODULES)}


def models_root(uri: str | None = None) -> Store:
    """The models root: ``uri``, else $CROSSMATCH_MODELS, else out/models."""
    return registry.models_root(uri)


def locate(ref: str, models: str | Store | None = None) -> Store:
    """The folder of model ``ref``: a registry name under the models root, or the URI of a model folder."""
    root = models if isinstance(models, Store) else models_root(models)
    return registry.locate(ref, root)


def load(ref: str, models: str | Store | None = None, expect: str | None = None) -> LoadedModel:
    """Read model ``ref`` (a registry name under the models root, or a URI), its checkpoint verified against its
    card and, for a registry model, the registry's pin; with ``expect``, refused unless its architecture does that
    task."""
    return load_folder(locate(ref, models), expect)


def load_folder(folder: Store, expect: str | None = None) -> LoadedModel:
    """As ``load``, for a model folder already located (what actors receive)."""
    model = registry.load_folder(folder, _pin)
    if expect is not None:
        arch = architecture(model.card["architecture"])
        if arch.task != expect:
            raise ModelError(
                f"{model.name} is a {arch.name} model ({arch.task}), not a {expect} model: {HINTS[expect]}"
            )
    return model


def _pin(name: str) -> str | None:
    """The converted checkpoint's sha256 the registry pins for model ``name`` (pulled models only)."""
    return spec(name).checkpoint_sha256 if name in MODEL_MODULES else None


def build(model: LoadedModel, device: str | torch.device | None = None) -> Any:
    """The ready module of a loaded model: built by its architecture, weights loaded strictly, in eval mode on
    ``device`` (default: the GPU when one is visible)."""
    return architecture(model.card["architecture"]).build(model, best_device(device))


def pull(name: str, root: Store, source_file: str | None = None) -> dict:
    """Fetch, verify, convert and store registry model ``name`` under ``root``; returns its card."""
    return registry.pull(spec(name), root, source_file)


def import_checkpoint(uri: str, architecture_name: str, name: str, root: Store) -> dict:
    """Store a checkpoint the user holds (in ``architecture_name``'s public layout) as model ``name``."""
    arch = architecture(architecture_name)
    if arch.convert is None:
        importable = sorted(n for n, a in architectures().items() if a.convert is not None)
        raise ModelError(
            f"{architecture_name} models are not imported from checkpoints (the registry pulls them, or crossmatch "
            f"trains them); importable architectures: {', '.join(importable)}"
        )
    return registry.import_checkpoint(uri, arch, name, root)


def pulled(root: Store) -> list[dict]:
    """Cards of the models stored under ``root``."""
    return registry.pulled(root)


def source_members(name: str, members: tuple[str, ...], source_file: str | None = None) -> dict[str, bytes]:
    """Files from registry model ``name``'s verified source package, by path (e.g. dlib's other model files)."""
    return sources.source_members(name, spec(name).source, members, source_file)


def verified(ref: str, models: str | Store | None, expect: str) -> tuple[Store, dict]:
    """Model ``ref``'s folder and card, its checkpoint verified and its task checked here, once, before a job
    schedules any work; actors then load it from the folder."""
    folder = locate(ref, models)
    return folder, load_folder(folder, expect).card
