"""The runtime models the settings name, loaded once: the worker and the query path share this."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from encoders_onnx.fusion import ConcatFusion, Fusion, FusionModel
from encoders_onnx.image import IMAGE_MODEL, ImageEncoder
from encoders_onnx.session import exported_manifest
from encoders_onnx.text import TEXT_MODEL, TextEncoder
from encoders_onnx.video import VideoEncoder, VideoLimits
from streams.settings import Settings


@dataclass(frozen=True)
class Models:
    text: TextEncoder
    image: ImageEncoder
    video: VideoEncoder
    fusion: Fusion

    @property
    def versions(self) -> dict[str, str]:
        return {"text": self.text.version, "image": self.image.version, "video": self.video.version,
                "fusion": self.fusion.version}


def ensure_exported(model_dir: Path) -> None:
    """Export the encoders if they are missing; torch (the export extra) is imported only then."""
    if all(exported_manifest(model_dir, name) for name in (TEXT_MODEL, IMAGE_MODEL)):
        return
    try:
        from exporters.encoders import ensure_models
    except ImportError as exc:
        raise RuntimeError(f"no exported models in {model_dir} and no torch to export them ({exc}): "
                           "pip install -e '.[export]' and run `shelfstream export`") from None
    ensure_models(model_dir)


def load_models(settings: Settings) -> Models:
    text = TextEncoder(settings.model_dir, providers=settings.providers)
    image = ImageEncoder(settings.model_dir, providers=settings.providers)
    video = VideoEncoder(image, VideoLimits.from_settings(settings), settings.video_pooling, settings.batch_size)
    return Models(text, image, video, load_fusion(settings, text, image, video))


def load_fusion(settings: Settings, text: TextEncoder, image: ImageEncoder, video: VideoEncoder) -> Fusion:
    """The trained bundle the settings name, checked against the serving encoders; else concatenation."""
    if not settings.fusion_bundle:
        return ConcatFusion(text.dim, image.dim, settings.text_weight)
    bundle = FusionModel(settings.fusion_bundle, settings.providers, settings.fusion_method)
    bundle.check_encoders({"text": text.version, "image": image.version, "video": video.version})
    return bundle
