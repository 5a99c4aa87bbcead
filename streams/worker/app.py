"""The Faust app: the events topic, the dead-letter topic, the indexing agent, and the query API
(``api.py``) served by uvicorn on the same event loop.

The agent takes events in batches (``take_events``), so that each encoder runs once per batch,
and runs the batch in a thread so the event loop keeps heart-beating and answering queries.
Faust acks a batch's events when the loop comes back for the next one, that is only after the
batch reached Qdrant: the committed offset never passes an event that was not written.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterator, Mapping, Sequence, TypeVar

import faust
import uvicorn

from streams.adapters.kafka import consumer_lag, ensure_topics
from streams.adapters.media import MediaLimits
from streams.adapters.profiles import UserProfiles
from streams.adapters.store import ProductStore
from streams.settings import Settings
from streams.worker.api import Optimized, backup_store, create_api, optimize_store
from streams.worker.interactions import apply_interactions
from streams.worker.lean import EventlessMonitor, LeanApp, RawSchema
from streams.worker.pipeline import (
    SERVICE_ERRORS,
    BatchOutcome,
    DeadLetter,
    Failure,
    IncomingMessage,
    Pipeline,
    RetryLater,
    Stats,
)
from streams.worker.health import NotReady, Probe, broker_probe, redis_probe
from streams.worker.metrics import WorkerMetrics
from streams.worker.profiles import ProfileConfig
from streams.worker.recommend import Recommender
from streams.worker.reindex import ReindexJob, start_in_background
from streams.worker.search import Searcher

log = logging.getLogger("shelfstream.worker")

T = TypeVar("T")
REASON_HEADER = "shelfstream-reason"
CODE_HEADER = "shelfstream-code"  # the failure's machine code (invalid_event, over_limit, not_found, ...)
SOURCE_HEADER = "shelfstream-source"  # topic/partition/offset of the original event
# Set when the original was too large to forward whole: it is cut to the first bytes, and these
# say how long it was and what its sha256 was, so an operator can match it with the source.
ORIGINAL_SIZE_HEADER = "shelfstream-original-size"
ORIGINAL_SHA256_HEADER = "shelfstream-original-sha256"
# On the media-retry topic: the how-manieth retry this is, and the Unix time before which it waits.
ATTEMPT_HEADER = "shelfstream-attempt"
NOT_BEFORE_HEADER = "shelfstream-not-before"
MAX_REASON_BYTES = 2_000
MAX_KEY_BYTES = 1_024


class DeadLetterDeliveryError(Exception):
    """The broker did not take a dead letter: the batch must not be committed, so it is retried."""


# What makes the agent retry a batch (never commit past it) rather than move on.
RETRIED: tuple[type[BaseException], ...] = (*SERVICE_ERRORS, DeadLetterDeliveryError)


@dataclass(frozen=True)
class DeadLetterRecord:
    key: bytes | None
    value: bytes
    headers: dict[str, bytes]


def dead_letter_record(letter: DeadLetter, max_value_bytes: int) -> DeadLetterRecord:
    """The original bytes with the reason, code and source position in headers; an original
    over ``max_value_bytes`` is cut to that size, with its full size and sha256 in headers, so
    that the producer never refuses a dead letter for its size."""
    message = letter.message
    value = message.value or b""
    headers = {
        REASON_HEADER: letter.reason.encode("utf-8", "replace")[:MAX_REASON_BYTES],
        CODE_HEADER: letter.failure.code.encode(),
        SOURCE_HEADER: f"{message.topic}/{message.partition}/{message.offset}".encode(),
    }
    if len(value) > max_value_bytes:
        headers[ORIGINAL_SIZE_HEADER] = str(len(value)).encode()
        headers[ORIGINAL_SHA256_HEADER] = hashlib.sha256(value).hexdigest().encode()
        value = value[:max_value_bytes]
    key = message.key[:MAX_KEY_BYTES] if message.key is not None else None
    return DeadLetterRecord(key, value, headers)


@dataclass(frozen=True)
class MediaRetry:
    """Where an event stands on the retry topic."""

    attempt: int
    not_before: float

    @classmethod
    def from_headers(cls, headers: Any) -> "MediaRetry":
        """Read from a record's headers (a mapping or (name, value) pairs, as clients differ)."""
        try:
            values = {name: bytes(value).decode() for name, value in dict(headers or {}).items()}
            return cls(max(1, int(values.get(ATTEMPT_HEADER, "1"))), float(values.get(NOT_BEFORE_HEADER, "0")))
        except (TypeError, ValueError, UnicodeDecodeError, OverflowError):  # not written by a worker: retry once now
            log.warning("media retry with unreadable headers %r: retried now", headers)
            return cls(1, 0.0)


