"""The ECAPA-TDNN adapter against SpeechBrain's own modules, with random weights saved in SpeechBrain's layout."""

import io

import numpy as np
import pytest
import torch

from ops.io.errors import ModelError
from ops.io.storage import resolve
from ops.models.catalogue import build, import_checkpoint, load
from ops.voices.ecapa import ECAPATDNN, SpeechBrainFbank, convert_speechbrain


def speechbrain_checkpoint(channels=(1024, 1024, 1024, 1024, 3072), dim=192) -> tuple[torch.nn.Module, bytes]:
    from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN

    torch.manual_seed(0)
    model = ECAPA_TDNN(80, channels=list(channels), lin_neurons=dim)
    for m in model.modules():  # batch-norm statistics that are not the identity, so that eval mode is tested
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)  # exactly how SpeechBrain writes embedding_model.ckpt
    return model.eval(), buf.getvalue()


@pytest.fixture(scope="module")
def reference():
    return speechbrain_checkpoint()


def test_front_end_equals_speechbrain_fbank():
    from speechbrain.lobes.features import Fbank
    from speechbrain.processing.features import InputNormalization

    wav = torch.randn(3, 24000) * 0.1
    lengths = torch.tensor([1.0, 0.7, 0.4])
    theirs = InputNormalization(norm_type="sentence", std_norm=False)(Fbank(n_mels=80)(wav), lengths)
    ours = SpeechBrainFbank()(wav, lengths)
    assert torch.allclose(ours, theirs, atol=1e-4)


def test_network_loads_strictly_and_equals_speechbrain(reference):
    model, data = reference
    ours = ECAPATDNN()
    ours.load_state_dict(convert_speechbrain(data), strict=True)
    ours.eval()
    feats, lengths = torch.randn(2, 150, 80), torch.tensor([1.0, 0.6])
    with torch.no_grad():
        assert torch.allclose(ours(feats, lengths), model(feats, lengths).squeeze(1), atol=1e-5)


def test_import_and_embed_like_speechbrain(reference, tmp_path):
    model, data = reference
    (tmp_path / "embedding_model.ckpt").write_bytes(data)
    root = resolve(str(tmp_path / "models"))
    card = import_checkpoint(str(tmp_path / "embedding_model.ckpt"), "ecapa-tdnn-speechbrain", "my-ecapa", root)
    assert card["output_dim"] == 192 and card["modality"] == "voice" and len(card["source"]["sha256"]) == 64
    embedder = build(load("my-ecapa", root), "cpu")
    waves = [np.random.default_rng(i).normal(0, 0.1, n).astype(np.float32) for i, n in enumerate((16000, 40000))]
    sums, counts = embedder.partial_sums(waves)
    from speechbrain.lobes.features import Fbank
    from speechbrain.processing.features import InputNormalization

    with torch.no_grad():
        for wave, ours in zip(waves, sums, strict=True):
            x = torch.from_numpy(wave)[None]
            feats = InputNormalization(norm_type="sentence", std_norm=False)(Fbank(n_mels=80)(x), torch.ones(1))
            theirs = torch.nn.functional.normalize(model(feats, torch.ones(1)).squeeze(1), dim=1)[0].numpy()
            assert float(ours @ theirs) > 0.9999
    assert counts.tolist() == [1, 1]


def test_other_layouts_are_refused(tmp_path):
    buf = io.BytesIO()
    torch.save({"linear.weight": torch.zeros(2, 2)}, buf)
    (tmp_path / "x.ckpt").write_bytes(buf.getvalue())
    with pytest.raises(ModelError, match="not a ecapa-tdnn-speechbrain checkpoint"):
        import_checkpoint(str(tmp_path / "x.ckpt"), "ecapa-tdnn-speechbrain", "x", resolve(str(tmp_path)))
    with pytest.raises(ModelError, match="unknown architecture"):
        import_checkpoint(str(tmp_path / "x.ckpt"), "wav2vec", "x", resolve(str(tmp_path)))
