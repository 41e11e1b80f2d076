import json
import zipfile

import pytest
import torch

from ops.io.errors import ModelError
from ops.io.storage import resolve
from ops.models.catalogue import load, load_folder, locate, pull, pulled, spec, specs
from ops.voices.ge2e import GE2E, GE2EEncoder


def test_pulled_model_has_its_card_and_verified_weights(models):
    model = load("ge2e-resemblyzer", models)
    assert model.sha256 == GE2E.checkpoint_sha256  # conversion is deterministic: the pinned bytes
    card = model.card
    assert card["source"]["sha256"] == GE2E.source.sha256 and card["output_dim"] == 256
    assert card["metric"] == "cosine" and "default_threshold" in card and card["input"]["sample_rate"] == 16000
    assert set(model.state) == set(GE2EEncoder().state_dict())  # similarity scale/bias dropped, nothing else
    assert [c["name"] for c in pulled(models)] == ["ge2e-resemblyzer", "silero-vad"]


def test_a_model_is_found_by_uri_too(models):
    folder = models.join("ge2e-resemblyzer")
    assert load_folder(locate(folder.uri, models)).sha256 == GE2E.checkpoint_sha256
    assert load(folder.join("card.json").uri).sha256 == GE2E.checkpoint_sha256


def test_a_tampered_checkpoint_is_refused(models, tmp_path):
    root = resolve(str(tmp_path))
    for name in ("card.json", "model.pt"):
        root.join("ge2e-resemblyzer", name).put_atomic(models.join("ge2e-resemblyzer", name).read_bytes())
    state = torch.load(tmp_path / "ge2e-resemblyzer" / "model.pt", weights_only=True)
    state["linear.bias"] += 1e-3
    torch.save(state, tmp_path / "ge2e-resemblyzer" / "model.pt")
    with pytest.raises(ModelError, match="not the card's"):
        load("ge2e-resemblyzer", root)
    card = json.loads((tmp_path / "ge2e-resemblyzer" / "card.json").read_text())
    import hashlib

    card["checkpoint_sha256"] = hashlib.sha256((tmp_path / "ge2e-resemblyzer" / "model.pt").read_bytes()).hexdigest()
    (tmp_path / "ge2e-resemblyzer" / "card.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match="does not match the registry"):
        load("ge2e-resemblyzer", root)


def test_unverified_source_is_refused(tmp_path):
    fake = tmp_path / GE2E.source.filename
    with zipfile.ZipFile(fake, "w") as zf:
        zf.writestr(GE2E.source.member, b"not the weights")
    with pytest.raises(ModelError, match="refusing unverified weights"):
        pull("ge2e-resemblyzer", resolve(str(tmp_path / "models")), source_file=str(fake))


def test_missing_and_unknown_models_say_what_to_do(tmp_path):
    with pytest.raises(ModelError, match="python -m jobs.models pull ge2e-resemblyzer"):
        load("ge2e-resemblyzer", resolve(str(tmp_path)))
    with pytest.raises(
        ModelError, match="unknown model 'nope'; registered: dlib-resnet-v1, ge2e-resemblyzer, mtcnn, silero-vad"
    ):
        spec("nope")
    assert "ge2e-resemblyzer" in specs()


class _Payload:
    """Pickles as a call to os.system: what a hostile checkpoint carries."""

    def __reduce__(self):
        import os

        return (os.system, ("touch /tmp/crossmatch-pwned",))


def test_a_checkpoint_that_runs_code_when_unpickled_is_refused_unrun(tmp_path):
    import os

    from ops.models.catalogue import import_checkpoint

    marker = "/tmp/crossmatch-pwned"
    if os.path.exists(marker):
        os.remove(marker)
    torch.save({"conv1.conv2d.weight": torch.zeros(1), "extra": _Payload()}, tmp_path / "evil.pth")
    root = resolve(str(tmp_path / "models"))
    with pytest.raises(ModelError, match="not a transformer-net-pytorch-examples checkpoint.*Weights only load failed"):
        import_checkpoint(str(tmp_path / "evil.pth"), "transformer-net-pytorch-examples", "evil", root)
    # Dropped into a model folder by hand, with a card that pins its sha256, it is refused on load too.
    folder = tmp_path / "models" / "ge2e-resemblyzer"
    folder.mkdir(parents=True)
    data = (tmp_path / "evil.pth").read_bytes()
    import hashlib

    card = {"name": "ge2e-resemblyzer", "architecture": "ge2e", "checkpoint_sha256": hashlib.sha256(data).hexdigest()}
    (folder / "card.json").write_text(json.dumps(card))
    (folder / "model.pt").write_bytes(data)
    with pytest.raises(ModelError):
        load("ge2e-resemblyzer", root)
    assert not os.path.exists(marker)
