"""encoders_onnx.decoding: images decoded downscaled (close to a full-size decode, in bounded
memory), every mode shown as a viewer shows it, and the pixel budget shared by decoding threads."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from encoders_onnx.decoding import (
    KEPT_COSINE,
    KEPT_MAX_PIXELS,
    KEPT_SHORT_SIDE,
    MediaError,
    PixelBudget,
    as_shown,
    load_image,
    probe_image,
)
from encoders_onnx.image import ImageEncoder
from tests.conftest import MYNTRA

REPO = Path(__file__).resolve().parents[2]
MAX_PIXELS = 40_000_000  # streams.settings' default max_image_pixels


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def myntra_photos(count: int) -> list[Image.Image]:
    paths = sorted((MYNTRA / "images").glob("*.jpg"))[::997][:count]
    if len(paths) < count:
        pytest.skip(f"no Myntra images under {MYNTRA}")
    return [Image.open(path).convert("RGB") for path in paths]


def gradient(width: int = 64, height: int = 48) -> Image.Image:
    """8-bit RGB with every channel varying, so a wrong scaling or channel order shows."""
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // (width - 1), y * 255 // (height - 1), (x + y) % 256], axis=-1)
    return Image.fromarray(pixels.astype(np.uint8), "RGB")


# --- downscaled decoding ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "size, kept",
    [
        ((6000, 6000), (512, 512)),
        ((5120, 3416), (767, 512)),
        ((512, 9000), (244, 4293)),  # a banner: the pixel cap wins over the shorter side
        ((600, 400), (600, 400)),  # within the margin: decoded as it is
        ((60, 80), (60, 80)),
    ],
)
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_kept_size_follows_the_shorter_side_and_the_pixel_cap(size: tuple[int, int], kept: tuple[int, int], fmt: str) -> None:
    data = encode(Image.new("RGB", size, (10, 120, 200)), fmt)
    image = load_image(data, MAX_PIXELS)
    assert (image.mode, image.size) == ("RGB", kept)
    assert probe_image(data, MAX_PIXELS).kept_size == kept
    assert min(kept) <= KEPT_SHORT_SIDE and kept[0] * kept[1] <= KEPT_MAX_PIXELS
    assert image.getpixel((kept[0] // 2, kept[1] // 2)) == pytest.approx((10, 120, 200), abs=2)


def test_large_jpegs_are_decoded_by_the_dct_at_a_fraction_of_their_size() -> None:
    jpeg = probe_image(encode(Image.new("RGB", (6000, 4000)), "JPEG"), MAX_PIXELS)
    png = probe_image(encode(Image.new("RGB", (6000, 4000)), "PNG"), MAX_PIXELS)
    assert (jpeg.format, jpeg.width, jpeg.height) == ("JPEG", 6000, 4000)
    assert jpeg.decode_pixels == 1500 * 1000  # 1/4 scale: 1/8 would be below the kept 768x512
    assert png.decode_pixels == 6000 * 4000  # PNG has no draft mode: decoded whole, then reduced
    assert jpeg.kept_pixels == png.kept_pixels == 768 * 512


def test_header_checks_come_before_any_pixel_is_decoded() -> None:
    huge = encode(Image.new("L", (4000, 3000)), "PNG")
    for func in (probe_image, load_image):
        with pytest.raises(MediaError) as info:
            func(huge, 10_000_000)
        assert info.value.code == "too_many_pixels"


def test_exif_orientation_is_applied_to_the_downscaled_image() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90 degrees clockwise to display
    stored = Image.new("RGB", (3000, 2000), (200, 30, 30))
    stored.paste((30, 30, 200), (0, 0, 1500, 2000))  # left half blue: shown upright it is the top
    image = load_image(encode(stored, "JPEG", exif=exif), MAX_PIXELS)
    assert image.size == (512, 768)
    assert image.getpixel((256, 100)) == pytest.approx((30, 30, 200), abs=8)
    assert image.getpixel((256, 700)) == pytest.approx((200, 30, 30), abs=8)


@pytest.fixture(scope="module")
def encoder(model_dir: Path) -> ImageEncoder:
    return ImageEncoder(model_dir, providers="cpu")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_downscaled_decode_encodes_like_the_full_size_one(encoder: ImageEncoder, fmt: str) -> None:
    """Real photos enlarged to 2400-4000 px: the vectors match a full-size decode's (KEPT_COSINE)."""
    cosines = []
    for scale, photo in zip([40, 50], myntra_photos(2)):
        data = encode(photo.resize((photo.width * scale, photo.height * scale), Image.Resampling.BICUBIC), fmt)
        full = Image.open(io.BytesIO(data)).convert("RGB")
        small = load_image(data, MAX_PIXELS)
        assert small.size != full.size  # the test would be vacuous otherwise
        vectors = encoder.encode([full, small])
        cosines.append(float(vectors[0] @ vectors[1]))
    assert min(cosines) >= KEPT_COSINE, cosines


# --- peak memory of a full batch --------------------------------------------------------------

