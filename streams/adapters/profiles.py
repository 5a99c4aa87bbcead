"""Redis, owned here: each shopper's recent interactions and purchased/disliked sets.

Keys per user (all expire ``ttl_s`` after the user's last interaction, so inactive users vanish):

- ``shelfstream:user:<id>:events``: a hash ``event id -> [product id, kind, event time]``, the
  user's newest ``max_events`` interactions. Writing a field twice leaves it as it was, so a
  replayed event changes nothing, and a hash has no order, so events arriving out of order
  give the same state (the trim keeps the newest by event time, ties by id: deterministic).
- ``shelfstream:user:<id>:purchased`` and ``...:disliked``: sets of product ids (never trimmed).
- ``shelfstream:popular``: a sorted set product id -> count of distinct interactions (cold start).

The profile vector is computed from these when asked (``streams.worker.profiles``), so an
interaction with a product that is not indexed yet is kept and counts once the product is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Sequence

import redis

from streams.schema.interactions import Interaction

PREFIX = "shelfstream"
POPULAR_KEY = f"{PREFIX}:popular"
PARTS = ("events", "purchased", "disliked")


@dataclass(frozen=True)
class HistoryEntry:
    product_id: str
    kind: str
    event_time: float


@dataclass(frozen=True)
class UserHistory:
    events: dict[str, HistoryEntry] = field(default_factory=dict)  # event id -> entry
    purchased: frozenset[str] = frozenset()
    disliked: frozenset[str] = frozenset()

    @property
    def is_empty(self) -> bool:
        return not self.events and not self.purchased and not self.disliked


class UserProfiles:
    def __init__(self, redis_url: str, ttl_s: int, max_events: int) -> None:
        self.client = redis.Redis.from_url(redis_url, socket_timeout=10, socket_connect_timeout=5)
        self.ttl_s = ttl_s
        self.max_events = max_events

    def record(self, interactions: Sequence[Interaction]) -> int:
        """Apply interactions; returns how many were new (a replayed one is not)."""
        if not interactions:
            return 0
        pipe = self.client.pipeline(transaction=False)
        for i in interactions:
            pipe.hset(_key(i.user_id, "events"), i.event_id, json.dumps([i.product_id, i.kind, i.event_time]))
        added = pipe.execute()
        for i, new in zip(interactions, added):
            if new:  # a field seen before is a replay: no second vote for popularity
                pipe.zincrby(POPULAR_KEY, 1, i.product_id)
            if i.kind in ("purchase", "dislike"):
                pipe.sadd(_key(i.user_id, "purchased" if i.kind == "purchase" else "disliked"), i.product_id)
        users = list(dict.fromkeys(i.user_id for i in interactions))
        for user_id in users:
            if self.ttl_s:
                for part in PARTS:
                    pipe.expire(_key(user_id, part), self.ttl_s)
        pipe.execute()
        for user_id in users:
            pipe.hlen(_key(user_id, "events"))
        for user_id, length in zip(users, pipe.execute()):
            if length > self.max_events:
                self._trim(user_id)
        return sum(1 for new in added if new)

    def _trim(self, user_id: str) -> None:
        """Keep the newest ``max_events`` (by event time, then id, so any arrival order agrees)."""
        events = self.load(user_id).events
        oldest = sorted(events, key=lambda eid: (events[eid].event_time, eid))[: len(events) - self.max_events]
        if oldest:
            self.client.hdel(_key(user_id, "events"), *oldest)

    def load(self, user_id: str) -> UserHistory:
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(_key(user_id, "events"))
        pipe.smembers(_key(user_id, "purchased"))
        pipe.smembers(_key(user_id, "disliked"))
        raw_events, purchased, disliked = pipe.execute()
        events = {}
        for event_id, value in raw_events.items():
            product_id, kind, event_time = json.loads(value)
            events[event_id.decode()] = HistoryEntry(product_id, kind, float(event_time))
        return UserHistory(events, frozenset(p.decode() for p in purchased), frozenset(d.decode() for d in disliked))

    def forget(self, user_id: str) -> bool:
        """Remove the user's interactions and sets; True when there was something to remove."""
        return bool(self.client.delete(*(_key(user_id, part) for part in PARTS)))

    def popular(self, limit: int) -> list[str]:
        return [p.decode() for p in self.client.zrevrange(POPULAR_KEY, 0, limit - 1)]

    def close(self) -> None:
        self.client.close()


def _key(user_id: str, part: str) -> str:
    return f"{PREFIX}:user:{user_id}:{part}"
