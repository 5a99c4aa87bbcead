"""Fixtures for the stream tests: settings pointing at the real embedded services and a catalog
of real Myntra products from the demo catalog shipped in the repository."""

from __future__ import annotations

import csv
import uuid
from pathlib import Path

import pytest
import redis

from streams.schema.events import ProductEvent
from streams.settings import Settings
from streams.tools.publish import catalog_events, load_mapping
from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[2]
CATALOG = REPO / "demo" / "catalog"


@pytest.fixture
def settings(services: dict, model_dir: Path, tmp_path: Path) -> Settings:
    """Fresh topics, consumer group, Redis keys and Qdrant folder for each test."""
    redis.Redis.from_url(services["redis_url"]).flushdb()  # the cache must not carry over between tests
    run = uuid.uuid4().hex[:8]
    media_root = tmp_path / "media"
    media_root.mkdir()
    return Settings.from_env(
        env={},
        kafka_bootstrap=services["kafka_bootstrap"],
        redis_url=services["redis_url"],
        state_dir=str(tmp_path / "state"),
        qdrant_path=str(tmp_path / "qdrant"),
        model_dir=str(model_dir),
        media_root=str(media_root),
        app_id=f"shelfstream-test-{run}",
        events_topic=f"test-{run}.events",
        interactions_topic=f"test-{run}.interactions",
        dead_letter_topic=f"test-{run}.dead-letter",
        retry_topic=f"test-{run}.media-retry",
        collection=f"products_{run}",
        batch_size=16,
        batch_window_s=0.2,
        web_port=free_port(),  # never another worker's API (tests of other checkouts run on this machine)
    )


@pytest.fixture
def catalog(settings: Settings) -> list[ProductEvent]:
    """40 real products whose images are copied under the test's media root."""
    media_root = Path(settings.media_root)
    (media_root / "images").mkdir()
    with (CATALOG / "products.csv").open() as handle:
        rows = list(csv.DictReader(handle))[:40]
    with (media_root / "products.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
            (media_root / row["image"]).write_bytes((CATALOG / row["image"]).read_bytes())
    mapping = load_mapping(str(CATALOG / "mapping.json"))
    return list(catalog_events(media_root / "products.csv", mapping, version=1))
