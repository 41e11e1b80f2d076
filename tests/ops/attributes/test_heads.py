import numpy as np
import pytest
import torch

from ops.attributes.heads import AttributeHead, AttributeSpec, specs_from_labels, targets


def test_specs_from_labels():
    age = np.array([10.0, 30.0, np.nan, 50.0])
    mood = np.array(["happy", "sad", "happy", "happy"], object)
    spec_age, spec_mood = specs_from_labels({"age": age, "mood": mood})
    assert (spec_age.kind, spec_age.loss, spec_age.mean) == ("numeric", "gaussian", 30.0)
    assert spec_age.std == pytest.approx(np.std([10, 30, 50]))
    assert spec_mood.classes == ["happy", "sad"] and spec_mood.kind == "categorical"
    # inverse frequency, mean 1: happy 3 of 4, sad 1 of 4
    assert spec_mood.class_weights == pytest.approx([0.5, 1.5])
    got = targets([spec_age, spec_mood], {"age": age, "mood": np.array(["sad", "angry", None, "happy"], object)})
    assert got["mood"].tolist() == [1, -1, -1, 0] and np.isnan(got["age"][2])
    with pytest.raises(ValueError, match="two classes"):
        specs_from_labels({"mood": np.array(["a", "a"], object)})


def test_unlabelled_samples_add_nothing_and_each_loss_learns():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.normal(size=(512, 8)), dtype=torch.float32)
    age = 40 + 10 * x[:, 0] + rng.normal(0, 2 + 4 * (x[:, 1] > 0).numpy(), 512)  # noisier where x1 > 0
    mood = (x[:, 2] > 0).long()
    for loss in ("mse", "l1", "gaussian"):
        specs = [
            AttributeSpec("age", "numeric", loss, mean=40.0, std=10.0),
            AttributeSpec("mood", "categorical", "ce", classes=["a", "b"], label_smoothing=0.1),
        ]
        head = AttributeHead(8, specs, hidden=32)
        y = {"age": age.double().clone(), "mood": mood.clone()}  # labels read from a table: float64
        y["age"][:100] = float("nan")
        y["mood"][100:200] = -1
        optimizer = torch.optim.Adam(head.parameters(), lr=0.01)
        first = head.loss(head(x), y).item()
        for _ in range(300):
            optimizer.zero_grad()
            value = head.loss(head(x), y)
            value.backward()
            optimizer.step()
        assert np.isfinite(first) and value.item() < first
        found = head.predict(x)
        assert np.abs(found["age"]["value"] - age.numpy()).mean() < 5
        assert (found["mood"]["probabilities"].argmax(1) == mood.numpy()).mean() > 0.9
        if loss == "gaussian":  # the uncertainty follows the noise
            std = found["age"]["std"]
            assert std[x[:, 1].numpy() > 0].mean() > 1.5 * std[x[:, 1].numpy() <= 0].mean()
        else:
            assert np.isnan(found["age"]["std"]).all()


def test_a_stored_head_rebuilds_strictly():
    specs = [AttributeSpec("mood", "categorical", "ce", classes=["a", "b", "c"])]
    head = AttributeHead(8, specs, hidden=16)
    again = AttributeHead.from_state(head.state_dict(), [s.to_dict() for s in specs])
    x = torch.randn(4, 8)
    assert torch.equal(head.eval()(x)["mood"], again.eval()(x)["mood"])
    with pytest.raises(RuntimeError):
        AttributeHead.from_state(
            {k: v for k, v in head.state_dict().items() if "outputs" not in k}, [s.to_dict() for s in specs]
        )


def test_a_batch_without_labels_backpropagates_to_zero_and_names_are_checked():
    specs = [
        AttributeSpec("age", "numeric", "gaussian"),
        AttributeSpec("mood", "categorical", "ce", classes=["a", "b"]),
    ]
    head = AttributeHead(4, specs, hidden=8)
    loss = head.loss(head(torch.randn(3, 4)), {"age": torch.full((3,), float("nan")), "mood": torch.full((3,), -1)})
    loss.backward()  # no label at all: a zero loss that still reaches every parameter
    assert loss.item() == 0 and all(p.grad is not None for p in head.parameters())
    for bad in ("age.years", "train", "float"):
        with pytest.raises(ValueError, match="letters, digits and underscores"):
            specs_from_labels({bad: np.array([1.0, 2.0])})
