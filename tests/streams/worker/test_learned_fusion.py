"""The worker serving a bundle trained on the demo catalog: every named vector lives in the shared
space, the fused vector comes from the learned head, and a text query finds a product through
its photo alone."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterator

import pytest

from streams.worker.pipeline import IncomingMessage, Pipeline
from streams.worker.search import Page, Searcher

DEMO_CATALOG = Path(__file__).resolve().parents[3] / "demo" / "catalog"
pytest.importorskip("torch")
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def bundle(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Heads and fusion trained on the 300 demo products (a few seconds on 2 cores)."""
    from exporters.catalog import CatalogMapping
    from exporters.train import TrainConfig, train

    out = tmp_path_factory.mktemp("bundle") / "fusion"
    mapping = CatalogMapping(id="id", title="productDisplayName", fine=("articleType",),
                             coarse=("masterCategory",), image="image")
    config = TrainConfig(shared_dim=64, hidden=128, fused_dim=64, max_epochs=15, patience=3, ae_bottleneck=32)
    train(DEMO_CATALOG / "products.csv", mapping, model_dir, out, seed=0, config=config,
          cache_dir=tmp_path_factory.mktemp("features"))
    return out


@pytest.fixture
def pipeline(settings, bundle) -> Iterator[Pipeline]:
    pipeline = Pipeline.from_settings(dataclasses.replace(settings, fusion_bundle=str(bundle)))
    yield pipeline
    pipeline.close()


def test_vectors_live_in_the_shared_space(pipeline, catalog):
    outcome = pipeline.process([IncomingMessage(e.to_bytes()) for e in catalog])
    assert outcome.counts["indexed"] == len(catalog)
    dim = pipeline.encoders.fusion.dims["fused"]
    for point in pipeline.store.all_points():
        assert {name: len(v) for name, v in point.vector.items()} == {"text": 64, "image": 64, "fused": dim}
        assert point.payload["model_version"]["fusion"] == pipeline.encoders.fusion.version
    assert pipeline.store.collection.endswith(pipeline.encoders.fusion.version)


def test_a_text_query_finds_a_product_by_its_photo(pipeline, catalog):
    watches = [e for e in catalog if e.category[-1] == "Watches"]
    assert watches, "the test catalog has watches"
    anonymous = watches[0].derive(product_id="anonymous-watch", title="Item 4711")  # nothing in the title says watch
    others = [e for e in catalog if e.category[-1] != "Watches"]
    pipeline.process([IncomingMessage(e.to_bytes()) for e in [anonymous, *others]])
    searcher = Searcher(pipeline.store, pipeline.encoders, pipeline.settings.max_image_pixels)
    hits = searcher.by_text("wrist watch", page=Page(5), mode="dense")
    assert "anonymous-watch" in [hit.product_id for hit in hits]
    text_only = pipeline.store.search("text", pipeline.encoders.fusion.project(
        text=pipeline.encoders.text.encode(["wrist watch"]))["text"][0], 5)
    assert "anonymous-watch" not in [hit.product_id for hit in text_only]  # found through the image vector
