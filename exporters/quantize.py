"""int8 encoders written beside the fp32 ones, each checked against fp32 before it counts as exported.

- Text (MiniLM): dynamic quantization, int8 weights *per channel*. The default per-tensor mode
  loses too much (cosine to fp32 ~0.82 on product titles); per channel keeps it above 0.985.
- Image (MobileNetV2): static QDQ quantization, int8 weights per channel and uint8 activations
  whose ranges are calibrated on catalog images (the demo catalog ships in the repo, so a fresh
  clone needs nothing else); the first convolutions stay fp32 (``FP32_INPUT_CONVS``). Dynamic
  quantization does not speed up convolutions.

Parity: the int8 graph's unit vectors are compared with the fp32 graph's on catalog inputs the
calibration did not see; below the model's cosine threshold nothing is written and
:class:`QuantizationParityError` names the numbers. The int8 model gets its own version (hash of
its bytes), so the store writes its vectors to a collection of their own.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from PIL import Image

from encoders_onnx.image import IMAGE_MODEL, ImageEncoder
from encoders_onnx.session import INT8, exported_manifest, file_sha256, l2_normalize, model_name
from encoders_onnx.text import TEXT_MODEL, TextEncoder
from exporters.catalog import CatalogMapping, Product, load_catalog
from exporters.onnx_export import install_model

REPO = Path(__file__).resolve().parents[1]
DEMO_CATALOG = REPO / "demo" / "catalog"
DEMO_MAPPING = CatalogMapping(title="productDisplayName", fine=("articleType",), image="image")
CALIBRATION_IMAGES = 64  # the first images calibrate (memory grows with them: ~4.8 GB at 64); the rest check parity
# Activation ranges clipped at this percentile: measured on the demo catalog, mean cosine to fp32
# 0.965 against 0.954 for plain min/max and 0.959 for its moving average (outliers waste the uint8 range).
CALIBRATION_PERCENTILE = 99.99
# The input side of a CNN stays fp32: up to and including its third convolution (MobileNetV2's
# stem and first inverted-residual block, at full resolution). Measured on the demo catalog, mean /
# min cosine to fp32: all quantized 0.963 / 0.837; first conv fp32 0.976 / 0.931; first three
# 0.990 / 0.980 (~2x faster than fp32); first six 0.990 / 0.982 (1.6x); the last conv in fp32
# alone changed nothing.
# Other settings, measured by text-to-image recall@10 on the Myntra test split (4,470 photos, the
# fp32 bundle, fp32 titles: the image side's share of int8's loss; all fp32: 0.570): these 0.547;
# depthwise convolutions also fp32 0.541; Entropy or MinMax calibration 0.537; 99.999th percentile
# 0.535; int8 symmetric activations 0.528 (and 1.06x, no faster); calibrating on 64 / 128 photos
# of that catalog's training split instead of the demo's 0.547 / 0.554. None was kept. On an AVX2
# machine without VNNI, uint8 weights (no 16-bit saturation) lost recall@5 0.019 instead of 0.026, but
# ran 224 instead of 281 images/s (fp32 ~195): not kept either (README, int8).
FP32_INPUT_CONVS = 3
# Mean cosine of int8 to fp32 unit vectors below which an export fails (measured on the demo
# catalog: text 0.993, image 0.965; the image side is then judged by `shelfstream eval`).
MIN_MEAN_COSINE = {TEXT_MODEL: 0.985, IMAGE_MODEL: 0.95}
# Measured with the statistics' own nodes kept fp32: their inputs, earlier blocks' int8 activations,
# already move them too far.
STATISTICS_NOT_QUANTIZED = ("the image statistics come out of int8 activations too far from fp32 (cosine ~0.84 "
                            f"against a threshold of {MIN_MEAN_COSINE[IMAGE_MODEL]}); serve this image model at fp32")


class QuantizationParityError(RuntimeError):
    """The int8 model's vectors are too far from the fp32 model's."""


@dataclass(frozen=True)
class NotQuantized:
    """An int8 model the quantizer declines to make for this fp32 model, and why: not an error
    (the fp32 model serves), so ``export`` reports it and goes on."""

    name: str
    reason: str


@dataclass(frozen=True)
class Parity:
    mean_cosine: float
    min_cosine: float
    threshold: float
    items: int

    def as_dict(self) -> dict[str, Any]:
        return {"mean_cosine": round(self.mean_cosine, 5), "min_cosine": round(self.min_cosine, 5),
                "threshold": self.threshold, "items": self.items}


def parity(fp32: np.ndarray, int8: np.ndarray, threshold: float) -> Parity:
    """Row-wise cosine of the two precisions' vectors."""
    cosines = np.sum(l2_normalize(fp32) * l2_normalize(int8), axis=1)
    return Parity(float(cosines.mean()), float(cosines.min()), threshold, len(cosines))


