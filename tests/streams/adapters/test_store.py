"""The store's contract: the same cases run on both engines, Qdrant Edge (the embedded default)
and qdrant-client. qdrant-client runs in local mode (``SHELFSTREAM_QDRANT_URL=local:PATH``) as a
stand-in for a Qdrant server, whose binary is not installable here: it speaks the same client API.
No services; vectors are small and hand-made. Point ids, category prefixes, filters that really
filter (category on any level, price, attributes, modalities, excluded ids), keyword search,
recommend, stored states, payload-only updates, aliases, vector sizes, backups."""

from __future__ import annotations

import dataclasses
import gc
import json
import uuid
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from qdrant_client import models

from streams.adapters.store import (
    EXCLUDED_BY_OVERFETCH,
    PAYLOAD_DIGEST,
    POINT_NAMESPACE,
    ProductPoint,
    ProductStore,
    SearchFilters,
    StoredState,
    category_prefixes,
    point_id,
    with_derived_fields,
)
from streams.adapters.store.model import NATIVE_FIELDS, PACKED, packed_payload, payload_digest, unpacked_payload
from streams.settings import Settings

DIMS = {"text": 3, "image": 4, "fused": 2}
ENGINES = ["edge", "client-local"]


def store_settings(tmp_path: Path, engine: str = "edge", collection: str = "products") -> Settings:
    url = f"local:{tmp_path / 'qdrant-local'}" if engine == "client-local" else ""
    return Settings.from_env(env={}, state_dir=str(tmp_path / "state"), qdrant_path=str(tmp_path / "qdrant"),
                             qdrant_url=url, collection=collection)


@pytest.fixture(params=ENGINES)
def engine(request) -> str:
    return request.param


@pytest.fixture
def store(tmp_path: Path, engine: str) -> Iterator[ProductStore]:
    store = ProductStore(store_settings(tmp_path, engine), DIMS)
    yield store
    store.close()


