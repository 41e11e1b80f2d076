"""The GPU paths, on the GPU of the device check (skipped on a machine without CUDA), checked against the CPU:
search, detection, alignment, face and speaker embeddings, style transfer. ``pytest -m cuda tests/ops``."""

import numpy as np
import pytest
import torch

from ops.faces.align import template, warp
from ops.faces.dlib_resnet import DlibResNet
from ops.faces.pipeline import FacePipeline
from ops.faces.recogniser import ready
from ops.matching.search import ExactSearch
from ops.models import catalogue
from ops.models.device import best_device
from ops.style import gatys
from ops.style.transformer_net import TransformerNet, stylize, stylize_tiled
from ops.style.vgg import random_network
from ops.testing.samples import portrait, speech
from tests.conftest import _models_root

DEVICE = best_device()
CPU = torch.device("cpu")
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        DEVICE.type != "cuda",
        reason="no CUDA device here: these compare the GPU paths with the CPU (bash benchmarks/device_check.sh runs "
        "them on a GPU); on the CPU alone they would compare the CPU with itself",
    ),
]


@pytest.fixture(scope="module")
def mtcnn_root(tmp_path_factory):
    return _models_root(tmp_path_factory, "mtcnn-only", ("mtcnn",))


def test_search_on_the_device_gives_the_exact_top_k():
    rng = np.random.default_rng(0)
    gallery = rng.standard_normal((20_000, 128)).astype(np.float32)
    queries = rng.standard_normal((300, 128)).astype(np.float32)
    exact = ExactSearch(gallery, device=CPU).search(queries, 10)
    for precision in ("fp32", "bf16", "fp16") if DEVICE.type == "cuda" else ("fp32",):
        found = ExactSearch(gallery, device=DEVICE, precision=precision, backend="torch").search(queries, 10)
        np.testing.assert_array_equal(found.ids, exact.ids)  # reduced precision finds, fp32 re-scores: exact
        np.testing.assert_allclose(found.scores, exact.scores, atol=1e-5)


def _frames() -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    frames = []
    for i in range(3):
        canvas = np.full((240, 320, 3), 90, np.uint8)
        canvas[40:200, 60:188] = portrait(rng, i, size=(160, 128))
        frames.append(canvas)
    return frames


def _pipeline(root, device: torch.device) -> FacePipeline:
    torch.manual_seed(0)  # a random recogniser: the same weights on both devices
    recogniser = ready(DlibResNet(), DlibResNet().state_dict(), "dlib", 150, 128, device)
    return FacePipeline(catalogue.build(catalogue.load("mtcnn", root), device), recogniser)


def test_faces_on_the_device_match_the_cpu(mtcnn_root):
    frames = _frames()
    ours, cpu = _pipeline(mtcnn_root, DEVICE)(frames), _pipeline(mtcnn_root, CPU)(frames)
    assert [len(f.scores) for f in ours] == [len(f.scores) for f in cpu] == [1, 1, 1]
    for a, b in zip(ours, cpu, strict=True):
        np.testing.assert_allclose(a.boxes, b.boxes, atol=0.5)
        np.testing.assert_allclose(a.landmarks, b.landmarks, atol=0.5)
        cos = (
            (a.embeddings * b.embeddings).sum(1)
            / np.linalg.norm(a.embeddings, axis=1)
            / np.linalg.norm(b.embeddings, axis=1)
        )
        assert cos.min() > 0.999


def test_passes_with_copies_on_a_side_stream_give_what_one_pass_gives(mtcnn_root):
    """Host frames go through pinned memory on the copy stream, the next pass's while this one computes; the
    pipeline's default pass size comes from the device's free memory."""
    frames = _frames() * 3
    whole = _pipeline(mtcnn_root, DEVICE)
    cut = _pipeline(mtcnn_root, DEVICE)
    cut.pass_pixels = 2 * 240 * 320  # five passes
    if DEVICE.type == "cuda":
        assert whole.pass_pixels and whole.pass_pixels > 100 * 640 * 480  # an H200's free memory holds hundreds
    for a, b in zip(whole(frames), cut(frames), strict=True):
        # cuDNN picks its convolution algorithm by batch size (TF32 ones by default): passes round differently
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-2)
        cos = (
            (a.embeddings * b.embeddings).sum(1)
            / np.linalg.norm(a.embeddings, axis=1)
            / np.linalg.norm(b.embeddings, axis=1)
        )
        assert cos.min() > 0.9999


def test_alignment_on_the_device_matches_the_cpu():
    images = torch.from_numpy(np.stack(_frames())).permute(0, 3, 1, 2)
    marks = torch.tensor([[[100.0, 90.0], [150.0, 90.0], [125.0, 120.0], [105.0, 150.0], [145.0, 150.0]]] * 3)
    idx = torch.arange(3)
    points = template("dlib", 150)
    cpu = warp(images, idx, marks, points, 150)
    ours = warp(images.to(DEVICE), idx.to(DEVICE), marks.to(DEVICE), points.to(DEVICE), 150).cpu()
    assert (ours - cpu).abs().max() < 0.5


