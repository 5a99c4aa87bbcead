"""The shared ONNX export: manifests, the torch-vs-onnxruntime check, atomic skip/force and tamper detection."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from encoders_onnx.session import ModelIntegrityError, ModelNotExportedError, OnnxModel, file_sha256
from encoders_onnx.text import load_tokenizer, tokenize
from exporters.encoders import TEXT_MAX_LENGTH, export_all
from exporters.onnx_export import ExportMismatchError, check_onnx, export_onnx
from exporters.torch_models import load_minilm, load_mobilenet_v2

MANIFEST_KEYS = {"name", "source", "version", "onnx_sha256", "inputs", "outputs", "opset", "max_abs_diff", "created_at", "extra"}


@pytest.mark.parametrize(
    ("name", "inputs", "outputs"),
    [
        ("text", {"input_ids": ["batch", "sequence"], "attention_mask": ["batch", "sequence"]}, {"embeddings": ["batch", 384]}),
        ("image", {"pixel_values": ["batch", 3, 224, 224]}, {"features": ["batch", 1280], "logits": ["batch", 1000]}),
    ],
)
def test_manifest_describes_the_exported_graph(model_dir: Path, name: str, inputs: dict, outputs: dict) -> None:
    manifest = json.loads((model_dir / f"{name}.manifest.json").read_text())
    assert MANIFEST_KEYS <= manifest.keys()
    assert manifest["name"] == name and manifest["opset"] == 17
    assert manifest["max_abs_diff"] <= 1e-4
    assert manifest["onnx_sha256"] == file_sha256(model_dir / f"{name}.onnx")
    assert len(manifest["version"]) == 12
    assert {i["name"]: i["shape"] for i in manifest["inputs"]} == inputs
    assert {o["name"]: o["shape"] for o in manifest["outputs"]} == outputs
    assert all(o["dim"] == o["shape"][-1] for o in manifest["outputs"])


def test_text_manifest_records_the_tokenizer(model_dir: Path) -> None:
    tokenizer = json.loads((model_dir / "text.manifest.json").read_text())["extra"]["tokenizer"]
    assert tokenizer["truncation"] == TEXT_MAX_LENGTH == 256
    assert tokenizer["padding"] == "longest"
    assert tokenizer["sha256"] == file_sha256(model_dir / tokenizer["file"])


def test_image_graph_matches_torch_on_a_fresh_batch(model_dir: Path) -> None:
    pixels = {"pixel_values": torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(7))}
    diff = check_onnx(load_mobilenet_v2(), model_dir / "image.onnx", pixels, ["features", "logits"], {"pixel_values": {0: "batch"}})
    assert diff <= 1e-4


def test_text_graph_matches_torch_on_a_fresh_batch(model_dir: Path) -> None:
    feeds = tokenize(load_tokenizer(model_dir / "tokenizer.json", TEXT_MAX_LENGTH), ["blue denim jacket", "a watch", "x " * 300])
    inputs = {k: torch.from_numpy(v) for k, v in feeds.items()}
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"}}
    assert inputs["input_ids"].shape[1] == TEXT_MAX_LENGTH  # the long text was truncated, not dropped
    assert check_onnx(load_minilm(), model_dir / "text.onnx", inputs, ["embeddings"], axes) <= 1e-4


class _Affine(nn.Module):
    """A tiny exportable module standing in for a fusion head."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x)


class _BatchBaked(_Affine):
    """Branches on the batch size in Python: tracing bakes the branch in, so other batch sizes differ."""

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x) if x.shape[0] == 2 else -self.linear(x)


def test_export_onnx_writes_model_and_manifest(tmp_path: Path) -> None:
    manifest = export_onnx(
        _Affine(), {"x": torch.randn(2, 4)}, ["y"], {"x": {0: "batch"}, "y": {0: "batch"}},
        tmp_path, "head", source="test", extra={"purpose": "unit test"},
    )
    assert manifest["extra"] == {"purpose": "unit test"}
    assert manifest["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["batch", 4]}]
    assert manifest["outputs"] == [{"name": "y", "dtype": "float32", "shape": ["batch", 2], "dim": 2}]
    assert json.loads((tmp_path / "head.manifest.json").read_text()) == manifest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["head.manifest.json", "head.onnx"]  # no temp files left
    out = OnnxModel(tmp_path, "head", providers="cpu").run({"x": np.ones((5, 4), np.float32)})
    assert out["y"].shape == (5, 2)


def test_export_onnx_rejects_a_graph_that_only_works_for_the_sample_batch(tmp_path: Path) -> None:
    with pytest.raises(ExportMismatchError, match="tolerance"):
        export_onnx(_BatchBaked(), {"x": torch.randn(2, 4)}, ["y"], {"x": {0: "batch"}, "y": {0: "batch"}}, tmp_path, "bad", source="test")
    assert not (tmp_path / "bad.onnx").exists() and not (tmp_path / "bad.manifest.json").exists()


def test_version_changes_with_extra_settings(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module, args = _Affine(), ({"x": torch.randn(2, 4)}, ["y"], {"x": {0: "batch"}})
    first = export_onnx(module, *args, tmp_path, "head", source="test", extra={"truncation": 128})
    again = export_onnx(module, *args, tmp_path, "head", source="test", extra={"truncation": 128})
    other = export_onnx(module, *args, tmp_path, "head", source="test", extra={"truncation": 256})
    assert first["version"] == again["version"] != other["version"]


def test_export_all_keeps_existing_models(model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mtimes = {p.name: p.stat().st_mtime_ns for p in model_dir.glob("*.onnx")}
    manifests = export_all(model_dir)
    assert [m["name"] for m in manifests] == ["text", "image", "text.int8", "image.int8"]
    assert {p.name: p.stat().st_mtime_ns for p in model_dir.glob("*.onnx")} == mtimes
    assert "up to date" in capsys.readouterr().out


def test_tampered_model_is_refused(model_dir: Path, tmp_path: Path) -> None:
    for name in ("image.onnx", "image.manifest.json"):
        shutil.copy(model_dir / name, tmp_path / name)
    with (tmp_path / "image.onnx").open("r+b") as fh:
        fh.seek(-100, 2)
        byte = fh.read(1)
        fh.seek(-100, 2)
        fh.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ModelIntegrityError, match="sha256"):
        OnnxModel(tmp_path, "image")


def test_missing_model_names_the_export_command(tmp_path: Path) -> None:
    with pytest.raises(ModelNotExportedError, match="shelfstream export"):
        OnnxModel(tmp_path, "text")
