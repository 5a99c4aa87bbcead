"""Fusion of per-modality vectors into the named vectors stored in Qdrant.

Every fusion takes the same input, a dict ``modality -> ModalityBatch`` (rows of vectors and a
presence mask), and returns the named vectors to store (``text``, ``image``, ``video``,
``fused``) in the same form. An absent modality is never stored as a zero vector: its mask
row is False and the store omits that named vector for that point.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Protocol

import numpy as np

MODALITIES = ("text", "image", "video")


@dataclass(frozen=True)
class ModalityBatch:
    """Vectors of one modality for a batch of products; rows where ``present`` is False are junk."""

    vectors: np.ndarray  # (n, d) float32
    present: np.ndarray  # (n,) bool


class Fusion(Protocol):
    version: str
    dims: Mapping[str, int]  # named vector -> dimension, ``fused`` included

    def fuse(self, batch: Mapping[str, ModalityBatch]) -> dict[str, ModalityBatch]: ...


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


class ConcatFusion:
    """Early fusion by weighted concatenation, the default without a trained bundle.

    ``fused = normalize([sqrt(w) * text, sqrt(1 - w) * visual])`` where ``visual`` is the
    normalized mean of the image and video vectors (both come from the image encoder, so they
    share a space). For two products with every block present, the cosine of their fused
    vectors is ``w * cos(text) + (1 - w) * cos(visual)``: a late fusion of per-modality
    similarities. A missing block contributes nothing and the rest is renormalized.
    """

    def __init__(self, text_dim: int, image_dim: int, text_weight: float = 0.5) -> None:
        if not 0.0 < text_weight < 1.0:
            raise ValueError(f"text_weight must be strictly between 0 and 1, got {text_weight}")
        self.text_weight = text_weight
        self.dims = {"text": text_dim, "image": image_dim, "video": image_dim, "fused": text_dim + image_dim}
        self.version = f"concat-w{text_weight:g}"

    def fuse(self, batch: Mapping[str, ModalityBatch]) -> dict[str, ModalityBatch]:
        text, image = batch["text"], batch["image"]
        video = batch.get("video")
        visual_sum = np.where(image.present[:, None], image.vectors, 0.0)
        visual_present = image.present.copy()
        if video is not None:
            visual_sum = visual_sum + np.where(video.present[:, None], video.vectors, 0.0)
            visual_present |= video.present
        text_block = np.where(text.present[:, None], text.vectors, 0.0) * np.sqrt(self.text_weight)
        visual_block = l2_normalize(visual_sum) * np.sqrt(1.0 - self.text_weight)
        fused = l2_normalize(np.concatenate([text_block, visual_block], axis=1))
        out = {name: batch[name] for name in MODALITIES if name in batch}
        out["fused"] = ModalityBatch(fused, text.present | visual_present)
        return out
