"""Unit tests of the Qdrant store in local mode (a folder under tmp_path, no services): point ids,
category prefixes, filters that really filter, stored states, payload-only updates, and the
collection's vector sizes check. Vectors are small and hand-made."""

from __future__ import annotations

import gc
import uuid
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from qdrant_client import QdrantClient, models

from streams.adapters.store import (
    POINT_NAMESPACE,
    ProductStore,
    SearchFilters,
    StoredState,
    category_prefixes,
    point_id,
)
from streams.settings import Settings

DIMS = {"text": 3, "image": 4, "fused": 2}


def store_settings(tmp_path: Path, collection: str = "products") -> Settings:
    return Settings.from_env(env={}, state_dir=str(tmp_path / "state"), qdrant_path=str(tmp_path / "qdrant"),
                             collection=collection)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ProductStore]:
    store = ProductStore(store_settings(tmp_path), DIMS)
    yield store
    store.close()


def point(product_id: str, vectors: dict[str, list[float]], **payload: Any) -> models.PointStruct:
    category = payload.get("category", [])
    return models.PointStruct(
        id=point_id(product_id),
        vector=vectors,
        payload={"product_id": product_id, "version": 1, "category": category,
                 "category_path": category_prefixes(category), **payload},
    )


# Five products; their fused vectors sit at different angles from the query [1, 0].
CATALOG = [
    ("shirt", [1.0, 0.0], ["Apparel", "Topwear", "Shirts"], 800.0),
    ("tee", [0.9, 0.1], ["Apparel", "Topwear", "Tshirts"], 300.0),
    ("jeans", [0.7, 0.3], ["Apparel", "Bottomwear", "Jeans"], 1500.0),
    ("shoe", [0.5, 0.5], ["Footwear", "Shoes"], 2500.0),
    ("bag", [0.1, 0.9], ["Accessories", "Bags"], None),
]


@pytest.fixture
def filled(store: ProductStore) -> ProductStore:
    store.upsert([point(pid, {"fused": fused}, category=cat, price=price, title=pid.title())
                  for pid, fused, cat, price in CATALOG])
    return store


def ids(hits) -> list[str]:
    return [hit.product_id for hit in hits]


QUERY = np.array([1.0, 0.0], dtype=np.float32)


# -- ids and category prefixes ----------------------------------------------------------------------


def test_point_id_is_a_stable_uuid5_of_the_product_id():
    assert point_id("53010") == point_id("53010")
    assert point_id("53010") == str(uuid.uuid5(POINT_NAMESPACE, "53010"))
    assert uuid.UUID(point_id("53010")).version == 5


def test_point_id_is_pinned():
    # a changed namespace would orphan every stored point: pin one value
    assert point_id("53010") == "1a8c9131-b14e-5402-8d98-369c3839b9e6"


def test_point_ids_are_distinct():
    product_ids = ["1", "01", "1 ", "a", "A", "53010", "53011", "x" * 256, ""]
    assert len({point_id(pid) for pid in product_ids}) == len(product_ids)


@pytest.mark.parametrize(
    "category, expected",
    [
        (["Apparel", "Topwear", "Tshirts"], ["Apparel", "Apparel > Topwear", "Apparel > Topwear > Tshirts"]),
        (["Footwear"], ["Footwear"]),
        ([], []),
    ],
)
def test_category_prefixes(category, expected):
    assert category_prefixes(category) == expected


# -- filters ---------------------------------------------------------------------------------------------------


def test_no_filters_is_no_qdrant_filter():
    assert SearchFilters().to_qdrant() is None
    assert SearchFilters(category="").to_qdrant() is None


def test_unfiltered_search_ranks_by_cosine(filled):
    hits = filled.search("fused", QUERY, limit=10)
    assert ids(hits) == ["shirt", "tee", "jeans", "shoe", "bag"]
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert hits[3].score == pytest.approx(np.sqrt(0.5), abs=1e-5)
    assert hits[0].payload["title"] == "Shirt" and hits[0].payload["price"] == 800.0


def test_limit(filled):
    assert ids(filled.search("fused", QUERY, limit=2)) == ["shirt", "tee"]


