"""A user's own torch image model, exported by ``shelfstream export --modality image``, served by the
pipeline on real Redis and Qdrant local mode as a new model version in its own collection, and
switched to by ``reindex``."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from torch import nn

from exporters.byo import ImagePreprocessing, export_image_model
from streams.settings import Settings
from streams.worker.pipeline import IncomingMessage, Pipeline
from streams.worker.reindex import ReindexJob, run_reindex
from streams.worker.search import Page, Searcher

pytestmark = pytest.mark.integration


def tiny_image_model() -> nn.Module:
    """A user's (untrained, seeded) 32-d image encoder."""
    torch.manual_seed(5)
    return nn.Sequential(nn.Conv2d(3, 8, 5, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 32))


def test_user_image_model_is_served_in_its_own_collection_after_reindex(settings: Settings, catalog, tmp_path: Path) -> None:
    products = catalog[:10]
    old = Pipeline.from_settings(settings)
    old.process([IncomingMessage(e.to_bytes(), e.product_id.encode()) for e in products])
    old_collection = old.store.collection
    old.close()

    folder = tmp_path / "models"
    folder.mkdir()
    for path in Path(settings.model_dir).glob("*"):
        if path.is_file():
            (folder / path.name).symlink_to(path)
    manifest = export_image_model(tiny_image_model(), folder, "test tiny model", ImagePreprocessing(resize_shorter=72, center_crop=64))

    new = Pipeline.from_settings(dataclasses.replace(settings, model_dir=str(folder)))
    try:
        assert new.encoders.image.version == manifest["version"] and new.encoders.image.dim == 32
        assert new.store.collection != old_collection and new.store.serving_collection() == old_collection
        job = run_reindex(new, ReindexJob())
        assert job.state == "done", job.message
        assert job.counts["reindexed"] == len(products) and job.counts["encoded_image"] == len(products)
        assert new.store.serving_collection() == new.store.collection
        points = list(new.store.all_points())
        assert len(points) == len(products)
        for point in points:
            assert {name: len(v) for name, v in point.vector.items()} == {"text": 384, "image": 32, "fused": 416}
            assert point.payload["model_version"]["image"] == manifest["version"]
        hits = Searcher(new.store, new.encoders, settings.max_image_pixels).similar(products[0].product_id, page=Page(3))
        assert len(hits) == 3 and all(hit.payload["model_version"]["image"] == manifest["version"] for hit in hits)
    finally:
        new.close()
