"""Fusion of per-modality vectors into the named vectors stored in Qdrant.

Every fusion takes the same input, a dict ``modality -> ModalityBatch`` (rows of vectors and a
presence mask), and returns the named vectors to store (``text``, ``image``, ``video``,
``fused``) in the same form. An absent modality is never stored as a zero vector: its mask
row is False and the store omits that named vector for that point.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Protocol

import numpy as np

from encoders_onnx.session import ModelNotExportedError, OnnxModel, l2_normalize

MODALITIES = ("text", "image", "video")


@dataclass(frozen=True)
class ModalityBatch:
    """Vectors of one modality for a batch of products; rows where ``present`` is False are junk."""

    vectors: np.ndarray  # (n, d) float32
    present: np.ndarray  # (n,) bool


class Fusion(Protocol):
    version: str
    dims: Mapping[str, int]  # named vector -> dimension, ``fused`` included
    # a query of each modality searches these named vectors (those in the query's space)
    search_targets: Mapping[str, tuple[str, ...]]

    def project(self, text: np.ndarray | None = None, image: np.ndarray | None = None,
                video: np.ndarray | None = None) -> dict[str, np.ndarray | None]: ...

    def fuse(self, batch: Mapping[str, ModalityBatch]) -> dict[str, ModalityBatch]: ...


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
        # image and video vectors both come from the image encoder: one space; text is its own
        self.search_targets = {"text": ("text",), "image": ("image", "video"), "video": ("video", "image")}

    def project(self, text: np.ndarray | None = None, image: np.ndarray | None = None,
                video: np.ndarray | None = None) -> dict[str, np.ndarray | None]:
        """Encoder vectors are stored as they are."""
        return {"text": text, "image": image, "video": video}

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


BUNDLE_MANIFEST = "bundle.json"


class FusionModel:
    """A trained bundle (``shelfstream train``): per-modality heads into one shared space + a fusion graph.

    As a :class:`Fusion`, ``fuse(batch)`` stores ``text``, ``image`` and ``video`` *in the shared
    space* (so a text query also finds products by their images) and ``fused`` from the bundle's
    fusion graph (``learned`` or ``autoencoder``). Rows where a modality is absent are zeroed
    before any graph sees them and stay absent in the output; the fusion graph gets the mask.
    """

    def __init__(self, bundle_dir: str | Path, providers: str = "auto", fusion: str = "learned") -> None:
        self.bundle_dir = Path(bundle_dir)
        manifest_path = self.bundle_dir / BUNDLE_MANIFEST
        if not manifest_path.is_file():
            raise ModelNotExportedError(f"no fusion bundle at {manifest_path}: run `shelfstream train` first")
        self.manifest: dict = json.loads(manifest_path.read_text())
        if fusion not in self.manifest["fusions"]:
            raise ValueError(f"fusion must be one of {sorted(self.manifest['fusions'])}, not {fusion!r}")
        sessions: dict[str, OnnxModel] = {}
        self._heads: dict[str, OnnxModel] = {}
        for modality, spec in self.manifest["heads"].items():
            if spec["model"] not in sessions:
                sessions[spec["model"]] = OnnxModel(self.bundle_dir, spec["model"], providers)
            self._heads[modality] = sessions[spec["model"]]
        spec = self.manifest["fusions"][fusion]
        self._fusion = OnnxModel(self.bundle_dir, spec["model"], providers)
        self.fusion_modalities: tuple[str, ...] = tuple(spec["modalities"])
        self.input_dims: dict[str, int] = dict(self.manifest["input_dims"])
        self.dim: int = int(self.manifest["shared_dim"])
        self.dims: dict[str, int] = {**{m: self.dim for m in self._heads}, "fused": self._fusion.output_dim("fused")}
        self.version: str = self.manifest["version"] if fusion == "learned" else f"{self.manifest['version']}-{fusion}"
        # one shared space: a query of any modality searches every modality's vectors
        self.search_targets = {m: (m, *(o for o in self._heads if o != m)) for m in self._heads}

    def check_encoders(self, versions: Mapping[str, str]) -> None:
        """Fail loudly when the serving encoders are not the ones the heads were trained on."""
        trained = self.manifest["encoders"]
        wrong = {m: (v, trained[m]) for m, v in versions.items() if m in trained and trained[m] != v}
        if wrong:
            raise ValueError(f"bundle {self.version} was trained on other encoder versions (serving, trained): {wrong}")

    def project(
        self, text: np.ndarray | None = None, image: np.ndarray | None = None, video: np.ndarray | None = None
    ) -> dict[str, np.ndarray | None]:
        """Encoder vectors -> unit vectors in the shared space; None stays None (absent modality)."""
        given = {"text": text, "image": image, "video": video}
        return {m: None if x is None else self._project(m, x) for m, x in given.items()}

    def _project(self, modality: str, x: np.ndarray) -> np.ndarray:
        head = self._heads[modality]  # a tied head (video -> image) names its input after its own modality
        return head.run({head.input_names[0]: np.asarray(x, np.float32)})["embedding"]

    def fuse_arrays(
        self,
        text: np.ndarray | None = None,
        image: np.ndarray | None = None,
        video: np.ndarray | None = None,
        present_mask: np.ndarray | None = None,
    ) -> ModalityBatch:
        """Fused vectors of a batch. ``present_mask`` is (n, 3) bool in ``MODALITIES`` order (default:
        a given array is present on every row). Rows with none of the fusion's modalities come
        back with ``present`` False."""
        given = {"text": text, "image": image, "video": video}
        n = len(present_mask) if present_mask is not None else next(len(x) for x in given.values() if x is not None)
        if present_mask is None:
            present_mask = np.stack([np.full(n, given[m] is not None) for m in MODALITIES], axis=1)
        columns = [MODALITIES.index(m) for m in self.fusion_modalities]
        present = np.asarray(present_mask, bool)[:, columns]
        feeds = {"present": present.astype(np.float32)}
        for i, m in enumerate(self.fusion_modalities):
            x = given[m]
            x = np.zeros((n, self.input_dims[m]), np.float32) if x is None else np.asarray(x, np.float32)
            feeds[m] = np.where(present[:, i : i + 1], x, 0.0).astype(np.float32)
        return ModalityBatch(self._fusion.run(feeds)["fused"], present.any(axis=1))

    def fuse(self, batch: Mapping[str, ModalityBatch]) -> dict[str, ModalityBatch]:
        """The named vectors to store: each present modality in the shared space, and ``fused``."""
        n = len(next(iter(batch.values())).present)
        present = {m: batch[m].present if m in batch else np.zeros(n, bool) for m in MODALITIES}
        arrays = {m: np.where(present[m][:, None], batch[m].vectors, 0.0) for m in MODALITIES if present[m].any()}
        out = {m: ModalityBatch(z, present[m]) for m, z in self.project(**arrays).items() if z is not None}
        out["fused"] = self.fuse_arrays(**arrays, present_mask=np.stack([present[m] for m in MODALITIES], axis=1))
        return out
