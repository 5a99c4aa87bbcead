"""The runtime models the settings name, loaded once: the worker and the query path share this."""

from __future__ import annotations

from dataclasses import dataclass

from encoders_onnx.fusion import ConcatFusion, Fusion
from encoders_onnx.image import ImageEncoder
from encoders_onnx.text import TextEncoder
from streams.settings import Settings


@dataclass(frozen=True)
class Models:
    text: TextEncoder
    image: ImageEncoder
    fusion: Fusion

    @property
    def versions(self) -> dict[str, str]:
        return {"text": self.text.version, "image": self.image.version, "fusion": self.fusion.version}


def load_models(settings: Settings) -> Models:
    text = TextEncoder(settings.model_dir, providers=settings.providers)
    image = ImageEncoder(settings.model_dir, providers=settings.providers)
    return Models(text, image, ConcatFusion(text.dim, image.dim, settings.text_weight))
