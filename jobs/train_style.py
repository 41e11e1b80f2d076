"""jobs.train_style: a feed-forward style network (TransformerNet) for one style, on Ray Train.

    python -m jobs.train_style ROOT --style s3://b/styles/candy.jpg [--loss-network vgg16 | --random-loss-network SEED]
        [--epochs 2] [--size 256] [--content-weight 1e5] [--style-weight 1e10] [--workers 1] [--name candy]

Johnson et al.'s perceptual losses: the network's output is compared with its input at VGG16's relu2_2 (content)
and with the style image's Gram matrices at relu1_2, relu2_2, relu3_3 and relu4_3 (style). Content images are the
manifest's images under ROOT, decoded, shrunk and centre-cropped to --size; one image is held out and scored after
every epoch. The loss network is an imported torchvision-format VGG16 (``jobs.models import vgg16.pth
--architecture vgg16-torchvision --name vgg16``), or, only when asked, a seeded random one (named so on the card).
Checkpoints go to ``<output>/checkpoints/<run_id>/`` each epoch and a rerun resumes; the trained network lands in
the registry as a ``transformer-net-pytorch-examples`` model, which ``jobs.stylize --method feedforward`` takes.
"""

from __future__ import annotations

import hashlib
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from PIL import Image

from jobs.runtime import trainer
from jobs.runtime.cluster import ensure_ray
from jobs.runtime.launch import JobContext, run_job, run_module
from jobs.runtime.output import manifest_sources
from ops.io.custody import verified_bytes
from ops.io.errors import ImageError, JobFailed, StorageError, TooSmall, describe, error_type
from ops.io.storage import resolve
from ops.media.images import decode_image
from ops.models import catalogue
from ops.style.gatys import gram
from ops.style.transformer_net import MIN_SIDE, TransformerNet
from ops.style.vgg import VGG16_LAYERS, LossNetwork, from_registry, random_network

JOB = "train_style"
STYLE_LAYERS = list(VGG16_LAYERS)  # relu1_2, relu2_2, relu3_3, relu4_3
CONTENT_LAYER = "relu2_2"


@dataclass
class TrainStyleConfig(trainer.TrainingConfig):
    content: str = field(
        default="out/results", metadata={"positional": True, "run_key": True, "help": "root with the manifest"}
    )
    manifest_run_id: str | None = field(default=None, metadata={"run_key": True, "help": "use only this manifest"})
    style: str = field(default="", metadata={"run_key": True, "help": "the style image URI"})
    loss_network: str | None = field(default=None, metadata={"run_key": True, "help": "an imported VGG16 model"})
    random_loss_network: int | None = field(
        default=None, metadata={"run_key": True, "help": "a seeded random VGG16 instead (labelled)"}
    )
    size: int = field(default=256, metadata={"run_key": True, "help": "training crops, pixels"})
    content_weight: float = field(default=1e5, metadata={"run_key": True, "help": "content loss weight"})
    style_weight: float = field(default=1e10, metadata={"run_key": True, "help": "style loss weight"})
    batch_size: int = field(default=4, metadata={"run_key": True, "help": "images per step per worker"})
    epochs: int = field(default=2, metadata={"help": "passes over the content images (a rerun with more trains on)"})
    max_images: int = field(default=20000, metadata={"help": "content images to take at most"})


def _to_tensor(rgb: np.ndarray) -> torch.Tensor:
    return torch.tensor(rgb).permute(2, 0, 1).float()


def _crop(rgb: np.ndarray, size: int) -> np.ndarray:
    """Shrink the shorter side to ``size`` and take the centre square. Only that square is resampled, from the part
    of the source it covers: scaled whole first, a long thin image would grow to size x size times its aspect ratio
    (a 1x4000 sliver at 256: a 786 MB image for a 196 KB crop; a 1x100000 one would not fit in memory)."""
    im = Image.fromarray(rgb)
    scale = size / min(im.size)
    width, height = max(size, round(im.width * scale)), max(size, round(im.height * scale))
    left, top = (width - size) // 2, (height - size) // 2
    sx, sy = im.width / width, im.height / height  # source pixels per pixel of the scaled image
    box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
    return np.asarray(im.resize((size, size), Image.Resampling.LANCZOS, box=box))


