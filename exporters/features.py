"""Frozen-encoder features of a catalog, computed once with the ONNX encoders and cached on disk.

Training and evaluation read the same vectors the worker computes (same ONNX graphs, same
preprocessing), so a trained head never meets a train/serve skew. Each modality has its own
cache file keyed by the encoder version and the exact inputs (texts; the bytes of each media
file), so editing one title re-encodes the texts only, a new encoder export invalidates only its
modality, and a catalog copied or moved elsewhere (new paths, new mtimes) keeps its cache.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from encoders_onnx.decoding import MediaError, load_image
from encoders_onnx.fusion import MODALITIES
from encoders_onnx.image import ImageEncoder
from encoders_onnx.session import FP32, PRECISIONS, file_sha256, l2_normalize
from encoders_onnx.text import TextEncoder
from encoders_onnx.video import VideoEncoder, VideoError, VideoLimits
from exporters.catalog import Catalog
from exporters.onnx_export import atomic_write

DEFAULT_CACHE_DIR = Path(".shelfstream") / "features"
IMAGENET_CLASSES = Path(__file__).with_name("imagenet_classes.json")
TEXT_CHUNK = 1024
IMAGE_CHUNK = 256
VIDEO_CHUNK = 8


@dataclass(frozen=True)
class MediaDecoding:
    """How media are decoded. The CLI hands in the worker's settings, so training sees what serving sees."""

    max_image_pixels: int = 40_000_000
    video_limits: VideoLimits = VideoLimits()
    video_pooling: str = "mean"


@dataclass(frozen=True)
class Features:
    """Encoder vectors of every product, rows in catalog order; absent rows are zero and masked."""

    vectors: dict[str, np.ndarray]  # modality -> (n, d) float32 unit rows
    present: dict[str, np.ndarray]  # modality -> (n,) bool
    versions: dict[str, str]  # modality -> encoder version

    @property
    def modalities(self) -> tuple[str, ...]:
        """The catalog's modalities in the canonical order (text, image, video)."""
        return tuple(m for m in MODALITIES if m in self.vectors)

    @property
    def dims(self) -> dict[str, int]:
        return {m: int(self.vectors[m].shape[1]) for m in self.modalities}

    def without(self, modality: str) -> "Features":
        """The same products with one modality marked absent everywhere (to measure missing inputs)."""
        return dataclasses.replace(self, present={**self.present, modality: np.zeros_like(self.present[modality])})

    def rows(self, index: np.ndarray) -> "Features":
        """The features of a subset of products (e.g. one split)."""
        return Features(
            vectors={m: v[index] for m, v in self.vectors.items()},
            present={m: p[index] for m, p in self.present.items()},
            versions=self.versions,
        )


def extract_features(
    catalog: Catalog,
    model_dir: str | Path,
    cache_dir: str | Path = DEFAULT_CACHE_DIR,
    providers: str = "cpu",
    batch_size: int = 64,
    threads: int = 4,
    decoding: MediaDecoding = MediaDecoding(),
    precision: str = FP32,
) -> Features:
    """Text (title [+ description]), image and, where the catalog maps a video column, video vectors.

    Video vectors are the worker's: sampled frames through the image encoder, pooled, so they
    live in the image space. A missing or undecodable file leaves the modality absent.
    """
    catalog.check_media()
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    vectors: dict[str, np.ndarray] = {}
    present: dict[str, np.ndarray] = {}
    versions: dict[str, str] = {}

    vectors["text"], present["text"], versions["text"] = text_features(catalog, model_dir, cache, providers, batch_size, precision)

    image = ImageEncoder(model_dir, providers, precision) if catalog.mapping.image or catalog.mapping.video else None
    if catalog.mapping.image:
        paths = [p.image for p in catalog.products]
        vectors["image"] = cached_array(
            cache, "image", image.version, media_keys(paths), lambda: _encode_images(image, paths, batch_size, threads, decoding.max_image_pixels)
        )
        present["image"] = np.linalg.norm(vectors["image"], axis=1) > 0
        versions["image"] = image.version

    if catalog.mapping.video:
        video = VideoEncoder(image, decoding.video_limits, decoding.video_pooling)
        paths = [p.video for p in catalog.products]
        vectors["video"] = cached_array(cache, "video", video.version, media_keys(paths), lambda: _encode_videos(video, paths))
        present["video"] = np.linalg.norm(vectors["video"], axis=1) > 0
        versions["video"] = video.version
    return Features(vectors, present, versions)


