"""jobs.stylize: every image of a manifest x one or more styles -> styled images in the object store and a
``styled/`` index.

    python -m jobs.stylize ROOT --style s3://b/styles/candy.jpg,s3://b/styles/udnie.jpg [--method gatys]
        [--loss-network vgg19 | --random-loss-network SEED] [--steps 300] [--scales 0.5,1] [--max-side 512]
    python -m jobs.stylize ROOT --method feedforward --style candy,udnie [--tile 1024]

gatys: each image's pixels are optimised (ops/style/gatys.py) against a style image, with VGG19 features from a loss
network imported through the registry (a torchvision-format checkpoint: ``jobs.models import vgg19.pth
--architecture vgg19-torchvision --name vgg19``). Without one the job refuses, unless --random-loss-network SEED asks
explicitly for a seeded random VGG19 (fine for textures and demos; every row says ``random_weights``).
feedforward: each style is a TransformerNet (pytorch/examples' checkpoints, imported with --architecture
transformer-net-pytorch-examples); large images go through in overlapping tiles with shared statistics.

Images are written as ``styled-images/<run_id>/<content sha256>-<style sha256>-<method>.<ext>`` (names from
hashes: an input's name never becomes a key), at most --max-side pixels on their longer side (0: original size).
Each content image x style is one ``styled/`` row (sources, method, parameters, seed, output, losses, seconds,
model provenance); an image that cannot be styled (corrupt, too small, too large) is one error row per style.
Model actors take --gpus-per-actor GPUs each (default: one per GPU), --batch-size images of one size together.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from PIL import Image

from jobs.runtime.accounting import OUTCOMES, Ledger, collect, ledger_of, plan_sources, settle, staged_rows
from jobs.runtime.cli import JobConfig
from jobs.runtime.cluster import ActorOptions, actor_plan, ensure_ray, model_pipeline
from jobs.runtime.launch import JobContext, run_job, run_module
from jobs.runtime.options import ManifestInput, ModelsOnWorkers, tailored
from jobs.runtime.output import WRITE_ROWS, JobOutput, RowWriter, error_row, file_row
from ops.io.custody import verified_bytes
from ops.io.errors import ImageError, JobFailed, StorageError, TooSmall
from ops.io.root import inside
from ops.io.schemas import STYLED
from ops.io.storage import Store, resolve
from ops.media.images import DEFAULT_MAX_PIXELS, decode_image
from ops.models import catalogue
from ops.models.device import best_device
from ops.style import gatys
from ops.style.transformer_net import MIN_SIDE, stylize, stylize_tiled
from ops.style.vgg import random_network

JOB = "stylize"
log = logging.getLogger(f"crossmatch.{JOB}")
METHODS = ("gatys", "feedforward")
FORMATS = {"jpeg": ("JPEG", "jpg"), "png": ("PNG", "png"), "webp": ("WEBP", "webp")}
MIN_SHARD_BYTES = 1 << 20


@dataclass
class StylizeConfig(ModelsOnWorkers, ManifestInput, ActorOptions, JobConfig):
    manifest: str = tailored(ManifestInput, "manifest", help="root with the manifest")
    models: str | None = tailored(ModelsOnWorkers, "models", help="models root")
    style: str = field(
        default="",
        metadata={"run_key": True, "help": "comma-separated: style image URIs (gatys) or TransformerNet models"},
    )
    method: str = field(default="gatys", metadata={"run_key": True, "help": "gatys or feedforward"})
    loss_network: str | None = field(
        default=None, metadata={"run_key": True, "help": "gatys: an imported VGG19 (vgg19-torchvision) model"}
    )
    random_loss_network: int | None = field(
        default=None, metadata={"run_key": True, "help": "gatys: use a seeded random VGG19 instead (labelled)"}
    )
    steps: int = field(default=300, metadata={"run_key": True, "help": "gatys: optimiser evaluations"})
    scales: str = field(default="1", metadata={"run_key": True, "help": "gatys: coarse to fine, e.g. 0.5,1"})
    coarse_steps: int | None = field(
        default=None, metadata={"run_key": True, "help": "gatys: evaluations at each coarse scale (of --steps)"}
    )
    optimizer: str = field(default="lbfgs", metadata={"run_key": True, "help": "gatys: lbfgs or adam"})
    alpha: float = field(default=1.0, metadata={"run_key": True, "help": "gatys: content weight"})
    beta: float = field(default=1e5, metadata={"run_key": True, "help": "gatys: style weight"})
    tv: float = field(default=1e-4, metadata={"run_key": True, "help": "gatys: total variation weight"})
    preserve_colour: bool = field(default=False, metadata={"run_key": True, "help": "gatys: luminance only"})
    seed: int = field(default=0, metadata={"run_key": True, "help": "gatys: noise init and tie-breaking"})
    max_side: int = field(default=512, metadata={"run_key": True, "help": "longer side of the output (0: as is)"})
    min_side: int = field(default=MIN_SIDE, metadata={"help": "refuse images with a shorter side than this"})
    max_pixels: int = field(default=DEFAULT_MAX_PIXELS, metadata={"help": "refuse images declaring more pixels"})
    tile: int = field(default=1024, metadata={"run_key": True, "help": "feedforward: tile side for large images"})
    format: str = field(default="jpeg", metadata={"run_key": True, "help": "jpeg, png or webp"})
    quality: int = field(default=92, metadata={"run_key": True, "help": "jpeg and webp quality"})
    batch_size: int = field(default=4, metadata={"help": "images of one size optimised together (GPU)"})


@dataclass(frozen=True)
class Style:
    uri: str
    sha256: str
    image: np.ndarray | None  # gatys: the style image, RGB uint8
    model: str | None  # feedforward: the registry folder of its TransformerNet


@dataclass(frozen=True)
class StyleSettings:
    """What a style actor takes of the job's options: the networks it loads, how it decodes, styles and writes each
    image, and the run it writes under. Frozen and small: it travels to every style actor."""

    run_id: str
    method: str  # gatys or feedforward
    loss_network: str | None
    random_loss_network: int | None
    models: str | None
    min_side: int
    max_side: int
    max_pixels: int
    steps: int
    scales: str
    coarse_steps: int | None
    optimizer: str
    alpha: float
    beta: float
    tv: float
    preserve_colour: bool
    seed: int
    tile: int
    format: str
    quality: int
    batch_size: int

    @classmethod
    def of(cls, config: StylizeConfig, run_id: str) -> StyleSettings:
        """The job's styling options, for the run ``run_id``."""
        return cls(
            run_id=run_id,
            method=config.method,
            loss_network=config.loss_network,
            random_loss_network=config.random_loss_network,
            models=config.models,
            min_side=config.min_side,
            max_side=config.max_side,
            max_pixels=config.max_pixels,
            steps=config.steps,
            scales=config.scales,
            coarse_steps=config.coarse_steps,
            optimizer=config.optimizer,
            alpha=config.alpha,
            beta=config.beta,
            tv=config.tv,
            preserve_colour=config.preserve_colour,
            seed=config.seed,
            tile=config.tile,
            format=config.format,
            quality=config.quality,
            batch_size=config.batch_size,
        )

    def gatys_settings(self) -> gatys.Settings:
        """The Gatys optimisation these options ask for."""
        return gatys.Settings(
            alpha=self.alpha,
            beta=self.beta,
            tv=self.tv,
            steps=self.steps,
            optimizer=self.optimizer,
            preserve_colour=self.preserve_colour,
            scales=[float(v) for v in self.scales.split(",")],
            coarse_steps=self.coarse_steps,
            seed=self.seed,
        )

    def parameters(self) -> dict:
        """What every ``styled/`` row records as its parameters (the seed has a column of its own)."""
        names = ("steps", "scales", "coarse_steps", "optimizer", "alpha", "beta", "tv", "preserve_colour")
        return {k: getattr(self, k) for k in (*names, "max_side", "tile", "format", "quality")}


