"""Fine-tune the last blocks of the packaged MobileNetV2 on a catalog (image-title contrastive),
for export through the bring-your-own path (``shelfstream export --modality image``).

Why it is affordable on two cores: the frozen part of the network runs only once. Stages:
1. activations: every train and val image through the frozen prefix (``features[:first]``, run
   by onnxruntime from a checked export of that prefix), preprocessed exactly as the image
   encoder of the model folder preprocesses, cached on disk as float16, keyed by the prefix, the
   preprocessing and the media files (for ``features[17]`` these are 160x7x7 per image);
2. training: the last ``blocks`` entries of ``features`` (batch norm statistics frozen, its
   scale and shift trained) + mean pooling + a linear image head, against the frozen text
   encoder vectors (the shared feature cache) through a linear text head, symmetric InfoNCE
   with a learned temperature, early-stopped on validation text->image recall@10, bounded by a
   time budget;
3. output: the whole MobileNetV2 state dict with the trained blocks (``image_encoder.pt``, loads
   strictly into :class:`exporters.torch_models.MobileNetV2`, the factory) and ``finetune.json``
   (config, timings, history). The heads are a training device and are not kept: ``train``
   learns the serving heads on the new encoder's features.

Only the train split is learned from; validation picks the epoch; test is never read.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from encoders_onnx.image import ImageEncoder
from encoders_onnx.session import FP32, OnnxModel, file_sha256
from exporters.catalog import Catalog, CatalogMapping, add_catalog_arguments, load_catalog, mapping_from_args
from exporters.features import (
    DEFAULT_CACHE_DIR,
    MediaDecoding,
    add_feature_arguments,
    cached_array,
    media_keys,
    run_images,
    text_features,
)
from exporters.heads import AlignmentHeads, info_nce
from exporters.metrics import text_to_image
from exporters.onnx_export import atomic_write, export_onnx
from exporters.torch_models import MobileNetV2, load_mobilenet_v2, mobilenet_weights_path
from exporters.train import seed_everything, train_loop

FACTORY = "exporters.torch_models:MobileNetV2"
WEIGHTS_FILE = "image_encoder.pt"
REPORT_FILE = "finetune.json"
DEFAULT_ACTIVATIONS_DIR = Path(".shelfstream") / "activations"
_SCORE_CHUNK = 512


@dataclass(frozen=True)
class FinetuneConfig:
    """Every knob of fine-tuning; recorded in ``finetune.json``."""

    blocks: int = 2  # trainable last entries of MobileNetV2.features (2: features[17] and [18])
    limit: int = 0  # train products used, a seeded random subset (0: the whole train split)
    shared_dim: int = 256
    batch_size: int = 256
    lr: float = 1e-4  # the blocks
    head_lr: float = 1e-3
    weight_decay: float = 1e-4
    temperature: float = 0.07  # initial InfoNCE temperature (learned)
    max_epochs: int = 10
    patience: int = 2
    budget_minutes: float = 30.0  # training stops at the first batch past it
    threads: int = 2


class TrainableTail(nn.Module):
    """The last blocks of a MobileNetV2 (the same modules, trained in place) + mean pooling.

    Batch norm stays in eval mode: its running statistics come from ImageNet and a few
    thousand catalog images would only add noise to them; its scale and shift still train.
    Channels-last memory: measured 1.35x faster on these 7x7 maps (forward + backward, CPU).
    """

    def __init__(self, backbone: MobileNetV2, blocks: int) -> None:
        super().__init__()
        if not 1 <= blocks < len(backbone.features):
            raise ValueError(f"--blocks must be 1..{len(backbone.features) - 1}, not {blocks}")
        self.blocks = nn.Sequential(*list(backbone.features)[-blocks:]).to(memory_format=torch.channels_last)

    def train(self, mode: bool = True) -> "TrainableTail":
        super().train(mode)
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eval()
        return self

    def forward(self, activations: Tensor) -> Tensor:
        return self.blocks(activations.contiguous(memory_format=torch.channels_last)).mean(dim=(2, 3))


class _Prefix(nn.Module):
    """The frozen first blocks of a MobileNetV2: pixels -> the input of the first trained block."""

    def __init__(self, backbone: MobileNetV2, blocks: int) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*list(backbone.features)[:-blocks])

    def forward(self, pixel_values: Tensor) -> Tensor:
        return self.blocks(pixel_values)


class ImageTextAligner(nn.Module):
    """Trainable tail + linear heads (image 1280 -> shared, text -> shared) + temperature."""

    def __init__(self, tail: TrainableTail, text_dim: int, image_dim: int, config: FinetuneConfig) -> None:
        super().__init__()
        self.tail = tail
        self.heads = AlignmentHeads({"text": text_dim, "image": image_dim}, config.shared_dim, config.temperature)

    def project(self, activations: Tensor, text: Tensor) -> tuple[Tensor, Tensor]:
        z = self.heads({"text": text, "image": self.tail(activations)})
        return z["text"], z["image"]


class FrozenPrefix:
    """The frozen first blocks over catalog images -> ``(n, C, H, W)`` float16 inputs of the first
    trained block, cached on disk. Run by onnxruntime (~4x torch on CPU) from a checked export
    made once, on the first cache miss. Preprocessing is the model folder's image encoder's (its
    manifest), so the fine-tuned encoder sees at serving what it saw in training."""

    def __init__(self, backbone: MobileNetV2, blocks: int, model_dir: str | Path, max_pixels: int,
                 batch_size: int = 32, threads: int = 2) -> None:
        self.encoder = ImageEncoder(model_dir, "cpu")
        self.prefix = _Prefix(backbone, blocks).eval()
        self.blocks, self.max_pixels, self.batch_size, self.threads = blocks, max_pixels, batch_size, threads
        self.crop = self.encoder.preprocess.crop
        with torch.no_grad():
            self.shape = tuple(self.prefix(torch.zeros(1, 3, self.crop, self.crop)).shape[1:])
        weights = hashlib.sha256(b"".join(t.numpy().tobytes() for t in self.prefix.state_dict().values())).hexdigest()
        preprocessing = self.encoder.model.manifest["extra"]["preprocessing"]
        self.version = f"mobilenet-prefix-{blocks}-{weights[:12]}-{preprocessing}"
        self._session: OnnxModel | None = None

    def activations(self, paths: list[Path | None], cache_dir: Path) -> np.ndarray:
        """The activations of ``paths`` (a zero row: no readable image), from the cache when there."""
        return cached_array(cache_dir, "activations", self.version, media_keys(paths),
                            lambda: run_images(paths, self.shape, self.threads, "activations", self._run,
                                               self.max_pixels, dtype=np.float16),
                            dtype=np.float16)

    def _run(self, images: list[Image.Image]) -> np.ndarray:
        session = self._session or self._export()
        return np.concatenate([
            session.run({"pixel_values": np.stack([self.encoder.preprocess(im) for im in images[i : i + self.batch_size]])},
                        ["activations"])["activations"]
            for i in range(0, len(images), self.batch_size)
        ])

    def _export(self) -> OnnxModel:
        """The prefix through the project's export check; the session outlives its temp folder."""
        with tempfile.TemporaryDirectory() as tmp:
            sample = {"pixel_values": torch.randn(2, 3, self.crop, self.crop, generator=torch.Generator().manual_seed(0))}
            export_onnx(self.prefix, sample, ["activations"], {"pixel_values": {0: "batch"}, "activations": {0: "batch"}},
                        tmp, "prefix", source=f"MobileNetV2 features[:-{self.blocks}]")
            self._session = OnnxModel(tmp, "prefix", "cpu")
        return self._session


