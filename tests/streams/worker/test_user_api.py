"""Recommendations for a user and forgetting a user through the query API v1, on the indexed
demo catalog (real Redis, real Qdrant local mode); interactions recorded as the agent records them."""

from __future__ import annotations

import pytest

from streams.schema.interactions import Interaction

pytestmark = pytest.mark.integration


@pytest.fixture
def sari_fan(query_service) -> str:
    """A user who looked at the demo catalog's saris and bought the first one."""
    saris = [pid for pid, payload in _payloads(query_service).items() if (payload.get("category") or [""])[-1] == "Sarees"]
    assert len(saris) >= 4
    query_service.profiles.forget("sari-fan")
    query_service.profiles.record([Interaction("sari-fan", pid, "view", 1_000.0 + i) for i, pid in enumerate(saris[:4])]
                                  + [Interaction("sari-fan", saris[0], "purchase", 2_000.0)])
    return saris[0]


def _payloads(service) -> dict[str, dict]:
    return {p.payload["product_id"]: p.payload for p in service.store.all_points(with_vectors=False)}


def test_get_and_post_recommend_from_the_profile_without_the_purchase(api, sari_fan):
    got = api.get("/v1/users/sari-fan/recommendations", params={"limit": 5})
    assert got.status_code == 200, got.text
    body = got.json()
    assert body["source"] == "profile" and len(body["hits"]) == 5
    assert sari_fan not in {hit["product_id"] for hit in body["hits"]}
    assert all(hit["category"][-1] == "Sarees" for hit in body["hits"][:3])
    posted = api.post("/v1/users/sari-fan/recommendations", json={"limit": 5, "diversity": 0.5,
                                                                   "filter": {"category": "Apparel"}})
    assert posted.status_code == 200, posted.text
    assert {hit["product_id"] for hit in posted.json()["hits"]}.isdisjoint({sari_fan})
    page2 = api.get("/v1/users/sari-fan/recommendations", params={"limit": 2, "offset": 2}).json()
    assert [h["product_id"] for h in page2["hits"]] == [h["product_id"] for h in body["hits"][2:4]]


def test_bad_requests_name_the_field(api):
    response = api.post("/v1/users/u/recommendations", json={"diversity": 2})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"][-1] == "diversity"
    response = api.get("/v1/users/u/recommendations", params={"price_min": 9, "price_max": 1})
    assert response.status_code == 422 and "price_min" in response.text


def test_forgetting_a_user_leaves_the_cold_start(api, sari_fan):
    assert api.delete("/v1/users/sari-fan").json() == {"user_id": "sari-fan", "forgotten": True}
    assert api.delete("/v1/users/sari-fan").json()["forgotten"] is False
    cold = api.get("/v1/users/sari-fan/recommendations", params={"limit": 3}).json()
    assert cold["source"] == "popular" and len(cold["hits"]) == 3  # the saris' views still count as popular
