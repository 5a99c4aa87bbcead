"""Image encoder: PIL images or video frames -> 1280-d unit vectors (and ImageNet logits) via MobileNetV2.

Preprocessing is torchvision's ImageNet eval transform, with the parameters read from the
model's manifest so that the runtime can never drift from what the export recorded.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image

from encoders_onnx.session import FP32, OnnxModel, Providers, l2_normalize, model_name

IMAGE_MODEL = "image"
_INTERPOLATION = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


class ImagePreprocessing:
    """torchvision's Resize + CenterCrop + ToTensor + Normalize, from a manifest's
    ``preprocessing`` dict: one place for the pixels an image model sees, at export and at serving."""

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.resize_shorter: int = settings["resize_shorter"]
        self.interpolation = _INTERPOLATION[settings["interpolation"]]
        self.crop: int = settings["center_crop"]
        # ToTensor (x scale) then Normalize ((x - mean) / std) as one multiply-add per channel
        mean = np.array(settings["mean"], np.float32).reshape(3, 1, 1)
        std = np.array(settings["std"], np.float32).reshape(3, 1, 1)
        self._gain = (np.float32(settings["scale"]) / std).astype(np.float32)
        self._offset = (-mean / std).astype(np.float32)

    def __call__(self, image: Image.Image) -> np.ndarray:
        """One image -> (3, crop, crop) float32."""
        pixels = np.empty((3, self.crop, self.crop), np.float32)
        self.into(image, pixels)
        return pixels

    def into(self, image: Image.Image, out: np.ndarray) -> None:
        """The pixels written into ``out``. Only the region the crop keeps is resized (PIL's
        ``box``: the same source coordinates and filter as resizing the whole image, then
        cropping), and ToTensor + Normalize are one multiply-add from the bytes into ``out``."""
        image = image.convert("RGB")
        width, height = image.size
        short, long = sorted((width, height))
        size = (width, height)
        if short != self.resize_shorter:  # torchvision leaves an image already at size untouched
            new_long = int(self.resize_shorter * long / short)
            size = (self.resize_shorter, new_long) if width <= height else (new_long, self.resize_shorter)
        top = int(round((size[1] - self.crop) / 2.0))
        left = int(round((size[0] - self.crop) / 2.0))
        if size == (width, height):
            image = image.crop((left, top, left + self.crop, top + self.crop))
        else:
            x_scale, y_scale = width / size[0], height / size[1]
            box = (left * x_scale, top * y_scale, (left + self.crop) * x_scale, (top + self.crop) * y_scale)
            image = image.resize((self.crop, self.crop), self.interpolation, box=box)
        np.multiply(np.asarray(image).transpose(2, 0, 1), self._gain, out=out)
        out += self._offset


class ImageEncoder:
    """``encode(images) -> (n, 1280)`` float32 unit vectors; ``classify(images) -> (n, 1000)`` logits."""

    def __init__(self, model_dir: str | Path, providers: Providers | str = "auto", precision: str = FP32,
                 parallel: int = 0) -> None:
        self.model = OnnxModel(model_dir, model_name(IMAGE_MODEL, precision), providers, parallel=parallel)
        self.preprocess = ImagePreprocessing(self.model.manifest["extra"]["preprocessing"])
        self.dim: int = self.model.output_dim("features")
        self._buffers = threading.local()  # each thread's batch input buffer (see _pixels)
        # A user's own image model (``shelfstream export --modality image``) may have no classifier.
        self.num_classes: int | None = self.model.output_dim("logits") if "logits" in self.model.output_names else None

    @property
    def version(self) -> str:
        return self.model.version

    def _pixels(self, images: Sequence[Image.Image]) -> np.ndarray:
        """A batch's input, preprocessed in place into this thread's reused buffer: a fresh
        (32, 3, 224, 224) array per batch cost ~1 ms an image in page faults and copies."""
        crop = self.preprocess.crop
        buffer: np.ndarray | None = getattr(self._buffers, "pixels", None)
        if buffer is None or len(buffer) < len(images):
            buffer = self._buffers.pixels = np.empty((len(images), 3, crop, crop), np.float32)
        batch = buffer[: len(images)]
        into = self.preprocess.into
        for image, out in zip(images, batch):
            into(image, out)
        return batch

    def _forward(self, images: Sequence[Image.Image], batch_size: int, output: str) -> np.ndarray:
        """One output of the graph for all ``images``, preprocessed and run ``batch_size`` at a time."""
        return self.model.run_batches(images, batch_size, lambda part: {"pixel_values": self._pixels(part)}, output)

    def encode(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        """L2-normalized pooled MobileNetV2 features, (n, 1280) float32."""
        return l2_normalize(self._forward(images, batch_size, "features"))

    def encode_frames(self, frames: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Video frames as uint8 RGB ``(n, h, w, 3)`` -> (n, 1280) unit vectors (same path as images)."""
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 (n, h, w, 3), got {frames.dtype} {frames.shape}")
        return self.encode([Image.fromarray(frame) for frame in frames], batch_size)

    def classify(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        """ImageNet-1k logits (n, 1000) in torchvision's class order, for the zero-shot baseline."""
        if self.num_classes is None:
            raise ValueError(f"image model {self.version} has no 'logits' output (a model exported without a classifier)")
        return self._forward(images, batch_size, "logits")
