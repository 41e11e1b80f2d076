"""jobs.stylize over a manifest of good and bad images, both methods, as a user runs it."""

import io
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from jobs import manifest, stylize
from ops.io.storage import resolve
from ops.io.tables import read_table
from ops.media.encode import encode_image
from ops.models.catalogue import import_checkpoint
from ops.style.gatys import Losses
from ops.style.transformer_net import TransformerNet
from ops.style.vgg import random_network
from ops.testing.samples import portrait
from tests.conftest import shared_data


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """Content images (colour, grey, alpha, tiny, corrupt) committed in a manifest, and a style image."""
    base = tmp_path_factory.mktemp("stylize")
    rng = np.random.default_rng(0)
    face = Image.fromarray(portrait(rng, 0))
    files = {
        "colour.jpg": encode_image(portrait(rng, 1), "jpeg"),
        "grey.png": _png(face.convert("L")),
        "alpha.png": _png(face.convert("RGBA")),
        "tiny.png": _png(face.resize((12, 15))),
        "corrupt.jpg": encode_image(portrait(rng, 2), "jpeg")[:300],
    }
    for name, data in files.items():
        (base / "archive").mkdir(exist_ok=True)
        (base / "archive" / name).write_bytes(data)
    yy, xx = np.mgrid[0:96, 0:96]
    stripes = np.stack([(xx % 12 < 6) * 255, (yy % 8 < 4) * 200, np.full_like(xx, 60)], -1).astype(np.uint8)
    (base / "style.png").write_bytes(_png(Image.fromarray(stripes)))
    assert manifest.main([str(base / "archive"), "--output", str(base / "results")]) == 0
    return base


def _rows(root, run_id: str) -> tuple[list[dict], list[dict]]:
    store = resolve(str(root))
    return read_table(store, "styled", run_id).to_pylist(), read_table(store, "errors", run_id).to_pylist()


def test_gatys_styles_every_good_image_and_reports_every_bad_one(ray_cluster, archive, tmp_path):
    out = tmp_path / "out"
    argv = [str(archive / "results"), "--style", str(archive / "style.png"), "--random-loss-network", "0"]
    argv += ["--steps", "10", "--max-side", "96", "--output", str(out), "--run-id", "g", "--format", "png"]
    assert stylize.main(argv) == 0
    rows, errors = _rows(out, "g")
    assert sorted(r["uri"].rsplit("/", 1)[-1] for r in rows) == ["alpha.png", "colour.jpg", "grey.png"]
    assert {e["uri"].rsplit("/", 1)[-1]: e["error_type"] for e in errors} == {
        "tiny.png": "too_small",
        "corrupt.jpg": "image_decode_error",
    }
    for r in rows:
        assert r["random_weights"] and r["model_name"] == "random-vgg19-seed0" and r["method"] == "gatys"
        image = Image.open(out / r["output_uri"])
        assert image.mode == "RGB" and max(image.size) == 96 and (r["width"], r["height"]) == image.size
        assert r["output_uri"].startswith("styled-images/g/") and r["sha256"][:32] in r["output_uri"]
        assert r["style_loss"] > 0 and r["seconds"] > 0


def test_gatys_without_a_loss_network_refuses_and_says_how_to_get_one(archive, tmp_path, caplog):
    argv = [str(archive / "results"), "--style", str(archive / "style.png"), "--output", str(tmp_path)]
    assert stylize.main(argv) == 2
    assert "--architecture vgg19-torchvision" in caplog.text and "--random-loss-network SEED" in caplog.text


def test_feedforward_with_an_imported_pytorch_examples_checkpoint_keeps_the_size(ray_cluster, archive, tmp_path):
    torch.manual_seed(0)
    state = TransformerNet().state_dict() | {"in1.running_mean": torch.zeros(32), "in1.running_var": torch.ones(32)}
    buf = io.BytesIO()
    torch.save(state, buf)
    (tmp_path / "candy.pth").write_bytes(buf.getvalue())
    models = resolve(str(tmp_path / "models"))
    import_checkpoint(str(tmp_path / "candy.pth"), "transformer-net-pytorch-examples", "candy", models)
    out = tmp_path / "out"
    argv = [str(archive / "results"), "--method", "feedforward", "--style", "candy", "--models", models.uri]
    argv += ["--max-side", "0", "--tile", "64", "--output", str(out), "--run-id", "f"]
    assert stylize.main(argv) == 0
    rows, errors = _rows(out, "f")
    assert len(rows) == 3 and len(errors) == 2
    for r in rows:
        assert (r["width"], r["height"]) == (128, 160) and r["model_name"] == "candy" and not r["random_weights"]
        assert Image.open(out / r["output_uri"]).size == (128, 160)


