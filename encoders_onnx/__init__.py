"""Runtime encoders on onnxruntime (no torch): text and image vectors from the exported models."""

from encoders_onnx.image import ImageEncoder
from encoders_onnx.session import ModelIntegrityError, ModelNotExportedError, OnnxModel
from encoders_onnx.text import TextEncoder

__all__ = ["ImageEncoder", "ModelIntegrityError", "ModelNotExportedError", "OnnxModel", "TextEncoder"]