def text_features(
    catalog: Catalog, model_dir: str | Path, cache_dir: str | Path = DEFAULT_CACHE_DIR, providers: str = "cpu",
    batch_size: int = 64, precision: str = FP32,
) -> tuple[np.ndarray, np.ndarray, str]:
    """The text encoder's vectors of every product (title [+ description]), which rows have a
    text, and the encoder version; cached like every modality."""
    text = TextEncoder(model_dir, providers, precision)
    texts = [p.text for p in catalog.products]
    vectors = cached_array(Path(cache_dir), "text", text.version, texts, lambda: _encode_texts(text, texts, batch_size))
    return vectors, np.array([bool(t) for t in texts]), text.version


def zero_shot_bridge(
    catalog: Catalog,
    index: np.ndarray,
    model_dir: str | Path,
    cache_dir: str | Path = DEFAULT_CACHE_DIR,
    classes_path: str | Path = IMAGENET_CLASSES,
    providers: str = "cpu",
    top_k: int = 5,
    batch_size: int = 64,
    threads: int = 4,
) -> np.ndarray | None:
    """The no-training baseline: image -> top-k ImageNet classes -> text-encoder vector.

    Each class name is embedded once; a product's bridge vector is the softmax-weighted mean of
    its top-k class vectors, so it lives in the text space and can be compared with titles.
    None when the image model has no ImageNet classifier (a bring-your-own or fine-tuned one).
    """
    text, image = TextEncoder(model_dir, providers), ImageEncoder(model_dir, providers)
    if image.num_classes is None:
        return None
    names = json.loads(Path(classes_path).read_text())
    paths = [catalog.products[i].image for i in index]
    key_items = [text.version, str(top_k), *names, *media_keys(paths)]

    def compute() -> np.ndarray:
        class_vectors = text.encode(names, batch_size)
        logits = _classify_images(image, paths, batch_size, threads)
        top = np.argsort(-logits, axis=1)[:, :top_k]
        top_logits = np.take_along_axis(logits, top, axis=1)
        weights = np.exp(top_logits - top_logits.max(axis=1, keepdims=True))
        weights /= weights.sum(axis=1, keepdims=True)
        bridged = np.einsum("nk,nkd->nd", weights, class_vectors[top])
        return l2_normalize(bridged) * (np.abs(logits).sum(axis=1, keepdims=True) > 0)

    return cached_array(Path(cache_dir), "bridge", image.version, key_items, compute)


def cached_array(
    cache: Path, kind: str, version: str, items: Sequence[str], compute: Callable[[], np.ndarray],
    dtype: type = np.float32,
) -> np.ndarray:
    """``compute()``'s array as ``dtype``, stored as ``<kind>-<hash>.npy`` keyed by version and inputs."""
    digest = hashlib.sha256(version.encode())
    for item in items:
        digest.update(item.encode() + b"\0")
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"{kind}-{digest.hexdigest()[:20]}.npy"
    if path.is_file():
        print(f"{kind} features: cached {path}", flush=True)
        return np.load(path)
    started = time.perf_counter()
    array = np.ascontiguousarray(compute(), dtype=dtype)
    atomic_write(path, _npy_bytes(array))
    print(f"{kind} features: {len(array)} rows in {time.perf_counter() - started:.1f} s -> {path}", flush=True)
    return array


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def media_keys(paths: Sequence[Path | None]) -> list[str]:
    """A digest of each file's bytes ("missing" where there is none). Bytes, not path and mtime: a
    copied or moved catalog keeps its cache, and a file replaced by one of the same size and mtime
    (``cp -p``, ``rsync -t``) is not taken for the old one. 44k photos (174 MB): ~2 s to hash,
    ~4 min to encode."""
    return [_file_digest(path) if path is not None else "missing" for path in paths]


def _file_digest(path: Path) -> str:
    try:
        return file_sha256(path)
    except OSError:
        return "missing"


def _encode_texts(encoder: TextEncoder, texts: Sequence[str], batch_size: int) -> np.ndarray:
    """Texts sorted by length so each batch pads little, then put back in catalog order."""
    order = np.argsort([len(t) for t in texts], kind="stable")
    out = np.zeros((len(texts), encoder.dim), np.float32)
    with tqdm(total=len(texts), desc="text", unit="title") as bar:
        for start in range(0, len(order), TEXT_CHUNK):
            rows = order[start : start + TEXT_CHUNK]
            chunk = [texts[i] for i in rows]
            keep = np.array([bool(t) for t in chunk])
            if keep.any():
                out[rows[keep]] = encoder.encode([t for t in chunk if t], batch_size)
            bar.update(len(rows))
    return out