class StyleActor:
    """Loads the networks once; styles each content image of a batch with every style and writes the results."""

    def __init__(self, settings: StyleSettings, styles: list[Style], out: Store) -> None:
        self.settings, self.styles = settings, styles
        self.out = out  # the driver's Store: its endpoint and encryption settings travel with it
        self.device = best_device()
        if not log.handlers:  # an actor's own process: progress lines go to its stderr, which Ray shows the driver
            log.addHandler(logging.StreamHandler())
            log.setLevel(logging.INFO)
        if settings.method == "gatys":
            if settings.random_loss_network is not None:
                self.net = random_network("vgg19", settings.random_loss_network).to(self.device)
            else:
                vgg = catalogue.load(settings.loss_network, settings.models, expect="style-loss-network")
                self.net = catalogue.build(vgg, self.device)
            self.provenance = (self.net.name, self.net.sha256, self.net.random)
        else:
            self.transformers = {}
            for style in styles:
                model = catalogue.load(style.model, expect="style-transfer")
                self.transformers[style.uri] = (catalogue.build(model, self.device), model.name, model.sha256)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows: list[dict] = []
        decoded: dict[tuple, list[tuple[dict, np.ndarray, float]]] = defaultdict(list)
        for source in batch.to_pylist():
            started = time.perf_counter()
            try:
                rgb = self._decode(source)
            except Exception as exc:  # noqa: BLE001 - one bad file must not stop the job: an error row per style
                rows += [_error(source, style, exc) for style in self.styles]
                continue
            decoded[rgb.shape].append((source, rgb, time.perf_counter() - started))
        for group in decoded.values():  # images of one size go through together
            for style in self.styles:
                rows += self._style_group(group, style)
        return pa.Table.from_pylist(rows, schema=_OUT)

    def _decode(self, source: dict) -> np.ndarray:
        data = verified_bytes(resolve(source["uri"], self.out.endpoint_url), source["sha256"])
        settings = self.settings
        rgb = decode_image(data, max_pixels=settings.max_pixels).rgb
        if min(rgb.shape[:2]) < settings.min_side:
            raise TooSmall(f"{rgb.shape[1]}x{rgb.shape[0]} is smaller than --min-side {settings.min_side}")
        if settings.max_side and max(rgb.shape[:2]) > settings.max_side:
            im = Image.fromarray(rgb)
            im.thumbnail((settings.max_side, settings.max_side), Image.Resampling.LANCZOS)
            rgb = np.asarray(im)
        return rgb

    def _style_group(self, group: list[tuple[dict, np.ndarray, float]], style: Style) -> list[dict]:
        settings, started = self.settings, time.perf_counter()
        x = torch.tensor(np.stack([g[1] for g in group])).permute(0, 3, 1, 2).float().to(self.device)
        losses: dict = {}
        if settings.method == "gatys":
            side = max(x.shape[-2:])
            style_img = Image.fromarray(style.image)
            style_img.thumbnail((side, side), Image.Resampling.LANCZOS)
            s = torch.tensor(np.asarray(style_img)).permute(2, 0, 1)[None].float().to(self.device) / 255
            progress = _progress(len(group), style.uri)
            out, losses = gatys.transfer(self.net, x / 255, s, settings.gatys_settings(), progress)
            out = out * 255
            name, sha, random = self.provenance
        else:
            net, name, sha = self.transformers[style.uri]
            if max(x.shape[-2:]) <= settings.tile:  # whole images, --batch-size at a time (GPUs like batches)
                out = torch.cat([stylize(net, chunk) for chunk in x.split(settings.batch_size)])
            else:
                out = torch.stack([stylize_tiled(net, image, tile=settings.tile) for image in x])
            random = False
        per_image = (time.perf_counter() - started) / len(group)
        rows = []
        for i, (source, _, decode_seconds) in enumerate(group):
            pixels = out[i].permute(1, 2, 0).round().clamp(0, 255).byte().cpu().numpy()
            target = self._write(source, style, pixels)
            rows.append(
                {
                    "kind": "result",
                    "uri": source["uri"],
                    "sha256": source["sha256"],
                    "style_uri": style.uri,
                    "style_sha256": style.sha256,
                    "output_uri": target,
                    "width": int(pixels.shape[1]),
                    "height": int(pixels.shape[0]),
                    "content_loss": losses["content_loss"][i] if losses else None,
                    "style_loss": losses["style_loss"][i] if losses else None,
                    "seconds": per_image + decode_seconds,
                    "model_name": name,
                    "model_sha256": sha,
                    "random_weights": random,
                    "error_type": None,
                    "message": None,
                }
            )
        return rows

    def _write(self, source: dict, style: Style, pixels: np.ndarray) -> str:
        fmt, ext = FORMATS[self.settings.format]
        buf = io.BytesIO()
        options = {"quality": self.settings.quality} if fmt in ("JPEG", "WEBP") else {}
        Image.fromarray(pixels).save(buf, format=fmt, **options)
        key = f"{source['sha256'][:32]}-{style.sha256[:16]}-{self.settings.method}.{ext}"
        target = self.out.join("styled-images", self.settings.run_id, key)
        target.put_atomic(buf.getvalue())
        return inside(self.out, target.uri)  # below the root: kept relative to it


