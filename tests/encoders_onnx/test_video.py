"""Video vectors on real Myntra photos filmed into clips: own-image retrieval, shot coverage,
keyframes, every codec, and every bad file ending with its documented outcome."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from encoders_onnx.image import ImageEncoder
from encoders_onnx.video import (
    MAX_FRAME_PIXELS,
    SampledFrames,
    VideoEmbedding,
    VideoEncoder,
    VideoError,
    VideoLimits,
    sample_frames,
)
from streams.settings import Settings
from streams.tools.videogen import CODECS, clip_suffix, codec_available, make_clip
from tests.conftest import MYNTRA

FAST = {"seconds": 2.0, "fps": 15}  # short clips keep the suite fast; sampling does not care


@pytest.fixture(scope="module")
def image_encoder(model_dir: Path) -> ImageEncoder:
    return ImageEncoder(model_dir, providers="cpu")


@pytest.fixture(scope="module")
def products() -> list[dict[str, str]]:
    """80 Myntra products with their photo, drawn with a fixed seed, one per (articleType, colour)."""
    catalog = MYNTRA / "products.csv"
    if not catalog.is_file():
        pytest.skip(f"Myntra dataset absent ({catalog}): the video tests film its product photos")
    with catalog.open(newline="") as fh:
        rows = [row for row in csv.DictReader(fh) if (MYNTRA / row["image"]).is_file()]
    random.Random(0).shuffle(rows)
    picked: dict[tuple[str, str], dict[str, str]] = {}
    for row in rows:
        picked.setdefault((row["articleType"], row["baseColour"]), row)
        if len(picked) == 80:
            break
    return list(picked.values())


def _photo(product: dict[str, str]) -> Image.Image:
    with Image.open(MYNTRA / product["image"]) as image:
        return image.convert("RGB")


def _clip(tmp_path: Path, images: list[Image.Image], codec: str = "h264", name: str = "clip", **kwargs) -> bytes:
    options = {**FAST, **kwargs}
    return make_clip(images, tmp_path / f"{name}{clip_suffix(codec)}", codec=codec, **options).read_bytes()


def _nearest(frames: np.ndarray, image_encoder: ImageEncoder, references: np.ndarray) -> set[int]:
    """Which reference image each frame is nearest to, by the image encoder."""
    vectors = image_encoder.encode_frames(frames)
    return set((vectors @ references.T).argmax(axis=1).tolist())


# --- vectors ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def own_clips(tmp_path_factory: pytest.TempPathFactory, products: list[dict[str, str]]) -> tuple[list, list[bytes]]:
    """20 products, one clip each (h264 and VP9 in turn), with their photos."""
    folder = tmp_path_factory.mktemp("own")
    photos = [_photo(p) for p in products[:20]]
    return photos, [_clip(folder, [photo], ("h264", "vp9")[i % 2], name=f"p{i}") for i, photo in enumerate(photos)]


@pytest.mark.parametrize("pooling", ["mean", "distinct"])
def test_video_vector_is_nearest_its_own_product_image(
    own_clips: tuple[list, list[bytes]], image_encoder: ImageEncoder, pooling: str
) -> None:
    photos, clips = own_clips
    encoder = VideoEncoder(image_encoder, VideoLimits(max_frames=8), pooling)
    results = encoder.encode_many(clips)
    assert all(isinstance(r, VideoEmbedding) and r.partial is None for r in results)
    videos = np.stack([r.vector for r in results])
    assert videos.shape == (20, image_encoder.dim) and videos.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(videos, axis=1), 1.0, atol=1e-5)
    similarity = videos @ image_encoder.encode(photos).T
    own_rank = (similarity > similarity.diagonal()[:, None]).sum(axis=1) + 1
    assert (own_rank == 1).mean() >= 0.9, own_rank


def test_encode_matches_encode_many_and_batches_do_not_mix(
    tmp_path: Path, products: list[dict[str, str]], image_encoder: ImageEncoder
) -> None:
    clips = [_clip(tmp_path, [_photo(p)], name=f"b{i}") for i, p in enumerate(products[20:23])]
    encoder = VideoEncoder(image_encoder, VideoLimits(max_frames=6))
    together = encoder.encode_many(clips + [b""])
    assert isinstance(together[3], VideoError) and together[3].code == "empty"
    for clip, result in zip(clips, together):
        np.testing.assert_allclose(encoder.encode(clip), result.vector, atol=1e-5)


def test_distinct_pooling_weighs_every_shot_equally(
    tmp_path: Path, products: list[dict[str, str]], image_encoder: ImageEncoder
) -> None:
    a, b = (_photo(p) for p in products[23:25])
    clip = _clip(tmp_path, [a, a, a, b], motions=["zoom"], keyframe_interval_s=None)  # 1.5 s of A, 0.5 s of B
    sample = sample_frames(clip, VideoLimits(max_frames=8))
    shot_weights = [sample.distinctness[sample.shots == s].sum() for s in np.unique(sample.shots)]
    np.testing.assert_allclose(shot_weights, 1.0, rtol=1e-6)
    references = image_encoder.encode([a, b])
    mean = VideoEncoder(image_encoder, VideoLimits(max_frames=8), "mean").encode(clip) @ references.T
    distinct = VideoEncoder(image_encoder, VideoLimits(max_frames=8), "distinct").encode(clip) @ references.T
    assert mean[0] - mean[1] > distinct[0] - distinct[1]  # the short shot of B counts for more


def test_version_changes_with_sampling_and_pooling(image_encoder: ImageEncoder) -> None:
    base = VideoEncoder(image_encoder, VideoLimits())
    assert base.version.startswith(image_encoder.version)
    others = [
        VideoEncoder(image_encoder, VideoLimits(), "distinct"),
        VideoEncoder(image_encoder, VideoLimits(max_frames=4)),
        VideoEncoder(image_encoder, VideoLimits(max_side=160)),
        VideoEncoder(image_encoder, VideoLimits(max_seconds=5)),
    ]
    assert len({base.version, *(o.version for o in others)}) == 5
    assert VideoEncoder(image_encoder, VideoLimits(timeout_s=1)).version == base.version
    with pytest.raises(ValueError):
        VideoEncoder(image_encoder, VideoLimits(), "max")


def test_limits_from_settings() -> None:
    settings = Settings(max_video_seconds=7, max_video_frames=5, video_max_side=200, video_decode_timeout_s=3)
    limits = VideoLimits.from_settings(settings)
    assert (limits.max_seconds, limits.max_frames, limits.max_side, limits.timeout_s) == (7, 5, 200, 3)
    assert (limits.max_bytes, limits.max_pixels) == (settings.max_video_bytes, MAX_FRAME_PIXELS)
    assert settings.max_image_pixels > MAX_FRAME_PIXELS  # video frames are capped below images
    small = VideoLimits.from_settings(Settings(max_image_pixels=1_000_000))
    assert small.max_pixels == 1_000_000


# --- sampling ----------------------------------------------------------------------------------------


def test_every_shot_of_a_multi_shot_clip_is_kept(
    tmp_path: Path, products: list[dict[str, str]], image_encoder: ImageEncoder
) -> None:
    """Three products, three shots: the kept frames show all three (checked by nearest photo)."""
    for i in range(4):
        photos = [_photo(p) for p in products[25 + 3 * i : 28 + 3 * i]]
        sample = sample_frames(_clip(tmp_path, photos, name=f"s{i}"), VideoLimits())
        assert len(set(sample.shots.tolist())) == 3 and sample.reasons.count("scene") == 3
        assert _nearest(sample.frames, image_encoder, image_encoder.encode(photos)) == {0, 1, 2}


def test_cuts_keep_short_shots_that_even_spacing_misses(
    tmp_path: Path, products: list[dict[str, str]], image_encoder: ImageEncoder
) -> None:
    """Shots A (0-3 s), B (3-4 s), C (4-5 s) and 3 frames: an even grid (0.8, 2.5, 4.2 s) never
    sees B; cut detection keeps one frame of each product in most clips."""
    covered = 0
    trials = 8
    for i in range(trials):
        a, b, c = (_photo(p) for p in products[37 + 3 * i : 40 + 3 * i])
        clip = _clip(tmp_path, [a, a, a, b, c], name=f"u{i}", seconds=5.0, fps=10, keyframe_interval_s=None)
        sample = sample_frames(clip, VideoLimits(max_frames=3))
        assert len(sample.frames) == 3
        covered += _nearest(sample.frames, image_encoder, image_encoder.encode([a, b, c])) == {0, 1, 2}
    assert covered >= trials - 1


def test_more_cuts_than_frames_keeps_one_frame_per_shot(tmp_path: Path, products: list[dict[str, str]]) -> None:
    photos = [_photo(p) for p in products[:8]]
    sample = sample_frames(_clip(tmp_path, photos, seconds=4.0, fps=10), VideoLimits(max_frames=4))
    assert len(sample.frames) == 4
    assert len(set(sample.shots.tolist())) == 4  # four different shots, no two frames of one
    np.testing.assert_allclose(sample.distinctness, 1.0)


def test_keyframes_come_from_the_stream_flags_for_vp9_too(tmp_path: Path, products: list[dict[str, str]]) -> None:
    """One static-ish shot, a keyframe every 0.5 s: the keyframes become the candidates (VP9 too,
    where skip_frame='NONKEY' would not have filtered)."""
    for codec in ("h264", "vp9"):
        clip = _clip(tmp_path, [_photo(products[0])], codec, fps=10, keyframe_interval_s=0.5)
        sample = sample_frames(clip, VideoLimits(max_frames=6))
        keys = [t for t, r in zip(sample.timestamps, sample.reasons) if r == "key"]
        assert len(keys) >= 3, (codec, sample.reasons)
        np.testing.assert_allclose(np.array(keys) % 0.5, 0.0, atol=1e-6)


def test_frames_are_downscaled_and_in_time_order(tmp_path: Path, products: list[dict[str, str]]) -> None:
    clip = _clip(tmp_path, [_photo(products[1])], size=(640, 360))
    sample = sample_frames(clip, VideoLimits(max_side=160, max_frames=5))
    assert sample.frames.shape == (5, 90, 160, 3) and sample.frames.dtype == np.uint8
    assert np.all(np.diff(sample.timestamps) > 0) and sample.decoded == 30


@pytest.mark.parametrize("codec", list(CODECS))
def test_each_codec_decodes_and_gives_the_products_vector(
    tmp_path: Path, products: list[dict[str, str]], image_encoder: ImageEncoder, codec: str
) -> None:
    if not codec_available(codec):
        pytest.skip(f"this PyAV wheel has no {CODECS[codec][0]} encoder to make a {codec} clip")
    photos = [_photo(p) for p in products[2:5]]
    clip = _clip(tmp_path, [photos[0]], codec)
    sample = sample_frames(clip, VideoLimits())
    assert isinstance(sample, SampledFrames) and sample.partial is None and sample.decoded == 30
    vector = VideoEncoder(image_encoder, VideoLimits()).encode(clip)
    assert int(np.argmax(image_encoder.encode(photos) @ vector)) == 0


# --- bad files -----------------------------------------------------------------------------------------


def _error(data: bytes, limits: VideoLimits = VideoLimits()) -> VideoError:
    with pytest.raises(VideoError) as caught:
        sample_frames(data, limits)
    return caught.value


def _write(path: Path, codec: str, kind: str = "video") -> bytes:
    """A tiny file with a stream make_clip does not make: MJPEG video, or audio only."""
    with av.open(str(path), "w") as container:
        if kind == "audio":
            stream = container.add_stream(codec, rate=8000)
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
            frame.sample_rate = 8000
            container.mux(stream.encode(frame))
        else:
            stream = container.add_stream(codec, rate=10)
            stream.width, stream.height, stream.pix_fmt = 64, 48, "yuvj420p"
            for _ in range(5):
                container.mux(stream.encode(av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")))
        container.mux(stream.encode())
    return path.read_bytes()


def test_files_that_are_not_videos(tmp_path: Path, products: list[dict[str, str]]) -> None:
    assert _error(b"").code == "empty"
    assert _error(np.random.default_rng(0).bytes(100_000)).code == "not_a_video"
    assert _error(b"<html><body>404</body></html>\n" * 50).code == "not_a_video"
    jpeg = (MYNTRA / products[0]["image"]).read_bytes()
    assert _error(jpeg).code == "not_a_video"  # FFmpeg would open it as a one-frame mjpeg "video"
    png = tmp_path / "photo.png"
    _photo(products[0]).save(png)
    assert _error(png.read_bytes()).code == "not_a_video"
    assert _error(_write(tmp_path / "sound.wav", "pcm_s16le", "audio")).code == "no_video_stream"
    assert _error(_write(tmp_path / "camera.avi", "mjpeg")).code == "unsupported_codec"


def test_truncated_files(tmp_path: Path, products: list[dict[str, str]]) -> None:
    photo = _photo(products[5])
    mp4 = _clip(tmp_path, [photo], "h264")
    assert _error(mp4[: len(mp4) // 2]).code == "not_a_video"  # the index (moov) is at the end: nothing to read
    webm = _clip(tmp_path, [photo], "vp9", seconds=4.0)
    sample = sample_frames(webm[: len(webm) // 2], VideoLimits())  # WebM decodes up to the cut
    assert sample.partial is not None and sample.partial.startswith("truncated")
    assert 0 < sample.timestamps.max() < 3.0


def test_corrupt_packets_mid_stream_keep_the_frames_before(
    tmp_path: Path, products: list[dict[str, str]], image_encoder: ImageEncoder
) -> None:
    photos = [_photo(p) for p in products[6:9]]
    clip = bytearray(_clip(tmp_path, [photos[0]], "h264", seconds=4.0))
    middle = len(clip) // 2
    clip[middle : middle + 4000] = np.random.default_rng(0).bytes(4000)
    results = VideoEncoder(image_encoder, VideoLimits()).encode_many([bytes(clip)])
    result = results[0]
    assert isinstance(result, VideoEmbedding), result
    assert result.partial is not None and result.partial.startswith("decode_error")
    assert result.timestamps.max() < 3.0
    assert int(np.argmax(image_encoder.encode(photos) @ result.vector)) == 0
    clip[100:] = np.random.default_rng(1).bytes(len(clip) - 100)  # header kept, every packet garbage
    assert _error(bytes(clip)).code in ("not_a_video", "decode_error")


ERROR_CODES = {"empty", "too_large", "not_a_video", "no_video_stream", "unsupported_codec", "too_many_pixels", "decode_error"}


@pytest.mark.parametrize("codec", list(CODECS))
def test_damaged_files_end_with_frames_or_a_documented_error(
    tmp_path: Path, products: list[dict[str, str]], codec: str
) -> None:
    """Flipped bytes, cuts at any point, overwritten runs: never a crash, a hang or a stray exception."""
    if not codec_available(codec):
        pytest.skip(f"this PyAV wheel has no {CODECS[codec][0]} encoder to make a {codec} clip")
    clip = _clip(tmp_path, [_photo(p) for p in products[11:13]], codec)
    rng = np.random.default_rng(0)
    outcomes = set()
    for trial in range(45):
        data = bytearray(clip)
        if trial % 3 == 0:
            for position in rng.integers(0, len(data), rng.integers(1, 20)):
                data[position] = rng.integers(0, 256)
        elif trial % 3 == 1:
            del data[rng.integers(0, len(data)) :]
        else:
            start = rng.integers(0, len(data))
            data[start : start + 500] = rng.bytes(len(data[start : start + 500]))
        try:
            sample = sample_frames(bytes(data), VideoLimits(timeout_s=5))
        except VideoError as exc:
            assert exc.code in ERROR_CODES, exc
            outcomes.add(exc.code)
        else:
            assert len(sample.frames) >= 1 and sample.frames.dtype == np.uint8
            outcomes.add((sample.partial or "complete").split(":")[0])
    assert len(outcomes) >= 2  # the damage did reach the decoder, not only the happy path


def test_limits_on_duration_frames_size_pixels_and_time(tmp_path: Path, products: list[dict[str, str]]) -> None:
    clip = _clip(tmp_path, [_photo(products[9])], "h264", seconds=3.0, fps=10)
    long = sample_frames(clip, VideoLimits(max_seconds=1.0))  # over the duration: the first second only
    assert long.partial == "max_seconds" and long.timestamps.max() <= 1.0 and long.decoded == 11
    assert len(sample_frames(clip, VideoLimits(max_frames=2)).frames) == 2
    assert _error(clip, VideoLimits(max_bytes=len(clip) - 1)).code == "too_large"
    assert _error(clip, VideoLimits(max_pixels=320 * 240 - 1)).code == "too_many_pixels"
    assert _error(clip, VideoLimits(timeout_s=1e-9)).code == "timeout"


def test_a_bad_video_does_not_fail_the_batch(tmp_path: Path, products: list[dict[str, str]], image_encoder: ImageEncoder) -> None:
    good = _clip(tmp_path, [_photo(products[10])])
    results = VideoEncoder(image_encoder, VideoLimits()).encode_many([b"", good, b"not a video", good[:100]])
    assert [r.code if isinstance(r, VideoError) else "ok" for r in results] == ["empty", "ok", "not_a_video", "not_a_video"]
    with pytest.raises(VideoError) as caught:
        VideoEncoder(image_encoder, VideoLimits()).encode(b"not a video")
    assert caught.value.code == "not_a_video" and caught.value.message
