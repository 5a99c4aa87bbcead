"""Profile math: a shopper's history (``streams.adapters.profiles``) into one vector.

Each interaction counts with the weight of its kind, halved every ``half_life_s`` before the
user's newest interaction (``encoders_onnx.profile.decayed_profile``). The history is a set of
events keyed by event id, so replays and arrival order cannot change the result: the events are
summed in one canonical order (time, then id), which makes the vector bit-for-bit the same.
Interactions with products that are not indexed are left out until the product is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from encoders_onnx.profile import decayed_profile
from streams.adapters.profiles import UserHistory
from streams.schema.interactions import KINDS


@dataclass(frozen=True)
class ProfileConfig:
    weights: Mapping[str, float]  # kind -> weight
    half_life_s: float
    vector_name: str

    @classmethod
    def parse(cls, weights: str, half_life_s: float, vector_name: str) -> "ProfileConfig":
        return cls(parse_weights(weights), half_life_s, vector_name)


def parse_weights(text: str) -> dict[str, float]:
    """``"view=1,click=2,..."`` -> a weight for every kind (a kind left out weighs 0)."""
    weights = {kind: 0.0 for kind in KINDS}
    for item in filter(None, (part.strip() for part in text.split(","))):
        kind, _, value = item.partition("=")
        if kind.strip() not in weights:
            raise ValueError(f"interaction weight for unknown kind {kind.strip()!r} (kinds: {', '.join(KINDS)})")
        try:
            weights[kind.strip()] = float(value)
        except ValueError:
            raise ValueError(f"interaction weight {item!r} is not KIND=NUMBER") from None
    return weights


def interacted_products(history: UserHistory) -> list[str]:
    return sorted({entry.product_id for entry in history.events.values()})


def profile_vector(history: UserHistory, vectors: Mapping[str, np.ndarray], config: ProfileConfig) -> np.ndarray | None:
    """The user's unit profile vector, or None when no interacted product has a vector (or all
    weights are zero): the caller falls back to the cold start."""
    ordered = sorted(history.events.items(), key=lambda item: (item[1].event_time, item[0]))
    usable = [(e, config.weights[e.kind]) for _, e in ordered if e.product_id in vectors and config.weights[e.kind] != 0]
    if not usable:
        return None
    profile = decayed_profile(
        np.stack([vectors[e.product_id] for e, _ in usable]),
        np.array([w for _, w in usable]),
        np.array([e.event_time for e, _ in usable]),
        config.half_life_s,
    )
    return profile if np.any(profile) else None
