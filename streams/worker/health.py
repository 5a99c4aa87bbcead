"""Readiness that means something: each dependency is probed for real, and the answer says
which one failed and why, so an operator (or Kubernetes) knows what to fix, not only that
something is wrong. Liveness stays trivial on purpose: a process that answers HTTP is alive;
restarting it because Redis is down would not bring Redis back.

A probe is a function that returns a short description of what it saw, or raises; a raise is a
failed check whose reason is the exception's message.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import redis
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from streams.settings import Settings

PROBE_TIMEOUT_S = 2.0
Probe = Callable[[], str]


class NotReady(RuntimeError):
    """A probe's own verdict that a dependency is not ready yet (models loading, no partitions)."""


@dataclass(frozen=True)
class Check:
    ok: bool
    detail: str  # what was seen when ok, the reason when not


@dataclass(frozen=True)
class Readiness:
    ok: bool
    checks: dict[str, Check]


def readiness(probes: Mapping[str, Probe]) -> Readiness:
    """Run every probe (all of them, so every failure is reported at once)."""
    checks = {name: _run(probe) for name, probe in probes.items()}
    return Readiness(all(check.ok for check in checks.values()), checks)


def _run(probe: Probe) -> Check:
    try:
        return Check(True, probe())
    except Exception as exc:  # any failure of a dependency is a reason, never a 500
        return Check(False, str(exc) or type(exc).__name__)


def broker_probe(settings: Settings) -> Probe:
    def probe() -> str:
        admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap, "log_level": 0})
        try:
            topic = admin.list_topics(settings.events_topic, timeout=PROBE_TIMEOUT_S).topics.get(settings.events_topic)
        except KafkaException as exc:
            raise NotReady(f"no Kafka broker answers at {settings.kafka_bootstrap}: {exc.args[0].str()}") from None
        if topic is None or topic.error is not None:
            raise NotReady(f"topic {settings.events_topic} does not exist on {settings.kafka_bootstrap}")
        return f"{settings.kafka_bootstrap}: {settings.events_topic} has {len(topic.partitions)} partitions"
    return probe


def redis_probe(url: str) -> Probe:
    def probe() -> str:
        client = redis.Redis.from_url(url, socket_timeout=PROBE_TIMEOUT_S, socket_connect_timeout=PROBE_TIMEOUT_S)
        try:
            client.ping()
        except redis.RedisError as exc:
            raise NotReady(f"Redis at {url} does not answer: {exc}") from None
        finally:
            client.close()
        return f"{url} answers"
    return probe
