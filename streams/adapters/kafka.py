"""confluent-kafka plumbing shared by the publisher, the worker's start-up, the CLI and the tests:
producing, creating topics, reading a topic to its end, and a consumer group's lag."""

from __future__ import annotations

import contextlib
import enum
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from streams.settings import Settings


def idempotent_producer(settings: Settings, **overrides: object) -> Producer:
    """Exactly-once per partition from the producer side: retries never duplicate or reorder."""
    config = {
        "bootstrap.servers": settings.kafka_bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "compression.type": "none",
        **overrides,
    }
    return Producer(config)


def ensure_topics(settings: Settings, timeout_s: float = 10.0) -> None:
    """Create the events and interactions topics (with ``settings.partitions``), the dead-letter and
    the media-retry topics if absent."""
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap, "log_level": 2})  # one clear error, not a log per retry
    wanted = {settings.events_topic: settings.partitions, settings.interactions_topic: settings.partitions,
              settings.dead_letter_topic: 1, settings.retry_topic: 1}
    try:
        existing = admin.list_topics(timeout=timeout_s).topics
    except KafkaException as exc:
        raise _unreachable(settings, exc) from None
    # replication: the broker's default (3 on a typical production cluster, 1 on the embedded one)
    configs = {settings.interactions_topic: {"retention.ms": str(int(settings.interactions_retention_s * 1000))}}
    missing = [NewTopic(name, num_partitions=n, config=configs.get(name, {})) for name, n in wanted.items() if name not in existing]
    if not missing:
        return
    for future in admin.create_topics(missing, request_timeout=timeout_s).values():
        try:
            future.result(timeout=timeout_s)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise


@dataclass(frozen=True)
class ConsumedRecord:
    key: bytes | None
    value: bytes | None
    headers: dict[str, str]
    partition: int
    offset: int


class StopReason(enum.Enum):
    """Why ``read_topic`` stopped reading."""

    END = "end"  # every partition at its end and nothing new for the idle period
    EXPECTED = "expected"  # as many records as the caller expected
    TIMEOUT = "timeout"  # the time limit, before either of the above


@dataclass(frozen=True)
class TopicRead:
    """The records read, and why the reading stopped."""

    records: tuple[ConsumedRecord, ...]
    stopped: StopReason

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[ConsumedRecord]:
        return iter(self.records)

    def __getitem__(self, index: int) -> ConsumedRecord:
        return self.records[index]


def read_topic(settings: Settings, topic: str, expected: int | None = None, timeout_s: float = 30.0,
               idle_s: float = 1.0) -> TopicRead:
    """Read a topic from its start until its end, ``expected`` records, or the timeout.

    The end is reached when every partition has reported end-of-partition AND no record came
    for ``idle_s`` since: the embedded broker reports end offsets that are too low (it counts a
    batch of records as one), so an end-of-partition alone could stop early, and the idle
    period catches the rest. Partitions are assigned directly, not through a consumer group:
    nothing to join (seconds on the embedded broker), nothing to leave, nothing committed.
    """
    with _reader(settings) as consumer:
        partitions = _partitions(settings, consumer, topic, timeout_s)
        starts = {p: OFFSET_BEGINNING for p in partitions}
        return _read(consumer, topic, starts, expected, time.monotonic() + timeout_s, idle_s)


def end_offsets(settings: Settings, topic: str, timeout_s: float = 30.0, idle_s: float = 0.5) -> dict[int, int]:
    """Per partition, the offset the next record will get: read, not taken from the watermark.

    The reported end offset is only a lower bound on the embedded broker, so each partition is
    read from just below it to its real end; on a real Kafka cluster that is one empty fetch.
    """
    with _reader(settings) as consumer:
        partitions = _partitions(settings, consumer, topic, timeout_s)
        reported = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s) for p in partitions}
        starts = {p: max(low, high - 1) for p, (low, high) in reported.items()}
        read = _read(consumer, topic, starts, None, time.monotonic() + timeout_s, idle_s)
    if read.stopped is not StopReason.END:
        raise TimeoutError(f"could not read to the end of {topic} within {timeout_s:.0f} s")
    ends = {p: high for p, (_low, high) in reported.items()}
    for record in read:
        ends[record.partition] = max(ends[record.partition], record.offset + 1)
    return ends


