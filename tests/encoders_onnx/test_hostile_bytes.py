"""Property: whatever bytes a seller sends, the image and video loaders end with a vector-ready
result or a ``MediaError`` with a documented code, never another exception.

Inputs are arbitrary bytes, and real files of every accepted format with bytes overwritten,
inserted or cut off (random bytes almost never get past a format's magic number). The examples
are derandomized so the suite is repeatable; run with ``--hypothesis-seed=random`` to explore.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from encoders_onnx.decoding import MediaError, load_image, probe_image
from encoders_onnx.video import VideoLimits, sample_frames
from streams.tools.videogen import clip_suffix, codec_available, make_clip

IMAGE_CODES = {"not_an_image", "too_many_pixels", "corrupt_image", "truncated"}
VIDEO_CODES = {
    "empty", "too_large", "not_a_video", "no_video_stream", "unsupported_codec", "too_many_pixels",
    "decode_error", "timeout",
}
EXPLORE = settings(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


def _image_seeds() -> list[bytes]:
    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
    variants = [
        (picture, "JPEG", {}), (picture, "JPEG", {"progressive": True}), (picture.convert("CMYK"), "JPEG", {}),
        (picture, "PNG", {}), (picture.convert("RGBA"), "PNG", {}), (picture.convert("P"), "PNG", {"transparency": 0}),
        (Image.fromarray(rng.integers(0, 65535, (24, 32), dtype=np.uint16)), "PNG", {}),
        (picture, "WEBP", {}), (picture.convert("P"), "GIF", {}), (picture, "BMP", {}), (picture.convert("1"), "BMP", {}),
    ]
    seeds = []
    for image, fmt, options in variants:
        buffer = io.BytesIO()
        image.save(buffer, fmt, **options)
        seeds.append(buffer.getvalue())
    return seeds


IMAGE_SEEDS = _image_seeds()


@st.composite
def damaged(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A real file with a few bytes overwritten or inserted, then maybe cut short."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 8))):
        at = draw(st.integers(0, len(data) - 1))
        patch = draw(st.binary(min_size=1, max_size=4))
        if draw(st.booleans()):
            data[at : at + len(patch)] = patch
        else:
            data[at:at] = patch
    if draw(st.booleans()):
        del data[draw(st.integers(0, len(data))) :]
    return bytes(data)


def _image_outcome(data: bytes) -> None:
    for load in (probe_image, load_image):
        try:
            image = load(data, 1_000_000)
        except MediaError as exc:
            assert exc.code in IMAGE_CODES, exc
        else:
            if load is load_image:
                assert image.mode == "RGB" and min(image.size) >= 1


@settings(EXPLORE, max_examples=300)
@given(st.binary(max_size=2048) | st.sampled_from([s[:16] for s in IMAGE_SEEDS]).flatmap(
    lambda magic: st.binary(max_size=512).map(lambda rest: magic + rest)))
def test_arbitrary_bytes_give_an_image_or_a_media_error(data: bytes) -> None:
    _image_outcome(data)


@settings(EXPLORE, max_examples=600)
@given(damaged(IMAGE_SEEDS))
def test_damaged_images_give_an_image_or_a_media_error(data: bytes) -> None:
    _image_outcome(data)


# --- videos ---------------------------------------------------------------------------------

LIMITS = VideoLimits(max_seconds=5.0, max_frames=4, max_side=64, timeout_s=5.0, max_bytes=1_000_000, max_pixels=1_000_000)


@pytest.fixture(scope="module")
def video_seeds(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    folder = tmp_path_factory.mktemp("clips")
    frames = [Image.new("RGB", (64, 48), colour) for colour in ((200, 40, 40), (40, 40, 200))]
    seeds = []
    for codec in ("h264", "vp9", "mpeg4"):
        if codec_available(codec):
            path = make_clip(frames, folder / f"{codec}{clip_suffix(codec)}", codec=codec, seconds=1.0, size=(64, 48), fps=10)
            seeds.append(path.read_bytes())
    if not seeds:
        pytest.skip("no video encoder in this PyAV build")
    return seeds


def _video_outcome(data: bytes) -> None:
    try:
        frames = sample_frames(data, LIMITS)
    except MediaError as exc:
        assert exc.code in VIDEO_CODES, exc
    else:
        assert 1 <= len(frames.frames) <= LIMITS.max_frames


@settings(EXPLORE, max_examples=150)
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_give_frames_or_a_media_error(data: bytes) -> None:
    _video_outcome(data)


@settings(EXPLORE, max_examples=300)
@given(data=st.data())
def test_damaged_videos_give_frames_or_a_media_error(video_seeds: list[bytes], data: st.DataObject) -> None:
    _video_outcome(data.draw(damaged(video_seeds)))
