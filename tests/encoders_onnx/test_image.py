"""ImageEncoder: torchvision preprocessing, shapes, unit norm, batch independence, frames, real Myntra images."""

from __future__ import annotations

import csv
import random
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from encoders_onnx.image import ImageEncoder
from tests.conftest import MYNTRA

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


@pytest.fixture(scope="module")
def encoder(model_dir: Path) -> ImageEncoder:
    return ImageEncoder(model_dir, providers="cpu")


def _noise_images(count: int, size: tuple[int, int] = (60, 80)) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(count)]


def test_preprocess_scales_and_normalizes_each_channel(encoder: ImageEncoder) -> None:
    rgb = (200, 100, 30)
    pixels = encoder.preprocess(Image.new("RGB", (60, 80), rgb))
    assert pixels.shape == (3, 224, 224) and pixels.dtype == np.float32
    expected = (np.array(rgb, np.float32) / 255 - MEAN) / STD
    np.testing.assert_allclose(pixels[:, 112, 112], expected, atol=1e-5)


def test_preprocess_center_crops_without_resizing_at_256(encoder: ImageEncoder) -> None:
    array = np.random.default_rng(1).integers(0, 256, (256, 300, 3), dtype=np.uint8)  # shorter side already 256
    pixels = encoder.preprocess(Image.fromarray(array))
    top, left = 16, 38  # torchvision: round((256 - 224) / 2), round((300 - 224) / 2)
    crop = array[top : top + 224, left : left + 224].astype(np.float32) / 255
    np.testing.assert_allclose(pixels, ((crop - MEAN) / STD).transpose(2, 0, 1), atol=1e-5)


@pytest.mark.parametrize("size", [(60, 80), (80, 60), (500, 90), (1000, 700), (225, 224)])
def test_preprocess_resizing_only_the_crop_matches_resizing_the_whole_image(encoder: ImageEncoder, size) -> None:
    """The reference is torchvision's order (resize the whole image, then crop); resizing only the
    kept region may round a pixel the other way, never more than one step of 1/255."""
    image = _noise_images(1, size)[0]
    width, height = size
    short, long = sorted(size)
    new_long = int(256 * long / short)
    resized = image.resize((256, new_long) if width <= height else (new_long, 256), Image.Resampling.BILINEAR)
    top, left = round((resized.height - 224) / 2), round((resized.width - 224) / 2)
    crop = np.asarray(resized, np.float32)[top : top + 224, left : left + 224] / 255
    step = 1 / 255 / STD.min()
    np.testing.assert_allclose(encoder.preprocess(image), ((crop - MEAN) / STD).transpose(2, 0, 1), atol=step + 1e-5)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_preprocess_converts_any_mode_to_rgb(encoder: ImageEncoder, mode: str) -> None:
    assert encoder.preprocess(Image.new(mode, (500, 90))).shape == (3, 224, 224)


def test_shape_dtype_and_unit_norm(encoder: ImageEncoder) -> None:
    vectors = encoder.encode(_noise_images(5))
    assert vectors.shape == (5, 1280) and vectors.dtype == np.float32 and encoder.dim == 1280
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert encoder.encode([]).shape == (0, 1280)


def test_batching_equals_one_at_a_time(encoder: ImageEncoder) -> None:
    images = _noise_images(5)
    together = encoder.encode(images, batch_size=32)
    np.testing.assert_allclose(np.concatenate([encoder.encode([im]) for im in images]), together, atol=1e-5)
    np.testing.assert_allclose(encoder.encode(images, batch_size=2), together, atol=1e-5)


def test_frames_equal_images(encoder: ImageEncoder) -> None:
    images = _noise_images(3, size=(320, 240))
    frames = np.stack([np.asarray(im) for im in images])
    np.testing.assert_allclose(encoder.encode_frames(frames), encoder.encode(images), atol=1e-6)
    with pytest.raises(ValueError, match="uint8"):
        encoder.encode_frames(frames.astype(np.float32))


def test_classify_gives_imagenet_logits(encoder: ImageEncoder) -> None:
    logits = encoder.classify(_noise_images(2))
    assert logits.shape == (2, 1000) and np.isfinite(logits).all()


ARTICLE_TYPES = ("Tshirts", "Casual Shoes", "Handbags", "Watches")  # Apparel, Footwear, Accessories x2


@pytest.fixture(scope="module")
def myntra_sample() -> list[dict[str, str]]:
    """15 products of each of four article types (three master categories), fixed seed."""
    catalog = MYNTRA / "products.csv"
    if not catalog.is_file():
        pytest.skip(f"shared Myntra dataset not found at {MYNTRA}")
    by_type: dict[str, list[dict[str, str]]] = defaultdict(list)
    with catalog.open(newline="") as fh:
        for row in csv.DictReader(fh):
            if row["articleType"] in ARTICLE_TYPES and (MYNTRA / "images" / f"{row['id']}.jpg").is_file():
                by_type[row["articleType"]].append(row)
    rng = random.Random(0)
    return [row for kind in ARTICLE_TYPES for row in rng.sample(by_type[kind], 15)]


def test_same_article_type_is_nearer_than_other_master_category(encoder: ImageEncoder, myntra_sample: list[dict[str, str]]) -> None:
    images = [Image.open(MYNTRA / "images" / f"{row['id']}.jpg") for row in myntra_sample]
    vectors = encoder.encode(images)
    cosine = vectors @ vectors.T
    article = np.array([row["articleType"] for row in myntra_sample])
    master = np.array([row["masterCategory"] for row in myntra_sample])
    off_diagonal = ~np.eye(len(myntra_sample), dtype=bool)
    same_type = cosine[(article[:, None] == article[None, :]) & off_diagonal].mean()
    other_master = cosine[master[:, None] != master[None, :]].mean()
    assert same_type > other_master + 0.1, (same_type, other_master)
