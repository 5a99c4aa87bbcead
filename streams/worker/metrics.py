"""The worker's Prometheus metrics, defined once, and the small functions that record them.

Every metric lives in a registry owned by one ``WorkerMetrics`` (never the global default
registry), so two apps in one process (the tests) never collide and a test reads exactly what
its own worker recorded. Names follow Prometheus conventions: the unit in the name, ``_total``
for counters; label values come from small fixed sets (modalities, outcome and reason codes),
never from product ids or free text, so the number of series stays bounded.

Consumer lag is not pushed by the data path: a collector asks the broker on scrape (at most
once per ``lag_refresh_s``), so the gauge is as fresh as the scrape and costs nothing between.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from streams.adapters.kafka import PartitionLag

log = logging.getLogger("shelfstream.metrics")

NAMESPACE = "shelfstream"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Batch sizes are powers of two up to a few times the default batch size (32).
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
# Encoding, store writes and queries: a millisecond to tens of seconds (a cold video batch).
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Event time to visible in the store: tens of milliseconds when idle, minutes under a backlog.
FRESHNESS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)
OTHER_REASON = "other"


class WorkerMetrics:
    """All of one worker's series in one registry; ``exposition()`` is the ``/metrics`` body."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events_consumed = Counter("events_consumed", "Events read from the events topic", namespace=NAMESPACE, registry=r)
        self.events_processed = Counter(
            "events_processed", "Events by what the pipeline did with them (indexed, deleted, stale_skipped, ...)",
            ["outcome"], namespace=NAMESPACE, registry=r)
        self.products_indexed = Counter("products_indexed", "Products written to the store with new vectors",
                                        namespace=NAMESPACE, registry=r)
        self.dead_letters = Counter("dead_letters", "Events sent to the dead-letter topic, by reason code",
                                    ["reason"], namespace=NAMESPACE, registry=r)
        self.batches = Counter("batches", "Batches by result: ok, or retried because a service was down",
                               ["result"], namespace=NAMESPACE, registry=r)
        self.batch_size = Histogram("batch_size_events", "Events per batch", namespace=NAMESPACE,
                                    buckets=BATCH_SIZE_BUCKETS, registry=r)
        self.batch_duration = Histogram("batch_duration_seconds", "Wall time of one batch, end to end",
                                        namespace=NAMESPACE, buckets=DURATION_BUCKETS, registry=r)
        self.encode_duration = Histogram("encode_duration_seconds", "Encoder time per batch and modality",
                                         ["modality"], namespace=NAMESPACE, buckets=DURATION_BUCKETS, registry=r)
        self.cache_lookups = Counter("cache_lookups", "Feature-cache lookups per modality", ["modality"],
                                     namespace=NAMESPACE, registry=r)
        self.cache_hits = Counter("cache_hits", "Feature-cache hits per modality (ratio: hits / lookups)",
                                  ["modality"], namespace=NAMESPACE, registry=r)
        self.store_write_duration = Histogram("store_write_duration_seconds", "Time of one upsert or delete in the store",
                                              namespace=NAMESPACE, buckets=DURATION_BUCKETS, registry=r)
        self.store_query_duration = Histogram("store_query_duration_seconds", "Time of one query in the store",
                                              namespace=NAMESPACE, buckets=DURATION_BUCKETS, registry=r)
        self.freshness = Histogram("freshness_seconds", "Event time to visible in the store",
                                   namespace=NAMESPACE, buckets=FRESHNESS_BUCKETS, registry=r)
        self.model_info = Gauge("model_info", "Version of each loaded model (value 1)", ["modality", "version"],
                                namespace=NAMESPACE, registry=r)

    # -- the data path -----------------------------------------------------------------------

    def record_batch(self, events: int, counts: Mapping[str, int], seconds: float) -> None:
        """One batch that completed: its size, its wall time and the pipeline's counts.

        ``counts`` is the batch outcome's counter: ``indexed``, ``deleted``, ``cache_hits_<m>``,
        ``cache_lookups_<m>`` and the other outcome keys; cache keys feed the cache series, the
        rest ``events_processed_total{outcome}``.
        """
        self.events_consumed.inc(events)
        self.batches.labels("ok").inc()
        self.batch_size.observe(events)
        self.batch_duration.observe(seconds)
        for key, value in counts.items():
            if key.startswith("cache_hits_"):
                self.cache_hits.labels(key.removeprefix("cache_hits_")).inc(value)
            elif key.startswith("cache_lookups_"):
                self.cache_lookups.labels(key.removeprefix("cache_lookups_")).inc(value)
            elif key.startswith("encoded_") or key == "events":
                continue  # encoder work is in encode_duration_seconds; events in events_consumed_total
            else:
                self.events_processed.labels(key).inc(value)
        self.products_indexed.inc(counts.get("indexed", 0))

    def record_retry(self) -> None:
        """A batch that failed because a service was unavailable and will be retried."""
        self.batches.labels("retried").inc()

    def record_dead_letters(self, reason_codes: Iterable[str]) -> None:
        """One increment per dead letter, labelled by its machine reason code (not its text)."""
        for code in reason_codes:
            self.dead_letters.labels(code or OTHER_REASON).inc()

    def record_encode(self, modality: str, seconds: float) -> None:
        self.encode_duration.labels(modality).observe(seconds)

    def record_freshness(self, milliseconds: Sequence[float]) -> None:
        """Freshness samples as the pipeline measures them (ms), observed in seconds."""
        for value in milliseconds:
            self.freshness.observe(value / 1000.0)

    def set_models(self, versions: Mapping[str, str]) -> None:
        """``{modality: version}`` of the loaded encoders; replaces what was there (a reindex)."""
        self.model_info.clear()
        for modality, version in versions.items():
            self.model_info.labels(modality, version).set(1)

    # -- serving -----------------------------------------------------------------------------

    def watch_lag(self, read_lag: Callable[[], list[PartitionLag]], refresh_s: float = 5.0) -> None:
        """Report the consumer group's per-partition offsets and lag, read on scrape."""
        self.registry.register(LagCollector(read_lag, refresh_s))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class TimedStore:
    """The store with its writes and queries timed into the metrics; every other attribute passes
    through unchanged, so it stands wherever the store does (pipeline, searcher, re-indexing)."""

    WRITES = frozenset({"upsert", "delete", "overwrite_payloads"})
    QUERIES = frozenset({"search", "keyword_search", "recommend"})

    def __init__(self, store: Any, metrics: WorkerMetrics) -> None:
        self._store = store
        self._metrics = metrics

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._store, name)
        histogram = (self._metrics.store_write_duration if name in self.WRITES
                     else self._metrics.store_query_duration if name in self.QUERIES else None)
        if histogram is None or not callable(attribute):
            return attribute

        @functools.wraps(attribute)
        def timed(*args: Any, **kwargs: Any) -> Any:
            with histogram.time():
                return attribute(*args, **kwargs)
        return timed


