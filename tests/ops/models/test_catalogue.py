import pytest

from ops.io.errors import ModelError
from ops.models import catalogue
from ops.models.registry import TASKS


def test_every_entry_names_its_module_and_task():
    archs = catalogue.architectures()
    assert set(archs) == set(catalogue.ARCHITECTURE_MODULES)
    assert all(name == arch.name and arch.task in TASKS for name, arch in archs.items())
    specs = catalogue.specs()
    assert set(specs) == set(catalogue.MODEL_MODULES)
    assert all(spec.architecture in archs and spec.checkpoint_sha256 for spec in specs.values())


def test_a_model_for_another_task_is_refused(models):
    with pytest.raises(ModelError, match="ge2e-resemblyzer is a ge2e-lstm-3x256 model .speaker-embedding., not a"):
        catalogue.load("ge2e-resemblyzer", models, expect="face-embedding")
    assert catalogue.load("ge2e-resemblyzer", models, expect="speaker-embedding").name == "ge2e-resemblyzer"
    folder, card = catalogue.verified("silero-vad", models, "speech-detection")
    assert card["name"] == "silero-vad" and folder.uri.endswith("silero-vad")


def test_build_gives_ready_modules(models):
    from ops.voices.ge2e import SpeakerEmbedder
    from ops.voices.silero import SileroVAD

    embedder = catalogue.build(catalogue.load("ge2e-resemblyzer", models), "cpu")
    assert isinstance(embedder, SpeakerEmbedder) and not embedder.encoder.training
    vad = catalogue.build(catalogue.load("silero-vad", models), "cpu")
    assert isinstance(vad, SileroVAD) and not vad.training


def test_unknown_names_say_what_is_known(tmp_path):
    from ops.io.storage import resolve

    with pytest.raises(ModelError, match="unknown architecture 'nope'; known: .*vgg19-torchvision"):
        catalogue.import_checkpoint(str(tmp_path / "x.pth"), "nope", "x", resolve(str(tmp_path)))
    with pytest.raises(ModelError, match="not imported from checkpoints"):
        catalogue.import_checkpoint(str(tmp_path / "x.pth"), "projection-head", "x", resolve(str(tmp_path)))
