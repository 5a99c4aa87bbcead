"""The interaction event: one shopper did one thing to one product, and strict parsing of
untrusted bytes into it.

The Kafka key is the user id, so one user's interactions stay in one partition and one agent
updates a profile at a time. Parsing never raises anything but ``InteractionError``, whose
message becomes the dead-letter reason.

An interaction carries no id of its own: its identity is (user, product, kind, event time), so
a replayed event has the same ``event_id`` and applying it twice changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any, Mapping

from streams.schema.untrusted import check_schema_version, json_object

SCHEMA_VERSION = 1
KINDS = ("view", "click", "add_to_cart", "purchase", "dislike")
MAX_ID_LENGTH = 256
FIELDS = ("schema_version", "user_id", "product_id", "kind", "event_time", "session_id")


class InteractionError(ValueError):
    """An interaction that cannot be applied; the message says why (it goes to the dead-letter topic)."""


@dataclass(frozen=True)
class Interaction:
    user_id: str
    product_id: str
    kind: str
    event_time: float  # epoch seconds
    session_id: str | None = None
    schema_version: int = SCHEMA_VERSION

    @property
    def event_id(self) -> str:
        """Stable identity: the same event replayed has the same id (the session does not count)."""
        key = f"{self.user_id}\x1f{self.product_id}\x1f{self.kind}\x1f{self.event_time!r}"
        return hashlib.sha256(key.encode()).hexdigest()[:24]

    def to_bytes(self) -> bytes:
        data = {k: v for k, v in asdict(self).items() if v is not None}
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


def parse_interaction(raw: bytes | str | None) -> Interaction:
    """Validate untrusted bytes into an Interaction, or raise InteractionError with the reason."""
    data = json_object(raw, InteractionError, "interaction")
    return interaction_from_dict(data)


def interaction_from_dict(data: Mapping[str, Any]) -> Interaction:
    unknown = set(data) - set(FIELDS)
    if unknown:
        raise InteractionError(f"unknown fields {sorted(map(str, unknown))} (known: {', '.join(FIELDS)})")
    check_schema_version(data, SCHEMA_VERSION, InteractionError)
    kind = data.get("kind")
    if kind not in KINDS:
        raise InteractionError(f"unknown kind {kind!r} (expected one of {', '.join(KINDS)})")
    session_id = data.get("session_id")
    return Interaction(
        user_id=_identifier(data.get("user_id"), "user_id"),
        product_id=_identifier(data.get("product_id"), "product_id"),
        kind=kind,
        event_time=_event_time(data.get("event_time")),
        session_id=None if session_id in (None, "") else _identifier(session_id, "session_id"),
    )


def _identifier(value: Any, name: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise InteractionError(f"field '{name}' must be a non-empty string, got {value!r}")
    if len(value) > MAX_ID_LENGTH:
        raise InteractionError(f"field '{name}' is longer than {MAX_ID_LENGTH} characters")
    return value


def _event_time(value: Any) -> float:
    """Epoch seconds from a number or an ISO-8601 string. Required: the time orders and decays the
    profile, so "now at the worker" would make a replay differ from the original."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0:
        return float(value)
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            pass
        else:  # a time without a zone is UTC, never the worker's local time
            return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()
    raise InteractionError(f"field 'event_time' must be non-negative epoch seconds or an ISO-8601 time, got {value!r}")