_OUT = pa.schema(
    [
        ("kind", pa.string()),
        ("uri", pa.string()),
        ("sha256", pa.string()),
        ("style_uri", pa.string()),
        ("style_sha256", pa.string()),
        ("output_uri", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("content_loss", pa.float64()),
        ("style_loss", pa.float64()),
        ("seconds", pa.float64()),
        ("model_name", pa.string()),
        ("model_sha256", pa.string()),
        ("random_weights", pa.bool_()),
        ("error_type", pa.string()),
        ("message", pa.string()),
    ]
)


def write_styled(batch: pa.Table, writer: RowWriter, ledger: Ledger, fields: dict) -> pa.Table:
    """The styled rows of the batch written to ``styled/`` by this worker (with the run's ``fields``: run id, method,
    parameters, seed), and every image x style's outcome staged in the ledger. The driver gets paths and counts."""
    ok = np.asarray(batch.column("kind").to_pylist()) != "error"
    made: list[dict] = []
    if ok.any():
        rows = [{k: r[k] for k in STYLED.names if k in r} | fields for r in batch.filter(pa.array(ok)).to_pylist()]
        made += [
            {"kind": "file", "path": file_row(f), "rows": f.rows}
            for f in writer.write(pa.Table.from_pylist(rows, schema=STYLED))
        ]
    if batch.num_rows:
        ended = batch.select(["kind", "uri", "sha256", "style_uri", "error_type", "message"])
        keys = [f"{u} x {s}" for u, s in zip(ended["uri"].to_pylist(), ended["style_uri"].to_pylist(), strict=True)]
        ended = ended.append_column("key", pa.array(keys, pa.string()))
        ended = ended.append_column("stage", pa.array(["stylize"] * ended.num_rows, pa.string()))
        made.append({"kind": OUTCOMES, "path": ledger.stage(OUTCOMES, ended), "rows": ended.num_rows})
    return staged_rows(made)


def finish(lo: int, hi: int, ledger: Ledger, paths: dict, outcomes: pa.Table | None) -> tuple[list, dict]:
    """A slice settled: its styled images counted (their rows were written as they came)."""
    if outcomes is None:
        return [], {}
    return [], {"styled": int(pc.sum(pc.equal(outcomes.column("kind"), "result")).as_py() or 0)}


def _progress(images: int, style: str, every: int = 50) -> gatys.Progress:
    """Logs a Gatys optimisation's objective every ``every`` evaluations (minutes per image at 512 on a CPU)."""

    def report(scale: float, count: int, _: torch.Tensor, loss: torch.Tensor) -> None:
        if count % every == 0:
            log.info(
                "gatys: %d image(s) x %s, scale %g, evaluation %d, J %.4g", images, style, scale, count, loss.mean()
            )

    return report


def _error(source: dict, style: Style, exc: Exception) -> dict:
    row = error_row(exc, "stylize", uri=source["uri"], sha256=source["sha256"], style_uri=style.uri)
    return row | {"message": f"{row['message']} (style {style.uri})"}


def _styles(config: StylizeConfig) -> list[Style]:
    """The styles, read and checked before any work is scheduled."""
    names = [s.strip() for s in config.style.split(",") if s.strip()]
    if not names:
        raise JobFailed(
            "no style given: --style a,b (style image URIs for gatys, TransformerNet models for feedforward)"
        )
    styles = []
    for name in names:
        if config.method == "gatys":
            try:
                data = resolve(name).read_bytes()
                rgb = decode_image(data, max_pixels=config.max_pixels).rgb
            except (StorageError, ImageError) as exc:
                raise JobFailed(f"cannot read the style image {name}: {exc}") from None
            styles.append(Style(resolve(name).uri, hashlib.sha256(data).hexdigest(), rgb, None))
        else:
            folder, card = catalogue.verified(name, config.models, "style-transfer")
            styles.append(Style(folder.uri, card["checkpoint_sha256"], None, folder.uri))
    return styles


def run(config: StylizeConfig, ctx: JobContext) -> dict:
    if config.method not in METHODS:
        raise JobFailed(f"unknown method {config.method!r}: use gatys or feedforward")
    if config.format not in FORMATS:
        raise JobFailed(f"unknown format {config.format!r}: use jpeg, png or webp")
    if config.method == "gatys" and config.loss_network is None and config.random_loss_network is None:
        raise JobFailed(
            "gatys needs a loss network: import ImageNet VGG19 weights (a torchvision-format checkpoint) with "
            "`python -m jobs.models import vgg19.pth --architecture vgg19-torchvision --name vgg19` and pass "
            "--loss-network vgg19, or pass --random-loss-network SEED for a seeded random VGG19 (textures and demos "
            "only; the output says so)"
        )
    styles = _styles(config)
    if config.method == "gatys" and config.loss_network:
        catalogue.verified(config.loss_network, config.models, "style-loss-network")
    root = resolve(config.manifest)
    job = JobOutput(ctx, config, {"styled": STYLED}, errors="counted")
    ensure_ray()
    plan = actor_plan(config)
    ledger = ledger_of(job.out)
    try:
        columns = ["uri", "sha256", "size"]
        sources = plan_sources(
            root, config.manifest_run_id, ("image",), columns, MIN_SHARD_BYTES, plan.parallelism, ledger
        )
        ctx.log.info(
            "%d images x %d styles (%s) of %d manifest rows",
            sources.count,
            len(styles),
            config.method,
            sources.manifest_rows,
        )
        if not sources.count:
            return job.commit({"sources": 0})
        return _stylize(config, ctx, job, plan, sources, ledger, styles)
    finally:
        ledger.remove()


def _stylize(config, ctx, job, plan, sources, ledger, styles) -> dict:
    """Run the pipeline, settle the accounting a slice of the images at a time, commit."""
    settings = StyleSettings.of(config, ctx.run_id)
    styled = model_pipeline(
        sources.blocks,
        plan,
        StyleActor,
        {"settings": settings, "styles": styles, "out": ctx.output},
        config.batch_size,
        what="style",
    )
    parameters = json.dumps(settings.parameters(), sort_keys=True)
    fields = {"run_id": ctx.run_id, "method": config.method, "parameters": parameters}
    fields["seed"] = config.seed
    styled = styled.map_batches(
        write_styled,
        fn_kwargs={"writer": job.row_writer("styled"), "ledger": ledger, "fields": fields},
        batch_size=WRITE_ROWS,
        batch_format="pyarrow",
    )
    staged = collect(styled, sources, per_source=len(styles), what="images x styles")
    suffixes = tuple(f" x {s.uri}" for s in styles)
    settled = settle(ledger, staged, finish, {}, job.row_writer("errors"), JOB, suffixes=suffixes)
    job.add_settled(staged.files + settled.files, settled.errors_by_type)
    written, errors = settled.counts["styled"], sum(settled.errors_by_type.values())
    summary = {
        "images": sources.count,
        "styles": len(styles),
        "styled": written,
        "random_loss_network": config.random_loss_network is not None,
    }
    images = ctx.output.join("styled-images", ctx.run_id).uri
    return job.commit(summary, f"{written} styled ({images}), {errors} errors {dict(job.errors_by_type) or ''}")


def main(argv: list[str] | None = None) -> int:
    return run_job(JOB, StylizeConfig, run, argv, description=__doc__.split("\n")[0])


if __name__ == "__main__":
    sys.exit(run_module(__spec__.name))
