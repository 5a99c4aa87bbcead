"""The int8 encoders beside the fp32 ones: parity on inputs the export never saw, own versions,
a failed parity check writes nothing, a missing int8 model is an error naming the export command."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from encoders_onnx.image import ImageEncoder
from encoders_onnx.session import ModelNotExportedError, file_sha256
from encoders_onnx.text import TextEncoder
from exporters import quantize
from exporters.quantize import MIN_MEAN_COSINE, QuantizationParityError, quantize_text_encoder

REPO = Path(__file__).resolve().parents[2]
# Titles written for this test (not in the demo catalog the export checked parity on).
FRESH_TITLES = [
    "Roadster Men Olive Green Slim Fit Cargo Trousers",
    "Lavie Women Tan Structured Tote Bag",
    "Titan Men Silver-Toned Analogue Watch with Steel Strap",
    "HRX by Hrithik Roshan Women Pink Training Shoes",
    "Jaipur Kurti Women Indigo Printed A-Line Kurta with Palazzos",
    "Casio G-Shock Unisex Black Digital Watch",
    "a", "red", "Levis 511 slim jeans, dark blue, 32x34, stretch denim with five pockets and a zip fly",
]


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize("modality", ["text", "image"])
def test_int8_manifest_has_its_own_version_and_records_parity(model_dir: Path, modality: str) -> None:
    fp32 = json.loads((model_dir / f"{modality}.manifest.json").read_text())
    int8 = json.loads((model_dir / f"{modality}.int8.manifest.json").read_text())
    assert int8["name"] == f"{modality}.int8" and int8["extra"]["precision"] == "int8"
    assert int8["version"] != fp32["version"] and int8["extra"]["fp32_version"] == fp32["version"]
    assert int8["onnx_sha256"] == file_sha256(model_dir / f"{modality}.int8.onnx")
    assert int8["outputs"] == fp32["outputs"] and int8["inputs"] == fp32["inputs"]
    assert int8["extra"]["parity"]["mean_cosine"] >= MIN_MEAN_COSINE[modality]
    assert (model_dir / f"{modality}.int8.onnx").stat().st_size < (model_dir / f"{modality}.onnx").stat().st_size / 3


def test_int8_text_keeps_cosine_to_fp32_on_new_titles(model_dir: Path) -> None:
    fp32 = TextEncoder(model_dir, "cpu").encode(FRESH_TITLES)
    int8 = TextEncoder(model_dir, "cpu", "int8").encode(FRESH_TITLES)
    assert int8.shape == fp32.shape == (len(FRESH_TITLES), 384)
    np.testing.assert_allclose(np.linalg.norm(int8, axis=1), 1.0, atol=1e-4)
    assert _cosines(fp32, int8).mean() >= MIN_MEAN_COSINE["text"]


def test_int8_image_keeps_cosine_to_fp32_on_transformed_images(model_dir: Path) -> None:
    # Mirrored and cropped catalog photos: pixels the calibration never saw.
    paths = sorted((REPO / "demo" / "catalog" / "images").glob("*.jpg"))[::10]
    images = [Image.open(p).convert("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT).crop((4, 4, 56, 76)) for p in paths]
    fp32 = ImageEncoder(model_dir, "cpu").encode(images)
    int8 = ImageEncoder(model_dir, "cpu", "int8").encode(images)
    # the packaged model with its first convolutions in fp32 measured 0.989 here (all int8: ~0.96)
    assert _cosines(fp32, int8).mean() >= 0.98 > MIN_MEAN_COSINE["image"]
    # and int8 still ranks like fp32: each image's nearest neighbour (other than itself) mostly agrees
    nearest = [np.argsort(-(v @ v.T), axis=1)[:, 1] for v in (fp32, int8)]
    assert np.mean(nearest[0] == nearest[1]) >= 0.8


def test_the_input_side_of_a_cnn_stays_fp32(model_dir: Path) -> None:
    graph = onnx.load(str(model_dir / "image.onnx")).graph
    kept = quantize.input_side_nodes(model_dir / "image.onnx", 3)
    assert kept == [node.name for node in graph.node[:len(kept)]]
    assert [node.op_type for node in graph.node if node.name in kept].count("Conv") == 3
    assert graph.node[len(kept) - 1].op_type == "Conv"  # it ends at the third convolution
    manifest = json.loads((model_dir / "image.int8.manifest.json").read_text())
    assert manifest["extra"]["quantization"]["fp32_input_convolutions"] == quantize.FP32_INPUT_CONVS
    int8_convs = [n for n in onnx.load(str(model_dir / "image.int8.onnx")).graph.node if n.op_type == "Conv"]
    quantized = [any(name.endswith("DequantizeLinear_Output") for name in conv.input) for conv in int8_convs]
    assert quantized[:3] == [False] * 3 and all(quantized[3:])  # fp32 weights and inputs, then int8


def test_missing_int8_model_names_the_export_command(model_dir: Path, tmp_path: Path) -> None:
    for name in ("text.onnx", "text.manifest.json", "tokenizer.json"):
        shutil.copyfile(model_dir / name, tmp_path / name)
    TextEncoder(tmp_path, "cpu")  # fp32 is there
    with pytest.raises(ModelNotExportedError, match="text.int8.onnx.*shelfstream export"):
        TextEncoder(tmp_path, "cpu", "int8")
    with pytest.raises(ValueError, match="precision must be one of fp32, int8"):
        TextEncoder(tmp_path, "cpu", "fp16")


def test_int8_is_redone_when_its_fp32_model_changed(model_dir: Path, tmp_path: Path) -> None:
    from exporters.encoders import _up_to_date

    for path in model_dir.glob("*.json"):
        shutil.copyfile(path, tmp_path / path.name)
    for path in model_dir.glob("*.onnx"):
        (tmp_path / path.name).symlink_to(path)
    assert _up_to_date(tmp_path, "text.int8") is not None
    manifest = json.loads((tmp_path / "text.manifest.json").read_text())
    (tmp_path / "text.manifest.json").write_text(json.dumps({**manifest, "version": "another"}))
    assert _up_to_date(tmp_path, "text.int8") is None and _up_to_date(tmp_path, "image.int8") is not None


def test_failed_parity_writes_nothing(model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("text.onnx", "text.manifest.json", "tokenizer.json"):
        shutil.copyfile(model_dir / name, tmp_path / name)
    monkeypatch.setitem(quantize.MIN_MEAN_COSINE, "text", 1.01)  # no int8 model can reach it
    products = quantize.calibration_catalog()[:16]
    with pytest.raises(QuantizationParityError, match=r"mean cosine to fp32 0\.9\d+ < threshold 1\.01"):
        quantize_text_encoder(tmp_path, products)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["text.manifest.json", "text.onnx", "tokenizer.json"]
