"""Test-clip generator: real encoded files of the asked codec, length, size and shots, with moving shots."""

from __future__ import annotations

import argparse
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from streams.tools.videogen import (
    CODECS,
    add_make_videos_arguments,
    catalog_products,
    clip_suffix,
    codec_available,
    make_clip,
    make_videos,
    make_videos_main,
)

RED, BLUE, GREEN = (220, 30, 30), (30, 30, 220), (30, 160, 30)


def _product(colour: tuple[int, int, int]) -> Image.Image:
    """A 60x80 'product photo': a coloured shape with a stripe (so rotation is visible) on white."""
    image = Image.new("RGB", (60, 80), (255, 255, 255))
    image.paste(colour, (10, 10, 50, 70))
    image.paste((0, 0, 0), (10, 10, 50, 20))
    return image


def _frames(path: Path) -> tuple[av.video.stream.VideoStream, list[np.ndarray]]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        return stream, frames


@pytest.mark.parametrize("codec", list(CODECS))
def test_clip_has_the_codec_length_and_size(tmp_path: Path, codec: str) -> None:
    if not codec_available(codec):
        pytest.skip(f"this PyAV wheel has no {CODECS[codec][0]} encoder")
    path = make_clip([_product(RED)], tmp_path / f"c{clip_suffix(codec)}", codec, seconds=1.0, size=(160, 120), fps=10)
    stream, frames = _frames(path)
    assert stream.codec_context.codec.canonical_name == codec
    assert len(frames) == 10 and frames[0].shape == (120, 160, 3)


def test_one_shot_per_image_in_order(tmp_path: Path) -> None:
    path = make_clip([_product(RED), _product(BLUE), _product(GREEN)], tmp_path / "c.mp4", seconds=3.0, fps=10)
    _, frames = _frames(path)
    # the dominant non-white colour of the middle frame of each shot
    middles = [frames[i].reshape(-1, 3).astype(int) for i in (5, 15, 25)]
    dominant = [int(np.argmax(m[m.sum(axis=1) < 600].mean(axis=0))) for m in middles]
    assert dominant == [0, 2, 1]  # red, blue, green channels


@pytest.mark.parametrize("motion", ["zoom", "pan", "rotate"])
def test_every_motion_moves_the_picture(tmp_path: Path, motion: str) -> None:
    path = make_clip([_product(RED)], tmp_path / "c.mp4", seconds=1.0, fps=10, motions=[motion])
    _, frames = _frames(path)
    first, last = (f.astype(np.float32) for f in (frames[0], frames[-1]))
    assert np.abs(first - last).mean() > 5.0
    ink = [(f.sum(axis=2) < 600) for f in (frames[0], frames[-1])]  # product pixels
    if motion == "zoom":
        assert ink[1].sum() > 1.5 * ink[0].sum()
    if motion == "pan":
        centres = [np.nonzero(mask)[1].mean() for mask in ink]
        assert centres[1] - centres[0] > 30


def test_keyframe_interval(tmp_path: Path) -> None:
    path = make_clip([_product(RED)], tmp_path / "c.mp4", seconds=2.0, fps=10, keyframe_interval_s=0.5)
    with av.open(str(path)) as container:
        keys = [round(float(f.time), 2) for f in container.decode(video=0) if f.key_frame]
    assert keys == [0.0, 0.5, 1.0, 1.5]


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="codec"):
        make_clip([_product(RED)], tmp_path / "c.mkv", "theora")
    with pytest.raises(ValueError, match="even"):
        make_clip([_product(RED)], tmp_path / "c.mp4", size=(321, 240))
    with pytest.raises(ValueError, match="image"):
        make_clip([], tmp_path / "c.mp4")
    with pytest.raises(ValueError, match="motions"):
        make_clip([_product(RED)], tmp_path / "c.mp4", motions=["spin"])


def _catalog(tmp_path: Path) -> Path:
    (tmp_path / "images").mkdir()
    for name, colour in (("a", RED), ("b", BLUE), ("c", GREEN)):
        _product(colour).save(tmp_path / "images" / f"{name}.jpg")
    catalog = tmp_path / "products.csv"
    catalog.write_text("id,image,title\n1,images/a.jpg,A\n2,images/b.jpg|images/c.jpg,B\n3,,no photo\n4,images/c.jpg,C\n")
    return catalog


def test_catalog_products_resolve_paths_next_to_the_csv(tmp_path: Path) -> None:
    products = catalog_products(_catalog(tmp_path))
    assert [p[0] for p in products] == ["1", "2", "4"]
    assert products[1][1] == [tmp_path / "images" / "b.jpg", tmp_path / "images" / "c.jpg"]


def test_make_videos_rotates_codecs_and_stops_at_count(tmp_path: Path) -> None:
    products = catalog_products(_catalog(tmp_path))
    made = make_videos(products, tmp_path / "videos", codecs=["h264", "vp9"], count=2, seconds=1.0, fps=5)
    assert made == [("1", tmp_path / "videos" / "1.mp4"), ("2", tmp_path / "videos" / "2.webm")]
    stream, frames = _frames(made[1][1])
    assert stream.codec_context.codec.canonical_name == "vp9" and len(frames) == 5


def test_make_videos_main_parses_the_cli_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_make_videos_arguments(parser)
    args = parser.parse_args([str(_catalog(tmp_path)), str(tmp_path / "out"), "--count", "5", "--codecs", "mpeg4", "--seconds", "0.4"])
    made = make_videos_main(args)
    assert [path.name for _, path in made] == ["1.mp4", "2.mp4", "4.mp4"]
    assert "wrote 3 clips" in capsys.readouterr().out


def test_make_videos_reads_jsonl_through_a_mapping_and_skips_a_bad_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _catalog(tmp_path)  # writes the images
    catalog = tmp_path / "items.jsonl"
    catalog.write_text('{"sku": "x", "photos": "images/a.jpg|images/b.jpg"}\n{"sku": \n{"sku": "y", "photos": ""}\n')
    parser = argparse.ArgumentParser()
    add_make_videos_arguments(parser)
    args = parser.parse_args([str(catalog), str(tmp_path / "out"), "--mapping", '{"id": "sku"}', "--image", "photos",
                              "--codecs", "mpeg4", "--seconds", "0.4"])
    made = make_videos_main(args)
    assert [(product_id, path.name) for product_id, path in made] == [("x", "x.mp4")]
    assert "skipped items.jsonl row 2: not valid JSON" in capsys.readouterr().err
