"""Text encoder: product titles -> 384-d unit vectors from the exported all-MiniLM-L6-v2 graph.

Pooling and normalization are inside the graph; this module only tokenizes and batches.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from tokenizers import Tokenizer

from encoders_onnx.session import FP32, OnnxModel, Providers, model_name

TEXT_MODEL = "text"


def load_tokenizer(path: str | Path, max_length: int) -> Tokenizer:
    """The shipped tokenizer.json, re-set to sentence-transformers' behaviour.

    The file has fixed 128-token padding baked in; sentence-transformers truncates at
    ``max_length`` (256 for MiniLM) and pads only to the longest text of the batch.
    """
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.enable_truncation(max_length)
    tokenizer.enable_padding()
    return tokenizer


def tokenize(tokenizer: Tokenizer, texts: Sequence[str]) -> dict[str, np.ndarray]:
    """``input_ids`` and ``attention_mask`` (int64, padded to the longest text) for one batch."""
    encodings = tokenizer.encode_batch(list(texts))
    return {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
    }


def encoder_text(title: str, description: str = "") -> str:
    """What the text encoder reads for a product: the title, then the description when there is
    one. Serving and training both call this, so their vectors come from the same string."""
    return f"{title}. {description}".strip() if description else title


class TextEncoder:
    """``encode(texts) -> (n, 384)`` float32 unit vectors; needs only the model folder."""

    def __init__(self, model_dir: str | Path, providers: Providers | str = "auto", precision: str = FP32,
                 parallel: int = 0) -> None:
        self.model = OnnxModel(model_dir, model_name(TEXT_MODEL, precision), providers, parallel=parallel)
        settings = self.model.manifest["extra"]["tokenizer"]
        self.tokenizer = load_tokenizer(self.model.model_dir / settings["file"], settings["truncation"])
        self.dim: int = self.model.output_dim("embeddings")

    @property
    def version(self) -> str:
        return self.model.version

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Embed ``texts`` in batches of ``batch_size``; an empty input gives shape ``(0, dim)``."""
        if isinstance(texts, str):
            raise TypeError("encode() takes a sequence of texts, not a single str")
        embeddings = self.model.run_batches(texts, batch_size, lambda part: tokenize(self.tokenizer, part), "embeddings")
        return embeddings.astype(np.float32, copy=False)
