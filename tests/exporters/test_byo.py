"""``shelfstream export --modality``: a user's torch model (factory + weights, or a Hugging Face
folder for text) goes through the same export check and manifest, with dims read from the model
and preprocessing from the flags."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from encoders_onnx.image import ImageEncoder
from encoders_onnx.text import TextEncoder
from exporters.byo import build_module, export_user_model, load_factory
from exporters.torch_models import minilm_path
from streams.tools.cli import main

REPO = Path(__file__).resolve().parents[2]
TINY_MODEL = textwrap.dedent('''
    import torch
    from torch import nn

    def build() -> nn.Module:
        """A tiny image encoder: 48-d features from a strided conv, pooled."""
        return nn.Sequential(nn.Conv2d(3, 16, 5, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(16, 48))
''')


@pytest.fixture
def user_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    """``tiny_user_model:build`` importable from a folder on sys.path, and trained-looking weights."""
    (tmp_path / "tiny_user_model.py").write_text(TINY_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    torch.manual_seed(3)
    weights = tmp_path / "weights.pt"
    torch.save(load_factory("tiny_user_model:build")().state_dict(), weights)
    return "tiny_user_model:build", weights


def _images(count: int = 6) -> list[Image.Image]:
    return [Image.open(p).convert("RGB") for p in sorted((REPO / "demo" / "catalog" / "images").glob("*.jpg"))[:count]]


def test_cli_exports_a_user_image_model_that_the_runtime_serves(folder, user_model, monkeypatch, capsys) -> None:
    factory, weights = user_model
    monkeypatch.setenv("SHELFSTREAM_MODEL_DIR", str(folder))
    assert main(["export", "--modality", "image", "--factory", factory, "--weights", str(weights),
                 "--resize-shorter", "112", "--center-crop", "96", "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25"]) == 0
    assert "reindex" in capsys.readouterr().out

    manifest = json.loads((folder / "image.manifest.json").read_text())
    assert manifest["outputs"] == [{"name": "features", "dtype": "float32", "shape": ["batch", 48], "dim": 48}]
    assert manifest["max_abs_diff"] <= 1e-4 and manifest["extra"]["bring_your_own"] is True
    assert manifest["extra"]["preprocessing"]["center_crop"] == 96 and manifest["extra"]["preprocessing"]["mean"] == [0.5] * 3
    assert not (folder / "image.int8.onnx").exists() and not (folder / "image.int8.manifest.json").exists()

    encoder = ImageEncoder(folder, "cpu")
    assert encoder.dim == 48 and encoder.num_classes is None
    pixels = np.stack([encoder.preprocess(im) for im in _images()])
    assert pixels.shape == (6, 3, 96, 96)
    module = build_module(load_factory(factory), weights)
    with torch.no_grad():
        expected = torch.nn.functional.normalize(module(torch.from_numpy(pixels)), dim=1).numpy()
    np.testing.assert_allclose(encoder.encode(_images()), expected, atol=1e-5)
    with pytest.raises(ValueError, match="no 'logits' output"):
        encoder.classify(_images(1))


def test_hf_folder_text_export_matches_the_packaged_text_encoder(folder) -> None:
    titles = ["blue denim jacket", "Titan Men Silver Watch", "a"]
    packaged = TextEncoder(folder, "cpu").encode(titles)
    manifest = export_user_model("text", folder, hf_folder=str(minilm_path()))
    assert manifest["outputs"][0]["dim"] == 384 and manifest["extra"]["bring_your_own"] is True
    assert not (folder / "text.int8.onnx").exists()
    np.testing.assert_allclose(TextEncoder(folder, "cpu").encode(titles), packaged, atol=1e-5)


def test_bad_user_model_flags_are_clear_errors(folder, user_model, tmp_path) -> None:
    factory, weights = user_model
    with pytest.raises(ValueError, match="'package.module:function'"):
        export_user_model("image", folder, factory="tiny_user_model.build")
    with pytest.raises(ValueError, match="has no callable 'nope'"):
        export_user_model("image", folder, factory="tiny_user_model:nope")
    with pytest.raises(ValueError, match="needs --tokenizer"):
        export_user_model("text", folder, factory=factory, weights=str(weights))
    with pytest.raises(ValueError, match="needs --factory"):
        export_user_model("image", folder)
    torch.save({"other": torch.zeros(1)}, tmp_path / "wrong.pt")
    with pytest.raises(RuntimeError, match="Missing key"):
        export_user_model("image", folder, factory=factory, weights=str(tmp_path / "wrong.pt"))
    assert json.loads((folder / "image.manifest.json").read_text())["outputs"][0]["dim"] == 1280  # untouched
