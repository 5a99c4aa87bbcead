"""What an engine does for the store: raw operations on named collections, engine-neutral types
in and out. ``ProductStore`` holds the product logic (ids, derived fields, filters, aliases'
meaning); an engine only stores and searches."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

import numpy as np

from streams.adapters.store.model import Conditions, Query, SparseVector, StoredPoint


class EnginePoint(Protocol):
    id: str
    dense: dict[str, np.ndarray]
    sparse: dict[str, SparseVector]
    payload: dict[str, Any]


class Engine(Protocol):
    def ensure_collection(self, collection: str, dims: Mapping[str, int]) -> None:
        """Create the collection with these dense vectors, the sparse ``keywords`` vector and the
        payload indexes, or check an existing one has these dense vectors (RuntimeError if not)."""

    def serving_collection(self, alias: str) -> str | None: ...

    def switch_alias(self, alias: str, collection: str) -> None:
        """Point ``alias`` at ``collection`` in one step: a reader sees the old or the new one."""

    def upsert(self, collection: str, points: Sequence[EnginePoint]) -> None:
        """Durable when it returns: a crash of the process afterwards loses none of them."""

    def overwrite_payloads(self, collection: str, payloads: Mapping[str, dict[str, Any]]) -> None: ...

    def set_payloads(self, collection: str, payloads: Mapping[str, dict[str, Any]]) -> None:
        """Merge these keys into each point's payload (the other keys stay)."""

    def delete(self, collection: str, ids: Sequence[str]) -> None: ...

    def retrieve(self, collection: str, ids: Sequence[str], payload: bool | Sequence[str],
                 vectors: Sequence[str]) -> list[StoredPoint]: ...

    def query(self, collection: str, query: Query, limit: int, offset: int, conditions: Conditions,
              score_threshold: float | None) -> list[tuple[float, dict[str, Any]]]:
        """(score, payload) of the best points, best first."""

    def scroll(self, collection: str, limit: int, offset: Any, vectors: Sequence[str]) -> tuple[list[StoredPoint], Any]: ...

    def count(self, collection: str) -> int: ...

    def backup(self, collections: Sequence[str], target: Path) -> list[Path]:
        """A snapshot file per collection under ``target``."""

    def restore(self, snapshots: Mapping[str, Path]) -> None:
        """Replace each named collection by its snapshot."""

    def optimize(self, collection: str) -> bool:
        """Build vector indexes now, blocking; False where the engine builds them itself."""

    def flush(self, collection: str) -> int:
        """Persist the segments now so the WAL can be dropped, blocking; the points written since
        the last flush (0: nothing to do, or an engine that persists by itself)."""

    def close(self) -> None: ...