# The pipeline's pool decodes with 8 threads; with a budget of two maximum-size images at once,
# a batch of 32 products x 4 images of 6000x6000 measured a peak RSS of 529 MB (the old
# full-size decode held 144 MB per image: ~18 GB for the batch). The bound leaves a margin for
# other Python and Pillow builds.
PEAK_RSS_BOUND_MB = 768
_DECODE_BATCH = """
import resource, sys
from concurrent.futures import ThreadPoolExecutor
from encoders_onnx.decoding import PixelBudget, load_image
paths, max_pixels, budget_pixels = sys.argv[1:-2], int(sys.argv[-2]), int(sys.argv[-1])
datas = [open(p, "rb").read() for p in paths]
budget = PixelBudget(budget_pixels)
with ThreadPoolExecutor(8) as pool:
    images = list(pool.map(lambda d: load_image(d, max_pixels, budget), [datas[i % len(datas)] for i in range(32 * 4)]))
assert len(images) == 128 and all(im.size == (512, 512) for im in images)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""


def test_a_batch_of_maximum_size_images_decodes_in_bounded_memory(tmp_path: Path) -> None:
    photo = myntra_photos(1)[0].resize((6000, 6000), Image.Resampling.BILINEAR)
    paths = [tmp_path / "a.png", tmp_path / "b.jpg", tmp_path / "c.jpg", tmp_path / "d.jpg"]
    photo.save(paths[0], compress_level=1)
    for quality, path in zip([95, 85, 75], paths[1:]):
        photo.save(path, quality=quality)
    del photo
    assert 6000 * 6000 <= MAX_PIXELS
    run = subprocess.run(
        [sys.executable, "-c", _DECODE_BATCH, *map(str, paths), str(MAX_PIXELS), str(2 * 6000 * 6000)],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, check=False,
    )
    assert run.returncode == 0, run.stderr
    peak_mb = int(run.stdout.split()[-1])
    print(f"peak RSS decoding 32 x 4 images of 6000x6000: {peak_mb} MB")
    assert peak_mb < PEAK_RSS_BOUND_MB


def test_the_pixel_budget_bounds_what_threads_hold_at_once() -> None:
    budget = PixelBudget(100)
    held, peak, lock = [0], [0], threading.Lock()

    def decode(pixels: int) -> None:
        with budget.reserve(pixels):
            with lock:
                held[0] += min(pixels, 100)
                peak[0] = max(peak[0], held[0])
            threading.Event().wait(0.01)
            with lock:
                held[0] -= min(pixels, 100)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(decode, [40, 40, 40, 500, 40, 60, 30, 70] * 4))  # 500: waits to run alone
    assert 0 < peak[0] <= 100 and held[0] == 0
    with pytest.raises(ValueError):
        PixelBudget(0)


# --- modes: every one shown as a viewer shows it ------------------------------------------------


def test_16_bit_greyscale_png_matches_the_8_bit_image() -> None:
    grey = gradient().convert("L")
    sixteen = Image.fromarray(np.asarray(grey).astype(np.uint16) * 257)  # 0-255 -> 0-65535
    data = encode(sixteen, "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    assert np.array_equal(np.asarray(load_image(data, MAX_PIXELS)), np.asarray(grey.convert("RGB")))


def _with_transparent_left_half(image: Image.Image) -> tuple[Image.Image, np.ndarray]:
    """``image`` with its left half made transparent, and what a viewer shows: that half white."""
    alpha = Image.new("L", image.size, 255)
    alpha.paste(0, (0, 0, image.width // 2, image.height))
    shown = np.asarray(image.convert("RGB")).copy()
    shown[:, : image.width // 2] = 255
    image = image.copy()
    image.putalpha(alpha)
    return image, shown


@pytest.mark.parametrize("mode", ["LA", "RGBA"])
def test_alpha_is_composited_on_white(mode: str) -> None:
    base = gradient().convert(mode[:-1])
    transparent, shown = _with_transparent_left_half(base)
    assert transparent.mode == mode
    assert np.array_equal(np.asarray(load_image(encode(transparent, "PNG"), MAX_PIXELS)), shown)


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_with_a_transparent_index_is_composited_on_white(fmt: str) -> None:
    palette = gradient().quantize(64)
    pixels = np.asarray(palette).copy()
    pixels[:, :32] = 63  # the transparent index
    image = Image.fromarray(pixels, "P")
    image.putpalette(palette.getpalette())
    image.info["transparency"] = 63
    shown = np.asarray(image.convert("RGB")).copy()
    shown[:, :32] = 255
    data = encode(image, fmt, transparency=63)
    assert np.array_equal(np.asarray(load_image(data, MAX_PIXELS)), shown)


def test_cmyk_jpeg_matches_the_rgb_image() -> None:
    rgb = gradient()
    loaded = load_image(encode(rgb.convert("CMYK"), "JPEG", quality=100), MAX_PIXELS)
    assert loaded.mode == "RGB"
    assert np.abs(np.asarray(loaded).astype(int) - np.asarray(rgb).astype(int)).mean() < 3


@pytest.mark.parametrize(
    "make",
    [
        lambda grey: Image.fromarray(grey.astype(np.uint16) * 257),  # I;16
        lambda grey: Image.fromarray(grey.astype(np.int32) * 257, "I"),  # 16-bit levels in 32 bits
        lambda grey: Image.fromarray(grey.astype(np.float32), "F"),  # levels 0-255
        lambda grey: Image.fromarray(grey, "L").convert("1").convert("L"),  # a bilevel image stays
    ],
    ids=["I;16", "I", "F", "1"],
)
def test_wide_modes_are_shown_at_their_8_bit_levels(make) -> None:
    grey = np.asarray(gradient().convert("L"))
    image = make(grey)
    expected = grey if image.mode != "L" else np.asarray(image)
    shown = as_shown(image)
    assert shown.mode == "L"
    assert np.array_equal(np.asarray(shown), expected)


@pytest.mark.parametrize("mode, key", [("L", 7), ("RGB", (7, 7, 7))])
def test_a_transparent_colour_key_is_composited_on_white(mode: str, key: int | tuple[int, ...]) -> None:
    grey = np.full((8, 8), 100, np.uint8)
    grey[:, :4] = 7  # the keyed colour: transparent
    image = Image.fromarray(grey, "L").convert(mode)
    shown = np.full((8, 8, 3), 100, np.uint8)
    shown[:, :4] = 255
    assert np.array_equal(np.asarray(load_image(encode(image, "PNG", transparency=key), MAX_PIXELS)), shown)