def next_retry(attempt: int, settings: Settings, now: float) -> MediaRetry | None:
    """Retry ``attempt`` (1 for the first) after a backoff doubling each time; None when the
    attempts are spent and the event is a dead letter instead."""
    if attempt > settings.media_retry_attempts:
        return None
    return MediaRetry(attempt, now + settings.media_retry_backoff_s * 2 ** (attempt - 1))


def retry_record(retry: RetryLater, position: MediaRetry) -> DeadLetterRecord:
    """The original event, unchanged, with its attempt and not-before time in headers."""
    message = retry.message
    return DeadLetterRecord(message.key, message.value or b"", {
        ATTEMPT_HEADER: str(position.attempt).encode(),
        NOT_BEFORE_HEADER: f"{position.not_before:.3f}".encode(),
        REASON_HEADER: retry.failure.reason.encode("utf-8", "replace")[:MAX_REASON_BYTES],
        SOURCE_HEADER: f"{message.topic}/{message.partition}/{message.offset}".encode(),
    })


class WorkerState:
    """What one worker process holds: the pipeline (models, cache, store) and its counters."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stats = Stats()
        self.metrics = WorkerMetrics()
        self.metrics.watch_lag(lambda: consumer_lag(settings, settings.app_id, settings.events_topic, timeout_s=5.0))
        self.started_at = time.time()
        self.last_batch_at = time.monotonic()
        self._pipeline: Pipeline | None = None
        self._loading = threading.Lock()
        # the interactions agent and the indexing agents' batches add to the same counters
        self._counting = threading.Lock()
        self.reindex_job = ReindexJob()
        self.profiles = UserProfiles(settings.redis_url, settings.profile_ttl_s, settings.profile_max_events)
        self.profile_config = ProfileConfig.parse(settings.interaction_weights, settings.profile_half_life_s,
                                                  settings.profile_vector)

    @property
    def pipeline(self) -> Pipeline:
        """Loaded on first use, once, whichever thread (agent or query) comes first."""
        with self._loading:
            if self._pipeline is None:
                self._pipeline = Pipeline.from_settings(self.settings, self.metrics)
            return self._pipeline

    def apply_interactions(self, messages: Sequence[IncomingMessage]) -> BatchOutcome:
        """Apply a batch of interactions to the users' histories and count it."""
        outcome = apply_interactions(messages, self.profiles, self.pipeline.store)
        self._count(outcome)
        return outcome

    def _count(self, outcome: BatchOutcome) -> None:
        with self._counting:
            self.stats.add(outcome)

    def stats_window(self, reset: bool) -> Stats:
        """The counters' current window, and a new one from now on if ``reset``: swapped under the
        lock the batches count under, so each batch is in exactly one window."""
        with self._counting:
            window = self.stats
            if reset:
                self.stats = Stats()
            return window

    @property
    def loaded(self) -> Pipeline | None:
        """The pipeline if it is loaded, without loading it (readiness must not block on that)."""
        return self._pipeline

    def process(self, messages: Sequence[IncomingMessage], retry: bool = False) -> BatchOutcome:
        """Process a batch and count it, as one step for ``status`` (the dead-letter policy is
        ``Pipeline.process``'s)."""
        started = time.perf_counter()
        # counted in the same step as the batch's writes: /stats never shows one without the other
        outcome = self.pipeline.process(messages, retry, committed=self._count)
        self.last_batch_at = time.monotonic()
        self.metrics.record_batch(len(messages), outcome.counts, time.perf_counter() - started)
        self.metrics.record_dead_letters(letter.failure.code for letter in outcome.dead_letters)
        self.metrics.record_freshness(outcome.freshness_ms)
        return outcome

    def flush_if_idle(self) -> int:
        """Persist the store's new points if no batch ran for ``idle_flush_s``: a flush stalls the
        process (the GIL) for a while, which a quiet stream does not notice and a busy one would
        (a freshness spike). Under a load that never pauses, the store flushes by its own bound."""
        pipeline = self._pipeline
        if pipeline is None or time.monotonic() - self.last_batch_at < self.settings.idle_flush_s:
            return 0
        with pipeline.committing:  # not while a batch writes
            flushed = pipeline.store.flush()
        if flushed:
            log.info("store flushed: %d new points persisted (stream idle)", flushed)
        return flushed

    def status(self, stats: Stats | None = None) -> dict[str, Any]:
        store: ProductStore = self.pipeline.store
        with self.pipeline.committing, self._counting:
            snapshot, points = (stats or self.stats).snapshot(), store.count()
        return {
            **snapshot,
            "points": points,
            "collection": store.collection,
            "model_version": self.pipeline.encoders.versions,
            "uptime_s": round(time.time() - self.started_at, 1),
        }