def test_speaker_embeddings_on_the_device_match_the_cpu(models):
    rng = np.random.default_rng(2)
    waves = [speech(rng, 110.0 + 20 * i, 3.0 + i, 16000) for i in range(3)]
    model = catalogue.load("ge2e-resemblyzer", models, expect="speaker-embedding")
    ours = catalogue.build(model, DEVICE).embed(waves)
    cpu = catalogue.build(model, CPU).embed(waves)
    assert (ours * cpu).sum(1).min() > 0.9999


def test_style_transfer_on_the_device_matches_the_cpu():
    torch.manual_seed(3)
    net = TransformerNet().eval()
    images = torch.rand(2, 3, 96, 128) * 255
    cpu = stylize(net, images)
    ours = stylize(net.to(DEVICE), images.to(DEVICE)).cpu()
    assert (ours - cpu).abs().max() < 0.5  # of 255
    big = torch.rand(3, 300, 260) * 255
    tiled = stylize_tiled(net, big.to(DEVICE), tile=128, overlap=16).cpu()
    assert tiled.shape == big.shape and torch.isfinite(tiled).all()


def test_gatys_on_the_device_lowers_the_objective():
    net = random_network("vgg19", 0).to(DEVICE)
    content, style = torch.rand(1, 3, 48, 48, device=DEVICE), torch.rand(1, 3, 48, 48, device=DEVICE)
    with torch.no_grad():
        _, before = gatys.Losses(net, content, style)(content)
    image, stats = gatys.transfer(net, content, style, gatys.Settings(steps=20))
    assert image.device.type == DEVICE.type and stats["style_loss"][0] < before.item()


def test_mixed_sizes_on_the_device_detect_as_each_alone_and_as_the_cpu(mtcnn_root):
    """The padded, masked P-Net batches on the device: each image as alone, and as on the CPU."""
    rng = np.random.default_rng(5)
    sizes = [(240, 320), (171, 133), (333, 250), (160, 128)]
    frames = []
    for i, (h, w) in enumerate(sizes):
        canvas = np.full((h, w, 3), 90 + 10 * i, np.uint8)
        canvas[(h - 160) // 2 : (h - 160) // 2 + 160, (w - 128) // 2 : (w - 128) // 2 + 128] = portrait(rng, i % 3)
        frames.append(torch.from_numpy(canvas).permute(2, 0, 1))
    mtcnn = catalogue.build(catalogue.load("mtcnn", mtcnn_root), DEVICE)
    cpu = catalogue.build(catalogue.load("mtcnn", mtcnn_root), CPU)
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # full float32 convolutions: batched and alone agree to rounding
    try:
        together = mtcnn.detect(frames)
        for frame, mixed, on_cpu in zip(frames, together, cpu.detect(frames), strict=True):
            (alone,) = mtcnn.detect(frame[None])
            assert len(mixed) == len(alone) == len(on_cpu) == 1
            torch.testing.assert_close(mixed.boxes.cpu(), alone.boxes.cpu(), atol=1e-2, rtol=0)
            torch.testing.assert_close(mixed.boxes.cpu(), on_cpu.boxes, atol=0.5, rtol=0)
    finally:
        torch.backends.cudnn.allow_tf32 = tf32


@pytest.mark.parametrize("orientation", [1, 6, 8])
def test_jpegs_decode_on_the_device_as_pillow_decodes_them(orientation):
    import io

    from PIL import Image

    from ops.media.images import decode_image, decode_jpegs

    rgb = np.zeros((48, 80, 3), np.uint8)
    rgb[:, :40], rgb[:12, :12] = 200, 30
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=95, exif=exif.tobytes())
    counts: dict[str, int] = {}
    ((tensor, _),) = decode_jpegs([buf.getvalue()], DEVICE, counts=counts)
    pillow = decode_image(buf.getvalue()).rgb
    assert counts == {"device": 1, "pillow": 0, "failed": 0} and tensor.device.type == DEVICE.type
    assert np.abs(tensor.cpu().numpy().astype(int) - pillow.astype(int)).mean() < 2


def test_fairface_chips_and_probabilities_on_the_device_match_the_cpu():
    from ops.attributes.fairface import FairFace, cut_chips

    rng = np.random.default_rng(2)
    frame = torch.from_numpy(np.concatenate([portrait(rng, 0), portrait(rng, 1)], 1)).permute(2, 0, 1)[None]
    marks = torch.tensor([[[44, 62], [84, 62], [64, 84], [48, 104], [80, 104]]], dtype=torch.float32)
    marks = torch.cat([marks, marks + torch.tensor([128.0, 0.0])])
    index = torch.zeros(2, dtype=torch.long)
    here = cut_chips(frame, index, marks)
    there = cut_chips(frame.to(DEVICE), index.to(DEVICE), marks.to(DEVICE)).cpu()
    assert (here.int() - there.int()).abs().max() <= 1  # bilinear sampling rounds alike but for ties
    torch.manual_seed(0)
    net = FairFace().eval()
    expected = net.predict(here.float())
    found = net.to(DEVICE).predict(here.float().to(DEVICE))
    for group in expected:
        np.testing.assert_allclose(found[group]["probabilities"], expected[group]["probabilities"], atol=1e-3)
