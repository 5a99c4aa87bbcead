"""The worker's metrics, each read back from a fresh registry as Prometheus would scrape it."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from streams.adapters.kafka import PartitionLag
from streams.worker.metrics import TimedStore, WorkerMetrics


def scraped(metrics: WorkerMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition text, parsed back: {(name, sorted labels): value}."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(metrics.exposition().decode())
        for sample in family.samples
    }


def test_a_batch_counts_events_outcomes_cache_hits_and_its_size_and_time():
    metrics = WorkerMetrics(CollectorRegistry())
    metrics.record_batch(20, {"events": 20, "indexed": 15, "deleted": 2, "stale_skipped": 3, "cache_hits_text": 5,
                              "cache_lookups_text": 15, "encoded_text": 10}, seconds=0.3)
    metrics.record_batch(4, {"events": 4, "indexed": 4, "cache_lookups_image": 4}, seconds=0.05)
    samples = scraped(metrics)
    assert samples[("shelfstream_events_consumed_total", ())] == 24
    assert samples[("shelfstream_products_indexed_total", ())] == 19
    assert samples[("shelfstream_events_processed_total", (("outcome", "deleted"),))] == 2
    assert samples[("shelfstream_events_processed_total", (("outcome", "stale_skipped"),))] == 3
    assert samples[("shelfstream_cache_hits_total", (("modality", "text"),))] == 5
    assert samples[("shelfstream_cache_lookups_total", (("modality", "text"),))] == 15
    assert samples[("shelfstream_cache_lookups_total", (("modality", "image"),))] == 4
    assert not any(name == "shelfstream_events_processed_total" and dict(labels)["outcome"].startswith(("cache", "encoded"))
                   for name, labels in samples)
    assert samples[("shelfstream_batch_size_events_count", ())] == 2
    assert samples[("shelfstream_batch_size_events_sum", ())] == 24
    assert samples[("shelfstream_batch_size_events_bucket", (("le", "4.0"),))] == 1
    assert samples[("shelfstream_batch_duration_seconds_sum", ())] == 0.35
    assert samples[("shelfstream_batches_total", (("result", "ok"),))] == 2


def test_dead_letters_by_reason_code_and_retries():
    metrics = WorkerMetrics(CollectorRegistry())
    metrics.record_dead_letters(["invalid_json", "invalid_json", "image_fetch", ""])
    metrics.record_retry()
    samples = scraped(metrics)
    assert samples[("shelfstream_dead_letters_total", (("reason", "invalid_json"),))] == 2
    assert samples[("shelfstream_dead_letters_total", (("reason", "image_fetch"),))] == 1
    assert samples[("shelfstream_dead_letters_total", (("reason", "other"),))] == 1
    assert samples[("shelfstream_batches_total", (("result", "retried"),))] == 1


def test_encode_and_freshness_histograms_in_seconds():
    metrics = WorkerMetrics(CollectorRegistry())
    metrics.record_encode("image", 0.2)
    metrics.record_encode("text", 0.01)
    metrics.record_freshness([120.0, 2500.0])
    samples = scraped(metrics)
    assert samples[("shelfstream_encode_duration_seconds_sum", (("modality", "image"),))] == 0.2
    assert samples[("shelfstream_encode_duration_seconds_count", (("modality", "text"),))] == 1
    assert samples[("shelfstream_encode_duration_seconds_bucket", (("le", "0.01"), ("modality", "text")))] == 1
    assert samples[("shelfstream_freshness_seconds_sum", ())] == 2.62
    assert samples[("shelfstream_freshness_seconds_bucket", (("le", "0.25"),))] == 1
    assert samples[("shelfstream_freshness_seconds_bucket", (("le", "2.5"),))] == 2


def test_model_info_shows_only_the_loaded_versions():
    metrics = WorkerMetrics(CollectorRegistry())
    metrics.set_models({"text": "minilm-1", "image": "mobilenet-1"})
    metrics.set_models({"text": "minilm-2", "image": "mobilenet-1"})
    info = {labels: value for (name, labels), value in scraped(metrics).items() if name == "shelfstream_model_info"}
    assert info == {(("modality", "image"), ("version", "mobilenet-1")): 1, (("modality", "text"), ("version", "minilm-2")): 1}


def test_lag_is_read_on_scrape_at_most_once_per_refresh_and_left_out_when_unreadable():
    reads: list[int] = []
    answers: list[list[PartitionLag] | Exception] = [
        [PartitionLag("events", 0, 7, 0, 10), PartitionLag("events", 1, None, 2, 5)],
        RuntimeError("broker down"),
    ]

    def read_lag() -> list[PartitionLag]:
        reads.append(1)
        answer = answers[len(reads) - 1]
        if isinstance(answer, Exception):
            raise answer
        return answer

    metrics = WorkerMetrics(CollectorRegistry())
    metrics.watch_lag(read_lag, refresh_s=3600)
    samples = scraped(metrics)
    scraped(metrics)
    assert len(reads) == 1  # the second scrape reused the first answer
    assert samples[("shelfstream_consumer_lag_messages", (("partition", "0"), ("topic", "events")))] == 3
    assert samples[("shelfstream_consumer_lag_messages", (("partition", "1"), ("topic", "events")))] == 3
    assert samples[("shelfstream_consumer_committed_offset", (("partition", "0"), ("topic", "events")))] == 7
    assert ("shelfstream_consumer_committed_offset", (("partition", "1"), ("topic", "events"))) not in samples
    assert samples[("shelfstream_consumer_end_offset", (("partition", "1"), ("topic", "events")))] == 5

    metrics = WorkerMetrics(CollectorRegistry())
    metrics.watch_lag(read_lag, refresh_s=0)
    assert not any(name.startswith("shelfstream_consumer_") for name, _ in scraped(metrics))


def test_two_workers_in_one_process_do_not_share_series():
    first, second = WorkerMetrics(), WorkerMetrics()
    first.record_batch(3, {"indexed": 3}, seconds=0.1)
    assert scraped(second)[("shelfstream_events_consumed_total", ())] == 0


def test_timed_store_times_writes_and_queries_and_passes_the_rest_through():
    class Store:
        collection = "products_v1"

        def upsert(self, points: list) -> int:
            return len(points)

        def search(self, vector: list) -> list:
            return ["hit"]

        def count(self) -> int:
            return 7

    metrics = WorkerMetrics(CollectorRegistry())
    store = TimedStore(Store(), metrics)
    assert store.upsert([1, 2]) == 2 and store.search([0.1]) == ["hit"] and store.search([0.2]) == ["hit"]
    assert store.count() == 7 and store.collection == "products_v1"
    samples = scraped(metrics)
    assert samples[("shelfstream_store_write_duration_seconds_count", ())] == 1
    assert samples[("shelfstream_store_query_duration_seconds_count", ())] == 2


def test_the_grafana_dashboard_queries_only_series_the_worker_exports():
    dashboard = json.loads((Path(__file__).resolve().parents[3] / "infra" / "grafana" / "shelfstream.json").read_text())
    queried = {name for panel in dashboard["panels"] for target in panel["targets"]
               for name in re.findall(r"\bshelfstream_[a-z_]+", target["expr"])}
    metrics = WorkerMetrics(CollectorRegistry())
    metrics.watch_lag(lambda: [PartitionLag("events", 0, 1, 0, 2)])
    metrics.record_batch(1, {"indexed": 1, "cache_hits_text": 1, "cache_lookups_text": 1}, seconds=0.1)
    metrics.record_dead_letters(["invalid_event"])
    metrics.record_retry()
    metrics.record_encode("text", 0.01)
    metrics.set_models({"text": "v1"})
    exported = {name for name, _ in scraped(metrics)}
    assert len(queried) >= 12 and queried <= exported, queried - exported
