"""Recommendations from a live interaction stream, on real services: the tansu broker, the Faust
worker in its own process, redis-server and Qdrant local mode."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from streams.adapters.kafka import read_topic
from streams.schema.events import ProductEvent
from streams.schema.interactions import Interaction
from streams.settings import Settings
from streams.tools.cli import main
from streams.tools.interactions import publish_interactions, recommend_for_user
from streams.tools.publish import catalog_events, load_mapping, publish_events, publish_raw
from streams.tools.runner import WorkerProcess
from streams.worker.app import REASON_HEADER
from tests.conftest import DEMO_CATALOG, MYNTRA

pytestmark = pytest.mark.integration

# (articleType, baseColour, how many): black handbags among near misses of either attribute
SHELF = [("Handbags", "Black", 7), ("Handbags", "Brown", 3), ("Handbags", "White", 2),
         ("Casual Shoes", "Black", 3), ("Tshirts", "Black", 2), ("Tshirts", "Blue", 3)]


@pytest.fixture
def shelf(settings: Settings) -> list[ProductEvent]:
    """Real Myntra products of SHELF, images copied under the test's media root (the demo catalog
    has too few black handbags; CI has ../shared, a bare clone skips)."""
    if not (MYNTRA / "products.csv").is_file():
        pytest.skip(f"Myntra dataset absent ({MYNTRA}): the shopper test browses its handbags")
    media_root = Path(settings.media_root)
    (media_root / "images").mkdir()
    wanted = {(t, c): n for t, c, n in SHELF}
    rows = []
    with (MYNTRA / "products.csv").open() as handle:
        for row in csv.DictReader(handle):
            key = (row["articleType"], row["baseColour"])
            if wanted.get(key, 0) > 0:
                wanted[key] -= 1
                rows.append(row)
                (media_root / row["image"]).write_bytes((MYNTRA / row["image"]).read_bytes())
    assert not any(wanted.values()), wanted
    with (media_root / "products.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return list(catalog_events(media_root / "products.csv", load_mapping(str(DEMO_CATALOG / "mapping.json")), version=1))


def test_recommendations_follow_views_drop_purchases_and_ignore_replays(settings: Settings, shelf, tmp_path: Path,
                                                                        monkeypatch, capsys) -> None:
    colour = {e.product_id: (e.category[-1], e.attributes["baseColour"]) for e in shelf}
    black_bags = [e.product_id for e in shelf if colour[e.product_id] == ("Handbags", "Black")]
    viewed = black_bags[:4]
    history = [Interaction("shopper-1", pid, "view", 1_700_000_000.0 + 30 * i) for i, pid in enumerate(viewed)]
    history.append(Interaction("shopper-1", viewed[0], "click", 1_700_000_200.0))
    with WorkerProcess(settings, tmp_path / "worker.log") as worker:
        publish_events(settings, shelf)
        worker.wait_until(lambda s: s["points"] == len(shelf), 180, "every product indexed")

        cold = recommend_for_user(settings, "shopper-1", {"limit": 3})
        assert cold["source"] == "none" and cold["hits"] == []

        publish_interactions(settings, history)
        publish_raw(settings, [(b"shopper-1", b'{"user_id": "shopper-1", "kind": "stare"}')], topic=settings.interactions_topic)
        publish_interactions(settings, [Interaction("shopper-2", "not-indexed", "view", 1_700_000_000.0)])
        worker.wait_until(lambda s: s["counts"].get("interactions_applied", 0) == len(history) + 1, 120, "the interactions")

        top = recommend_for_user(settings, "shopper-1", {"limit": 10})
        assert top["source"] == "profile"
        assert [colour[row["product_id"]] for row in top["hits"][:4]] == [("Handbags", "Black")] * 4
        assert {colour[row["product_id"]][0] for row in top["hits"]} == {"Handbags"}

        bought = top["hits"][0]["product_id"]
        publish_interactions(settings, [Interaction("shopper-1", bought, "purchase", 1_700_000_300.0)])
        worker.wait_until(lambda s: s["counts"].get("interactions_applied", 0) == len(history) + 2, 60, "the purchase")
        after = recommend_for_user(settings, "shopper-1", {"limit": 10})
        ids = [row["product_id"] for row in after["hits"]]
        assert bought not in ids and len(ids) == 10
        assert [colour[pid] for pid in ids[:3]] == [("Handbags", "Black")] * 3

        publish_interactions(settings, history)  # a replay of everything
        worker.wait_until(lambda s: s["counts"].get("interactions_replayed", 0) == len(history), 60, "the replay")
        assert recommend_for_user(settings, "shopper-1", {"limit": 10}) == after

        # filters and diversity pass through
        shoes = recommend_for_user(settings, "shopper-1", {"limit": 3, "filter": {"category": "Footwear"}})
        assert {colour[row["product_id"]][0] for row in shoes["hits"]} == {"Casual Shoes"}
        assert len(recommend_for_user(settings, "shopper-1", {"limit": 4, "diversity": 0.5})["hits"]) == 4

        stats = worker.stats()["counts"]
        assert stats["interactions_unindexed"] == 1 and stats["interactions_dead_lettered"] == 1
        letters = read_topic(settings, settings.dead_letter_topic, expected=1)
        assert "unknown kind 'stare'" in letters[0].headers[REASON_HEADER]

        for variable, value in settings.to_env().items():
            monkeypatch.setenv(variable, value)
        assert main(["forget-user", "shopper-1"]) == 0
        assert "removed" in capsys.readouterr().out
        assert recommend_for_user(settings, "shopper-1", {"limit": 3})["source"] == "popular"
