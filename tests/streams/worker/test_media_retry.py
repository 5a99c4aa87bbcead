"""Slow media cannot stall the stream: a product whose image download timed out is indexed
without it at once, and its event is retried later (with backoff, a bounded number of times)
through the retry topic, so the image arrives when the seller's host recovers."""

from __future__ import annotations

import dataclasses
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest

from streams.adapters.kafka import read_topic
from streams.settings import Settings
from streams.tools.client import Client
from streams.tools.publish import publish_events
from streams.tools.runner import WorkerProcess
from streams.worker.app import ATTEMPT_HEADER, NOT_BEFORE_HEADER, MediaRetry, next_retry, retry_record
from streams.worker.pipeline import Failure, IncomingMessage, Pipeline, RetryLater

REPO = Path(__file__).resolve().parents[3]
IMAGE = next((REPO / "demo" / "catalog" / "images").iterdir()).read_bytes()


class SellerHost:
    """A local HTTP server whose image answers after ``delay_s`` (slow) or at once."""

    def __init__(self) -> None:
        self.delay_s = 0.0
        host = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                time.sleep(host.delay_s)
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "image/jpeg")
                    self.send_header("Content-Length", str(len(IMAGE)))
                    self.end_headers()
                    self.wfile.write(IMAGE)
                except OSError:
                    pass  # the client gave up at its deadline

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/photo.jpg"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def seller() -> Iterator[SellerHost]:
    host = SellerHost()
    yield host
    host.close()


@pytest.fixture
def retry_settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, allow_private_networks=True, media_deadline_s=1.0, fetch_timeout_s=1.0,
                               media_retry_backoff_s=1.0, media_retry_attempts=5)


def test_retry_headers_round_trip_and_attempts_are_bounded(retry_settings):
    retry = RetryLater(IncomingMessage(b"{}", b"p1", "events", 0, 7), Failure("timeout", "image: slow"))
    position = next_retry(1, retry_settings, now=1000.0)
    record = retry_record(retry, position)
    assert record.value == b"{}" and record.key == b"p1"
    assert MediaRetry.from_headers(record.headers) == MediaRetry(1, 1001.0)
    assert MediaRetry.from_headers(list(record.headers.items())) == MediaRetry(1, 1001.0)
    assert record.headers[ATTEMPT_HEADER] == b"1" and record.headers[NOT_BEFORE_HEADER] == b"1001.000"
    assert next_retry(3, retry_settings, now=1000.0) == MediaRetry(3, 1004.0)  # the backoff doubles
    assert next_retry(retry_settings.media_retry_attempts + 1, retry_settings, now=1000.0) is None


@pytest.mark.integration
def test_a_timed_out_image_is_indexed_later_by_the_retry(retry_settings, catalog, seller):
    event = catalog[0].derive(image_uris=[seller.url])
    message = IncomingMessage(event.to_bytes(), event.product_id.encode())
    pipeline = Pipeline.from_settings(retry_settings)
    try:
        seller.delay_s = 3.0
        first = pipeline.process([message])
        assert first.dead_letters == []
        assert [r.message for r in first.retries] == [message] and first.retries[0].failure.code == "timeout"
        assert pipeline.store.get(event.product_id).payload["modalities"] == ["text"]

        seller.delay_s = 0.0
        assert pipeline.process([message]).counts["duplicates"] == 1  # a replay is still a duplicate
        retried = pipeline.process([message], retry=True)
        assert retried.retries == [] and retried.dead_letters == []
        payload = pipeline.store.get(event.product_id).payload
        assert payload["modalities"] == ["image", "text"] and payload["errors"] == {}
    finally:
        pipeline.close()


@pytest.mark.integration
def test_a_retry_never_revives_a_deleted_product(retry_settings, catalog, seller):
    event = catalog[0].derive(image_uris=[seller.url])
    pipeline = Pipeline.from_settings(retry_settings)
    try:
        seller.delay_s = 3.0
        pipeline.process([IncomingMessage(event.to_bytes())])
        delete = event.derive(op="delete")
        pipeline.process([IncomingMessage(delete.to_bytes())])
        seller.delay_s = 0.0
        retried = pipeline.process([IncomingMessage(event.to_bytes())], retry=True)
        assert retried.counts["indexed"] == 0 and pipeline.store.get(event.product_id) is None
    finally:
        pipeline.close()


@pytest.mark.integration
def test_the_worker_indexes_the_image_once_the_slow_host_recovers(retry_settings, catalog, seller, tmp_path):
    event = catalog[0].derive(image_uris=[seller.url])
    others = catalog[1:9]

    def modalities() -> list[str]:
        with Client.remote(retry_settings) as client:
            return client.product(event.product_id)["payload"]["modalities"]

    seller.delay_s = 5.0
    with WorkerProcess(retry_settings, tmp_path / "worker.log") as worker:
        publish_events(retry_settings, [event, *others])
        worker.wait_until(lambda s: s["points"] == 1 + len(others), 180, "every product indexed, one without its image")
        assert modalities() == ["text"]
        seller.delay_s = 0.0
        worker.wait_until(lambda s: modalities() == ["image", "text"], 120,
                          "the retried image indexed")
    retried = read_topic(retry_settings, retry_settings.retry_topic, expected=1)
    assert retried[0].value == event.to_bytes() and retried[0].headers[ATTEMPT_HEADER] == "1"
    assert read_topic(retry_settings, retry_settings.dead_letter_topic, expected=1, timeout_s=5).records == ()