def faust_app(settings: Settings, app_class: type[faust.App] = LeanApp) -> faust.App:
    """The Faust app as the worker configures it, with no agents yet (``bench --consumer`` builds
    one of each ``app_class`` to compare consumers)."""
    datadir = settings.state_path / "faust"
    datadir.mkdir(parents=True, exist_ok=True)
    app = app_class(
        settings.app_id,
        broker=[f"kafka://{server}" for server in settings.kafka_bootstrap.split(",")],
        web_enabled=False,  # the query API (uvicorn, _serve_query_api) serves SHELFSTREAM_WEB_PORT
        topic_partitions=settings.partitions,
        # Join and rejoin in seconds instead of minutes (the embedded broker rebalances slowly
        # with Faust's defaults); fine on real Kafka too.
        broker_session_timeout=10,
        broker_heartbeat_interval=1,
        broker_rebalance_timeout=20,
        producer_acks=-1,
        # On SIGTERM, cancel a batch in progress instead of waiting for it: during an outage it
        # would retry forever. Its offsets are not committed, so it is redone after the restart.
        stream_wait_empty=False,
        datadir=str(datadir / settings.app_id),
        monitor=EventlessMonitor(),
    )

    @app.on_partitions_assigned.connect
    async def shorten_fetch_wait(sender: faust.App, assigned: Any, **kwargs: Any) -> None:
        _set_fetch_max_wait(sender, settings.fetch_max_wait_ms)

    return app


