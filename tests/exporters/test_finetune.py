"""``shelfstream finetune``: the last MobileNetV2 block trained on a tiny synthetic catalog
(drawn shapes in colours, titles that name them) lowers its contrastive loss, and its weights
export through the bring-your-own path into an encoder the runtime serves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

torch = pytest.importorskip("torch")

from encoders_onnx.image import ImageEncoder  # noqa: E402
from exporters.byo import build_module, load_factory  # noqa: E402
from exporters.catalog import CatalogMapping, load_catalog  # noqa: E402
from exporters.finetune import FACTORY, REPORT_FILE, WEIGHTS_FILE  # noqa: E402
from exporters.torch_models import load_mobilenet_v2  # noqa: E402
from streams.tools.cli import main  # noqa: E402

COLOURS = {"red": (220, 30, 30), "green": (30, 160, 40), "blue": (30, 60, 220), "yellow": (240, 220, 20),
           "black": (10, 10, 10), "pink": (250, 140, 200), "orange": (250, 140, 0), "purple": (120, 40, 160)}
SHAPES = ("circle", "square", "triangle", "stripes", "cross")


def _draw(shape: str, colour: tuple[int, int, int]) -> Image.Image:
    image = Image.new("RGB", (60, 80), "white")
    draw = ImageDraw.Draw(image)
    if shape == "circle":
        draw.ellipse((8, 18, 52, 62), fill=colour)
    elif shape == "square":
        draw.rectangle((10, 20, 50, 60), fill=colour)
    elif shape == "triangle":
        draw.polygon([(30, 12), (55, 68), (5, 68)], fill=colour)
    elif shape == "stripes":
        for y in range(0, 80, 16):
            draw.rectangle((0, y, 60, y + 7), fill=colour)
    else:
        draw.rectangle((24, 5, 36, 75), fill=colour)
        draw.rectangle((5, 34, 55, 46), fill=colour)
    return image


@pytest.fixture
def shapes_catalog(tmp_path: Path) -> Path:
    """40 products: every colour x shape, an image each, a title that names both."""
    root = tmp_path / "shop"
    (root / "pics").mkdir(parents=True)
    lines = ["sku,name,kind"]
    for i, (colour, shape) in enumerate((c, s) for c in COLOURS for s in SHAPES):
        _draw(shape, COLOURS[colour]).save(root / "pics" / f"p{i}.png")
        lines.append(f"p{i},{colour.title()} {shape} print,{shape}")
    (root / "shop.csv").write_text("\n".join(lines) + "\n")
    return root


def test_finetuning_lowers_the_loss_and_exports_through_the_byo_path(shapes_catalog, folder, tmp_path, monkeypatch, capsys):
    split = load_catalog(shapes_catalog, CatalogMapping(id="sku", title="name", fine=("kind",), image="pics/{sku}.png")).split()
    assert len(split["train"]) >= 24 and len(split["val"]) >= 2  # the ids were chosen so both splits are usable
    monkeypatch.setenv("SHELFSTREAM_MODEL_DIR", str(folder))
    out = tmp_path / "ft"
    assert main(["finetune", "--dataset", str(shapes_catalog), "--id", "sku", "--title", "name", "--fine", "kind",
                 "--image", "pics/{sku}.png", "--cache-dir", str(tmp_path / "features"),
                 "--activations-dir", str(tmp_path / "activations"), "--out", str(out), "--blocks", "1",
                 "--batch-size", "8", "--lr", "1e-3", "--head-lr", "1e-2", "--max-epochs", "4", "--patience", "4"]) == 0
    report = json.loads((out / REPORT_FILE).read_text())
    losses = report["history"]["train_losses"]
    assert len(losses) == 4 and losses[-1] < 0.8 * losses[0], losses
    assert report["train_products"] == len(split["train"]) and report["factory"] == FACTORY

    base, tuned = load_mobilenet_v2().state_dict(), torch.load(out / WEIGHTS_FILE, weights_only=True)
    assert not torch.equal(base["features.18.0.weight"], tuned["features.18.0.weight"])  # the trained block
    assert torch.equal(base["features.17.conv.0.0.weight"], tuned["features.17.conv.0.0.weight"])  # frozen
    assert torch.equal(base["features.18.1.running_mean"], tuned["features.18.1.running_mean"])  # BN stats frozen

    packaged = ImageEncoder(folder, "cpu")
    images = [Image.open(p).convert("RGB") for p in sorted((shapes_catalog / "pics").glob("*.png"))[:6]]
    assert main(["export", "--modality", "image", "--factory", FACTORY, "--weights", str(out / WEIGHTS_FILE)]) == 0
    assert "reindex" in capsys.readouterr().out
    served = ImageEncoder(folder, "cpu")
    assert served.dim == 1280 and served.version != packaged.version
    module = build_module(load_factory(FACTORY), out / WEIGHTS_FILE)
    pixels = torch.from_numpy(np.stack([served.preprocess(im) for im in images]))
    with torch.no_grad():
        expected = torch.nn.functional.normalize(module(pixels)[0], dim=1).numpy()
    vectors = served.encode(images)
    np.testing.assert_allclose(vectors, expected, atol=1e-4)
    assert np.min(np.sum(vectors * packaged.encode(images), axis=1)) < 0.9999  # not the packaged encoder
