"""Delete tombstones on the real redis-server: their own keys, never expiring, apart from the cache."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from streams.adapters.cache import FeatureCache, feature_key
from streams.adapters.tombstones import Tombstones

pytestmark = pytest.mark.integration


def test_tombstones_record_read_and_clear(services):
    tombstones = Tombstones(services["redis_url"])
    run = uuid.uuid4().hex[:8]
    a, b, c = f"{run}-a", f"{run}-b", f"{run}-c"
    try:
        assert tombstones.versions([a, b]) == {} and tombstones.versions([]) == {}
        tombstones.record({a: 7, b: 2**63 - 1})
        assert tombstones.versions([a, b, c]) == {a: 7, b: 2**63 - 1}
        tombstones.record({a: 9})  # a newer delete replaces the older one
        tombstones.clear([b, c])
        assert tombstones.versions([a, b, c]) == {a: 9}
        assert tombstones.client.ttl(f"shelfstream:tombstone:{a}") == -1  # correctness state: never expires
    finally:
        tombstones.clear([a, b, c])
        tombstones.close()


def test_the_feature_cache_holds_only_features(services):
    cache = FeatureCache(services["redis_url"], ttl_s=60)
    tombstones = Tombstones(services["redis_url"])
    product_id = uuid.uuid4().hex
    try:
        tombstones.record({product_id: 3})
        key = feature_key("v1", "text", uuid.uuid4().hex)
        cache.put_many({key: np.ones(4, dtype=np.float32)})
        assert cache.get_many([key])[0].tolist() == [1.0] * 4
        assert 0 < cache.client.ttl(key) <= 60
        assert tombstones.versions([product_id]) == {product_id: 3}
    finally:
        tombstones.clear([product_id])
        cache.close()
        tombstones.close()
