"""The query API over the whole demo catalog (300 real products), indexed once per session by
the real pipeline (real Redis, real Qdrant local mode) and served in-process."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
import redis
from fastapi.testclient import TestClient

from streams.settings import Settings
from streams.tools.publish import catalog_events, load_mapping
from streams.worker.api import QueryService, create_api
from streams.worker.pipeline import IncomingMessage, Pipeline

CATALOG = Path(__file__).resolve().parents[3] / "demo" / "catalog"
API_KEY = "test-key-4b1d"


@pytest.fixture(scope="session")
def demo_settings(services: dict, model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    state = tmp_path_factory.mktemp("api")
    redis.Redis.from_url(services["redis_url"]).flushdb()
    settings = Settings.from_env(env={}, redis_url=services["redis_url"], kafka_bootstrap=services["kafka_bootstrap"],
                                 state_dir=str(state / "state"), qdrant_path=str(state / "qdrant"),
                                 model_dir=str(model_dir), media_root=str(CATALOG), collection="api_demo")
    events = list(catalog_events(CATALOG / "products.csv", load_mapping(str(CATALOG / "mapping.json")), version=1))
    pipeline = Pipeline.from_settings(settings)
    try:
        for start in range(0, len(events), 64):
            pipeline.process([IncomingMessage(e.to_bytes(), e.product_id.encode()) for e in events[start:start + 64]])
        assert pipeline.store.count() == len(events)
    finally:
        pipeline.close()
    return settings


@pytest.fixture(scope="session")
def query_service(demo_settings: Settings) -> Iterator[QueryService]:
    service = QueryService(demo_settings)
    yield service
    service.close()


@pytest.fixture
def api(query_service: QueryService) -> TestClient:
    """The API app on the indexed demo catalog, no key required."""
    query_service.api_key = ""
    return TestClient(create_api(query_service), raise_server_exceptions=False)
