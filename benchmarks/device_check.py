"""The device check: crossmatch's GPU paths measured in one run on a bare CUDA machine (no Ray, no network).

    bash benchmarks/device_check.sh                          # on the GPU machine (wheels and models carried)
    python benchmarks/device_check.py --device cpu --quick   # the same code paths, small, on any machine

Generates its own inputs (portraits on 640x480 JPEGs, synthetic speech, random unit vectors) and prints, and writes
to ``$OUT/device_check.json`` and ``device_check.txt``, section by section (a failing section is reported and the
others still run):

- faces: faces/s and images/s end to end from JPEG bytes (Pillow decode, MTCNN, alignment, recogniser) and where
  the time goes (decode, detect, align, embed);
- voices: seconds of audio per second end to end from FLAC bytes (PyAV decode, Silero VAD, GE2E), with its
  breakdown;
- search: exact top-10 of Q queries over a gallery of G (one engine, and two shards merged), as a fraction of the
  bf16 GEMM rate measured in the same run, and whether the bf16 top-K equals the fp32 one;
- attributes: FairFace (ResNet-34, 224 px chips) faces/s on chips already cut, and with ``cut_chips`` cutting them
  from 640x480 frames at MTCNN's landmarks: what batch attribute estimation costs beside the network alone;
- style: TransformerNet images/s at 512 px, one 2048 px image through tiles, Gatys seconds per 512 px image.

Models come from ``--models`` (a models root with mtcnn, ge2e-resemblyzer and silero-vad pulled: ``make
device-bundle`` puts them in ``.whl/models``); dlib-resnet-v1 is used when present, else a seeded random dlib ResNet
(the same network and cost; its embeddings mean nothing, which the output says). Loss and style networks are seeded
random (speed does not depend on weights).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ops.attributes.fairface import FairFace, cut_frames  # noqa: E402
from ops.faces.dlib_resnet import DlibResNet  # noqa: E402
from ops.faces.pipeline import FacePipeline  # noqa: E402
from ops.faces.recogniser import ready  # noqa: E402
from ops.io.storage import resolve  # noqa: E402
from ops.matching.search import ExactSearch, merge  # noqa: E402
from ops.media.audio import decode_mono  # noqa: E402
from ops.media.encode import encode_audio  # noqa: E402
from ops.media.images import decode_image, decode_jpegs  # noqa: E402
from ops.models import catalogue  # noqa: E402
from ops.style import gatys  # noqa: E402
from ops.style.transformer_net import TransformerNet, stylize, stylize_tiled  # noqa: E402
from ops.style.vgg import random_network  # noqa: E402
from ops.testing.samples import portrait, speech  # noqa: E402
from ops.voices.speech import SileroDetector, SpeechSegmenter  # noqa: E402

# Sizes: the on a GPU, small enough for a CPU with --quick.
FULL = {"images": 512, "batch": 64, "voices": 40, "voice_seconds": 30.0, "queries": 10_000, "gallery": 1_000_000}
FULL |= {"dim": 128, "style_batch": 8, "gatys_steps": 300}
QUICK = {"images": 16, "batch": 8, "voices": 4, "voice_seconds": 6.0, "queries": 500, "gallery": 20_000}
QUICK |= {"dim": 128, "style_batch": 2, "gatys_steps": 10}


class Clock:
    """Seconds by stage; waits for the device's queued work before reading the time."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.seconds = device, {}

    def now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def add(self, stage: str, since: float) -> float:
        now = self.now()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - since
        return now

    def shares(self) -> dict[str, float]:
        total = sum(self.seconds.values()) or 1.0
        return {k: round(v / total, 3) for k, v in self.seconds.items()}


