"""The runtime side of a trained bundle: FusionModel on onnxruntime, with modalities missing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from encoders_onnx.fusion import FusionModel, ModalityBatch
from encoders_onnx.session import ModelNotExportedError, l2_normalize

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny bundle trained for two epochs on random features (what is tested is the plumbing)."""
    from exporters.features import Features
    from exporters.train import TrainConfig, export_bundle, fit

    rng = np.random.default_rng(0)
    n = 120
    features = Features(
        {"text": l2_normalize(rng.standard_normal((n, 12))), "image": l2_normalize(rng.standard_normal((n, 20)))},
        {"text": np.ones(n, bool), "image": np.ones(n, bool)},
        {"text": "text-v1", "image": "image-v1"},
    )
    split = {"train": np.arange(0, 96), "val": np.arange(96, 108), "test": np.arange(108, 120)}
    config = TrainConfig(shared_dim=8, hidden=16, fused_dim=6, batch_size=32, head_batch_size=32, max_epochs=2, patience=1, ae_bottleneck=5)
    out = tmp_path_factory.mktemp("bundle")
    export_bundle(fit(features, rng.integers(0, 4, n), split, config), features, out, config, {})
    return out


def _batch(rng: np.random.Generator, n: int, dim: int, present: list[bool]) -> ModalityBatch:
    vectors = l2_normalize(rng.standard_normal((n, dim)))
    vectors[~np.array(present)] = np.nan  # junk where absent must never reach the output
    return ModalityBatch(vectors, np.array(present))


def test_fuse_batch_with_missing_modalities(bundle_dir: Path) -> None:
    model = FusionModel(bundle_dir, providers="cpu")
    assert model.dim == 8 and model.dims == {"text": 8, "image": 8, "video": 8, "fused": 6}
    rng = np.random.default_rng(1)
    batch = {
        "text": _batch(rng, 4, 12, [True, True, False, False]),
        "image": _batch(rng, 4, 20, [True, False, True, False]),
    }
    out = model.fuse(batch)
    assert set(out) == {"text", "image", "fused"}
    assert out["text"].present.tolist() == [True, True, False, False]
    assert out["fused"].present.tolist() == [True, True, True, False]
    for name in ("text", "image", "fused"):
        rows = out[name].present
        assert np.isfinite(out[name].vectors[rows]).all()
        np.testing.assert_allclose(np.linalg.norm(out[name].vectors[rows], axis=1), 1.0, atol=1e-5)
    # a product's fused vector depends only on the modalities it has
    alone = model.fuse({"text": ModalityBatch(batch["text"].vectors[:2], np.array([True, True]))})
    np.testing.assert_allclose(alone["fused"].vectors[1], out["fused"].vectors[1], atol=1e-5)


def test_video_uses_the_image_head_when_training_had_no_video(bundle_dir: Path) -> None:
    model = FusionModel(bundle_dir, providers="cpu")
    x = l2_normalize(np.random.default_rng(2).standard_normal((3, 20)))
    z = model.project(image=x, video=x)
    assert z["text"] is None
    np.testing.assert_allclose(z["video"], z["image"])
    video_only = model.fuse({"video": ModalityBatch(x, np.ones(3, bool))})
    assert video_only["video"].present.all()
    assert not video_only["fused"].present.any()  # the fusion head never saw video: no pretend fused vector


def test_autoencoder_fusion_and_versions(bundle_dir: Path) -> None:
    learned = FusionModel(bundle_dir, providers="cpu")
    ae = FusionModel(bundle_dir, providers="cpu", fusion="autoencoder")
    assert ae.version == f"{learned.version}-autoencoder" and ae.dims["fused"] == 5
    x = l2_normalize(np.random.default_rng(3).standard_normal((2, 12)))
    assert ae.fuse_arrays(text=x).vectors.shape == (2, 5)
    learned.check_encoders({"text": "text-v1", "image": "image-v1"})
    with pytest.raises(ValueError, match="other encoder versions"):
        learned.check_encoders({"text": "text-v2"})
    with pytest.raises(ValueError):
        FusionModel(bundle_dir, providers="cpu", fusion="nope")
    with pytest.raises(ModelNotExportedError):
        FusionModel(bundle_dir / "missing", providers="cpu")
