"""User histories in a real redis-server: replays change nothing, arrival order does not matter,
the newest interactions are kept, purchases and dislikes are remembered, forgetting forgets."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import redis

from streams.adapters.profiles import UserProfiles
from streams.schema.interactions import Interaction
from streams.worker.profiles import ProfileConfig, parse_weights, profile_vector

pytestmark = pytest.mark.integration


@pytest.fixture
def profiles(services: dict):
    redis.Redis.from_url(services["redis_url"]).flushdb()
    store = UserProfiles(services["redis_url"], ttl_s=3600, max_events=5)
    yield store
    store.close()


def history_of(n: int, user: str) -> list[Interaction]:
    kinds = ["view", "click", "view", "add_to_cart", "purchase", "view", "dislike"]
    return [Interaction(user, f"p{i % 4}", kinds[i % len(kinds)], 1_000.0 + 60 * i) for i in range(n)]


def test_replays_and_arrival_order_give_the_same_state(profiles: UserProfiles) -> None:
    events = history_of(7, "alice")
    assert profiles.record(events) == 7
    first = profiles.load("alice")
    assert profiles.record(events[2:4]) == 0  # a replay
    assert profiles.load("alice") == first
    shuffled = [Interaction("bob", e.product_id, e.kind, e.event_time) for e in reversed(events)]
    profiles.record(shuffled[:3])
    profiles.record(shuffled[3:])
    bob = profiles.load("bob")
    assert sorted(bob.events.values(), key=lambda e: e.event_time) == sorted(first.events.values(), key=lambda e: e.event_time)
    assert first.purchased == {"p0"} and first.disliked == {"p2"}
    assert len(first.events) == 5  # the newest five of seven
    assert min(e.event_time for e in first.events.values()) == 1_000.0 + 60 * 2
    assert profiles.popular(2)[0] in {"p0", "p1", "p2"}


def test_profiles_expire_and_can_be_forgotten(profiles: UserProfiles) -> None:
    profiles.record(history_of(5, "carol"))
    ttl = profiles.client.ttl("shelfstream:user:carol:events")
    assert 0 < ttl <= 3600
    assert profiles.forget("carol") is True
    assert profiles.load("carol").is_empty
    assert profiles.forget("carol") is False


def test_the_profile_vector_is_identical_whatever_the_order(profiles: UserProfiles) -> None:
    rng = np.random.default_rng(1)
    vectors = {f"p{i}": rng.normal(size=16).astype(np.float32) for i in range(4)}
    config = ProfileConfig(parse_weights("view=1,click=2,add_to_cart=3,purchase=4,dislike=0"), 120.0, "fused")
    events = history_of(5, "dave")
    profiles.record(events)
    user = str(uuid.uuid4())
    profiles.record([Interaction(user, e.product_id, e.kind, e.event_time) for e in events[::-1]])
    a, b = profile_vector(profiles.load("dave"), vectors, config), profile_vector(profiles.load(user), vectors, config)
    assert a is not None and np.array_equal(a, b)
    assert profile_vector(profiles.load("dave"), {}, config) is None  # no product indexed: cold start


def test_weights_are_parsed_strictly() -> None:
    assert parse_weights("view=1, purchase=5")["purchase"] == 5.0
    assert parse_weights("view=1")["click"] == 0.0
    with pytest.raises(ValueError, match="unknown kind 'like'"):
        parse_weights("like=3")
    with pytest.raises(ValueError, match="KIND=NUMBER"):
        parse_weights("view=much")