def _load_image(path: Path | None, max_pixels: int) -> Image.Image | None:
    """The decoded RGB image exactly as the worker decodes it, or None when the file is missing or
    unreadable (counted as absent)."""
    if path is None:
        return None
    try:
        return load_image(path.read_bytes(), max_pixels)
    except (OSError, MediaError):
        return None


def _image_chunks(paths: Sequence[Path | None], threads: int, desc: str, max_pixels: int):
    """Decoded chunks of images, the next chunk loading on a thread pool while one is encoded."""
    starts = range(0, len(paths), IMAGE_CHUNK)
    with ThreadPoolExecutor(max_workers=threads) as pool, tqdm(total=len(paths), desc=desc, unit="img") as bar:
        def submit(start: int) -> list[Future]:
            return [pool.submit(_load_image, p, max_pixels) for p in paths[start : start + IMAGE_CHUNK]]

        pending = submit(0) if paths else []
        for start in starts:
            images = [f.result() for f in pending]
            pending = submit(start + IMAGE_CHUNK) if start + IMAGE_CHUNK < len(paths) else []
            yield start, images
            bar.update(len(images))


def run_images(
    paths: Sequence[Path | None], shape: int | tuple[int, ...], threads: int, desc: str,
    run: Callable[[list[Image.Image]], np.ndarray], max_pixels: int = MediaDecoding.max_image_pixels,
    dtype: type = np.float32,
) -> np.ndarray:
    """``run`` over every readable image into rows of ``shape``; unreadable or missing ones leave a zero row."""
    out = np.zeros((len(paths), *np.atleast_1d(shape)), dtype)
    missing = 0
    for start, images in _image_chunks(paths, threads, desc, max_pixels):
        ok = [i for i, im in enumerate(images) if im is not None]
        missing += len(images) - len(ok)
        if ok:
            out[start + np.asarray(ok)] = run([images[i] for i in ok])
    if missing:
        print(f"{desc}: {missing} of {len(paths)} products have no readable image", flush=True)
    return out


def _encode_images(
    encoder: ImageEncoder, paths: Sequence[Path | None], batch_size: int, threads: int, max_pixels: int
) -> np.ndarray:
    return run_images(paths, encoder.dim, threads, "image", lambda ims: encoder.encode(ims, batch_size), max_pixels)


def _classify_images(encoder: ImageEncoder, paths: Sequence[Path | None], batch_size: int, threads: int) -> np.ndarray:
    return run_images(paths, encoder.num_classes, threads, "classify", lambda ims: encoder.classify(ims, batch_size))


def _encode_videos(encoder: VideoEncoder, paths: Sequence[Path | None]) -> np.ndarray:
    """Pooled video vectors, a few files per call; unreadable or undecodable videos stay zero (absent)."""
    out = np.zeros((len(paths), encoder.dim), np.float32)
    failed = 0
    with tqdm(total=len(paths), desc="video", unit="clip") as bar:
        for start in range(0, len(paths), VIDEO_CHUNK):
            chunk = paths[start : start + VIDEO_CHUNK]
            rows = [start + i for i, p in enumerate(chunk) if p is not None and p.is_file()]
            results = encoder.encode_many([paths[i].read_bytes() for i in rows])
            for row, result in zip(rows, results):
                if isinstance(result, VideoError):
                    failed += 1
                else:
                    out[row] = result.vector
            bar.update(len(chunk))
    if failed:
        print(f"video: {failed} videos could not be decoded", flush=True)
    return out


def add_feature_arguments(parser: argparse.ArgumentParser) -> None:
    """Where features come from and go (shared by ``train`` and ``eval``)."""
    parser.add_argument("--model-dir", default=None,
                        help="folder of the exported encoders (default: SHELFSTREAM_MODEL_DIR)")
    parser.add_argument("--cache-dir", default=str(DEFAULT_CACHE_DIR), help="feature cache folder")
    parser.add_argument("--seed", type=int, default=0, help="split seed (eval: the one training used)")
    parser.add_argument("--providers", default="cpu", help="onnxruntime providers for feature extraction")
    parser.add_argument("--precision", choices=PRECISIONS, default=None,
                        help="encoders to extract features with (default: SHELFSTREAM_PRECISION)")
