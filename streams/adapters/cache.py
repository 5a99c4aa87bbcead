"""The feature cache in Redis: per-modality vectors addressed by content (tombstones live in
``tombstones.py``: they are correctness state, not cache).

A feature key is ``shelfstream:feat:<model version>:<modality>:<sha256 of the content>``, so an
update that leaves a modality's content unchanged finds its vector and never re-encodes it,
and a new model version never reads an old vector.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import redis

PREFIX = "shelfstream"


def feature_key(model_version: str, modality: str, content_hash: str) -> str:
    return f"{PREFIX}:feat:{model_version}:{modality}:{content_hash}"


class FeatureCache:
    """Vectors stored as raw float32 bytes; reads and writes go in one round trip per batch."""

    def __init__(self, redis_url: str, ttl_s: int = 0) -> None:
        self.client = redis.Redis.from_url(redis_url, socket_timeout=10, socket_connect_timeout=5)
        self.ttl_s = ttl_s

    def get_many(self, keys: Sequence[str]) -> list[np.ndarray | None]:
        if not keys:
            return []
        return [None if raw is None else np.frombuffer(raw, dtype=np.float32) for raw in self.client.mget(keys)]

    def put_many(self, vectors: Mapping[str, np.ndarray]) -> None:
        if not vectors:
            return
        pipe = self.client.pipeline(transaction=False)
        for key, vector in vectors.items():
            pipe.set(key, np.ascontiguousarray(vector, dtype=np.float32).tobytes(), ex=self.ttl_s or None)
        pipe.execute()

    def ping(self) -> bool:
        return bool(self.client.ping())

    def close(self) -> None:
        self.client.close()