def finetune(
    catalog: str | Path | Catalog,
    mapping: CatalogMapping | None,
    model_dir: str | Path,
    out_dir: str | Path,
    seed: int = 0,
    config: FinetuneConfig = FinetuneConfig(),
    cache_dir: str | Path = DEFAULT_CACHE_DIR,
    activations_dir: str | Path = DEFAULT_ACTIVATIONS_DIR,
    providers: str = "cpu",
    decoding: MediaDecoding = MediaDecoding(),
    precision: str = FP32,
    backbone: MobileNetV2 | None = None,
) -> dict[str, Any]:
    """Catalog -> cached activations -> trained last blocks -> ``out_dir/image_encoder.pt``.

    ``backbone`` defaults to the packaged ImageNet MobileNetV2 (tests pass a small random one).
    Returns the report (also written as ``finetune.json``).
    """
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    generator = seed_everything(seed, config.threads)
    cat = catalog if isinstance(catalog, Catalog) else load_catalog(catalog, mapping)
    if not cat.mapping.image:
        raise ValueError("fine-tuning the image encoder needs an image column (--image)")
    cat.check_media()
    split = cat.split(seed)
    train_rows = split["train"]
    if 0 < config.limit < len(train_rows):
        train_rows = np.sort(np.random.default_rng(seed).choice(train_rows, config.limit, replace=False))
    rows = {"train": train_rows, "val": split["val"]}
    text, has_text, text_version = text_features(cat, model_dir, cache_dir, providers, precision=precision)
    seconds["text_features"] = round(time.perf_counter() - started, 2)

    backbone = backbone if backbone is not None else load_mobilenet_v2()
    prefix = FrozenPrefix(backbone, config.blocks, model_dir, decoding.max_image_pixels)
    activations: dict[str, np.ndarray] = {}
    for part, index in rows.items():
        mark = time.perf_counter()
        activations[part] = prefix.activations([cat.products[i].image for i in index], Path(activations_dir))
        seconds[f"activations_{part}"] = round(time.perf_counter() - mark, 2)
    usable = {part: has_text[index] & activations[part].reshape(len(index), -1).any(axis=1) for part, index in rows.items()}
    x = {part: torch.from_numpy(activations[part][usable[part]]) for part in rows}
    t = {part: torch.from_numpy(text[rows[part]][usable[part]]) for part in rows}
    print(f"fine-tuning on {len(t['train'])} train products ({len(t['val'])} val), activations "
          f"{tuple(x['train'].shape[1:])} float16", flush=True)
    if len(t["train"]) < 2 or len(t["val"]) < 2:
        raise ValueError(f"too few products with a title and a readable image: {len(t['train'])} train, {len(t['val'])} val")

    tail = TrainableTail(backbone, config.blocks)
    model = ImageTextAligner(tail, text.shape[1], int(backbone.features[-1][0].out_channels), config)

    def loss(batch: Tensor) -> Tensor:
        zt, zi = model.project(x["train"][batch].float(), t["train"][batch])
        return info_nce(zt, zi, model.heads.scale)

    def score() -> float:
        zi = torch.cat([model.heads.heads["image"](tail(chunk.float())) for chunk in x["val"].split(_SCORE_CHUNK)])
        zt = model.heads.heads["text"](t["val"])
        return text_to_image(zt.numpy(), zi.numpy())["recall@10"]

    with torch.no_grad():
        model.eval()
        before = score()
    print(f"val text->image recall@10 with untrained heads: {before:.4f}", flush=True)
    mark = time.perf_counter()
    history = train_loop(
        "finetune", model, loss, len(t["train"]), score, config.head_lr, config, generator,
        param_groups=[{"params": tail.parameters(), "lr": config.lr},
                      {"params": model.heads.parameters(), "lr": config.head_lr}],
        budget_s=config.budget_minutes * 60, progress=True,
    )
    seconds["training"] = round(time.perf_counter() - mark, 2)
    seconds["per_epoch"] = round(seconds["training"] / max(history["epochs"], 1), 2)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights = out / WEIGHTS_FILE
    with tempfile.NamedTemporaryFile(dir=out, prefix=f".{WEIGHTS_FILE}.", delete=False) as tmp:
        torch.save(backbone.state_dict(), tmp.name)
    Path(tmp.name).replace(weights)
    seconds["total"] = round(time.perf_counter() - started, 2)
    report = {
        "factory": FACTORY,
        "weights": str(weights),
        "weights_sha256": file_sha256(weights),
        "base_weights": mobilenet_weights_path().name,
        "config": dataclasses.asdict(config),
        "seed": seed,
        "text_encoder": text_version,
        "train_products": len(t["train"]),
        "val_products": len(t["val"]),
        "val_recall@10_untrained_heads": round(before, 4),
        "history": history,
        "seconds": seconds,
        "training_data": cat.summary(seed),
    }
    atomic_write(out / REPORT_FILE, (json.dumps(report, indent=2) + "\n").encode())
    print(f"{weights}: best val text->image recall@10 {history['val_score']:.4f} (epoch {history['best_epoch']}); "
          f"export it with\n  SHELFSTREAM_MODEL_DIR=<a copy of the model folder> shelfstream export --modality image "
          f"--factory {FACTORY} --weights {weights}", flush=True)
    return report


def configure_finetune_parser(parser: argparse.ArgumentParser) -> None:
    """Flags of ``shelfstream finetune`` (the CLI adds this parser and calls :func:`run_finetune`)."""
    add_catalog_arguments(parser)
    add_feature_arguments(parser)
    parser.add_argument("--out", required=True, help=f"folder for {WEIGHTS_FILE} and {REPORT_FILE}")
    parser.add_argument("--activations-dir", default=str(DEFAULT_ACTIVATIONS_DIR),
                        help="cache of the frozen blocks' activations (float16; ~16 kB an image at --blocks 2)")
    for f in dataclasses.fields(FinetuneConfig):
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default,
                            help=f"fine-tuning knob (default {f.default})")


def run_finetune(args: argparse.Namespace, decoding: MediaDecoding = MediaDecoding()) -> dict[str, Any]:
    """``shelfstream finetune``; ``decoding`` is the worker's (the CLI reads it from the settings)."""
    config = FinetuneConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(FinetuneConfig)})
    return finetune(args.dataset, mapping_from_args(args), args.model_dir, args.out, args.seed, config, args.cache_dir,
                    args.activations_dir, args.providers, decoding, args.precision)