@pytest.mark.parametrize(
    "category, expected",
    [
        ("Apparel", ["shirt", "tee", "jeans"]),
        ("Apparel > Topwear", ["shirt", "tee"]),
        ("Apparel/Topwear", ["shirt", "tee"]),
        ("Apparel>Topwear", ["shirt", "tee"]),
        ("  Apparel >  Topwear / Tshirts ", ["tee"]),
        ("Footwear", ["shoe"]),
        ("Topwear", []),  # a prefix, not any level
        ("Appar", []),  # whole levels only
        ("apparel", []),  # exact spelling
    ],
)
def test_category_prefix_filter(filled, category, expected):
    assert ids(filled.search("fused", QUERY, limit=10, filters=SearchFilters(category=category))) == expected


@pytest.mark.parametrize(
    "price_min, price_max, expected",
    [
        (500, None, ["shirt", "jeans", "shoe"]),
        (None, 800, ["shirt", "tee"]),  # bounds are inclusive
        (300, 1500, ["shirt", "tee", "jeans"]),
        (801, 1499, []),
        (0, None, ["shirt", "tee", "jeans", "shoe"]),  # no price: never in a price range
    ],
)
def test_price_range_filter(filled, price_min, price_max, expected):
    filters = SearchFilters(price_min=price_min, price_max=price_max)
    assert ids(filled.search("fused", QUERY, limit=10, filters=filters)) == expected


def test_category_and_price_together(filled):
    filters = SearchFilters(category="Apparel", price_max=1000)
    assert ids(filled.search("fused", QUERY, limit=10, filters=filters)) == ["shirt", "tee"]


def test_exclude_product_id(filled):
    assert ids(filled.search("fused", QUERY, limit=10, exclude_product_id="shirt")) == ["tee", "jeans", "shoe", "bag"]
    filters = SearchFilters(category="Apparel > Topwear")
    assert ids(filled.search("fused", QUERY, limit=10, filters=filters, exclude_product_id="tee")) == ["shirt"]
    # an unknown product excludes nothing
    assert len(filled.search("fused", QUERY, limit=10, exclude_product_id="nope")) == 5


# -- states, payloads, vectors ------------------------------------------------------------------------


def test_states_returns_version_fingerprint_and_modalities(store):
    store.upsert([
        point("a", {"text": [1, 0, 0], "fused": [1, 0]}, version=3, fingerprint="f-a", modalities=["text"]),
        point("b", {"text": [0, 1, 0], "image": [0, 0, 1, 0], "fused": [0, 1]}, version=12, fingerprint="f-b",
              modalities=["image", "text"]),
        point("c", {"fused": [1, 1]}, version=1),  # no fingerprint, no modalities
    ])
    states = store.states(["a", "b", "c", "missing"])
    assert states == {
        "a": StoredState(3, "f-a", ["text"]),
        "b": StoredState(12, "f-b", ["image", "text"]),
        "c": StoredState(1, None, []),
    }
    assert store.states([]) == {}
    assert store.states(["missing"]) == {}


def test_upsert_replaces_and_delete_removes(store):
    store.upsert([point("a", {"fused": [1, 0]}, version=1), point("b", {"fused": [0, 1]}, version=1)])
    store.upsert([point("a", {"fused": [0, 1]}, version=2)])
    assert store.count() == 2
    assert store.states(["a"])["a"].version == 2
    np.testing.assert_allclose(store.vector("a", "fused"), [0, 1], atol=1e-6)
    store.delete(["a", "missing"])
    assert store.count() == 1
    assert store.get("a") is None
    assert store.get("b").payload["product_id"] == "b"


def test_overwrite_payloads_replaces_payload_and_keeps_vectors(store):
    store.upsert([
        point("a", {"text": [1, 0, 0], "fused": [0.6, 0.8]}, version=1, price=100.0, title="Old", fingerprint="fp"),
        point("b", {"fused": [1, 0]}, version=1, price=5.0, title="Other"),
    ])
    before = store.get("a", with_vectors=True).vector
    store.overwrite_payloads({"a": {"product_id": "a", "version": 2, "price": 80.0, "title": "New"}})
    record = store.get("a", with_vectors=True)
    assert record.payload == {"product_id": "a", "version": 2, "price": 80.0, "title": "New"}  # replaced, not merged
    assert set(record.vector) == {"text", "fused"}
    for name in ("text", "fused"):
        np.testing.assert_allclose(record.vector[name], before[name], atol=1e-6)
    assert store.get("b").payload["price"] == 5.0  # others untouched
    # the new payload is what filters see
    assert ids(store.search("fused", QUERY, 10, SearchFilters(price_min=50, price_max=90))) == ["a"]
    store.overwrite_payloads({})  # nothing to do is fine


