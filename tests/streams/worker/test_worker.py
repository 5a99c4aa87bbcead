"""The whole path on real services: events published to the tansu broker, the Faust worker in its
own process, Redis, and Qdrant local mode; asserted on what ends up in Qdrant and on the
dead-letter topic."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streams.adapters.kafka import read_topic
from streams.adapters.store import ProductStore
from streams.settings import Settings
from streams.tools.cli import main
from streams.tools.client import ApiError, Client, run_query
from streams.tools.publish import publish_events, publish_raw
from streams.tools.runner import WorkerProcess
from streams.worker.app import REASON_HEADER
from streams.worker.encoders import load_encoders

pytestmark = pytest.mark.integration

JOIN_AND_INDEX_S = 180


def test_worker_indexes_updates_deletes_and_dead_letters(settings: Settings, catalog, tmp_path: Path, monkeypatch, capsys):
    products = catalog[:24]
    malformed = b'{"op": "upsert", "product_id": "broken", "version": '
    with WorkerProcess(settings, tmp_path / "worker.log") as worker:
        publish_events(settings, products[:12])
        publish_raw(settings, [(b"broken", malformed)])
        publish_events(settings, products[12:])
        stats = worker.wait_until(lambda s: s["points"] == len(products), JOIN_AND_INDEX_S, "every product indexed")
        assert stats["counts"]["encoded_text"] == len(products)
        assert stats["counts"]["encoded_image"] == len(products)

        letters = read_topic(settings, settings.dead_letter_topic, expected=1)
        assert [letter.value for letter in letters] == [malformed]
        assert letters[0].key == b"broken"
        assert "malformed JSON" in letters[0].headers[REASON_HEADER]
        for variable, value in settings.to_env().items():
            monkeypatch.setenv(variable, value)
        capsys.readouterr()
        assert main(["dead-letters", "-n", "1", "--wait", "30", "--json"]) == 0
        shown = json.loads(capsys.readouterr().out.splitlines()[0])
        assert shown["value"] == malformed.decode() and shown["key"] == "broken"
        assert "malformed JSON" in shown["reason"] and shown["source"].startswith(settings.events_topic + "/")

        # a price cut: the payload changes, no encoder runs
        cut = products[0].derive(version=2, price=10.0)
        publish_events(settings, [cut])
        stats = worker.wait_until(lambda s: s["counts"].get("indexed", 0) == len(products) + 1, 60, "the price update")
        assert stats["counts"]["encoded_text"] == len(products)
        assert stats["counts"]["encoded_image"] == len(products)
        assert stats["counts"]["payload_only"] == 1
        with Client.remote(settings) as client:
            product = client.product(cut.product_id)
        assert product["payload"]["price"] == 10.0 and product["payload"]["version"] == 2

        # queries answer while the worker holds Qdrant local mode
        similar = run_query(settings, {"type": "similar", "product_id": products[1].product_id, "limit": 5})["hits"]
        assert len(similar) == 5 and products[1].product_id not in {hit["product_id"] for hit in similar}
        found = run_query(settings, {"type": "text", "text": products[2].title, "limit": 3, "mode": "dense"})["hits"]
        assert found[0]["product_id"] == products[2].product_id
        with pytest.raises(ApiError, match="not_an_image") as refused:
            run_query(settings, {"type": "image", "file": b"not an image at all", "limit": 3})
        assert refused.value.status == 422

        # a delete removes the point; a replay of the old version does not bring it back
        publish_raw(settings, [(products[3].product_id.encode(),
                                json.dumps({"op": "delete", "product_id": products[3].product_id, "version": 2}).encode())])
        publish_events(settings, [products[3]])
        worker.wait_until(lambda s: s["counts"].get("deleted", 0) == 1 and s["counts"].get("stale_skipped", 0) >= 1,
                          60, "the delete and the replay")
        with pytest.raises(ApiError, match="not indexed"), Client.remote(settings) as client:
            client.product(products[3].product_id)
        assert worker.stats()["points"] == len(products) - 1

    # the worker is gone: Qdrant's folder is free, read every point directly
    encoders = load_encoders(settings)
    store = ProductStore(settings, encoders.fusion.dims, encoders.store_version)
    try:
        points = {p.payload["product_id"]: p for p in store.all_points()}
    finally:
        store.close()
    expected = {p.product_id: p for p in products if p.product_id != products[3].product_id}
    assert set(points) == set(expected)
    for product_id, point in points.items():
        assert {name: len(vector) for name, vector in point.vector.items()} == {"text": 384, "image": 1280, "fused": 1664}
        assert point.payload["title"] == expected[product_id].title
        assert point.payload["category"] == expected[product_id].category
    assert points[cut.product_id].payload["price"] == 10.0