def point(product_id: str, vectors: dict[str, list[float]], **payload: Any) -> ProductPoint:
    category = payload.get("category", [])
    return ProductPoint(
        product_id,
        {name: np.asarray(v, dtype=np.float32) for name, v in vectors.items()},
        {"product_id": product_id, "version": 1, "category": category,
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


def test_no_filters_is_no_condition():
    assert not SearchFilters().conditions()
    assert not SearchFilters(category=" / ").conditions()
    assert SearchFilters("Apparel", 1, 2) == SearchFilters(category="Apparel", price_min=1, price_max=2)  # positional stays


def test_price_min_above_price_max_is_refused_naming_both():
    with pytest.raises(ValueError, match=r"price_min \(900\) is greater than price_max \(100\)"):
        SearchFilters(price_min=900, price_max=100)


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
        ("Topwear", ["shirt", "tee"]),  # any level
        ("tshirts", ["tee"]),
        ("apparel", ["shirt", "tee", "jeans"]),  # case-insensitive
        ("APPAREL > topwear", ["shirt", "tee"]),
        ("Appar", []),  # whole levels only
        ("Topwear > Shirts", []),  # a path is a prefix from the top
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


def test_exclude_product_ids(filled):
    excluded = SearchFilters(exclude_product_ids=("shirt",))
    assert ids(filled.search("fused", QUERY, limit=10, filters=excluded)) == ["tee", "jeans", "shoe", "bag"]
    filters = SearchFilters(category="Apparel > Topwear", exclude_product_ids=("tee", "bag"))
    assert ids(filled.search("fused", QUERY, limit=10, filters=filters)) == ["shirt"]
    # an unknown product excludes nothing
    assert len(filled.search("fused", QUERY, limit=10, filters=SearchFilters(exclude_product_ids=("nope",)))) == 5


def test_offset_and_score_threshold(filled):
    assert ids(filled.search("fused", QUERY, limit=2, offset=2)) == ["jeans", "shoe"]
    assert ids(filled.search("fused", QUERY, limit=10, score_threshold=0.95)) == ["shirt", "tee"]


@pytest.mark.parametrize(
    "attributes, expected",
    [
        ({"colour": ("Blue",)}, ["shirt", "jeans"]),
        ({"COLOUR": ("blue", "white")}, ["shirt", "tee", "jeans"]),  # any of, case-insensitive
        ({"colour": ("blue",), "fit": ("slim",)}, ["jeans"]),  # every key must match
        ({"fit": ("Regular",)}, ["shirt"]),
        ({"material": ("cotton",)}, []),
    ],
)
def test_attribute_filter(store, attributes, expected):
    store.upsert([point(pid, {"fused": fused}, attributes=attrs) for pid, fused, attrs in [
        ("shirt", [1.0, 0.0], {"colour": "Blue", "fit": "Regular"}),
        ("tee", [0.9, 0.1], {"colour": "White"}),
        ("jeans", [0.7, 0.3], {"Colour": "blue", "Fit": "Slim"}),
        ("bag", [0.1, 0.9], {}),
    ]])
    assert ids(store.search("fused", QUERY, 10, SearchFilters(attributes=attributes))) == expected


def test_modalities_filter(store):
    store.upsert([
        point("text-only", {"text": [1, 0, 0], "fused": [1, 0]}, modalities=["text"]),
        point("both", {"text": [1, 0, 0], "image": [1, 0, 0, 0], "fused": [0.9, 0.1]}, modalities=["image", "text"]),
        point("all", {"fused": [0.5, 0.5]}, modalities=["image", "text", "video"]),
    ])
    assert ids(store.search("fused", QUERY, 10, SearchFilters(modalities=("image",)))) == ["both", "all"]
    assert ids(store.search("fused", QUERY, 10, SearchFilters(modalities=("image", "video")))) == ["all"]
    assert ids(store.search("fused", QUERY, 10, SearchFilters(modalities=("text",)))) == ["text-only", "both", "all"]


def test_derived_filter_fields_never_show_in_payloads(filled):
    hit = filled.search("fused", QUERY, 1)[0]
    assert "category_keys" not in hit.payload and "attribute_terms" not in hit.payload
    assert "category_keys" not in filled.get("shirt").payload


# -- keyword search and recommend ------------------------------------------------------------------------


@pytest.fixture
def worded(store: ProductStore) -> ProductStore:
    store.upsert([point(pid, {"fused": fused}, title=title, description=description, attributes=attrs,
                        category=cat, price=price)
                  for pid, fused, title, description, attrs, cat, price in [
        ("denim", [1, 0], "Blue Denim Jacket", "a classic jacket", {"colour": "Blue"}, ["Apparel", "Topwear"], 50.0),
        ("tee", [0.9, 0.1], "White Tee", "cotton crew neck", {"colour": "White"}, ["Apparel", "Topwear"], 10.0),
        ("jacket", [0.7, 0.3], "Rain Jacket", "keeps the rain out", {"colour": "Yellow"}, ["Apparel", "Topwear"], 80.0),
        ("watch", [0.2, 0.8], "Steel Watch", "a blue dial", {"strap": "Leather"}, ["Accessories", "Watches"], 120.0),
        ("socks", [0.1, 0.9], "Wool Socks", "", {}, ["Apparel", "Socks"], 5.0),
    ]])
    return store


def test_keyword_search_finds_words_of_title_description_and_attributes(worded):
    assert set(ids(worded.keyword_search("jacket"))) == {"denim", "jacket"}
    assert set(ids(worded.keyword_search("leather"))) == {"watch"}  # an attribute value
    assert set(ids(worded.keyword_search("cotton"))) == {"tee"}  # the description
    assert ids(worded.keyword_search("JACKET", filters=SearchFilters(price_max=60))) == ["denim"]
    assert worded.keyword_search("nothing-matches-this") == [] and worded.keyword_search("  ") == []


def test_keyword_search_ranks_rare_words_and_more_matches_first(worded):
    # "blue" is in two products, "denim" in one: the engine's IDF makes the rare word count more
    assert ids(worded.keyword_search("blue denim"))[0] == "denim"
    hits = worded.keyword_search("blue")
    assert set(ids(hits)) == {"denim", "watch"} and all(hit.score > 0 for hit in hits)
    assert ids(worded.keyword_search("jacket", limit=1, offset=1)) in (["denim"], ["jacket"])


def test_keyword_fields_tell_a_value_from_the_same_word_in_free_text(worded):
    # "blue" is the denim's colour (a value) and a word of the watch's description (free text)
    assert ids(worded.keyword_search("blue", fields=("values",))) == ["denim"]
    assert set(ids(worded.keyword_search("blue", fields=("text",)))) == {"denim", "watch"}
    # category levels are values too
    assert set(ids(worded.keyword_search("topwear", fields=("values",)))) == {"denim", "tee", "jacket"}
    assert worded.keyword_search("topwear", fields=("text",)) == []


def test_recommend_never_returns_its_inputs(worded):
    assert ids(worded.recommend(["denim"])) == ["tee", "jacket", "watch", "socks"]
    assert "tee" not in ids(worded.recommend(["denim"], ["tee"]))
    assert "denim" not in ids(worded.recommend(["denim"], ["tee"]))
    assert ids(worded.recommend(["denim"], filters=SearchFilters(category="accessories"))) == ["watch"]
    assert ids(worded.recommend(["socks"], limit=1)) == ["watch"]


def test_excluded_products_page_like_the_unexcluded_list(worded):
    # a few exclusions are dropped from a longer list, many are an engine filter: same pages either way
    everything = ids(worded.recommend(["denim"]))
    for offset in range(len(everything)):
        assert ids(worded.recommend(["denim"], limit=1, offset=offset)) == everything[offset:offset + 1]
    many = tuple(f"absent-{i}" for i in range(EXCLUDED_BY_OVERFETCH + 1))
    for excluded in (("tee",), ("tee", *many)):
        filters = SearchFilters(exclude_product_ids=excluded)
        assert ids(worded.recommend(["denim"], filters=filters)) == ["jacket", "watch", "socks"]
        assert ids(worded.recommend(["denim"], filters=filters, limit=1, offset=1)) == ["watch"]


def test_recommend_moves_away_from_negatives(worded):
    # best score: a candidate counts only where it is closer to a positive than to every negative
    assert ids(worded.recommend(["denim"], ["socks"], limit=2)) == ["tee", "jacket"]
    assert ids(worded.recommend(["denim"], ["socks"], score_threshold=0.0)) == ["tee", "jacket"]


def test_recommend_of_an_unknown_product_names_it(worded):
    with pytest.raises(LookupError, match="'nope'"):
        worded.recommend(["denim", "nope"])
    with pytest.raises(ValueError, match="at least one positive"):
        worded.recommend([])


def test_vectors_returns_the_named_vectors_of_known_products(worded):
    found = worded.vectors(["denim", "socks", "nope"], ["fused"])
    assert set(found) == {"denim", "socks"}
    np.testing.assert_allclose(found["denim"]["fused"], [1, 0], atol=1e-6)
    assert found["socks"]["fused"] == pytest.approx(np.array([0.1, 0.9]) / np.linalg.norm([0.1, 0.9]), abs=1e-5)


# -- states, payloads, vectors ------------------------------------------------------------------------


def test_states_returns_version_fingerprint_and_modalities(store):
    written = {p.product_id: p for p in [
        point("a", {"text": [1, 0, 0], "fused": [1, 0]}, version=3, fingerprint="f-a", modalities=["text"]),
        point("b", {"text": [0, 1, 0], "image": [0, 0, 1, 0], "fused": [0, 1]}, version=12, fingerprint="f-b",
              modalities=["image", "text"]),
        point("c", {"fused": [1, 1]}, version=1),  # no fingerprint, no modalities
    ]}
    store.upsert(list(written.values()))
    states = store.states(["a", "b", "c", "missing"])
    assert {pid: dataclasses.replace(state, payload_digest=None) for pid, state in states.items()} == {
        "a": StoredState(3, "f-a", ["text"]),
        "b": StoredState(12, "f-b", ["image", "text"]),
        "c": StoredState(1, None, []),
    }
    assert states["a"].payload_digest == with_derived_fields(written["a"].payload)[PAYLOAD_DIGEST] != states["b"].payload_digest
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


@pytest.mark.parametrize("digests_from", ["store", "states"])
def test_a_price_change_rewrites_only_what_changed_and_filters_see_all_of_it(store, digests_from):
    """Payload rewrites whose steady part is unchanged send only the volatile fields (the stored
    digest tells, read by the store or passed in as the states the pipeline just read); any other
    change, or a volatile field dropped, rewrites the whole payload."""
    stored = point("a", {"fused": [1, 0]}, price=100.0, title="Shoe", category=["Footwear", "Shoes"], attributes={"colour": "Red"})
    shoe = stored.payload
    store.upsert([stored, point("b", {"fused": [0, 1]}, version=1, price=5.0)])

    def states() -> dict[str, StoredState] | None:
        return store.states(["a"]) if digests_from == "states" else None

    def found(**filters: Any) -> list[str]:
        return ids(store.search("fused", QUERY, 10, SearchFilters(**filters)))

    store.overwrite_payloads({"a": {**shoe, "version": 2, "price": 80.0}}, states())  # price only
    assert store.get("a").payload == {**shoe, "version": 2, "price": 80.0}
    assert found(price_min=50, price_max=90) == ["a"] and found(category="shoes", attributes={"colour": ("red",)}) == ["a"]
    store.overwrite_payloads({"a": {**shoe, "version": 3, "price": 70.0, "category": ["Footwear", "Sandals"]}}, states())
    assert found(category="shoes") == [] and found(category="sandals", price_max=75) == ["a"]
    without_price = {k: v for k, v in shoe.items() if k != "price"} | {"version": 4}
    store.overwrite_payloads({"a": without_price}, states())
    assert store.get("a").payload == without_price and found(price_min=0) == ["b"]
    assert store.get("b").payload["price"] == 5.0  # others untouched


def test_the_payload_digest_moves_with_steady_fields_only():
    """What decides that a rewrite sends only the volatile fields: computed on the product's own
    fields, so the derived ones (added by the store) never change it."""
    shoe = point("a", {"fused": [1, 0]}, price=100.0, title="Shoe", category=["Footwear"], attributes={"colour": "Red"}).payload
    digest = payload_digest(shoe)
    assert payload_digest({**shoe, "price": 80.0, "version": 7}) == digest
    assert payload_digest(with_derived_fields(shoe)) == digest
    assert payload_digest({**shoe, "attributes": {"colour": "Blue"}}) != digest
    assert payload_digest({k: v for k, v in shoe.items() if k != "price"}) != digest  # a volatile field dropped


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


def test_reopening_with_the_same_sizes_keeps_the_points(tmp_path, engine):
    store = ProductStore(store_settings(tmp_path, engine), DIMS)
    store.upsert([point("a", {"fused": [1, 0]}, version=4)])
    store.close()
    again = ProductStore(store_settings(tmp_path, engine), DIMS)
    try:
        assert again.states(["a"])["a"].version == 4
    finally:
        again.close()


def test_collection_with_other_vector_sizes_is_refused(tmp_path, engine):
    ProductStore(store_settings(tmp_path, engine), DIMS).close()
    with pytest.raises(RuntimeError) as info:
        ProductStore(store_settings(tmp_path, engine), {**DIMS, "image": 1280})
    message = str(info.value)
    del info
    gc.collect()  # the refused store's client is only closed when collected
    assert message == (
        "Qdrant collection 'products' has vectors {'fused': 2, 'image': 4, 'text': 3}, but the models produce "
        "{'fused': 2, 'image': 1280, 'text': 3}: use another SHELFSTREAM_COLLECTION or re-index into a new collection"
    )


def test_collection_with_other_vector_names_is_refused(tmp_path, engine):
    ProductStore(store_settings(tmp_path, engine), {"text": 3}).close()
    with pytest.raises(RuntimeError, match=r"has vectors \{'text': 3\}, but the models produce .*use another SHELFSTREAM_COLLECTION"):
        ProductStore(store_settings(tmp_path, engine), DIMS)
    gc.collect()


def test_another_collection_name_is_independent(tmp_path, engine):
    ProductStore(store_settings(tmp_path, engine), {"text": 3}).close()
    other = ProductStore(store_settings(tmp_path, engine, collection="v2"), DIMS)
    try:
        assert other.count() == 0
    finally:
        other.close()


def test_versions_write_their_own_collection_and_queries_read_the_alias(tmp_path, engine):
    settings = store_settings(tmp_path, engine)
    old = ProductStore(settings, DIMS, version="v1")
    assert old.collection == "products-v1" and old.serving_collection() == "products-v1"  # the first version serves
    old.upsert([point("a", {"fused": [1, 0]}, title="Old")])
    old.close()
    new = ProductStore(settings, DIMS, version="v2")
    try:
        assert new.serving_collection() == "products-v1"  # old vectors answer until the switch
        new.upsert([point("a", {"fused": [0, 1]}, title="New"), point("b", {"fused": [1, 0]}, title="B")])
        assert [h.payload["title"] for h in new.search("fused", QUERY, 10)] == ["Old"]
        assert new.get("a").payload["title"] == "New"  # writes and reads by id go to this version
        assert new.get("a", collection=new.alias).payload["title"] == "Old"
        np.testing.assert_allclose(new.vectors(["a"], ["fused"])["a"]["fused"], [1, 0], atol=1e-6)
        new.switch_alias()
        assert new.serving_collection() == "products-v2"
        assert ids(new.search("fused", QUERY, 10)) == ["b", "a"]
        assert new.point_count("products-v1") == 1 and new.count() == 2
    finally:
        new.close()


def test_switched_alias_survives_a_restart(tmp_path, engine):
    settings = store_settings(tmp_path, engine)
    ProductStore(settings, DIMS, version="v1").close()
    new = ProductStore(settings, DIMS, version="v2")
    new.switch_alias()
    new.close()
    again = ProductStore(settings, DIMS, version="v1")
    try:
        assert again.serving_collection() == "products-v2"
    finally:
        again.close()


def test_backup_and_restore_round_trip_on_edge(tmp_path):
    """Edge snapshots: a backup taken, the store changed, the backup restored, the old state back.
    (qdrant-client's snapshots need a server, which is not installable here.)"""
    settings = store_settings(tmp_path, "edge")
    store = ProductStore(settings, DIMS, version="v1")
    try:
        store.upsert([point("a", {"fused": [1, 0]}, price=10.0, category=["Apparel"]),
                      point("b", {"fused": [0, 1]}, price=20.0)])
        files = store.backup(tmp_path / "backup")
        assert [f.name for f in files] == ["products-v1.snapshot"] and files[0].stat().st_size > 0
        store.delete(["a"])
        store.overwrite_payloads({"b": {"product_id": "b", "version": 2, "price": 99.0}})
        assert store.count() == 1
        assert store.restore(tmp_path / "backup") == ["products-v1"]
        assert store.count() == 2 and store.get("b").payload["price"] == 20.0
        assert ids(store.search("fused", QUERY, 10, SearchFilters(category="apparel"))) == ["a"]  # indexes back too
    finally:
        store.close()
    reopened = ProductStore(settings, DIMS, version="v1")
    try:
        assert reopened.count() == 2 and reopened.serving_collection() == "products-v1"
    finally:
        reopened.close()


def test_local_mode_has_no_snapshots_and_says_so(tmp_path):
    store = ProductStore(store_settings(tmp_path, "client-local"), DIMS)
    try:
        with pytest.raises(RuntimeError, match="local mode has no snapshots"):
            store.backup(tmp_path / "backup")
    finally:
        store.close()


def test_optimize_loses_no_point_and_keeps_the_ranking(tmp_path, engine):
    """``optimize()`` (Edge: int8 copies of ``fused``, rescored) between writes: every point
    written before and after it is found by its own vector, deleted and replaced vectors never
    answer, and the top-10 is the exact one (numpy). 3,000 points of 1,024 floats are enough
    for Edge to optimize the segment (a few dozen points are left as they are)."""
    dims = {"fused": 1024}
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((3_020, dims["fused"])).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    store = ProductStore(store_settings(tmp_path, engine), dims)
    try:
        store.upsert([point(str(i), {"fused": v}) for i, v in enumerate(vectors[:3_000])])
        store.optimize()
        store.upsert([point(str(i), {"fused": v}) for i, v in enumerate(vectors[3_000:], start=3_000)])  # after it
        store.delete([str(i) for i in range(10)])
        moved = {str(i): vectors[3_000 + i - 10] * -1 for i in range(10, 20)}  # new vectors for old products
        store.upsert([point(pid, {"fused": v}) for pid, v in moved.items()])
        vectors[10:20] = np.stack(list(moved.values()))
        assert store.count() == 3_010
        for i in [*range(10, 30), *range(2_990, 3_020)]:
            assert ids(store.search("fused", vectors[i], 1)) == [str(i)]
        assert not {str(i) for i in range(10)} & {h.product_id for v in vectors[:10] for h in store.search("fused", v, 10)}
        live = np.arange(10, 3_020)
        for query in rng.standard_normal((10, dims["fused"])).astype(np.float32):
            exact = live[np.argsort(-(vectors[live] @ query))[:10]]
            assert ids(store.search("fused", query, 10)) == [str(i) for i in exact]
    finally:
        store.close()


def test_flush_persists_what_was_written_since_the_last_one(tmp_path, engine):
    store = ProductStore(store_settings(tmp_path, engine), {"fused": 2})
    try:
        store.upsert([point(str(i), {"fused": [1, i]}) for i in range(3)])
        flushed = store.flush()
        assert flushed == (3 if engine == "edge" else 0)  # a server persists by itself
        assert store.flush() == 0
    finally:
        store.close()
    reopened = ProductStore(store_settings(tmp_path, engine), {"fused": 2})
    try:
        assert reopened.count() == 3
    finally:
        reopened.close()


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**53, 2**53) | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4), max_leaves=12)


