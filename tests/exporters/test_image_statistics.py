"""Colour and texture statistics of earlier MobileNetV2 blocks beside the pooled vector (issue 13):
the torch module, and `export` with `image_statistics` (a new image model version, fp32 only)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from encoders_onnx.image import ImageEncoder, ImagePreprocessing
from encoders_onnx.session import ModelNotExportedError
from exporters.encoders import IMAGE_PREPROCESSING, _up_to_date, export_all
from exporters.torch_models import STATISTICS_BLOCKS, MobileNetV2WithStatistics, load_mobilenet_v2

CHANNELS = {1: 16, 3: 24, 6: 32, 10: 64, 13: 96, 16: 160}  # MobileNetV2's output channels of those blocks
STATISTICS = 2 * sum(CHANNELS[b] for b in STATISTICS_BLOCKS)


def _flat(colour: tuple[float, float, float], noise: float = 0.0, seed: int = 0) -> torch.Tensor:
    """A (3, 224, 224) ImageNet-normalized image of one colour, with some pixel noise (texture)."""
    rgb = torch.tensor(colour).view(3, 1, 1).expand(3, 224, 224)
    rgb = (rgb + noise * torch.randn(3, 224, 224, generator=torch.Generator().manual_seed(seed))).clamp(0, 1)
    return (rgb - torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


@pytest.fixture(scope="module")
def network() -> MobileNetV2WithStatistics:
    colours = [(0.9, 0.1, 0.1), (0.1, 0.1, 0.9), (0.1, 0.8, 0.2), (0.9, 0.9, 0.9), (0.2, 0.2, 0.2), (0.8, 0.6, 0.3)]
    pixels = torch.stack([_flat(c, noise, i) for i, c in enumerate(colours) for noise in (0.0, 0.2)])
    return MobileNetV2WithStatistics.calibrated(load_mobilenet_v2(), pixels, weight=0.6).eval()


def test_features_are_the_unit_pooled_vector_then_the_weighted_statistics(network) -> None:
    x = torch.stack([_flat((0.9, 0.1, 0.1)), _flat((0.1, 0.1, 0.9), 0.2)])
    with torch.inference_mode():
        features, logits = network(x)
        plain_pooled, plain_logits = load_mobilenet_v2()(x)
    assert features.shape == (2, 1280 + STATISTICS) and logits.shape == (2, 1000)
    assert torch.allclose(features[:, :1280], torch.nn.functional.normalize(plain_pooled, dim=1), atol=1e-5)
    assert torch.allclose(features[:, 1280:].norm(dim=1), torch.full((2,), 0.6), atol=1e-5)
    assert torch.allclose(logits, plain_logits, atol=1e-4)  # the classifier reads the raw pooled vector


def test_calibration_needs_two_images() -> None:
    with pytest.raises(ValueError, match="at least 2 images"):
        MobileNetV2WithStatistics.calibrated(load_mobilenet_v2(), _flat((0.5, 0.5, 0.5))[None], weight=0.6)


def test_the_statistics_are_standardized_on_the_pixels_the_worker_will_see(model_dir: Path) -> None:
    """The export calibrates with the preprocessing it records, before any model file exists."""
    image = Image.new("RGB", (333, 500), (200, 30, 60))
    served = ImageEncoder(model_dir, "cpu").preprocess(image)
    np.testing.assert_array_equal(ImagePreprocessing(IMAGE_PREPROCESSING)(image), served)
    assert served.shape == (3, IMAGE_PREPROCESSING["center_crop"], IMAGE_PREPROCESSING["center_crop"])


def test_export_with_statistics_is_a_new_fp32_image_version_without_int8(model_dir: Path, tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    for path in model_dir.iterdir():
        if path.is_file():
            shutil.copyfile(path, tmp_path / path.name)
    plain = json.loads((model_dir / "image.manifest.json").read_text())
    assert _up_to_date(tmp_path, "image", image_statistics=0.6) is None  # another weight: export again

    manifests = {m["name"]: m for m in export_all(tmp_path, image_statistics=0.6)}

    image = manifests["image"]
    assert image["version"] != plain["version"]
    assert image["extra"]["statistics"] == {"weight": 0.6, "blocks": list(STATISTICS_BLOCKS), "values": STATISTICS,
                                            "calibration_images": image["extra"]["statistics"]["calibration_images"]}
    assert image["extra"]["statistics"]["calibration_images"] >= 100  # the demo catalog's photos
    assert "image.int8" not in manifests and not (tmp_path / "image.int8.onnx").exists()
    assert "image.int8: not made, the fp32 model serves alone: the image statistics come out of int8 activations" in capsys.readouterr().out
    assert _up_to_date(tmp_path, "image", image_statistics=0.6) is not None
    assert _up_to_date(tmp_path, "image", image_statistics=0.0) is None  # and back to plain on request
    encoder = ImageEncoder(tmp_path, "cpu")
    vectors = encoder.encode([Image.new("RGB", (300, 400), "red"), Image.new("RGB", (300, 400), "navy")])
    assert encoder.dim == 1280 + STATISTICS and vectors.shape == (2, encoder.dim)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    with pytest.raises(ModelNotExportedError, match="fp32 only"):
        ImageEncoder(tmp_path, "cpu", "int8")
