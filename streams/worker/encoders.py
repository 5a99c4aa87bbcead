"""The ONNX encoders and the fusion the settings name, loaded once: indexing and queries share them.
This module never imports torch: exporting is a tool's job (``shelfstream export``)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from encoders_onnx.fusion import ConcatFusion, Fusion, FusionModel
from encoders_onnx.image import ImageEncoder
from encoders_onnx.text import TextEncoder
from encoders_onnx.video import VideoEncoder, VideoLimits
from streams.settings import Settings


@dataclass(frozen=True)
class Encoders:
    text: TextEncoder
    image: ImageEncoder
    video: VideoEncoder
    fusion: Fusion

    @property
    def versions(self) -> dict[str, str]:
        return {"text": self.text.version, "image": self.image.version, "video": self.video.version,
                "fusion": self.fusion.version}

    @property
    def store_version(self) -> str:
        """The version the store names its collection after: a trained bundle pins the encoders it
        was trained on, so its own version says it all; concatenation reads whatever encoders are
        served (fp32, int8, a user's export), so their versions are part of it."""
        if isinstance(self.fusion, ConcatFusion):
            encoders = hashlib.sha256(f"{self.text.version}/{self.image.version}/{self.video.version}".encode())
            return f"{self.fusion.version}-{encoders.hexdigest()[:8]}"
        return self.fusion.version


def load_encoders(settings: Settings) -> Encoders:
    text = TextEncoder(settings.model_dir, settings.providers, settings.precision, settings.inference_parallel)
    image = ImageEncoder(settings.model_dir, settings.providers, settings.precision, settings.inference_parallel)
    video = VideoEncoder(image, VideoLimits.from_settings(settings), settings.video_pooling, settings.batch_size)
    return Encoders(text, image, video, load_fusion(settings, text, image, video))


def load_fusion(settings: Settings, text: TextEncoder, image: ImageEncoder, video: VideoEncoder) -> Fusion:
    """The trained bundle the settings name, checked against the serving encoders; else concatenation."""
    if not settings.fusion_bundle:
        return ConcatFusion(text.dim, image.dim, settings.text_weight)
    bundle = FusionModel(settings.fusion_bundle, settings.providers, settings.fusion_method)
    bundle.check_encoders({"text": text.version, "image": image.version, "video": video.version})
    return bundle
