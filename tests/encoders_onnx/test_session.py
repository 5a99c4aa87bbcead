"""OnnxModel's split batches: parts of a batch run at once, one core each, in input order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from encoders_onnx.image import ImageEncoder
from encoders_onnx.session import OnnxModel, split, usable_cores
from encoders_onnx.text import TextEncoder


@pytest.mark.parametrize("count, parts, sizes", [(33, 2, [17, 16]), (32, 3, [11, 11, 10]), (1, 4, [1]), (5, 1, [5])])
def test_split_gives_consecutive_parts_of_near_equal_size(count: int, parts: int, sizes: list[int]) -> None:
    items = list(range(count))
    pieces = split(items, parts)
    assert [len(p) for p in pieces] == sizes
    assert [x for p in pieces for x in p] == items


def test_parallel_zero_means_one_part_per_usable_core_each_on_one_thread(model_dir: Path) -> None:
    model = OnnxModel(model_dir, "text", "cpu", parallel=0)
    assert model.parallel == usable_cores()
    if model.parallel > 1:
        assert model.session.get_session_options().intra_op_num_threads == 1


def test_parallel_one_keeps_onnxruntimes_own_threads(model_dir: Path) -> None:
    model = OnnxModel(model_dir, "text", "cpu", parallel=1)
    assert model.parallel == 1 and model.session.get_session_options().intra_op_num_threads == 0


def test_negative_parallel_is_refused(model_dir: Path) -> None:
    with pytest.raises(ValueError, match="parallel must be >= 0"):
        OnnxModel(model_dir, "text", "cpu", parallel=-1)


def test_split_text_batches_equal_whole_ones_in_order(model_dir: Path) -> None:
    titles = [f"{colour} {kind}" for colour in ("red", "navy", "olive") for kind in ("running shoes", "kurta", "watch")]
    whole = TextEncoder(model_dir, "cpu", parallel=1).encode(titles, batch_size=4)
    parts = TextEncoder(model_dir, "cpu", parallel=3).encode(titles, batch_size=4)
    np.testing.assert_allclose(parts, whole, atol=1e-5)
    assert len({tuple(np.round(v, 4)) for v in parts}) == len(titles)  # distinct rows: order is checkable


def test_split_image_batches_equal_whole_ones_in_order(model_dir: Path) -> None:
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 256, (70, 50, 3), dtype=np.uint8)) for _ in range(7)]
    whole = ImageEncoder(model_dir, "cpu", parallel=1).encode(images, batch_size=5)
    parts = ImageEncoder(model_dir, "cpu", parallel=2).encode(images, batch_size=5)
    np.testing.assert_allclose(parts, whole, atol=1e-5)
    assert parts.shape == (7, 1280)