def create_app(settings: Settings) -> faust.App:
    if settings.batches_in_flight < 1:
        raise ValueError(f"SHELFSTREAM_BATCHES_IN_FLIGHT must be 1 or more, not {settings.batches_in_flight}")
    app = faust_app(settings)
    worker = WorkerState(settings)
    events = app.topic(settings.events_topic, schema=RawSchema(), partitions=settings.partitions)
    interactions = app.topic(settings.interactions_topic, schema=RawSchema(), partitions=settings.partitions)
    dead_letters = app.topic(settings.dead_letter_topic, schema=RawSchema(), partitions=1)
    retries = app.topic(settings.retry_topic, schema=RawSchema(), partitions=1)

    async def finish(outcome: BatchOutcome, attempt: int) -> None:
        """Dead letters and media retries (``attempt`` is the retry they would be) delivered
        before the batch's offsets are committed."""
        position = next_retry(attempt, settings, time.time())
        letters = list(outcome.dead_letters)
        if position is None:
            letters += [DeadLetter(r.message, Failure(r.failure.code, f"{r.failure.reason} (after {attempt - 1} retries)"))
                        for r in outcome.retries]
        else:
            await _with_retry(lambda: _send(retries, [retry_record(r, position) for r in outcome.retries]))
        await _with_retry(lambda: _send(dead_letters, [dead_letter_record(l, settings.dead_letter_max_bytes) for l in letters]))

    @app.agent(events, concurrency=settings.batches_in_flight)  # each actor takes its own batches
    async def index_products(stream: faust.StreamT) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, lambda: worker.pipeline)  # load models before the first batch
        # The models and the app live as long as the process: frozen, full collections skip them
        # (measured during price updates: a full collection's pause ~65 ms -> ~20 ms).
        gc.freeze()
        async for batch in stream.take_events(settings.batch_size, within=settings.batch_window_s):
            messages = _incoming(batch)
            outcome = await _with_retry(lambda: loop.run_in_executor(None, worker.process, messages), worker.metrics.record_retry)
            await finish(outcome, attempt=1)
            # every batch at debug (at 50 batches/s a line each costs ~2% of the worker's time);
            # one with dead letters or retries, which an operator looks for, at info
            notable = outcome.dead_letters or outcome.retries
            log.log(logging.INFO if notable else logging.DEBUG, "batch of %d: %s", len(messages), dict(outcome.counts))

    @app.agent(interactions)
    async def update_profiles(stream: faust.StreamT) -> None:
        loop = asyncio.get_running_loop()
        async for batch in stream.take_events(settings.batch_size, within=settings.batch_window_s):
            outcome = await _with_retry(lambda: loop.run_in_executor(None, worker.apply_interactions, _incoming(batch)))
            await finish(outcome, attempt=1)

    @app.agent(retries)
    async def retry_media(stream: faust.StreamT) -> None:
        """One event at a time, each waiting for its not-before time: this topic's wait never
        holds up the events topic's partitions, which the other agent reads."""
        loop = asyncio.get_running_loop()
        async for event in stream.events():
            position = MediaRetry.from_headers(event.message.headers)
            longest = settings.media_retry_backoff_s * 2 ** settings.media_retry_attempts
            await asyncio.sleep(min(longest, max(0.0, position.not_before - time.time())))
            messages = _incoming([event])
            outcome = await _with_retry(lambda: loop.run_in_executor(None, worker.process, messages, True))
            await finish(outcome, attempt=position.attempt + 1)
            log.info("media retry %d of %r: %s", position.attempt, event.message.key, dict(outcome.counts))

    @app.timer(interval=settings.idle_flush_s)
    async def flush_when_idle() -> None:
        await asyncio.get_running_loop().run_in_executor(None, worker.flush_if_idle)

    @app.timer(interval=settings.topic_check_s)
    async def recreate_lost_topics() -> None:
        """A restarted embedded broker comes back without its topics: create them again so the
        consumer and the dead-letter and retry producers find them (a no-op while they exist)."""
        try:
            await asyncio.get_running_loop().run_in_executor(None, ensure_topics, settings)
        except Exception as exc:  # the broker is down: the next tick tries again
            log.warning("cannot check the topics: %s", exc)

    _serve_query_api(app, worker)
    return app


def _incoming(batch: Sequence[Any]) -> list[IncomingMessage]:
    return [IncomingMessage(e.message.value, e.message.key, e.message.topic, e.message.partition, e.message.offset)
            for e in batch]


def _set_fetch_max_wait(app: faust.App, wait_ms: int) -> None:
    """Faust hard-codes aiokafka's ``fetch_max_wait_ms=1500``; a broker that holds a fetch for that
    long when a partition is quiet (the embedded tansu does) adds up to 1.5 s to freshness. The
    fetcher reads the value on every request, so setting it once the consumer runs is enough."""
    fetcher = getattr(getattr(getattr(app.consumer, "_thread", None), "_consumer", None), "_fetcher", None)
    if fetcher is None or not hasattr(fetcher, "_fetch_max_wait_ms"):
        log.warning("cannot set the consumer's fetch wait (Faust/aiokafka internals changed); freshness may suffer")
        return
    fetcher._fetch_max_wait_ms = wait_ms


async def _with_retry(attempt: Callable[[], Awaitable[T]], on_retry: Callable[[], None] = lambda: None,
                      max_delay_s: float = 30.0) -> T:
    """``attempt`` until it succeeds; the batch's offsets are not committed meanwhile."""
    delay = 0.5
    while True:
        try:
            return await attempt()
        except RETRIED as exc:
            on_retry()
            log.warning("%r; retrying in %.1f s", exc, delay)
            try:
                await asyncio.sleep(delay)
            except asyncio.CancelledError:  # the worker stops (SIGTERM): do not wait for the service
                log.warning("shutting down: the batch is abandoned uncommitted (it is redone after the restart)")
                raise
            delay = min(delay * 2, max_delay_s)