def test_points_missing_a_named_vector_are_found_by_the_vectors_they_have(store):
    store.upsert([
        point("text-only", {"text": [1, 0, 0], "fused": [1, 0]}),
        point("image-only", {"image": [1, 0, 0, 0], "fused": [0, 1]}),
        point("both", {"text": [0.8, 0.6, 0], "image": [0.6, 0.8, 0, 0], "fused": [1, 1]}),
    ])
    by_text = store.search("text", np.array([1, 0, 0], dtype=np.float32), 10)
    by_image = store.search("image", np.array([1, 0, 0, 0], dtype=np.float32), 10)
    assert ids(by_text)[:2] == ["text-only", "both"]
    assert ids(by_image)[:2] == ["image-only", "both"]
    assert by_text[0].score == pytest.approx(1.0, abs=1e-5)
    assert by_text[1].score == pytest.approx(0.8, abs=1e-5)
    assert by_image[1].score == pytest.approx(0.6, abs=1e-5)
    assert ids(store.search("fused", QUERY, 10))[0] == "text-only"
    # an absent modality is absent, never a zero vector
    assert store.vector("text-only", "image") is None
    assert set(store.get("text-only", with_vectors=True).vector) == {"text", "fused"}
    np.testing.assert_allclose(store.vector("image-only", "image"), [1, 0, 0, 0], atol=1e-6)
    assert store.vector("nope", "fused") is None


def test_all_points_pages_through_the_collection(store):
    store.upsert([point(str(i), {"fused": [1, i]}) for i in range(7)])
    pages = list(store.pages(page=3, with_vectors=False))
    assert [len(page) for page in pages] == [3, 3, 1]
    records = store.all_points(with_vectors=False)
    assert sorted(r.payload["product_id"] for r in records) == [str(i) for i in range(7)]


# -- the collection ----------------------------------------------------------------------------------------


def test_reopening_with_the_same_sizes_keeps_the_points(tmp_path):
    store = ProductStore(store_settings(tmp_path), DIMS)
    store.upsert([point("a", {"fused": [1, 0]}, version=4)])
    store.close()
    again = ProductStore(store_settings(tmp_path), DIMS)
    try:
        assert again.states(["a"]) == {"a": StoredState(4, None, [])}
    finally:
        again.close()


def test_collection_with_other_vector_sizes_is_refused(tmp_path):
    ProductStore(store_settings(tmp_path), DIMS).close()
    with pytest.raises(RuntimeError) as info:
        ProductStore(store_settings(tmp_path), {**DIMS, "image": 1280})
    message = str(info.value)
    del info
    gc.collect()  # the refused store's client is only closed when collected
    assert message == (
        "Qdrant collection 'products' has vectors {'text': 3, 'image': 4, 'fused': 2}, but the models produce "
        "{'text': 3, 'image': 1280, 'fused': 2}: use another SHELFSTREAM_COLLECTION or re-index into a new collection"
    )


def test_collection_with_other_vector_names_is_refused(tmp_path):
    ProductStore(store_settings(tmp_path), {"text": 3}).close()
    with pytest.raises(RuntimeError, match=r"has vectors \{'text': 3\}, but the models produce .*use another SHELFSTREAM_COLLECTION"):
        ProductStore(store_settings(tmp_path), DIMS)
    gc.collect()


def test_another_collection_name_is_independent(tmp_path):
    ProductStore(store_settings(tmp_path), {"text": 3}).close()
    other = ProductStore(store_settings(tmp_path, collection="v2"), DIMS)
    try:
        assert other.count() == 0
    finally:
        other.close()


def test_collection_with_an_unnamed_vector_is_refused_clearly(tmp_path):
    client = QdrantClient(path=str(tmp_path / "qdrant"))
    client.create_collection("products", vectors_config=models.VectorParams(size=4, distance=models.Distance.COSINE))
    client.close()
    try:
        ProductStore(store_settings(tmp_path), DIMS).close()
        outcome = "no error"
    except Exception as exc:  # noqa: BLE001 - the test says which error came instead
        outcome = f"{type(exc).__name__}: {exc}"
    gc.collect()  # close the refused store's client now, not at interpreter shutdown
    assert outcome.startswith("RuntimeError: Qdrant collection 'products' has vectors"), outcome
    assert "use another SHELFSTREAM_COLLECTION" in outcome
