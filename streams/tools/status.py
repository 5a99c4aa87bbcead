"""What the system is doing, for a person: one status document (services, workers, the
consumer group's backlog per partition, counters, freshness) and a progress bar that follows
indexing until what was published is in the store.

Every part of the document is gathered on its own: a part that cannot be read says why in an
``error`` field, so one stopped service never hides what the others report.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from tqdm import tqdm

from infra.services import service_status
from streams.adapters.kafka import PartitionLag, committed_offsets, consumer_lag, end_offsets
from streams.settings import Settings
from streams.tools.client import Client
from streams.tools.runner import recorded_workers


def status_document(settings: Settings) -> dict[str, Any]:
    """One JSON-able document; ``worker`` is the answering worker's ``/stats`` (or its error)."""
    services: dict[str, Any] = service_status(settings.state_path)
    services["qdrant"] = ({"mode": "client", "url": settings.qdrant_url} if settings.qdrant_url
                          else {"mode": "edge", "path": settings.qdrant_path})
    try:
        with Client.remote(settings, timeout_s=10.0) as client:
            worker: dict[str, Any] = {"url": settings.worker_url, "answering": True, **client.stats()}
    except ConnectionError as exc:
        worker = {"url": settings.worker_url, "answering": False, "error": str(exc)}
    return {
        "state_dir": str(settings.state_path),
        "services": services,
        "workers": [{"pid": w.pid, "url": w.url, "started_at": w.started_at} for w in recorded_workers(settings.state_path)],
        "worker": worker,
        "consumer": _consumer_part(settings),
        "counts": worker.get("counts", {}),
        "freshness": {"p50_ms": worker.get("freshness_p50_ms"), "p99_ms": worker.get("freshness_p99_ms")},
    }


def _consumer_part(settings: Settings) -> dict[str, Any]:
    part: dict[str, Any] = {"group": settings.app_id, "topic": settings.events_topic}
    try:
        lags = consumer_lag(settings, settings.app_id, settings.events_topic, timeout_s=5.0)
    except (RuntimeError, TimeoutError) as exc:
        return {**part, "error": str(exc)}
    partitions = [{"partition": lag.partition, "committed": lag.committed, "end": lag.end, "lag": lag.lag} for lag in lags]
    return {**part, "lag": sum(lag.lag for lag in lags), "partitions": partitions}


def status_summary(document: dict[str, Any]) -> str:
    """The document as a few readable lines."""
    lines = [f"state    {document['state_dir']}"]
    for name, service in document["services"].items():
        if "mode" in service:
            lines.append(f"{name:<8} {service['mode']} {service.get('url') or service.get('path')}")
        else:
            state = "answering" if service["answering"] else ("running, not answering" if service["alive"] else "stopped")
            lines.append(f"{name:<8} {state}" + (f" (pid {service['pid']}, port {service['port']})" if service["alive"] else ""))
    pids = ", ".join(str(w["pid"]) for w in document["workers"]) or "none recorded"
    worker = document["worker"]
    if worker["answering"]:
        lines.append(f"worker   answering at {worker['url']} (pids: {pids}); {worker.get('points', '?')} points")
    else:
        lines.append(f"worker   none answering at {worker['url']} (pids: {pids})")
    consumer = document["consumer"]
    if "error" in consumer:
        lines.append(f"backlog  unknown: {consumer['error']}")
    else:
        per_partition = "  ".join(f"p{p['partition']}:{p['lag']}" for p in consumer["partitions"])
        lines.append(f"backlog  {consumer['lag']} events of {consumer['topic']} not yet indexed  {per_partition}".rstrip())
    if document["counts"]:
        lines.append("counts   " + "  ".join(f"{key}={value}" for key, value in sorted(document["counts"].items())))
    freshness = document["freshness"]
    if freshness["p50_ms"] is not None:
        lines.append(f"fresh    p50 {freshness['p50_ms']:.0f} ms  p99 {freshness['p99_ms']:.0f} ms (event time to visible)")
    return "\n".join(lines)


def wait_for_indexing(settings: Settings, timeout_s: float, poll_s: float = 1.0,
                      show: Callable[[int], tqdm] | None = None) -> int:
    """Block until the worker's group has committed everything published so far; returns how
    many events were waited for. The targets are the topic's end offsets now (read, not taken
    from the watermark); the worker commits a batch's offsets only after it reached the store,
    so a committed offset at the target means those events are in the store."""
    topic, group = settings.events_topic, settings.app_id
    targets = end_offsets(settings, topic)
    if not targets:
        raise LookupError(f"topic {topic} does not exist: nothing was published")

    def backlog() -> int:
        committed = committed_offsets(settings, group, topic, list(targets))
        return sum(PartitionLag(topic, p, offset, low, targets[p]).lag for p, (offset, low) in committed.items())

    total = backlog()
    bar = (show or _progress_bar)(total)
    deadline = time.monotonic() + timeout_s
    try:
        while (left := backlog()) > 0:
            bar.update(total - left - bar.n)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{left} of {total} events still not indexed after {timeout_s:.0f} s; "
                                   "is a worker running? (`shelfstream status`)")
            time.sleep(poll_s)
        bar.update(total - bar.n)
        return total
    finally:
        bar.close()


def _progress_bar(total: int) -> tqdm:
    return tqdm(total=total, unit="event", desc="indexed", dynamic_ncols=True)