async def _send(topic: faust.TopicT, records: Sequence[DeadLetterRecord]) -> None:
    """All sent at once and all delivered before the batch's offsets are committed; any failed
    delivery raises ``DeadLetterDeliveryError`` (then all are sent again: duplicates, never losses)."""
    try:
        deliveries = []
        for record in records:
            deliveries.append(await topic.send(key=record.key, value=record.value, headers=record.headers))
        await asyncio.gather(*deliveries)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        raise DeadLetterDeliveryError(f"{len(records)} records not delivered: {exc!r}") from exc


class WorkerBackend:
    """The query API's view of this worker: its store and encoders, counters and re-indexing."""

    def __init__(self, worker: WorkerState, assignment: Callable[[], set[Any]]) -> None:
        self.worker = worker
        self.assignment = assignment
        self.metrics = worker.metrics
        self.api_key = worker.settings.api_key
        self.max_upload_bytes = max(worker.settings.max_image_bytes, worker.settings.max_video_bytes)
        self.media_limits = MediaLimits.for_images(worker.settings)

    def searcher(self) -> Searcher:
        return Searcher(self.worker.pipeline.store, self.worker.pipeline.encoders, self.worker.settings.max_image_pixels,
                        self.worker.settings.search_mode, self.worker.settings.hybrid_keyword_weight,
                        self.worker.settings.hybrid_value_weight)

    def stats_window(self, reset: bool) -> Stats:
        return self.worker.stats_window(reset)

    def status(self, window: Stats) -> dict[str, Any]:
        return self.worker.status(window)

    def start_reindex(self) -> ReindexJob:
        self.worker.reindex_job = start_in_background(self.worker.pipeline, self.worker.reindex_job)
        return self.worker.reindex_job

    def reindex_status(self) -> ReindexJob:
        return self.worker.reindex_job

    def backup(self, name: str, restore: bool) -> list[str]:
        return backup_store(self.worker.pipeline.store, self.worker.settings, name, restore)

    def optimize(self) -> Optimized:
        return optimize_store(self.worker.pipeline.store)

    def recommender(self) -> Recommender:
        return Recommender(self.worker.pipeline.store, self.worker.profiles, self.worker.profile_config)

    def forget_user(self, user_id: str) -> bool:
        return self.worker.profiles.forget(user_id)

    def probes(self) -> Mapping[str, Probe]:
        settings = self.worker.settings
        return {"broker": broker_probe(settings), "redis": redis_probe(settings.redis_url),
                "models": self._models, "store": self._store, "partitions": self._partitions}

    def _models(self) -> str:
        pipeline = self.worker.loaded
        if pipeline is None:
            raise NotReady("the models are still loading")
        return ", ".join(f"{modality} {version}" for modality, version in pipeline.encoders.versions.items())

    def _store(self) -> str:
        pipeline = self.worker.loaded
        if pipeline is None:
            raise NotReady("the store opens with the models")
        return f"{pipeline.store.count()} points in {pipeline.store.collection}"

    def _partitions(self) -> str:
        assigned = sorted(tp.partition for tp in self.assignment() if tp.topic == self.worker.settings.events_topic)
        if not assigned:
            raise NotReady(f"no partition of {self.worker.settings.events_topic} assigned yet (joining the group, "
                           "or more workers than partitions)")
        return f"partitions {assigned} of {self.worker.settings.events_topic}"


class EmbeddedServer(uvicorn.Server):
    """uvicorn on Faust's event loop: Faust owns the process's signals and stops the task."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _serve_query_api(app: faust.App, worker: WorkerState) -> None:
    """The query API (``streams.worker.api``) in this process, beside the store it reads."""
    settings = worker.settings
    backend = WorkerBackend(worker, lambda: app.consumer.assignment())
    config = uvicorn.Config(create_api(backend), host=settings.web_host, port=settings.web_port,
                            log_level="warning", access_log=False, lifespan="off")

    @app.task
    async def serve_query_api() -> None:
        log.info("query API at http://%s:%d (results page at /, metrics at /metrics)", settings.web_host, settings.web_port)
        await EmbeddedServer(config).serve()


def run_worker(settings: Settings, loglevel: str = "info") -> None:
    """``shelfstream worker``: create the topics, then hand the process to Faust."""
    ensure_topics(settings)
    app = create_app(settings)
    faust.Worker(app, loglevel=loglevel).execute_from_commandline()