@given(st.dictionaries(st.sampled_from(sorted(NATIVE_FIELDS)) | st.text(), JSON_VALUES, max_size=8))
def test_a_packed_payload_unpacks_to_itself(payload):
    packed = packed_payload(payload)
    assert set(packed) <= NATIVE_FIELDS | {PACKED}
    assert unpacked_payload(packed) == payload


def test_edge_packs_what_no_filter_reads_and_readers_see_it_unpacked(tmp_path):
    """Edge converts a payload value by value (slowly): the fields no filter, index or price
    update touches are stored as one JSON string, and nothing above the engine sees that."""
    store = ProductStore(store_settings(tmp_path, "edge"), DIMS)
    try:
        shoe = point("a", {"fused": [1, 0]}, price=100.0, title="Shoe", category=["Footwear", "Shoes"],
                     attributes={"colour": "Red", "size": "9"}, fingerprint="fp", image_uris=["a.jpg"])
        store.upsert([shoe, point("b", {"fused": [0, 1]}, price=5.0, attributes={"size": "8"})])
        raw = store._engine._shard(store.collection).retrieve([point_id("a")], with_payload=True, with_vector=False)[0].payload
        assert PACKED in raw and set(raw) <= NATIVE_FIELDS | {PACKED} and "title" not in raw
        assert json.loads(raw[PACKED])["attributes"] == {"colour": "Red", "size": "9"}
        assert store.get("a").payload == shoe.payload
        hits = store.search("fused", QUERY, 10, SearchFilters(category="shoes", attributes={"size": ("9",)}, price_max=100))
        assert [(h.product_id, h.payload) for h in hits] == [("a", shoe.payload)]
        assert store.states(["a"])["a"].fingerprint == "fp"
        with pytest.raises(ValueError, match="title"):  # a packed field cannot be set in place
            store._engine.set_payloads(store.collection, {point_id("a"): {"price": 1.0, "title": "New"}})
    finally:
        store.close()


def test_a_packed_payload_reads_unpacked_through_the_client(tmp_path):
    """An Edge snapshot restored on a server holds packed payloads: the client reads them too."""
    store = ProductStore(store_settings(tmp_path, "client-local"), DIMS)
    try:
        shoe = point("a", {"fused": [1, 0]}, price=100.0, title="Shoe", fingerprint="fp")
        store._engine.client.upsert(store.collection, [models.PointStruct(
            id=point_id("a"), vector={"fused": [1.0, 0.0]}, payload=packed_payload(with_derived_fields(shoe.payload)))])
        assert store.get("a").payload == shoe.payload
        assert [h.payload for h in store.search("fused", QUERY, 10)] == [shoe.payload]
        assert store.states(["a"])["a"].fingerprint == "fp"
    finally:
        store.close()
