"""Bring your own torch encoder: export a user's image or text model into a model folder, where the
worker serves it as a new model version (its own Qdrant collection; ``shelfstream reindex``
moves queries to it).

What a model must be:
- image: ``factory()`` returns an ``nn.Module`` whose ``forward(pixel_values)`` takes a float
  batch ``(n, 3, crop, crop)`` preprocessed as the flags say (ImageNet's by default) and returns
  the feature batch ``(n, dim)``, or a tuple whose first item is it. The runtime L2-normalizes.
- text: either a Hugging Face / sentence-transformers folder (``config.json``, weights and
  ``tokenizer.json``), mean-pooled over the attention mask and L2-normalized like MiniLM; or
  ``factory()`` returning an ``nn.Module`` with ``forward(input_ids, attention_mask) -> (n, dim)``
  plus a ``tokenizer.json``; the export appends the L2 normalization.

``dim`` is read from the model's output. The export goes through the project's one export
function (:func:`exporters.onnx_export.export_onnx`): the same torch-vs-onnxruntime check on two
batch shapes and the same manifest. An int8 model made from the replaced fp32 one is removed, so
the int8 setting cannot serve a stale model; ``shelfstream export`` quantizes the new one.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from encoders_onnx.image import IMAGE_MODEL
from encoders_onnx.session import INT8, file_sha256, model_name
from encoders_onnx.text import TEXT_MODEL, load_tokenizer, tokenize
from exporters.onnx_export import atomic_write, export_onnx
from exporters.quantize import remove_int8

TOKENIZER_FILE = "tokenizer.json"
_SAMPLE_TITLES = ["Nike Men Red Running Shoes", "Puma Women Black Printed T-shirt, cotton, regular fit", "a bag"]


@dataclass(frozen=True)
class ImagePreprocessing:
    """What the runtime does to an image before the graph (torchvision's eval transform by default)."""

    resize_shorter: int = 256
    interpolation: str = "bilinear"
    center_crop: int = 224
    scale: float = 1 / 255
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def as_manifest(self) -> dict[str, Any]:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std), "color": "RGB", "layout": "NCHW"}


def load_factory(spec: str) -> Callable[[], nn.Module]:
    """``package.module:function`` -> the function (the module is imported from ``sys.path``)."""
    module_name, sep, function = spec.partition(":")
    if not sep or not module_name or not function:
        raise ValueError(f"--factory must look like 'package.module:function', not {spec!r}")
    factory = getattr(importlib.import_module(module_name), function, None)
    if not callable(factory):
        raise ValueError(f"{spec!r}: {module_name} has no callable {function!r}")
    return factory


def build_module(factory: Callable[[], nn.Module], weights: str | Path | None) -> nn.Module:
    """The factory's module with ``weights`` (a state dict, loaded strictly) in eval mode."""
    module = factory()
    if not isinstance(module, nn.Module):
        raise TypeError(f"the factory returned {type(module).__name__}, not a torch nn.Module")
    if weights is not None:
        state = torch.load(Path(weights), map_location="cpu", weights_only=True)
        module.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state, strict=True)
    return module.eval()


class _FirstOutput(nn.Module):
    """The user's image module, reduced to its feature output."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, pixel_values: Tensor) -> Tensor:
        out = self.module(pixel_values)
        features = out[0] if isinstance(out, (tuple, list)) else out
        if features.dim() != 2:
            raise ValueError(f"an image model must return (batch, dim) features, got shape {tuple(features.shape)}")
        return features


class _NormalizedText(nn.Module):
    """The user's text module with L2 normalization appended (the runtime expects unit vectors)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return nn.functional.normalize(self.module(input_ids=input_ids, attention_mask=attention_mask), p=2.0, dim=1)


def export_image_model(
    module: nn.Module, model_dir: str | Path, source: str, preprocessing: ImagePreprocessing = ImagePreprocessing()
) -> dict[str, Any]:
    """A user's image module -> ``<model_dir>/image.onnx`` + manifest (features only, no logits)."""
    crop = preprocessing.center_crop
    sample = torch.randn(2, 3, crop, crop, generator=torch.Generator().manual_seed(0))
    manifest = export_onnx(
        _FirstOutput(module), {"pixel_values": sample}, ["features"],
        {"pixel_values": {0: "batch"}, "features": {0: "batch"}}, model_dir, IMAGE_MODEL, source,
        extra={"preprocessing": preprocessing.as_manifest(), "features_normalized": False, "bring_your_own": True},
    )
    remove_int8(Path(model_dir), IMAGE_MODEL)
    return manifest