@contextlib.contextmanager
def _reader(settings: Settings) -> Iterator[Consumer]:
    consumer = Consumer({
        "bootstrap.servers": settings.kafka_bootstrap,
        "group.id": f"shelfstream-reader-{uuid.uuid4().hex[:12]}",  # required by the client, never joined
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        "fetch.wait.max.ms": 100,  # a quiet partition answers quickly, so the end is seen quickly
        "log_level": 2,
    })
    try:
        yield consumer
    finally:
        consumer.close()


def _read(consumer: Consumer, topic: str, starts: dict[int, int], expected: int | None, deadline: float,
          idle_s: float) -> TopicRead:
    """Read the assigned partitions from ``starts`` until their end, ``expected`` records or the deadline."""
    if not starts:  # no such topic (nothing was ever written to it): its end is its start
        return TopicRead((), StopReason.END)
    consumer.assign([TopicPartition(topic, p, offset) for p, offset in starts.items()])
    records: list[ConsumedRecord] = []
    at_end: set[int] = set()
    last_record_at = time.monotonic()
    while True:
        now = time.monotonic()
        if expected is not None and len(records) >= expected:
            return TopicRead(tuple(records), StopReason.EXPECTED)
        if len(at_end) == len(starts) and now - last_record_at >= idle_s:
            return TopicRead(tuple(records), StopReason.END)
        if now >= deadline:
            return TopicRead(tuple(records), StopReason.TIMEOUT)
        message = consumer.poll(0.1)
        if message is None:
            continue
        if message.error():
            if message.error().code() == KafkaError._PARTITION_EOF:
                at_end.add(message.partition())
            continue
        at_end.discard(message.partition())
        last_record_at = time.monotonic()
        headers = {k: (v or b"").decode(errors="replace") for k, v in (message.headers() or [])}
        records.append(ConsumedRecord(message.key(), message.value(), headers, message.partition(), message.offset()))


@dataclass(frozen=True)
class PartitionLag:
    """One partition as a consumer group sees it. ``committed`` is None before the group's first
    commit (it will then start from the earliest offset, ``low``)."""

    topic: str
    partition: int
    committed: int | None
    low: int
    end: int

    @property
    def lag(self) -> int:
        """Events not yet committed (never negative, whatever the broker reports)."""
        start = self.committed if self.committed is not None else self.low
        return max(0, self.end - start)


def consumer_lag(settings: Settings, group: str, topic: str, timeout_s: float = 30.0) -> list[PartitionLag]:
    """Committed offset, end offset and lag of ``group`` on every partition of ``topic``.

    Only asks and reads (OffsetFetch, ListOffsets, Fetch): this consumer never subscribes, so
    it never joins or disturbs the group it looks at. An absent topic has no partitions. End
    offsets come from ``end_offsets`` (read, not trusted from the watermark).
    """
    ends = end_offsets(settings, topic, timeout_s)
    committed = committed_offsets(settings, group, topic, list(ends), timeout_s)
    return [PartitionLag(topic, p, offset, low, ends[p]) for p, (offset, low) in sorted(committed.items())]


def committed_offsets(settings: Settings, group: str, topic: str, partitions: list[int],
                      timeout_s: float = 30.0) -> dict[int, tuple[int | None, int]]:
    """Per partition: the offset ``group`` committed (None before its first commit) and the
    partition's low offset (where the group starts without a commit)."""
    if not partitions:
        return {}
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": group,
                         "enable.auto.commit": False, "log_level": 2})
    try:
        committed = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=timeout_s)
        return {
            # a negative offset is OFFSET_INVALID: no commit yet
            tp.partition: (tp.offset if tp.offset >= 0 else None, consumer.get_watermark_offsets(tp, timeout=timeout_s)[0])
            for tp in committed
        }
    except KafkaException as exc:
        raise _unreachable(settings, exc) from None
    finally:
        consumer.close()


def _partitions(settings: Settings, consumer: Consumer, topic: str, timeout_s: float) -> list[int]:
    """The topic's partition numbers, [] when the topic does not exist."""
    try:
        metadata = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
    except KafkaException as exc:
        raise _unreachable(settings, exc) from None
    if metadata is None or metadata.error is not None:
        return []
    return sorted(metadata.partitions)


def _unreachable(settings: Settings, exc: KafkaException) -> RuntimeError:
    return RuntimeError(
        f"no Kafka broker answers at {settings.kafka_bootstrap} ({exc.args[0].str()}): "
        "start the embedded one with `shelfstream up` or set SHELFSTREAM_KAFKA_BOOTSTRAP"
    )
