"""Test clips made from product images: no real product video exists here, so the demo and the
tests film the catalog's photos with simple camera moves (zoom, pan, rotation), one shot per image.

Clips are real encoded files (h264, mpeg4, VP9 or AV1 through PyAV's encoders), so everything
downstream (demux, keyframe flags, decoder quirks) is exercised as with a seller's upload.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import Iterable, Sequence

import av
from PIL import Image

from exporters.catalog import (
    BadRow,
    CatalogMapping,
    OnError,
    add_mapping_arguments,
    map_row,
    mapping_from_args,
    media_root_of,
    read_rows,
    report_skipped,
)

# codec name -> (PyAV encoder, container suffix, encoder options tuned for speed)
CODECS: dict[str, tuple[str, str, dict[str, str]]] = {
    "h264": ("libx264", ".mp4", {"preset": "veryfast"}),
    "mpeg4": ("mpeg4", ".mp4", {"qscale": "4"}),
    "vp9": ("libvpx-vp9", ".webm", {"deadline": "realtime", "cpu-used": "8"}),
    "av1": ("libsvtav1", ".mp4", {"preset": "10"}),
}
MOTIONS = ("zoom", "pan", "rotate")
BACKGROUND = (255, 255, 255)  # catalog photos are shot on white
os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its whole config on every clip otherwise


def clip_suffix(codec: str) -> str:
    """The container suffix (``.mp4`` / ``.webm``) that ``make_clip`` expects for ``codec``."""
    return _codec(codec)[1]


def codec_available(codec: str) -> bool:
    """Whether this PyAV build has the encoder behind ``codec`` (wheels differ in what they ship)."""
    try:
        av.codec.Codec(_codec(codec)[0], "w")
    except av.codec.codec.UnknownCodecError:
        return False
    return True


def make_clip(
    images: Sequence[Image.Image],
    out_path: str | Path,
    codec: str = "h264",
    seconds: float = 5.0,
    size: tuple[int, int] = (320, 240),
    fps: int = 25,
    motions: Sequence[str] = MOTIONS,
    keyframe_interval_s: float | None = 2.0,
) -> Path:
    """Write a ``seconds`` long clip with one equally long shot per image; shot ``i`` moves by ``motions[i % len]``.

    ``size`` is (width, height), even numbers (4:2:0 chroma). The container is taken from the
    suffix of ``out_path`` (use ``clip_suffix(codec)``). A keyframe every ``keyframe_interval_s``
    as phone and web encoders do (None: the encoder's default, often the first frame only).
    """
    if not images:
        raise ValueError("make_clip needs at least one image")
    if size[0] % 2 or size[1] % 2:
        raise ValueError(f"size must be even for yuv420p, got {size}")
    encoder, _, options = _codec(codec)
    unknown = set(motions) - set(MOTIONS)
    if not motions or unknown:
        raise ValueError(f"motions must be a non-empty subset of {MOTIONS}, got {list(motions)}")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    sources = [image.convert("RGB") for image in images]
    n_frames = max(1, round(seconds * fps))
    with av.open(str(out_path), "w") as container:
        stream = container.add_stream(encoder, rate=fps, options=options)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        if keyframe_interval_s is not None:
            stream.codec_context.gop_size = max(1, round(keyframe_interval_s * fps))
        for index in range(n_frames):
            shot, progress = divmod(index * len(sources) / n_frames, 1.0)
            shot = int(shot)
            frame = _render(sources[shot], size, motions[shot % len(motions)], progress)
            container.mux(stream.encode(av.VideoFrame.from_image(frame)))
        container.mux(stream.encode())
    return out_path


def make_videos(
    products: Iterable[tuple[str, Sequence[str | Path]]],
    out_dir: str | Path,
    codecs: Sequence[str] = ("h264", "vp9"),
    count: int | None = None,
    seconds: float = 5.0,
    size: tuple[int, int] = (320, 240),
    fps: int = 25,
) -> list[tuple[str, Path]]:
    """One clip per (product id, image paths), at most ``count``; codecs and camera moves rotate over products.

    Returns (product id, clip path) pairs, the clip named ``<product id><suffix>`` in ``out_dir``.
    """
    if not codecs:
        raise ValueError("make_videos needs at least one codec")
    out_dir = Path(out_dir)
    made: list[tuple[str, Path]] = []
    for index, (product_id, paths) in enumerate(products):
        if count is not None and index >= count:
            break
        codec = codecs[index % len(codecs)]
        images = []
        for path in paths:
            with Image.open(path) as image:
                images.append(image.convert("RGB"))
        start = index % len(MOTIONS)
        path = make_clip(
            images,
            out_dir / f"{product_id}{clip_suffix(codec)}",
            codec=codec,
            seconds=seconds,
            size=size,
            fps=fps,
            motions=MOTIONS[start:] + MOTIONS[:start],
        )
        made.append((product_id, path))
    return made


def catalog_products(
    catalog: str | Path, mapping: CatalogMapping = CatalogMapping(), on_error: OnError | None = None
) -> list[tuple[str, list[Path]]]:
    """(product id, local image paths) of a catalog, read by the one catalog reader (``image``
    may hold several paths joined by ``|``, relative to the media root: by default the
    catalog's folder, as in the Myntra ``products.csv``). Rows without a local image are left
    out; unreadable rows are reported through ``on_error`` (default: stderr) and skipped."""
    catalog = Path(catalog)
    mapping.check_columns(catalog, ["id", "image"])
    media_root = media_root_of(catalog, mapping)
    on_error = on_error or report_skipped(catalog)
    products = []
    for number, row in read_rows(catalog):
        if isinstance(row, BadRow):
            on_error(number, row.reason)
            continue
        data = map_row(row, mapping, media_root)
        paths = [Path(uri) for uri in data.get("image_uris", []) if "://" not in str(uri)]
        if not data.get("product_id"):
            on_error(number, "empty product id")
        elif paths:
            products.append((str(data["product_id"]), paths))
    return products


def add_make_videos_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``shelfstream make-videos``: the catalog is mapped as for publish and train."""
    parser.add_argument("catalog", type=Path, help="catalog CSV or JSONL with an id column and an image-path column")
    parser.add_argument("out_dir", type=Path, help="folder the clips are written to")
    parser.add_argument("--count", type=int, default=None, help="at most this many products get a clip")
    parser.add_argument("--codecs", default="h264,vp9", help=f"comma-separated, from {', '.join(CODECS)}")
    parser.add_argument("--seconds", type=float, default=5.0, help="clip length")
    add_mapping_arguments(parser.add_argument_group("column mapping (see exporters/catalog.py)"))


def make_videos_main(args: argparse.Namespace) -> list[tuple[str, Path]]:
    """``shelfstream make-videos``: clips for the first ``--count`` products of the catalog."""
    products = catalog_products(args.catalog, mapping_from_args(args))
    codecs = [c.strip() for c in args.codecs.split(",") if c.strip()]
    made = make_videos(products, args.out_dir, codecs=codecs, count=args.count, seconds=args.seconds)
    print(f"wrote {len(made)} clips to {args.out_dir}")
    return made


def _codec(codec: str) -> tuple[str, str, dict[str, str]]:
    try:
        return CODECS[codec]
    except KeyError:
        raise ValueError(f"codec must be one of {', '.join(CODECS)}, not {codec!r}") from None


def _render(image: Image.Image, size: tuple[int, int], motion: str, progress: float) -> Image.Image:
    """One frame: ``image`` fitted to 90% of the frame height, then zoomed, panned or rotated by ``progress``."""
    width, height = size
    scale = 0.9 * min(height / image.height, width / image.width)
    angle = 0.0
    shift_x = 0.0
    if motion == "zoom":
        scale *= 1.0 + 0.5 * progress
    elif motion == "pan":
        scale *= 1.2
        shift_x = (progress - 0.5) * 0.4 * width
    else:  # rotate: a turntable-like swing
        angle = math.radians(-20.0 + 40.0 * progress)
    # PIL's affine maps each output pixel back to a source pixel: source = R(-angle) (out - centre - shift) / scale
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
    cx, cy = width / 2 + shift_x, height / 2
    sx, sy = image.width / 2, image.height / 2
    coefficients = (cos, sin, sx - cos * cx - sin * cy, -sin, cos, sy + sin * cx - cos * cy)
    return image.transform(size, Image.Transform.AFFINE, coefficients, Image.Resampling.BILINEAR, fillcolor=BACKGROUND)
