"""Crash safety: the worker is killed with SIGKILL several times mid-stream (creates, title
changes, price changes, deletes, re-creates and late replays of older versions) and each time
restarted; in the end no product is lost, stale or resurrected."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from streams.schema.events import ProductEvent
from streams.settings import Settings
from streams.tools.client import ApiError, Client
from streams.tools.publish import publish_events
from streams.tools.runner import WorkerProcess

pytestmark = pytest.mark.integration
KILLS = 5


def chaos_stream(catalog: list[ProductEvent], seed: int = 0) -> list[ProductEvent]:
    """Every kind of event, shuffled: the highest version of each product must win whatever the order."""
    rng = random.Random(seed)
    deleted = catalog[:15]
    events = [e.derive(version=1) for e in catalog]
    events += [e.derive(version=2, title=f"{e.title} (new)") for e in catalog]
    events += [e.derive(version=3, price=round(rng.uniform(5, 500), 2)) for e in catalog]
    events += [e.derive(op="delete", version=4) for e in deleted]
    events += [e.derive(version=5, price=9.99) for e in catalog[15:]]
    events += [e.derive(version=6, title=f"{e.title} (back)") for e in deleted[:5]]  # re-created after the delete
    events += [e.derive(version=v) for e in deleted[5:] for v in (1, 2, 3)]  # late replays of deleted products
    events += [e.derive(version=2) for e in catalog[15:]]  # late replays of live ones
    rng.shuffle(events)
    return events


def expected_state(events: list[ProductEvent]) -> dict[str, ProductEvent]:
    newest: dict[str, ProductEvent] = {}
    for event in events:
        if event.product_id not in newest or event.version > newest[event.product_id].version:
            newest[event.product_id] = event
    return newest


def audit(settings: Settings, expected: dict[str, ProductEvent]) -> dict[str, list[str]]:
    """Each product's stored state against the newest event: lost, stale or resurrected."""
    problems: dict[str, list[str]] = {"lost": [], "stale": [], "resurrected": []}
    for product_id, event in expected.items():
        try:
            with Client.remote(settings) as client:
                payload = client.product(product_id)["payload"]
        except ApiError as exc:
            if exc.status != 404:  # 404: not indexed
                raise
            payload = None
        if event.op == "delete" and payload is not None:
            problems["resurrected"].append(product_id)
        elif event.op == "upsert" and payload is None:
            problems["lost"].append(product_id)
        elif event.op == "upsert" and (payload["version"], payload["title"], payload["price"]) != (
                event.version, event.title, event.price):
            problems["stale"].append(product_id)
    return problems


def test_kill_9_mid_stream_loses_nothing_and_revives_nothing(settings, catalog, tmp_path: Path):
    events = chaos_stream(catalog)
    expected = expected_state(events)
    chunks = [events[i::KILLS + 1] for i in range(KILLS + 1)]
    log_path = tmp_path / "worker.log"
    for chunk in chunks[:-1]:
        worker = WorkerProcess(settings, log_path)
        worker.start()
        publish_events(settings, chunk)
        worker.wait_until(lambda s: s["counts"].get("events", 0) > 0, 180, "the worker to be mid-stream")
        assert worker.process is not None
        worker.process.kill()  # SIGKILL: no shutdown, whatever batch is in flight is lost uncommitted
        worker.process.wait()
    with WorkerProcess(settings, log_path) as worker:
        publish_events(settings, chunks[-1])
        try:
            worker.wait_until(lambda s: not any(audit(settings, expected).values()), 300, "the store to converge")
        except TimeoutError:
            pass
        problems = audit(settings, expected)
    print(f"{KILLS} kills over {len(events)} events: " + ", ".join(f"{k} {len(v)}" for k, v in problems.items()))
    assert problems == {"lost": [], "stale": [], "resurrected": []}
