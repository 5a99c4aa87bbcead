"""Recommendations for a user: the products nearest the user's profile (``streams.worker.profiles``)
on one named vector, with the same filters as search, never a product the user purchased or
disliked, optionally re-ranked for diversity (MMR).

Cold start (no interaction with an indexed product yet): the crowd's profile, i.e. the same
ranking for a profile built from the ``COLD_START_POPULAR`` most-interacted products (one
interaction each), so the answer leans to what is popular and still honours every filter in the
engine. With no interactions at all anywhere, the answer is empty (``source="none"``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from encoders_onnx.profile import mmr
from streams.adapters.profiles import HistoryEntry, UserHistory, UserProfiles
from streams.adapters.store import Hit, ProductStore, SearchFilters
from streams.worker.profiles import ProfileConfig, interacted_products, profile_vector

COLD_START_POPULAR = 50
MMR_POOL = 4  # MMR chooses k among k * MMR_POOL nearest: enough room to diversify, little cost


@dataclass(frozen=True)
class Recommendation:
    hits: list[Hit]
    source: str  # "profile", "popular" (cold start) or "none"


class Recommender:
    def __init__(self, store: ProductStore, profiles: UserProfiles, config: ProfileConfig) -> None:
        self.store = store
        self.profiles = profiles
        self.config = config

    def recommend(self, user_id: str, k: int = 10, filters: SearchFilters | None = None,
                  diversity: float = 0.0) -> Recommendation:
        history = self.profiles.load(user_id)
        excluded = history.purchased | history.disliked
        vectors = self._vectors(interacted_products(history))
        profile = profile_vector(history, vectors, self.config)
        source = "profile"
        if profile is None:
            profile, source = self._crowd_profile(), "popular"
            if profile is None:
                return Recommendation([], "none")
        return Recommendation(self._nearest(profile, k, filters, excluded, diversity), source)

    def _nearest(self, profile: np.ndarray, k: int, filters: SearchFilters | None, excluded: frozenset[str],
                 diversity: float) -> list[Hit]:
        """The engine leaves out the excluded products, so a page is never short for them."""
        base = filters or SearchFilters()
        filters = replace(base, exclude_product_ids=(*base.exclude_product_ids, *sorted(excluded)))
        hits = self.store.search(self.config.vector_name, profile, k * MMR_POOL if diversity > 0 else k, filters)
        if diversity <= 0 or len(hits) <= 1:
            return hits[:k]
        vectors = self._vectors([hit.product_id for hit in hits])
        hits = [hit for hit in hits if hit.product_id in vectors]
        order = mmr(profile, np.stack([vectors[hit.product_id] for hit in hits]), k, diversity)
        return [hits[i] for i in order]

    def _crowd_profile(self) -> np.ndarray | None:
        popular = self.profiles.popular(COLD_START_POPULAR)
        crowd = UserHistory({pid: HistoryEntry(pid, "view", 0.0) for pid in popular})
        uniform = ProfileConfig({"view": 1.0}, 0.0, self.config.vector_name)
        return profile_vector(crowd, self._vectors(popular), uniform)

    def _vectors(self, product_ids: list[str]) -> dict[str, np.ndarray]:
        name = self.config.vector_name
        found = self.store.vectors(product_ids, [name])
        return {pid: named[name] for pid, named in found.items() if name in named}
