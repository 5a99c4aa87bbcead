"""confluent-kafka plumbing shared by the publisher, the worker's start-up and the tests."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaException, Producer
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
    """Create the events topic (with ``settings.partitions``), the dead-letter and the media-retry
    topics if absent."""
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap, "log_level": 2})  # one clear error, not a log per retry
    wanted = {settings.events_topic: settings.partitions, settings.dead_letter_topic: 1, settings.retry_topic: 1}
    try:
        existing = admin.list_topics(timeout=timeout_s).topics
    except KafkaException as exc:
        raise RuntimeError(
            f"no Kafka broker answers at {settings.kafka_bootstrap} ({exc.args[0].str()}): "
            "start the embedded one with `shelfstream up` or set SHELFSTREAM_KAFKA_BOOTSTRAP"
        ) from None
    # replication: the broker's default (3 on a typical production cluster, 1 on the embedded one)
    missing = [NewTopic(name, num_partitions=n) for name, n in wanted.items() if name not in existing]
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


def read_topic(settings: Settings, topic: str, expected: int, timeout_s: float = 30.0) -> list[ConsumedRecord]:
    """Read a topic from the start with a fresh group until ``expected`` records or the timeout.

    A fresh group id each call (the embedded broker can wedge a reused group), and no reliance
    on high watermarks (the embedded broker reports them too low).
    """
    consumer = Consumer({
        "bootstrap.servers": settings.kafka_bootstrap,
        "group.id": f"shelfstream-reader-{uuid.uuid4().hex[:12]}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "session.timeout.ms": 6000,  # joins in seconds instead of ~25 s on the embedded broker
    })
    consumer.subscribe([topic])
    records: list[ConsumedRecord] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(records) < expected and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None or message.error():
                continue
            headers = {k: (v or b"").decode(errors="replace") for k, v in (message.headers() or [])}
            records.append(ConsumedRecord(message.key(), message.value(), headers, message.partition(), message.offset()))
    finally:
        consumer.close()
    return records
