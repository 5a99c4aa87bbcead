"""Durability with the real worker: an offset is committed only after the points it covers are in
the store, and they survive the worker's ``kill -9`` (Qdrant Edge writes every update to its WAL
before ``update`` returns; no ``flush()`` is needed for a process crash)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from streams.adapters.store import ProductStore
from streams.settings import Settings
from streams.tools.publish import publish_events
from streams.tools.runner import WorkerProcess
from streams.worker.encoders import load_encoders

pytestmark = pytest.mark.integration


def committed_total(settings: Settings) -> int:
    """Sum of the worker group's committed offsets over the events topic (fresh topic: = events)."""
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": settings.app_id,
                         "enable.auto.commit": False})
    try:
        offsets = consumer.committed([TopicPartition(settings.events_topic, p) for p in range(settings.partitions)],
                                     timeout=10)
    finally:
        consumer.close()
    return sum(max(tp.offset, 0) for tp in offsets)


def test_points_of_a_committed_batch_survive_kill_9(settings: Settings, catalog, tmp_path: Path):
    products = catalog[:12]
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    worker.start()
    try:
        publish_events(settings, products)
        deadline = time.monotonic() + 180
        while committed_total(settings) < len(products):
            assert time.monotonic() < deadline, f"offsets never committed:\n{worker.log_tail()}"
            assert worker.process is not None and worker.process.poll() is None, worker.log_tail()
            time.sleep(0.05)
        worker.process.kill()  # kill -9 right after the commit: no shutdown, no flush
        worker.process.wait()
    finally:
        worker.stop()
    assert worker.process.returncode == -9

    encoders = load_encoders(settings)
    store = ProductStore(settings, encoders.fusion.dims, encoders.store_version)  # a restart: the shard reloads from disk and WAL
    try:
        points = {p.product_id: p for p in store.all_points()}
    finally:
        store.close()
    assert set(points) == {p.product_id for p in products}
    assert all(set(point.vector) == {"text", "image", "fused"} for point in points.values())