def test_real_content_gets_each_real_style(ray_cluster, tmp_path):
    content = shared_data("style", "content-images", "amber.jpg")
    styles = sorted(shared_data("style", "style-images").glob("*.jpg"))
    (tmp_path / "archive").mkdir()
    (tmp_path / "archive" / "amber.jpg").write_bytes(content.read_bytes())
    assert manifest.main([str(tmp_path / "archive"), "--output", str(tmp_path / "results")]) == 0
    argv = [str(tmp_path / "results"), "--style", ",".join(str(s) for s in styles), "--random-loss-network", "0"]
    argv += ["--steps", "15", "--max-side", "128", "--output", str(tmp_path / "out"), "--run-id", "real"]
    assert stylize.main(argv) == 0
    rows, _ = _rows(tmp_path / "out", "real")
    assert len(rows) == len(styles)
    net = random_network("vgg19", 0)
    for r in rows:
        with Image.open(content) as im:
            im.thumbnail((128, 128))
            x = torch.tensor(np.asarray(im.convert("RGB"))).permute(2, 0, 1)[None].float() / 255
        with Image.open(r["style_uri"]) as st:
            st.thumbnail((128, 128))
            s = torch.tensor(np.asarray(st.convert("RGB"))).permute(2, 0, 1)[None].float() / 255
        with torch.no_grad():
            _, before = Losses(net, x, s)(x)
        assert r["style_loss"] < 0.2 * before.item(), (r["style_uri"], r["style_loss"], before.item())
        assert r["content_loss"] < 0.05
        assert (
            Image.open(tmp_path / "out" / r["output_uri"]).size == (r["width"], r["height"])
            and max(r["width"], r["height"]) == 128
        )


def test_a_trained_style_network_lowers_its_style_loss_and_stylize_takes_it(ray_cluster, archive, tmp_path):
    from jobs import train_style

    models = tmp_path / "models"
    argv = [str(archive / "results"), "--style", str(archive / "style.png"), "--random-loss-network", "0"]
    argv += [
        "--size",
        "64",
        "--epochs",
        "3",
        "--batch-size",
        "1",
        "--lr",
        "5e-3",
        "--no-gpus",
        "--output",
        str(tmp_path),
    ]
    assert train_style.main([*argv, "--models", str(models), "--run-id", "ts", "--name", "stripes"]) == 0
    history = {}
    for r in read_table(resolve(str(tmp_path)), "training", "ts").to_pylist():
        history.setdefault(r["epoch"], {})[r["metric"]] = r["value"]
    assert history[2]["holdout_style_loss"] < 0.5 * history[-1]["holdout_style_loss"], history
    out = tmp_path / "out"
    styled = [str(archive / "results"), "--method", "feedforward", "--style", "stripes", "--models", str(models)]
    assert stylize.main([*styled, "--output", str(out), "--run-id", "ff"]) == 0
    rows, _ = _rows(out, "ff")
    assert len(rows) == 3 and {r["model_name"] for r in rows} == {"stripes"}


def test_the_actors_get_the_styling_options_and_each_row_records_them():
    config = stylize.StylizeConfig(style="s.png", steps=10, scales="0.5,1", coarse_steps=3, tile=64, format="png")
    settings = stylize.StyleSettings.of(config, "run-1")
    assert settings.run_id == "run-1" and settings.method == "gatys" and settings.batch_size == 4
    assert settings.parameters() == {
        "steps": 10,
        "scales": "0.5,1",
        "coarse_steps": 3,
        "optimizer": "lbfgs",
        "alpha": 1.0,
        "beta": 1e5,
        "tv": 1e-4,
        "preserve_colour": False,
        "max_side": 512,
        "tile": 64,
        "format": "png",
        "quality": 92,
    }
    gatys = settings.gatys_settings()
    assert (gatys.steps, gatys.scales, gatys.coarse_steps, gatys.seed) == (10, [0.5, 1.0], 3, 0)
    assert pickle.loads(pickle.dumps(settings)) == settings  # it travels to every style actor
