"""Shopper interactions from the command line: publishing a CSV/JSONL log, asking the worker for a
user's recommendations, forgetting a user, and the benchmark of profiles and recommendations.

The mapping dialect is ``publish``'s: a JSON object from interaction fields to the file's columns,
a string names a column and ``{"value": ...}`` is a constant, e.g.

    {"user_id": "user", "product_id": "item", "kind": {"value": "view"}, "event_time": "ts"}

Without a mapping, columns (or JSONL keys) are taken as the interaction's own field names.
Records are keyed by user id, so one user's interactions stay in one partition.
"""

from __future__ import annotations

import sys
import threading
import time
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from exporters.catalog import BadRow, mapping_values, read_rows
from streams.adapters.profiles import UserProfiles
from streams.schema.interactions import FIELDS, Interaction, InteractionError, interaction_from_dict
from streams.settings import Settings
from streams.tools.client import Client
from streams.tools.publish import EventPublisher, PublishReport, publish_raw


def load_interaction_mapping(path_or_json: str | None) -> dict[str, Any]:
    mapping = mapping_values(path_or_json)
    unknown = set(mapping) - set(FIELDS)
    if unknown:
        raise ValueError(f"mapping names unknown interaction fields {sorted(unknown)}; known: {', '.join(FIELDS)}")
    return mapping


def row_to_interaction(row: Mapping[str, Any], mapping: Mapping[str, Any]) -> Interaction:
    data: dict[str, Any] = {}
    for name in FIELDS:
        spec = mapping.get(name, name)
        value = spec.get("value") if isinstance(spec, dict) else row.get(spec)
        if value not in (None, ""):
            data[name] = value
    for name in ("event_time", "schema_version"):
        if isinstance(data.get(name), str):
            data[name] = _number(data[name])
    return interaction_from_dict(data)


def file_interactions(path: Path, mapping: Mapping[str, Any], on_error: Callable[[int, str], None]) -> Iterator[Interaction]:
    """Valid interactions of a file; invalid rows go to ``on_error`` and are skipped."""
    for number, row in read_rows(path):
        try:
            if isinstance(row, BadRow):
                raise ValueError(row.reason)
            yield row_to_interaction(row, mapping)
        except (InteractionError, ValueError) as exc:
            on_error(number, str(exc))


def publish_interactions(settings: Settings, interactions: Iterable[Interaction], progress: bool = False) -> PublishReport:
    records = ((i.user_id.encode(), i.to_bytes()) for i in interactions)
    return publish_raw(settings, records, progress=progress, topic=settings.interactions_topic)


def publish_interactions_file(settings: Settings, path: Path, mapping: Mapping[str, Any], limit: int | None = None) -> PublishReport:
    rejected: list[str] = []

    def reject(number: int, reason: str) -> None:
        rejected.append(reason)
        print(f"skipped {path.name} row {number}: {reason}", file=sys.stderr)

    interactions: Iterable[Interaction] = file_interactions(path, mapping, reject)
    if limit is not None:
        interactions = islice(interactions, limit)
    report = publish_interactions(settings, interactions, progress=True)
    return PublishReport(report.published, len(rejected), report.seconds)


def recommend_for_user(settings: Settings, user_id: str, query: Mapping[str, Any]) -> dict[str, Any]:
    """The running worker's (or query service's) recommendations for a user; ``query`` holds the
    API's fields (limit, offset, filter, diversity). ConnectionError when none answers."""
    with Client.remote(settings) as client:
        return client.query({"type": "user", "user_id": user_id, **query})


def forget_user(settings: Settings, user_id: str) -> bool:
    """Straight in Redis, so it works whether or not a worker runs."""
    profiles = UserProfiles(settings.redis_url, settings.profile_ttl_s, settings.profile_max_events)
    try:
        return profiles.forget(user_id)
    finally:
        profiles.close()


def _number(value: str) -> float | int | str:
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value  # an ISO-8601 time stays a string


# -- benchmark: called by ``shelfstream bench`` with its running worker --------------------------

BENCH_USERS = 200
BENCH_UPDATES = 2000
STEADY_LOAD_PER_S = 100  # background interactions while freshness is probed, far below the measured throughput
FRESHNESS_PROBES = 40
RECOMMEND_CALLS = 100


def bench_profiles(settings: Settings, wait_until: Callable[..., dict[str, Any]], product_ids: Sequence[str]) -> dict[str, float]:
    """``profile_updates_per_s``: a burst of interactions until all are applied;
    ``profile_freshness_p99_ms``: with interactions streaming at a steady ``STEADY_LOAD_PER_S``,
    a new user's first interaction (its event time, stamped just before it is sent) until the
    query API's recommendations for that user come from its profile; ``recommend_p95_ms``:
    recommendations for users with a history, one at a time."""
    rng = np.random.default_rng(0)
    applied = wait_until(lambda s: True, 10, "stats")["counts"].get("interactions_applied", 0)
    burst = [Interaction(f"bench-{rng.integers(BENCH_USERS)}", str(rng.choice(product_ids)), "view", float(i))
             for i in range(BENCH_UPDATES)]
    started = time.perf_counter()
    publish_interactions(settings, burst)
    wait_until(lambda s: s["counts"].get("interactions_applied", 0) >= applied + len(burst), 600, "the burst", poll_s=0.05)
    rate = len(burst) / (time.perf_counter() - started)

    stop = threading.Event()
    background = threading.Thread(target=_steady_load, args=(settings, product_ids, stop), daemon=True)
    background.start()
    try:
        with EventPublisher(settings, settings.interactions_topic) as publisher, Client.remote(settings) as client:
            freshness = [_freshness_probe(publisher, client, f"probe-{i}", str(rng.choice(product_ids)))
                         for i in range(FRESHNESS_PROBES)]
    finally:
        stop.set()
        background.join()
    latencies = []
    with Client.remote(settings) as client:
        for i in range(RECOMMEND_CALLS):
            began = time.perf_counter()
            client.query({"type": "user", "user_id": f"bench-{i % BENCH_USERS}", "limit": 10})
            latencies.append((time.perf_counter() - began) * 1000)
    return {
        "profile_updates_per_s": round(rate, 1),
        "profile_freshness_p50_ms": round(float(np.percentile(freshness, 50)), 1),
        "profile_freshness_p99_ms": round(float(np.percentile(freshness, 99)), 1),
        "recommend_p50_ms": round(float(np.percentile(latencies, 50)), 1),
        "recommend_p95_ms": round(float(np.percentile(latencies, 95)), 1),
    }


def _freshness_probe(publisher: EventPublisher, client: Client, user_id: str, product_id: str) -> float:
    interaction = Interaction(user_id, product_id, "view", time.time())
    publisher.send(user_id.encode(), interaction.to_bytes())
    while client.query({"type": "user", "user_id": user_id, "limit": 1})["source"] != "profile":
        time.sleep(0.01)
    return (time.time() - interaction.event_time) * 1000


def _steady_load(settings: Settings, product_ids: Sequence[str], stop: threading.Event) -> None:
    rng = np.random.default_rng(1)
    with EventPublisher(settings, settings.interactions_topic) as publisher:
        while not stop.is_set():
            i = Interaction(f"load-{rng.integers(BENCH_USERS)}", str(rng.choice(product_ids)), "view", time.time())
            publisher.send(i.user_id.encode(), i.to_bytes())
            time.sleep(1.0 / STEADY_LOAD_PER_S)
