"""The benchmark's naive baseline runs the same products through torch and qdrant-client, one at a time."""

from __future__ import annotations

import pytest

from streams.tools.bench_naive import naive_items_per_s


def test_naive_baseline_stores_every_product(settings, catalog) -> None:
    assert naive_items_per_s(settings, catalog[:3]) > 0  # it raises unless all 3 points were stored


def test_naive_baseline_fails_when_a_product_is_lost(settings, catalog, monkeypatch) -> None:
    from qdrant_client import QdrantClient

    real_upsert = QdrantClient.upsert
    dropped = {"first": True}

    def upsert_losing_the_first(self, *args, **kwargs):
        if dropped.pop("first", False):
            return None
        return real_upsert(self, *args, **kwargs)

    monkeypatch.setattr(QdrantClient, "upsert", upsert_losing_the_first)
    with pytest.raises(RuntimeError, match="stored 1 of 2 products"):
        naive_items_per_s(settings, catalog[:2])