def jpegs_640x480(n: int, seed: int = 0) -> list[bytes]:
    """``n`` 640x480 JPEGs of a textured background with one to three drawn faces each (MTCNN finds them)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        canvas = rng.integers(60, 200, (480, 640, 3), dtype=np.uint8)
        for k in range(1 + i % 3):
            face = portrait(rng, (i + k) % 3, size=(160, 128))
            y, x = int(rng.integers(0, 480 - 160)), 20 + k * 200
            canvas[y : y + 160, x : x + 128] = face
        buf = io.BytesIO()
        Image.fromarray(canvas).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def faces(size: dict, device: torch.device, models: str) -> dict:
    root = resolve(models)
    detector = catalogue.build(catalogue.load("mtcnn", root, expect="face-detection"), device)
    if root.join("dlib-resnet-v1", "card.json").exists():
        recogniser, weights = catalogue.build(catalogue.load("dlib-resnet-v1", root), device), "dlib-resnet-v1"
    else:  # the same network and cost; random weights (the check carries no 22 MB recogniser)
        torch.manual_seed(0)
        recogniser = ready(DlibResNet(), DlibResNet().state_dict(), "dlib", 150, 128, device)
        weights = "seeded random dlib ResNet (speed only)"
    pipeline = FacePipeline(detector, recogniser)
    images = jpegs_640x480(size["images"])
    batch = size["batch"]
    pipeline([decode_image(b).rgb for b in images[:batch]])  # warm-up: kernels, allocator
    clock = Clock(device)
    stages = {"detect": 0.0, "align": 0.0, "embed": 0.0}
    found, start = 0, clock.now()
    for i in range(0, len(images), batch):
        t = clock.now()
        frames = [decode_image(b).rgb for b in images[i : i + batch]]
        clock.add("decode", t)
        for ff in pipeline(frames, stages):
            found += len(ff.scores)
    elapsed = clock.now() - start
    clock.seconds |= stages
    result = {
        "images": len(images),
        "faces": found,
        "faces_per_s": round(found / elapsed, 1),
        "images_per_s": round(len(images) / elapsed, 1),
        "shares": clock.shares(),
        "batch": batch,
        "recogniser": weights,
    }
    extras = {
        "jpeg_decode_per_s": lambda: jpeg_decoding(images, device),
        "decoding_on_device": lambda: faces_decoding_on_device(images, pipeline, batch),
    }
    for name, measure in extras.items():
        try:  # the end-to-end figure above stands whatever happens here
            result[name] = measure()
        except Exception as exc:  # noqa: BLE001
            result[name] = {"error": f"{type(exc).__name__}: {exc}"}
    return result


def faces_decoding_on_device(images: list[bytes], pipeline: FacePipeline, batch: int) -> dict:
    """The same images end to end with decoding on the device (nvJPEG on a GPU; Pillow for what it does not
    take, counted): the CPU only reads bytes."""
    clock, counts, found = Clock(pipeline.device), {}, 0
    start = clock.now()
    for i in range(0, len(images), batch):
        decoded = decode_jpegs(images[i : i + batch], pipeline.device, counts=counts)
        found += sum(len(ff.scores) for ff in pipeline([r[0] for r in decoded if not isinstance(r, Exception)]))
    return {"faces": found, "faces_per_s": round(found / (clock.now() - start), 1), "decoded": counts}


def jpeg_decoding(images: list[bytes], device: torch.device) -> dict[str, float]:
    """640x480 JPEGs decoded per second: Pillow (what the face job uses) and torchvision's decoder on the device
    (nvJPEG on a GPU, batched): whether decoding on the GPU would pay."""
    from torchvision.io import ImageReadMode, decode_jpeg

    data = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in images]
    pillow = _median(lambda: [decode_image(b) for b in images], torch.device("cpu"))
    decode_jpeg(data[:2], mode=ImageReadMode.RGB, device=device)  # warm-up
    torchvision = _median(lambda: decode_jpeg(data, mode=ImageReadMode.RGB, device=device), device)
    return {"pillow": round(len(images) / pillow, 1), f"torchvision_{device.type}": round(len(images) / torchvision, 1)}


def voices(size: dict, device: torch.device, models: str) -> dict:
    root = resolve(models)
    embedder = catalogue.build(catalogue.load("ge2e-resemblyzer", root, expect="speaker-embedding"), device)
    vad = SileroDetector(catalogue.build(catalogue.load("silero-vad", root, expect="speech-detection"), "cpu"))
    rng = np.random.default_rng(0)
    files = [
        encode_audio(speech(rng, pitch=100.0 + 10 * i, seconds=size["voice_seconds"], rate=16000), 16000, "flac")
        for i in range(size["voices"])
    ]
    clock, audio = Clock(device), 0.0
    embedder.partial_sums([speech(rng, 120.0, 2.0, 16000)])  # warm-up
    start = clock.now()
    waves = []
    for data in files:
        t = clock.now()
        _, chunks = decode_mono(io.BytesIO(data))
        chunks = list(chunks)
        t = clock.add("decode", t)
        segmenter = SpeechSegmenter(detector=vad)
        segments = [s for c in chunks for s in segmenter.push(c)] + segmenter.finish()
        clock.add("vad", t)
        audio += segmenter.total_seconds
        waves += [s.samples for s in segments]
    t = clock.now()
    embedder.partial_sums(waves)  # every segment of every file in one batch, as the encoder actors batch them
    clock.add("encoder", t)
    elapsed = clock.now() - start
    return {
        "files": len(files),
        "audio_s": round(audio, 1),
        "x_real_time": round(audio / elapsed, 1),
        "segments": len(waves),
        "shares": clock.shares(),
    }


def _median(run: Callable[[], object], device: torch.device, rounds: int = 3) -> float:
    clock, times = Clock(device), []
    for _ in range(rounds):
        start = clock.now()
        run()
        times.append(clock.now() - start)
    return statistics.median(times)


def search(size: dict, device: torch.device) -> dict:
    q, g, d, k = size["queries"], size["gallery"], size["dim"], 10
    gen = torch.Generator().manual_seed(0)
    gallery = torch.nn.functional.normalize(torch.randn(g, d, generator=gen), dim=1).numpy()
    queries = torch.nn.functional.normalize(torch.randn(q, d, generator=gen), dim=1).numpy()
    flops = 2.0 * q * g * d
    low = "bf16" if device.type == "cuda" else "fp32"  # the CPU engine works in fp32 only
    dtype = torch.bfloat16 if low == "bf16" else torch.float32
    qd, gd = torch.from_numpy(queries).to(device, dtype), torch.from_numpy(gallery).to(device, dtype)

    block = min(g, 131072)
    product = torch.empty(q, block, device=device, dtype=dtype)

    def gemm() -> None:  # the bare product of the same size, block by block into one buffer
        for s in range(0, g - block + 1, block):
            torch.mm(qd, gd[s : s + block].T, out=product)

    ceiling = flops * (g // block * block) / g / _median(gemm, device)
    exact = ExactSearch(gallery, device=device, precision="fp32")
    reference = exact.search(queries, k)
    result = {"queries": q, "gallery": g, "dim": d, "precision": low, "gemm_tflops": round(ceiling / 1e12, 2)}
    # The engine's default blocks for this device, and smaller and larger ones beside them: the tuning step reads this.
    variants = {
        "default": {},
        "small_blocks": {"gallery_block": 4096, "query_block": 512},
        "large_blocks": {"gallery_block": 262144, "query_block": 8192},
    }
    for name, blocks in variants.items():
        engine = ExactSearch(gallery, device=device, precision=low, **blocks)
        seconds = _median(lambda engine=engine: engine.search(queries, k), device)
        found = engine.search(queries, k)
        result[name] = {
            "seconds": round(seconds, 3),
            "search_tflops": round(flops / seconds / 1e12, 2),
            "fraction_of_gemm": round(flops / seconds / ceiling, 3),
            "topk_equal_fp32": float(np.mean(found.ids == reference.ids)),
        }
    bounds = ((0, g // 2), (g // 2, g))
    halves = [ExactSearch(gallery[a:b], np.arange(a, b), device=device, precision=low) for a, b in bounds]
    sharded = merge([h.search(queries, k) for h in halves], k)
    return result | {"sharded_topk_equal_fp32": float(np.mean(sharded.ids == reference.ids))}


def attributes(size: dict, device: torch.device, models: str) -> dict:
    detector = catalogue.build(catalogue.load("mtcnn", resolve(models), expect="face-detection"), device)
    frames = [
        torch.from_numpy(decode_image(b).rgb.copy()).permute(2, 0, 1).to(device) for b in jpegs_640x480(size["images"])
    ]
    marks = [d.landmarks for d in detector.detect(frames)]
    found = sum(len(m) for m in marks)
    torch.manual_seed(0)
    net = FairFace().to(device).eval()

    def cut() -> torch.Tensor:  # as jobs.attributes' actors cut them: frames of one size together, 8 at a time
        return cut_frames(frames, marks)

    chips = cut()
    batch = 256

    def network(ready: torch.Tensor) -> None:
        for i in range(0, len(ready), batch):
            net.predict(ready[i : i + batch].float())

    alone = _median(lambda: network(chips), device)
    both = _median(lambda: network(cut()), device)
    cutting = _median(cut, device)
    return {
        "faces": found,
        "network_faces_per_s": round(found / alone, 1),
        "cut_and_network_faces_per_s": round(found / both, 1),
        "cut_faces_per_s": round(found / cutting, 1),
        "fraction_of_network_alone": round(alone / both, 3),
        "batch": batch,
        "weights": "seeded random in FairFace's layout (speed only)",
    }


def style(size: dict, device: torch.device) -> dict:
    torch.manual_seed(0)
    net = TransformerNet().to(device).eval()
    images = torch.rand(size["style_batch"], 3, 512, 512, device=device) * 255
    stylize(net, images[:1])  # warm-up
    per_batch = _median(lambda: stylize(net, images), device)
    big = torch.rand(3, 2048, 2048, device=device) * 255
    tiled = _median(lambda: stylize_tiled(net, big, tile=1024), device, rounds=1)
    vgg = random_network("vgg19", 0).to(device)
    content, style_image = torch.rand(1, 3, 512, 512, device=device), torch.rand(1, 3, 512, 512, device=device)
    settings = gatys.Settings(steps=size["gatys_steps"])
    g_seconds = _median(lambda: gatys.transfer(vgg, content, style_image, settings), device, rounds=1)
    return {
        "feedforward_images_per_s_512": round(size["style_batch"] / per_batch, 2),
        "tiled_2048_seconds": round(tiled, 2),
        "gatys_seconds_512": round(g_seconds, 2),
        "gatys_steps": size["gatys_steps"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", default=str(Path(__file__).resolve().parents[1] / ".whl" / "models"))
    parser.add_argument("--quick", action="store_true", help="small sizes (any machine): checks the code paths")
    parser.add_argument("--only", help="comma-separated sections: faces, voices, search, attributes, style")
    parser.add_argument("--out", default=os.environ.get("OUT", "."), help="where the JSON and text go ($OUT)")
    args = parser.parse_args()
    device = torch.device(args.device)
    size = QUICK if args.quick else FULL
    sections = {
        "faces": lambda: faces(size, device, args.models),
        "voices": lambda: voices(size, device, args.models),
        "search": lambda: search(size, device),
        "attributes": lambda: attributes(size, device, args.models),
        "style": lambda: style(size, device),
    }
    chosen = args.only.split(",") if args.only else list(sections)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    report = {"device": name, "torch": torch.__version__, "quick": args.quick, "sections": {}}
    print(f"device check on {name} (torch {torch.__version__}){' --quick' if args.quick else ''}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for section in chosen:
        started = time.perf_counter()
        try:
            result = sections[section]()
        except Exception as exc:  # noqa: BLE001 - one broken section must not cost the others' figures
            result = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-2000:]}
        result["wall_s"] = round(time.perf_counter() - started, 1)
        report["sections"][section] = result
        shown = {k: v for k, v in result.items() if k != "traceback"}
        print(f"{section}: {json.dumps(shown)}", flush=True)
        # Written after every section: a run stopped at its time limit keeps what it measured.
        (out / "device_check.json").write_text(json.dumps(report, indent=1))
        lines = [
            f"{s}: {json.dumps({k: v for k, v in r.items() if k != 'traceback'})}"
            for s, r in report["sections"].items()
        ]
        (out / "device_check.txt").write_text("\n".join([name, *lines]) + "\n")
    if any("error" in r for r in report["sections"].values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
