"""Runtime encoders on onnxruntime (no torch): text (``text``), image (``image``) and video
(``video``: sampled frames through the image encoder, pooled) vectors from the exported models,
and their fusion (``fusion``). Only the text and image encoders are re-exported here, so that
importing the package does not load PyAV."""

from encoders_onnx.image import ImageEncoder
from encoders_onnx.session import ModelIntegrityError, ModelNotExportedError, OnnxModel
from encoders_onnx.text import TextEncoder

__all__ = ["ImageEncoder", "ModelIntegrityError", "ModelNotExportedError", "OnnxModel", "TextEncoder"]
