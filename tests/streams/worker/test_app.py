"""The worker's failure policy: service outages are retried, never dead-lettered; an event that
breaks the pipeline on its own is dead-lettered alone and the rest of its batch is indexed."""

from __future__ import annotations

import dataclasses
import threading
import time

import pytest

from streams.worker.app import WorkerState, create_app
from streams.worker.lean import EventlessMonitor, LeanConsumer, RawSchema
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


def test_status_never_shows_a_batchs_points_without_its_counts(settings, catalog, monkeypatch):
    """/stats reads counts and points together: a reader that looks while the batch's points are
    being written sees either neither or both (it waits for the batch)."""
    worker = WorkerState(settings)
    store = worker.pipeline.store
    upsert = store.upsert
    seen: list[dict] = []
    readers: list[threading.Thread] = []

    def upsert_then_look(points):
        upsert(points)
        reader = threading.Thread(target=lambda: seen.append(worker.status()))
        reader.start()
        readers.append(reader)

    monkeypatch.setattr(store, "upsert", upsert_then_look)
    try:
        worker.process(messages(*catalog[:5]))
        for reader in readers:
            reader.join(timeout=30)
        [status] = seen
        assert status["points"] == 5 and status["counts"]["indexed"] == 5
    finally:
        worker.pipeline.close()


def test_the_store_is_flushed_once_the_stream_is_idle_and_not_before(settings, catalog):
    worker = WorkerState(dataclasses.replace(settings, idle_flush_s=3600.0))
    try:
        worker.process(messages(*catalog[:5]))
        assert worker.flush_if_idle() == 0  # a batch ran just now: the stream is busy
        worker.settings = dataclasses.replace(worker.settings, idle_flush_s=0.0)
        assert worker.flush_if_idle() == 5  # idle: the 5 new points are persisted
        assert worker.flush_if_idle() == 0  # nothing new since
        assert worker.pipeline.store.count() == 5
    finally:
        worker.pipeline.close()


def test_the_app_keeps_no_per_event_monitor_state(settings):
    """Faust's monitor would count every event a second time (``/metrics`` does); the app's
    monitor skips the per-event hooks and still records the rest (here: a commit)."""
    monitor = create_app(settings).monitor
    assert isinstance(monitor, EventlessMonitor)
    monitor.on_message_in(None, 1, None)
    assert monitor.on_stream_event_in(None, 1, None, None) is None
    monitor.on_stream_event_out(None, 1, None, None, None)
    monitor.on_message_out(None, 1, None)
    assert monitor.events_total == 0 and monitor.messages_received_total == 0
    monitor.on_commit_completed(None, monitor.on_commit_initiated(None))
    assert len(monitor.commit_latency) == 1


def test_status_says_when_the_last_batch_ended_by_the_wall_clock(settings, catalog):
    worker = WorkerState(settings)
    try:
        assert worker.status()["last_batch_at"] is None
        before = time.time()
        worker.process(messages(*catalog[:3]))
        after = time.time()
        assert before <= worker.status()["last_batch_at"] <= after
    finally:
        worker.pipeline.close()


def test_the_app_consumes_with_the_lean_consumer(settings):
    """Faust builds its Kafka consumer from the app's transport: ``LeanConsumer`` (``lean.py``)."""
    assert create_app(settings).transport.Consumer is LeanConsumer


def test_every_agent_reads_its_records_bytes_through_the_raw_schema(settings):
    """The pipeline parses events itself (a bad one is a dead letter with its reason), so no agent
    may have Faust decode them: each reads the bytes through ``RawSchema``."""
    agents = create_app(settings).agents.values()
    assert len(agents) == 3 and all(isinstance(agent.channel.schema, RawSchema) for agent in agents)