class LagCollector(Collector):
    """Committed offset, end offset and lag per partition, asked of the broker on scrape.

    The broker is asked at most once per ``refresh_s`` (scrapes in between reuse the answer);
    when it cannot be asked, the series are left out and the error is logged: a missing series
    is honest, a stale or zero lag would not be.
    """

    def __init__(self, read_lag: Callable[[], list[PartitionLag]], refresh_s: float) -> None:
        self._read_lag = read_lag
        self._refresh_s = refresh_s
        self._lock = threading.Lock()
        self._cached: list[PartitionLag] = []
        self._read_at = float("-inf")

    def collect(self) -> Iterator[Metric]:
        lags = self._current()
        labels = ["topic", "partition"]
        committed = GaugeMetricFamily(f"{NAMESPACE}_consumer_committed_offset", "Offset the worker's group committed",
                                      labels=labels)
        end = GaugeMetricFamily(f"{NAMESPACE}_consumer_end_offset", "End offset (high watermark) of the partition",
                                labels=labels)
        lag = GaugeMetricFamily(f"{NAMESPACE}_consumer_lag_messages", "Events not yet committed by the worker's group",
                                labels=labels)
        for item in lags:
            key = [item.topic, str(item.partition)]
            if item.committed is not None:  # no commit yet: no series, rather than a made-up 0
                committed.add_metric(key, item.committed)
            end.add_metric(key, item.end)
            lag.add_metric(key, item.lag)
        yield from (committed, end, lag)

    def describe(self) -> Iterator[Metric]:
        return iter(())  # dynamic: ask collect() only on scrape, never at registration

    def _current(self) -> list[PartitionLag]:
        with self._lock:
            if time.monotonic() - self._read_at >= self._refresh_s:
                try:
                    self._cached = self._read_lag()
                except Exception as exc:  # the broker is down: no lag series rather than a wrong one
                    log.warning("cannot read the consumer lag: %s", exc)
                    self._cached = []
                self._read_at = time.monotonic()
            return self._cached