def export_text_model(
    module: nn.Module, tokenizer_json: str | Path, model_dir: str | Path, source: str, max_length: int = 256,
    normalize: bool = True,
) -> dict[str, Any]:
    """A user's text module + its ``tokenizer.json`` -> ``<model_dir>/text.onnx`` + manifest."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    tokenizer_path = model_dir / TOKENIZER_FILE
    atomic_write(tokenizer_path, Path(tokenizer_json).read_bytes())
    feeds = tokenize(load_tokenizer(tokenizer_path, max_length), _SAMPLE_TITLES)
    manifest = export_onnx(
        _NormalizedText(module) if normalize else module,
        {name: torch.from_numpy(array) for name, array in feeds.items()},
        ["embeddings"],
        {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
         "embeddings": {0: "batch"}},
        model_dir, TEXT_MODEL, source,
        extra={
            "tokenizer": {"file": TOKENIZER_FILE, "sha256": file_sha256(tokenizer_path), "truncation": max_length,
                          "padding": "longest"},
            "normalized": True,
            "bring_your_own": True,
            "assets": [TOKENIZER_FILE],
        },
    )
    remove_int8(model_dir, TEXT_MODEL)
    return manifest


def export_hf_text_folder(folder: str | Path, model_dir: str | Path, max_length: int = 256) -> dict[str, Any]:
    """A Hugging Face / sentence-transformers folder -> mean pooling + L2 norm, like MiniLM."""
    from exporters.torch_models import SentenceEmbedder

    folder = Path(folder)
    if not (folder / TOKENIZER_FILE).is_file():
        raise FileNotFoundError(f"{folder} has no {TOKENIZER_FILE}: pass a folder saved by transformers/sentence-transformers")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel

    transformer = AutoModel.from_pretrained(str(folder), attn_implementation="eager")
    return export_text_model(SentenceEmbedder(transformer).eval(), folder / TOKENIZER_FILE, model_dir,
                             f"Hugging Face folder {folder.name}", max_length, normalize=False)


def export_user_model(
    modality: str,
    model_dir: str | Path,
    factory: str | None = None,
    weights: str | None = None,
    hf_folder: str | None = None,
    tokenizer: str | None = None,
    max_length: int = 256,
    preprocessing: ImagePreprocessing = ImagePreprocessing(),
) -> dict[str, Any]:
    """What ``shelfstream export --modality ...`` runs: checks the flags, then exports."""
    if modality == TEXT_MODEL and hf_folder:
        return export_hf_text_folder(hf_folder, model_dir, max_length)
    if not factory:
        raise ValueError(f"--modality {modality} needs --factory module:function"
                         + (" (or --hf-folder)" if modality == TEXT_MODEL else ""))
    module = build_module(load_factory(factory), weights)
    source = f"{factory}" + (f" with weights {Path(weights).name} ({file_sha256(Path(weights))[:12]})" if weights else "")
    if modality == IMAGE_MODEL:
        return export_image_model(module, model_dir, source, preprocessing)
    if modality == TEXT_MODEL:
        if not tokenizer:
            raise ValueError("--modality text --factory needs --tokenizer tokenizer.json")
        return export_text_model(module, tokenizer, model_dir, source, max_length)
    raise ValueError(f"--modality must be {IMAGE_MODEL} or {TEXT_MODEL}, not {modality!r}")


def parse_floats(value: str, count: int = 3) -> tuple[float, ...]:
    """``'0.5,0.5,0.5'`` -> three floats (the --mean / --std flags)."""
    items = tuple(float(v) for v in value.split(","))
    if len(items) != count:
        raise ValueError(f"expected {count} comma-separated numbers, got {value!r}")
    return items


def preprocessing_from_flags(values: Sequence[tuple[str, Any]]) -> ImagePreprocessing:
    """ImageNet's preprocessing with the flags that were given replacing its values."""
    given = {k: v for k, v in values if v is not None}
    for key in ("mean", "std"):
        if key in given:
            given[key] = parse_floats(given[key])
    return ImagePreprocessing(**given)
