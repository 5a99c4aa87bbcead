"""The worker's failure policy: service outages are retried, never dead-lettered; an event that
breaks the pipeline on its own is dead-lettered alone and the rest of its batch is indexed."""

from __future__ import annotations

import dataclasses

import pytest

from streams.worker.app import WorkerState
from streams.worker.pipeline import SERVICE_ERRORS, IncomingMessage

pytestmark = pytest.mark.integration


def messages(*events) -> list[IncomingMessage]:
    return [IncomingMessage(e.to_bytes(), e.product_id.encode()) for e in events]


def test_an_unreachable_redis_is_retried_not_dead_lettered(settings, catalog):
    worker = WorkerState(dataclasses.replace(settings, redis_url="redis://127.0.0.1:1/0"))
    try:
        with pytest.raises(SERVICE_ERRORS):
            worker.process(messages(*catalog[:3]))
        assert worker.pipeline.store.count() == 0
    finally:
        worker.pipeline.close()


def test_an_event_that_breaks_the_pipeline_is_dead_lettered_alone(settings, catalog, monkeypatch):
    worker = WorkerState(settings)
    poisoned = catalog[1].product_id
    encode = worker.pipeline._encode

    def fragile_encode(products, outcome):
        if any(p.event.product_id == poisoned for p in products):
            raise ValueError("a bug no check foresaw")
        return encode(products, outcome)

    monkeypatch.setattr(worker.pipeline, "_encode", fragile_encode)
    try:
        outcome = worker.process(messages(*catalog[:4]))
        assert sorted(outcome.indexed) == sorted(e.product_id for e in catalog[:4] if e.product_id != poisoned)
        assert [(l.message.key, l.reason) for l in outcome.dead_letters] == [
            (poisoned.encode(), "processing failed: ValueError('a bug no check foresaw')")
        ]
        assert worker.pipeline.store.count() == 3
    finally:
        worker.pipeline.close()
