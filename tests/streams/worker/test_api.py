"""The query API v1 on the indexed demo catalog: validation names the field, filters, pagination,
recommendations, batch, explained hits, uploads and the API key. Real pipeline, real store."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from streams.worker.api import QueryService, create_api

pytestmark = pytest.mark.integration

CATALOG = Path(__file__).resolve().parents[3] / "demo" / "catalog"
API_KEY = "test-key-4b1d"


def hits(response) -> list[dict]:
    assert response.status_code == 200, response.text
    return response.json()["hits"]


def errors(response) -> list[tuple[tuple, str]]:
    assert response.status_code == 422, response.text
    return [(tuple(e["loc"]), e["msg"]) for e in response.json()["detail"]]


def test_red_handbag_for_women_ranks_a_red_handbag_first(api):
    top = hits(api.post("/v1/search/text", json={"text": "red handbag for women"}))[0]
    assert (top["attributes"]["baseColour"], top["category"][-1], top["attributes"]["gender"]) == ("Red", "Handbags", "Women")


def test_red_running_shoes_ranks_a_red_sports_shoe_first(api):
    top = hits(api.post("/v1/search/text", json={"text": "red running shoes"}))[0]  # the default mode
    assert (top["attributes"]["baseColour"], top["category"][-1]) == ("Red", "Sports Shoes")


@pytest.mark.parametrize("mode, kind", [("dense", "cosine"), ("keyword", "bm25"), ("hybrid", "dbsf")])
def test_each_hit_is_explained(api, mode, kind):
    found = hits(api.post("/v1/search/text", json={"text": "black watch", "mode": mode, "limit": 5}))
    assert len(found) == 5 and [h["rank"] for h in found] == [1, 2, 3, 4, 5]
    for hit in found:
        assert hit["score_kind"] == kind
        assert hit["title"] and hit["category"] and hit["attributes"] and hit["price"] is not None
        assert hit["image_uris"][0].startswith("file://")
        assert -1.0 <= hit["scores"]["text"] <= 1.0  # the query's cosine to the hit's title vector
    if mode == "dense":
        assert [h["score"] for h in found] == pytest.approx([h["scores"]["text"] for h in found], abs=1e-3)
    if mode == "keyword":
        assert all(h["scores"]["keyword"] == pytest.approx(h["score"], abs=1e-3) for h in found)


def test_similar_explains_by_modality_and_never_returns_the_product(api):
    found = hits(api.post("/v1/search/similar", json={"product_id": "53010", "limit": 5}))
    assert "53010" not in {h["product_id"] for h in found}
    assert all(h["score_kind"] == "cosine" and h["scores"]["text"] is not None and h["scores"]["image"] is not None
               for h in found)


def test_filters_category_at_any_level_in_any_case_attributes_and_exclusions(api):
    query = {"text": "shoes", "limit": 20, "filter": {"category": "sports shoes", "attributes": {"gender": ["men", "Women"]}}}
    found = hits(api.post("/v1/search/text", json=query))
    assert found and all(h["category"][-1] == "Sports Shoes" for h in found)
    path = hits(api.post("/v1/search/text", json={"text": "shirt", "limit": 50, "filter": {"category": "apparel > TOPWEAR"}}))
    assert path and all(h["category"][:2] == ["Apparel", "Topwear"] for h in path)
    red = hits(api.post("/v1/search/text", json={"text": "bag", "limit": 50, "filter": {"attributes": {"baseColour": "red"}}}))
    assert red and all(h["attributes"]["baseColour"] == "Red" for h in red)
    excluded = {h["product_id"] for h in found[:3]}
    rest = hits(api.post("/v1/search/text", json={**query, "filter": {**query["filter"], "exclude_product_ids": sorted(excluded)}}))
    assert not excluded & {h["product_id"] for h in rest}
    cheap = hits(api.post("/v1/search/text", json={"text": "watch", "limit": 50, "filter": {"price_min": 100, "price_max": 1000}}))
    assert cheap and all(100 <= h["price"] <= 1000 for h in cheap)
    assert hits(api.post("/v1/search/text", json={"text": "watch", "filter": {"modalities": ["video"]}})) == []


def test_pages_follow_each_other(api):
    first = api.post("/v1/search/text", json={"text": "casual shirt", "limit": 5, "mode": "dense"}).json()
    second = api.post("/v1/search/text", json={"text": "casual shirt", "limit": 5, "offset": first["next_offset"], "mode": "dense"}).json()
    both = hits(api.post("/v1/search/text", json={"text": "casual shirt", "limit": 10, "mode": "dense"}))
    assert [h["product_id"] for h in first["hits"] + second["hits"]] == [h["product_id"] for h in both]
    assert [h["rank"] for h in second["hits"]] == [6, 7, 8, 9, 10]


def test_score_threshold_drops_weaker_hits(api):
    ranked = hits(api.post("/v1/search/text", json={"text": "watch", "mode": "dense", "limit": 50}))
    cut = next(i for i in range(4, 49) if ranked[i]["score"] > ranked[i + 1]["score"])  # not inside a tie
    threshold = (ranked[cut]["score"] + ranked[cut + 1]["score"]) / 2
    kept = hits(api.post("/v1/search/text", json={"text": "watch", "mode": "dense", "limit": 50, "score_threshold": threshold}))
    assert [h["product_id"] for h in kept] == [h["product_id"] for h in ranked[: cut + 1]]


def test_recommend_from_liked_and_disliked_products(api):
    found = hits(api.post("/v1/recommend", json={"positive": ["53010", "53001"], "negative": ["31237"], "limit": 5}))
    ids = {h["product_id"] for h in found}
    assert len(found) == 5 and not ids & {"53010", "53001", "31237"}
    assert sum(h["category"][-1] == "Sarees" for h in found) >= 3  # like the two saris liked
    missing = api.post("/v1/recommend", json={"positive": ["53010", "no-such-id"]})
    assert (missing.status_code, missing.json()["detail"]) == (404, "product 'no-such-id' is not indexed")


def test_batch_answers_in_order_and_names_the_failing_query(api):
    batch = api.post("/v1/search/batch", json={"queries": [
        {"type": "text", "text": "watch", "limit": 2}, {"type": "similar", "product_id": "53010", "limit": 3}]})
    assert batch.status_code == 200, batch.text
    assert [(r["type"], len(r["hits"])) for r in batch.json()["results"]] == [("text", 2), ("similar", 3)]
    failed = api.post("/v1/search/batch", json={"queries": [{"type": "text", "text": "watch"},
                                                            {"type": "similar", "product_id": "nope"}]})
    assert (failed.status_code, failed.json()["detail"]) == (404, "queries[1]: product 'nope' is not indexed")


def test_search_by_an_uploaded_image_finds_its_product(api):
    image = (CATALOG / "images" / "31237.jpg").read_bytes()
    found = hits(api.post("/v1/search/image", files={"file": ("q.jpg", image, "image/jpeg")},
                          data={"limit": "3", "filter": '{"category": "apparel"}'}))
    assert found[0]["product_id"] == "31237" and found[0]["scores"]["image"] == pytest.approx(1.0, abs=1e-3)
    bad = api.post("/v1/search/image", files={"file": ("q.jpg", b"not an image", "image/jpeg")})
    assert bad.status_code == 422 and bad.json()["detail"].startswith("file: ")
    bad_filter = api.post("/v1/search/image", files={"file": ("q.jpg", image, "image/jpeg")}, data={"filter": '{"colour": 1}'})
    assert errors(bad_filter) == [(("body", "filter", "colour"), "Extra inputs are not permitted")]


@pytest.mark.parametrize("body, expected", [
    ({"text": "x", "filter": {"colour": "red"}}, [(("body", "filter", "colour"), "Extra inputs are not permitted")]),
    ({"text": "x", "k": 2}, [(("body", "k"), "Extra inputs are not permitted")]),
    ({"text": "x", "limit": "two"}, [(("body", "limit"), "Input should be a valid integer, unable to parse string as an integer")]),
    ({"text": "x", "limit": 0}, [(("body", "limit"), "Input should be greater than or equal to 1")]),
    ({"text": "x", "mode": "fuzzy"}, [(("body", "mode"), "Input should be 'dense', 'keyword' or 'hybrid'")]),
    ({"text": "   "}, [(("body", "text"), "String should match pattern '\\S'")]),
    ({}, [(("body", "text"), "Field required")]),
    ({"text": "x", "filter": {"price_min": 5, "price_max": 1}},
     [(("body", "filter"), "Value error, price_min (5.0) is greater than price_max (1.0)")]),
])
def test_a_malformed_request_is_a_422_naming_the_field(api, body, expected):
    assert errors(api.post("/v1/search/text", json=body)) == expected


def test_a_body_that_is_not_a_json_object_is_a_422(api):
    assert errors(api.post("/v1/search/text", content=b"{not json", headers={"Content-Type": "application/json"}))[0][1]
    assert errors(api.post("/v1/search/text", json=[1, 2])) == [(("body",), "Input should be a valid dictionary or object to extract fields from")]


@pytest.mark.parametrize("name", ["../escape", "/tmp/elsewhere", "a/b", ".hidden", "..", "", "x" * 101])
def test_a_backup_is_named_by_a_folder_name_not_a_path(api, name):
    assert errors(api.post("/v1/backup", json={"name": name}))[0][0] == ("body", "name")


def test_a_backup_path_is_refused_by_name(api):
    assert errors(api.post("/v1/backup", json={"dir": "/tmp/elsewhere"})) == [(("body", "name"), "Field required"),
                                                                           (("body", "dir"), "Extra inputs are not permitted")]


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", "/abs"])
def test_backup_folder_never_leaves_the_backup_root(name):
    from streams.settings import Settings
    from streams.worker.api import backup_folder

    settings = Settings.from_env({"SHELFSTREAM_BACKUP_DIR": "/srv/backups"})
    assert backup_folder(settings, "nightly-2026.12.02") == Path("/srv/backups/nightly-2026.12.02")
    with pytest.raises(ValueError, match="not a folder name"):
        backup_folder(settings, name)


def test_product_lookup(api):
    product = api.get("/v1/products/31237", params={"vectors": True}).json()
    assert product["title"] == "Puma Men Schon Black & Blue Polo T-shirt" and len(product["vectors"]["text"]) == 384
    assert api.get("/v1/products/no-such-id").status_code == 404


def test_an_api_key_guards_everything_but_health(query_service: QueryService):
    query_service.api_key = API_KEY
    try:
        api = TestClient(create_api(query_service), raise_server_exceptions=False)
        assert api.get("/health").status_code == 200
        for method, path in [("GET", "/v1/stats"), ("POST", "/v1/stats/reset"), ("GET", "/v1/products/31237"),
                             ("POST", "/v1/reindex"), ("GET", "/v1/reindex"), ("POST", "/v1/backup"),
                             ("POST", "/v1/optimize")]:
            assert api.request(method, path).status_code == 401, path
            assert api.request(method, path, headers={"X-API-Key": "wrong"}).status_code == 401, path
        body = {"text": "watch", "limit": 1}
        assert api.post("/v1/search/text", json=body).status_code == 401
        assert api.post("/v1/search/text", json=body, headers={"X-API-Key": API_KEY}).status_code == 200
        assert api.post("/v1/search/text", json=body, headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200
        # state-changing endpoints answer no GET, even with the key
        assert api.get("/v1/stats/reset", headers={"X-API-Key": API_KEY}).status_code == 405
    finally:
        query_service.api_key = ""


def test_the_contract_is_published(api):
    document = api.get("/openapi.json").json()
    assert {"/v1/search/text", "/v1/search/image", "/v1/search/video", "/v1/search/similar", "/v1/recommend",
            "/v1/search/batch", "/v1/products/{product_id}", "/v1/reindex", "/v1/stats", "/v1/stats/reset",
            "/v1/backup", "/v1/optimize", "/health"} <= set(document["paths"])
    assert set(document["components"]["schemas"]["Filter"]["properties"]) == {
        "category", "price_min", "price_max", "attributes", "modalities", "exclude_product_ids"}
    assert api.get("/docs").status_code == 200
    # a query service does not index: re-indexing is a 409 that says where to go
    assert api.post("/v1/reindex").status_code == 409
