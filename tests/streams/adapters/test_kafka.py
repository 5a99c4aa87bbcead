"""Reading a topic to its end and a consumer group's lag, on the real embedded broker."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Consumer, TopicPartition

from streams.adapters.kafka import StopReason, consumer_lag, ensure_topics, idempotent_producer, read_topic
from streams.settings import Settings

pytestmark = pytest.mark.integration


def produce(settings: Settings, topic: str, values: list[bytes], partition: int | None = None) -> None:
    producer = idempotent_producer(settings)
    for value in values:
        producer.produce(topic, value=value, key=value, **({} if partition is None else {"partition": partition}))
    assert producer.flush(30) == 0


def test_read_topic_stops_at_the_end_of_an_empty_topic(settings: Settings):
    ensure_topics(settings)
    read = read_topic(settings, settings.dead_letter_topic, expected=20, timeout_s=120)
    assert read.stopped is StopReason.END and len(read) == 0


def test_read_topic_of_a_missing_topic_is_empty_at_its_end(settings: Settings):
    read = read_topic(settings, settings.dead_letter_topic + ".absent", timeout_s=120)
    assert read.stopped is StopReason.END and read.records == ()


def test_read_topic_reads_every_record_of_every_partition_then_stops_at_the_end(settings: Settings):
    ensure_topics(settings)
    values = [f"event-{i}".encode() for i in range(25)]
    for partition in range(settings.partitions):
        produce(settings, settings.events_topic, values[partition::settings.partitions], partition)
    read = read_topic(settings, settings.events_topic, timeout_s=120)
    assert read.stopped is StopReason.END
    assert sorted(record.value for record in read) == sorted(values)
    assert {record.partition for record in read} == set(range(settings.partitions))


def test_read_topic_stops_after_the_expected_count(settings: Settings):
    ensure_topics(settings)
    produce(settings, settings.dead_letter_topic, [b"a", b"b", b"c"])
    read = read_topic(settings, settings.dead_letter_topic, expected=2, timeout_s=120)
    assert read.stopped is StopReason.EXPECTED and [r.value for r in read] == [b"a", b"b"]


def test_consumer_lag_follows_the_groups_commits(settings: Settings):
    ensure_topics(settings)
    produce(settings, settings.events_topic, [b"x"] * 6, partition=1)  # one batch: the broker reports end 1
    group = settings.app_id
    before = {lag.partition: lag for lag in consumer_lag(settings, group, settings.events_topic)}
    assert sorted(before) == list(range(settings.partitions))
    assert before[1].committed is None and before[1].lag == 6 and before[0].lag == 0

    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": group, "enable.auto.commit": False})
    try:  # commit as a group member would, without joining: the lag must drop to what is left
        consumer.commit(offsets=[TopicPartition(settings.events_topic, 1, 4)], asynchronous=False)
        after = {lag.partition: lag for lag in consumer_lag(settings, group, settings.events_topic)}
    finally:
        consumer.close()
    assert after[1].committed == 4 and after[1].end == 6 and after[1].lag == 2


def test_consumer_lag_of_an_unknown_broker_names_the_address():
    settings = Settings.from_env(env={}, kafka_bootstrap="127.0.0.1:1")
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="127.0.0.1:1"):
        consumer_lag(settings, "group", "topic", timeout_s=2)
    assert time.monotonic() - started < 60
