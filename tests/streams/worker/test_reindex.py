"""A new model version gets its own collection; queries keep reading the old one through the
alias until ``reindex`` has copied the catalog across, from the cache, and switched the alias."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from streams.worker.pipeline import IncomingMessage, Pipeline
from streams.worker.reindex import ReindexJob, run_reindex
from streams.worker.search import Page, Searcher

pytestmark = pytest.mark.integration


def messages(*events) -> list[IncomingMessage]:
    return [IncomingMessage(e.to_bytes(), e.product_id.encode()) for e in events]


def test_reindex_moves_queries_to_the_new_version_without_reencoding(settings, catalog):
    products = catalog[:12]
    old = Pipeline.from_settings(settings)
    old.process(messages(*products))
    old_collection = old.store.collection
    old_vectors = {p.payload["product_id"]: p.vector["fused"] for p in old.store.all_points()}
    old.close()

    new_settings = dataclasses.replace(settings, text_weight=0.2)  # another fusion: another model version
    new = Pipeline.from_settings(new_settings)
    try:
        assert new.store.collection != old_collection
        assert new.store.serving_collection() == old_collection  # the old version still answers
        # a worker with the new models already wrote a newer version of one product
        newer = products[0].derive(version=7, price=1.0)
        new.process(messages(newer))
        searcher = Searcher(new.store, new.encoders, settings.max_image_pixels)
        served = searcher.similar(products[1].product_id, page=Page(3))
        assert all(hit.payload["model_version"]["fusion"] == "concat-w0.5" for hit in served)

        seen: list[int] = []
        job = run_reindex(new, ReindexJob(), lambda job: seen.append(job.done))
        assert job.state == "done", job.message
        assert (job.source, job.target, job.total) == (old_collection, new.store.collection, len(products))
        assert job.counts["reindexed"] == len(products) - 1 and job.counts["already_current"] == 1
        assert job.counts.get("encoded_text", 0) == 0 and job.counts.get("encoded_image", 0) == 0
        assert seen and seen[-1] == len(products)

        assert new.store.serving_collection() == new.store.collection
        points = {p.payload["product_id"]: p for p in new.store.all_points()}
        assert set(points) == {p.product_id for p in products}
        assert points[newer.product_id].payload["version"] == 7 and points[newer.product_id].payload["price"] == 1.0
        for product_id, point in points.items():
            assert point.payload["model_version"]["fusion"] == "concat-w0.2"
            assert not np.allclose(point.vector["fused"], old_vectors[product_id], atol=1e-4)
        served = searcher.similar(products[1].product_id, page=Page(3))
        assert all(hit.payload["model_version"]["fusion"] == "concat-w0.2" for hit in served)

        again = run_reindex(new, ReindexJob())
        assert again.state == "done" and "nothing to do" in again.message
    finally:
        new.close()


def test_reindex_through_the_running_worker_that_holds_local_mode(settings, catalog, tmp_path):
    from streams.tools.client import reindex_command, run_query
    from streams.tools.runner import WorkerProcess

    products = catalog[:8]
    old = Pipeline.from_settings(settings)
    old.process(messages(*products))
    old.close()
    new_settings = dataclasses.replace(settings, text_weight=0.2)
    with WorkerProcess(new_settings, tmp_path / "worker.log"):
        before = run_query(new_settings, {"type": "similar", "product_id": products[0].product_id, "limit": 3})["hits"]
        job = reindex_command(new_settings)  # the worker holds the Qdrant folder: it must do the work
        assert job.state == "done", job.message
        assert job.counts["reindexed"] == len(products) and job.counts.get("encoded_image", 0) == 0
        after = run_query(new_settings, {"type": "similar", "product_id": products[0].product_id, "limit": 3})["hits"]
    assert [row["product_id"] for row in before] and [row["product_id"] for row in after]
    assert before != after  # scores now come from the new fusion's vectors


def test_reindex_does_not_bring_back_a_product_deleted_by_a_new_worker(settings, catalog):
    import json

    old = Pipeline.from_settings(settings)
    old.process(messages(*catalog[:4]))
    old.close()
    new = Pipeline.from_settings(dataclasses.replace(settings, text_weight=0.2))
    try:
        delete = {"op": "delete", "product_id": catalog[0].product_id, "version": 2}
        new.process([IncomingMessage(json.dumps(delete).encode())])
        job = run_reindex(new, ReindexJob())
        assert job.counts["reindexed"] == 3 and job.counts["already_current"] == 1
        assert new.store.get(catalog[0].product_id) is None
        assert new.store.count() == 3
    finally:
        new.close()