def calibration_catalog(dataset: Path = DEMO_CATALOG / "products.csv", mapping: CatalogMapping = DEMO_MAPPING) -> list[Product]:
    """Products with an image file, in catalog order (the demo catalog unless told otherwise)."""
    return [p for p in load_catalog(dataset, mapping).products if p.image is not None and p.image.is_file()]


class _ImageBatches(CalibrationDataReader):
    """Feeds preprocessed images to the calibrator, 16 at a time (the worker's preprocessing)."""

    def __init__(self, encoder: ImageEncoder, paths: Sequence[Path], batch: int = 16) -> None:
        self._batches: Iterator[dict[str, np.ndarray]] = (
            {"pixel_values": np.stack([encoder.preprocess(Image.open(p)) for p in paths[i:i + batch]])}
            for i in range(0, len(paths), batch)
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def quantize_text_encoder(model_dir: str | Path, products: Sequence[Product] | None = None) -> dict[str, Any]:
    """``text.int8.onnx``: dynamic per-channel int8 of ``text.onnx``, parity checked on catalog titles."""
    model_dir = Path(model_dir)
    titles = [p.text for p in (products if products is not None else calibration_catalog())]

    def quantize(src: Path, dst: Path) -> dict[str, Any]:
        quantize_dynamic(src, dst, per_channel=True, weight_type=QuantType.QInt8)
        return {"method": "dynamic", "weights": "int8 per channel", "activations": "uint8 dynamic"}

    def vectors(precision: str, folder: Path) -> np.ndarray:
        return TextEncoder(folder, "cpu", precision).encode(titles)

    return _quantize(model_dir, TEXT_MODEL, quantize, vectors)


def quantize_image_encoder(model_dir: str | Path, products: Sequence[Product] | None = None) -> dict[str, Any] | NotQuantized:
    """``image.int8.onnx``: static QDQ int8 of ``image.onnx`` calibrated on catalog images; declined
    (and a stale one removed) when the fp32 model carries colour and texture statistics."""
    model_dir = Path(model_dir)
    fp32_manifest = exported_manifest(model_dir, IMAGE_MODEL)
    if fp32_manifest is not None and fp32_manifest["extra"].get("statistics"):
        remove_int8(model_dir, IMAGE_MODEL)
        return NotQuantized(model_name(IMAGE_MODEL, INT8), STATISTICS_NOT_QUANTIZED)
    paths = [p.image for p in (products if products is not None else calibration_catalog()) if p.image is not None]
    calibration, check = paths[:CALIBRATION_IMAGES], paths[CALIBRATION_IMAGES:] or paths
    fp32 = ImageEncoder(model_dir, "cpu")

    def quantize(src: Path, dst: Path) -> dict[str, Any]:
        quantize_static(
            src, dst, _ImageBatches(fp32, calibration), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.Percentile, extra_options={"CalibPercentile": CALIBRATION_PERCENTILE},
            nodes_to_exclude=input_side_nodes(src, FP32_INPUT_CONVS),
        )
        _drop_unused_initializers(dst)
        return {"method": "static QDQ", "weights": "int8 per channel",
                "activations": f"uint8, calibrated to the {CALIBRATION_PERCENTILE} percentile",
                "calibration_images": len(calibration), "fp32_input_convolutions": FP32_INPUT_CONVS}

    def vectors(precision: str, folder: Path) -> np.ndarray:
        return ImageEncoder(folder, "cpu", precision).encode([Image.open(p) for p in check])

    return _quantize(model_dir, IMAGE_MODEL, quantize, vectors)


def _quantize(
    model_dir: Path,
    modality: str,
    quantize: Callable[[Path, Path], dict[str, Any]],
    vectors: Callable[[str, Path], np.ndarray],
) -> dict[str, Any]:
    """Quantize ``<modality>.onnx`` in a temp folder, check parity, then install it with its manifest."""
    fp32_manifest = exported_manifest(model_dir, modality)
    if fp32_manifest is None:
        raise FileNotFoundError(f"no fp32 {modality!r} model in {model_dir} to quantize: export it first")
    ort.set_default_logger_severity(3)  # the calibrator's sessions list every folded constant as a warning
    name = model_name(modality, INT8)
    threshold = MIN_MEAN_COSINE[modality]
    with tempfile.TemporaryDirectory(dir=model_dir, prefix=f".{name}.quantize.") as tmp:
        folder = Path(tmp)
        int8_onnx = folder / f"{name}.onnx"
        method = quantize(model_dir / f"{modality}.onnx", int8_onnx)
        # The encoders read a manifest and its assets (the tokenizer): provisional copies let
        # them load the int8 graph here before it is checked.
        for asset in fp32_manifest["extra"].get("assets", []):
            shutil.copyfile(model_dir / asset, folder / asset)
        provisional = {**fp32_manifest, "name": name, "version": "unchecked", "onnx_sha256": file_sha256(int8_onnx)}
        (folder / f"{name}.manifest.json").write_text(json.dumps(provisional))
        checked = parity(vectors("fp32", model_dir), vectors(INT8, folder), threshold)
        print(f"{name}: cosine to fp32 mean {checked.mean_cosine:.4f} min {checked.min_cosine:.4f} "
              f"on {checked.items} items (threshold {threshold})", flush=True)
        if not checked.mean_cosine >= threshold:
            raise QuantizationParityError(
                f"{name}: mean cosine to fp32 {checked.mean_cosine:.4f} < threshold {threshold} "
                f"(min {checked.min_cosine:.4f} over {checked.items} items); nothing written"
            )
        extra = {**fp32_manifest["extra"], "precision": INT8, "quantization": method,
                 "parity": checked.as_dict(), "fp32_version": fp32_manifest["version"]}
        fields = {k: fp32_manifest[k] for k in ("inputs", "outputs", "opset")}
        return install_model(int8_onnx, model_dir, name, f"{fp32_manifest['source']}, int8", extra, fields)


def remove_int8(model_dir: Path, modality: str) -> None:
    """The int8 model quantized from an fp32 one that was replaced (manifest first: it is what counts)."""
    name = model_name(modality, INT8)
    for suffix in (".manifest.json", ".onnx"):
        (model_dir / f"{name}{suffix}").unlink(missing_ok=True)


def input_side_nodes(path: Path, convolutions: int) -> list[str]:
    """The names of a graph's nodes, in order, up to and including its ``convolutions``-th Conv:
    the layers quantization hurts most (full resolution, raw pixels), for any exported CNN."""
    names: list[str] = []
    seen = 0
    for node in onnx.load(str(path)).graph.node:
        if seen >= convolutions:
            break
        names.append(node.name)
        seen += node.op_type == "Conv"
    return names


def _drop_unused_initializers(path: Path) -> None:
    """Remove the constants the quantizer left without a consumer: onnxruntime would otherwise log
    a warning for each of them every time a worker loads the model."""
    model = onnx.load(str(path))
    graph = model.graph
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    for initializer in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(initializer)
    for node in [n for n in graph.node if n.op_type == "Constant" and not set(n.output) & used]:
        graph.node.remove(node)
    onnx.save(model, str(path))