def _content(sources: pa.Table, size: int) -> tuple[list[np.ndarray], list[dict]]:
    """The training crops of ``sources`` (manifest rows), and an error row for each image that gives none, with the
    reason: training data is accounted for as results are."""
    crops, skipped = [], []
    for source in sources.select(["uri", "sha256"]).to_pylist():
        try:
            rgb = decode_image(verified_bytes(resolve(source["uri"]), source["sha256"])).rgb
            if min(rgb.shape[:2]) < MIN_SIDE:
                raise TooSmall(f"{rgb.shape[1]}x{rgb.shape[0]} is smaller than {MIN_SIDE} pixels on a side")
            crops.append(_crop(rgb, size))
        except Exception as exc:  # noqa: BLE001 - one bad image must not stop the training: its error row says why
            skipped.append(source | {"stage": "content", "error_type": error_type(exc), "message": describe(exc)})
    return crops, skipped


class Objective(torch.nn.Module):
    """The network and its perceptual loss as one module (DDP all-reduces through a wrapped module's forward)."""

    def __init__(self, net: TransformerNet, vgg: LossNetwork, style: torch.Tensor, weights: tuple[float, float]):
        super().__init__()
        self.net, self.vgg, self.weights = net, vgg, weights
        with torch.no_grad():
            targets = vgg(style / 255, STYLE_LAYERS)
        for name in STYLE_LAYERS:
            self.register_buffer(f"gram_{name}", gram(targets[name]))

    def losses(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        y = self.net(x)
        fy = self.vgg(y.clamp(0, 255) / 255, STYLE_LAYERS)
        with torch.no_grad():
            fx = self.vgg(x / 255, [CONTENT_LAYER])
        content = torch.nn.functional.mse_loss(fy[CONTENT_LAYER], fx[CONTENT_LAYER])
        style = sum(
            (gram(fy[n]) - getattr(self, f"gram_{n}").expand(len(x), -1, -1)).pow(2).mean() for n in STYLE_LAYERS
        )
        return content, style, y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        content, style, _ = self.losses(x)
        return self.weights[0] * content + self.weights[1] * style


@dataclass(frozen=True)
class StyleLoop(trainer.LoopSettings):
    """The training loop's settings: the loss network (a seeded random VGG16, or else the one in the data), the
    content and style weights, the images per step."""

    random_loss_network: int | None
    weights: tuple[float, float]  # content, style
    batch: int

    @classmethod
    def of(cls, config: TrainStyleConfig, data: Any, data_sha256: str) -> StyleLoop:
        """The job's options, with the data (and the loss network) put in Ray's object store."""
        return cls(
            **cls.shared(config, data, data_sha256),
            random_loss_network=config.random_loss_network,
            weights=(config.content_weight, config.style_weight),
            batch=config.batch_size,
        )


def _loop(cfg: dict) -> None:
    """One Ray Train worker: the content images of its share, in a new order each epoch; rank 0 scores the
    held-out image."""
    import ray.train.torch

    settings, data, worker = trainer.start_worker(cfg, StyleLoop)
    random_seed = settings.random_loss_network
    vgg = random_network("vgg16", random_seed) if random_seed is not None else from_registry(data["vgg"])
    objective = Objective(TransformerNet(), vgg, torch.tensor(data["style"]), settings.weights)
    model = ray.train.torch.prepare_model(objective)
    optimizer = torch.optim.Adam(objective.net.parameters(), lr=settings.lr)  # the loss network stays frozen
    images = torch.tensor(data["train"])  # (N, 3, S, S) uint8; copies: ray.get gives read-only arrays
    mine = np.arange(len(images))[worker.rank :: worker.world]
    held = torch.tensor(data["test"]).float().to(worker.device)

    def batches(rng: np.random.Generator):
        order = rng.permutation(mine)
        for start in range(0, len(order), settings.batch):
            yield (images[order[start : start + settings.batch]].float().to(worker.device),)

    def holdout() -> dict:
        with torch.no_grad():
            content, style, _ = objective.losses(held)
        return {"holdout_content_loss": content.item(), "holdout_style_loss": style.item()}

    trainer.train_epochs(model, optimizer, settings, worker, batches, holdout)


def run(config: TrainStyleConfig, ctx: JobContext) -> dict:
    config.check()
    if config.loss_network is None and config.random_loss_network is None:
        raise JobFailed(
            "training needs a loss network: import ImageNet VGG16 weights with `python -m jobs.models import "
            "vgg16.pth --architecture vgg16-torchvision --name vgg16` and pass --loss-network vgg16, or pass "
            "--random-loss-network SEED for a seeded random VGG16 (the model card says so)"
        )
    try:
        style_bytes = resolve(config.style).read_bytes()
        style = decode_image(style_bytes).rgb
    except (StorageError, ImageError) as exc:
        raise JobFailed(f"cannot read the style image {config.style!r}: {exc}") from None
    vgg_model = None
    if config.loss_network:
        vgg_model = catalogue.load(config.loss_network, config.models, expect="style-loss-network")
        if vgg_model.card["architecture"] != "vgg16-torchvision":  # Johnson et al.'s layers are VGG16's
            raise JobFailed(f"{config.loss_network} is a {vgg_model.card['architecture']}, not vgg16-torchvision")
    sources, _ = manifest_sources(resolve(config.content), config.manifest_run_id, ("image",))
    crops, skipped = _content(sources.slice(0, config.max_images), config.size)
    by_type = dict(Counter(e["error_type"] for e in skipped).most_common())
    if len(crops) < 2:
        why = f" ({len(skipped)} skipped: {', '.join(f'{n} {t}' for t, n in by_type.items())})" if skipped else ""
        raise JobFailed(f"{len(crops)} usable content images under {config.content}{why}: training needs at least 2")
    stack = np.stack(crops).transpose(0, 3, 1, 2)
    side = max(style.shape[:2])
    style_img = Image.fromarray(style)
    style_img.thumbnail((max(config.size, min(side, 2 * config.size)),) * 2, Image.Resampling.LANCZOS)
    data = {"train": stack[1:], "test": stack[:1], "style": _to_tensor(np.asarray(style_img))[None].numpy()}
    ctx.log.info(
        "%d content images, 1 held out; %d skipped%s; style %s",
        len(crops),
        len(skipped),
        f" ({', '.join(f'{n} {t}' for t, n in by_type.items())}: errors/)" if skipped else "",
        config.style,
    )
    ensure_ray()
    import ray

    payload = data | ({"vgg": vgg_model} if vgg_model else {})
    vgg_id = vgg_model.sha256 if vgg_model else f"random-{config.random_loss_network}"  # part of what was trained on
    data_sha256 = hashlib.sha256((trainer.fingerprint(data) + vgg_id).encode()).hexdigest()
    state = trainer.fit(_loop, StyleLoop.of(config, ray.put(payload), data_sha256), ctx, config)
    weights = {k.removeprefix("net."): v for k, v in state["model"].items() if k.startswith("net.")}
    last = state["history"][-1]
    vgg_name = vgg_model.name if vgg_model else f"random-vgg16-seed{config.random_loss_network}"
    card = {
        "modality": "image",
        "task": "style-transfer",
        "input": "RGB in 0..255, any size",
        "style": {"uri": resolve(config.style).uri, "sha256": hashlib.sha256(style_bytes).hexdigest()},
        "loss_network": {"name": vgg_name, "sha256": vgg_model.sha256 if vgg_model else None},
        "random_loss_network": vgg_model is None,
        "training": {"run_id": ctx.run_id, "epochs": last["epoch"] + 1, "images": len(crops) - 1, "size": config.size}
        | {k: v for k, v in last.items() if k.startswith("holdout_")},
    }
    counts = {"content_images": len(crops), "errors": len(skipped), "errors_by_type": by_type}
    marker = trainer.finish(
        ctx, config, state["history"], "transformer-net-pytorch-examples", weights, card, counts, skipped
    )
    first = next((h for h in state["history"] if h["epoch"] == -1), last)
    ctx.log.info(
        "held-out style loss %.4g untrained -> %.4g, content %.4g -> %.4g, after %d epochs",
        first.get("holdout_style_loss", float("nan")),
        last["holdout_style_loss"],
        first.get("holdout_content_loss", float("nan")),
        last["holdout_content_loss"],
        last["epoch"] + 1,
    )
    return marker


def main(argv: list[str] | None = None) -> int:
    return run_job(JOB, TrainStyleConfig, run, argv, description=__doc__.split("\n")[0])


if __name__ == "__main__":
    sys.exit(run_module(__spec__.name))
