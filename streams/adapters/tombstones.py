"""Delete tombstones in Redis: the version at which each product was deleted.

They are correctness state, not cache: without them an older upsert replayed after a delete
would bring the product back. So they never expire, and they live apart from the feature
cache, which may be flushed at any time. Durability is the Redis server's (persistence is
enabled by the embedded setup).
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import redis

KEY_PREFIX = "shelfstream:tombstone:"


class Tombstones:
    """Versions of deleted products, read and written in one round trip per batch."""

    def __init__(self, redis_url: str) -> None:
        self.client = redis.Redis.from_url(redis_url, socket_timeout=10, socket_connect_timeout=5)

    def versions(self, product_ids: Sequence[str]) -> dict[str, int]:
        """The delete version of each product that was deleted and not re-created since."""
        if not product_ids:
            return {}
        raw = self.client.mget([_key(pid) for pid in product_ids])
        return {pid: int(value) for pid, value in zip(product_ids, raw) if value is not None}

    def record(self, versions: Mapping[str, int]) -> None:
        """Remember deletes so that an older upsert replayed later cannot resurrect the product."""
        if versions:
            self.client.mset({_key(pid): version for pid, version in versions.items()})

    def clear(self, product_ids: Iterable[str]) -> None:
        """Forget the deletes of products that were re-created at a newer version."""
        keys = [_key(pid) for pid in product_ids]
        if keys:
            self.client.delete(*keys)

    def close(self) -> None:
        self.client.close()


def _key(product_id: str) -> str:
    return KEY_PREFIX + product_id
