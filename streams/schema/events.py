"""The product event: a typed, versioned record, and strict parsing of untrusted bytes.

The Kafka key is the product id, so one product's events stay ordered in one partition.
Parsing never raises anything but ``EventError``, whose message becomes the dead-letter reason;
every field is bounded (``EventLimits``), so a tiny hostile event cannot grow into a huge payload.
The fields are declared once, on ``ProductEvent``: the publisher's mapping, the stored payload
and re-indexing read them from there.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping

from encoders_onnx.text import encoder_text
from streams.schema.untrusted import check_schema_version, json_object
from streams.settings import Settings

SCHEMA_VERSION = 1
OPS = ("upsert", "delete")
CATEGORY_SEPARATORS = (" > ", ">", "/")
MAX_VERSION = 2**63 - 1  # a signed 64-bit integer: every store and client can hold it
INVALID = "invalid_event"
OVER_LIMIT = "over_limit"


class EventError(ValueError):
    """An event that cannot be processed; the message says why (it goes to the dead-letter topic)
    and ``code`` says what kind of failure it was (``invalid_event`` or ``over_limit``)."""

    def __init__(self, message: str, code: str = INVALID) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class EventLimits:
    """Bounds on every field of an event. The names are those of the ``Settings`` knobs
    (``SHELFSTREAM_MAX_TITLE_CHARS``, ...), whose defaults they take, so a dead letter names the
    knob to raise."""

    max_event_bytes: int
    max_id_chars: int
    max_title_chars: int
    max_description_chars: int
    max_attributes: int
    max_attribute_key_chars: int
    max_attribute_value_chars: int
    max_category_levels: int
    max_category_level_chars: int
    max_image_uris: int
    max_uri_chars: int

    @classmethod
    def from_settings(cls, settings: Settings) -> "EventLimits":
        return cls(**{f.name: getattr(settings, f.name) for f in dataclasses.fields(cls)})

    def check(self, knob: str, size: int, what: str, *shown: Any) -> None:
        """Raise an ``over_limit`` EventError naming the knob when ``size`` exceeds it. ``what`` is
        formatted with the ``shown`` values (cut short) only then: an event's every attribute is
        checked, and building each reason up front took ~5% of a price update."""
        limit = getattr(self, knob)
        if size > limit:
            what = what.format(*map(_shown, shown))
            raise EventError(f"{what} is {size}, over the limit of {limit} (SHELFSTREAM_{knob.upper()})", OVER_LIMIT)


DEFAULT_LIMITS = EventLimits.from_settings(Settings())
MAX_ID_LENGTH = DEFAULT_LIMITS.max_id_chars


@dataclass(slots=True)
class ProductEvent:
    """One change to one product. ``version`` grows per product; the highest version wins.
    A plain dataclass: the worker parses raw bytes itself (``parse_event``), so a Faust record's
    per-field descriptors would only slow every event down."""

    op: str
    product_id: str
    version: int
    schema_version: int = SCHEMA_VERSION
    title: str = ""
    description: str = ""
    attributes: dict[str, str] = field(default_factory=dict)
    category: list[str] = field(default_factory=list)
    price: float | None = None
    currency: str = ""
    image_uris: list[str] = field(default_factory=list)
    video_uri: str | None = None
    event_time: float = 0.0

    @property
    def text(self) -> str:
        """What the text encoder reads: title, then description (attributes stay in the payload)."""
        return encoder_text(self.title, self.description)

    def asdict(self) -> dict[str, Any]:
        """The fields by name (lists and dicts shared, not copied)."""
        return {name: getattr(self, name) for name in _FIELD_NAMES}

    def derive(self, **changes: Any) -> "ProductEvent":
        """A copy with some fields changed (a newer version, a new price, ...); its collections
        are its own, so changing the copy never changes the original."""
        own = {"attributes": dict(self.attributes), "category": list(self.category), "image_uris": list(self.image_uris)}
        return dataclasses.replace(self, **{**own, **changes})

    def to_bytes(self) -> bytes:
        return json.dumps(self.asdict(), separators=(",", ":"), ensure_ascii=False).encode()

    def stored_fields(self) -> dict[str, Any]:
        """The fields a stored point keeps in its payload (re-indexing reads them back)."""
        return {name: getattr(self, name) for name in STORED_FIELDS}


_FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(ProductEvent))
# What a publisher maps from a catalog row, in declaration order (schema_version is implied).
EVENT_FIELDS: tuple[str, ...] = tuple(name for name in _FIELD_NAMES if name != "schema_version")
# What a stored point's payload keeps of its event: everything but the operation.
STORED_FIELDS: tuple[str, ...] = tuple(name for name in EVENT_FIELDS if name != "op")


def parse_event(raw: bytes | str | None, limits: EventLimits = DEFAULT_LIMITS) -> ProductEvent:
    """Validate untrusted bytes into a ProductEvent, or raise EventError with the reason."""
    if raw is None or len(raw) == 0:
        raise EventError("empty message")
    limits.check("max_event_bytes", len(raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw),
                 "the event's size in bytes")
    data = json_object(raw, EventError, "event")
    return event_from_dict(data, limits)


def event_from_payload(payload: Mapping[str, Any]) -> ProductEvent:
    """The upsert a stored point was written from (what re-indexing replays)."""
    return event_from_dict({**{name: payload.get(name) for name in STORED_FIELDS}, "op": "upsert"})


def event_from_dict(data: Mapping[str, Any], limits: EventLimits = DEFAULT_LIMITS) -> ProductEvent:
    check_schema_version(data, SCHEMA_VERSION, EventError)
    op = data.get("op")
    if op not in OPS:
        raise EventError(f"unknown op {op!r} (expected one of {', '.join(OPS)})")
    product_id = _product_id(data.get("product_id"), limits)
    version = data.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise EventError(f"field 'version' must be a non-negative integer, got {_shown(version)}")
    if version > MAX_VERSION:
        raise EventError(f"field 'version' is {version}, over the limit of {MAX_VERSION} (2**63 - 1)", OVER_LIMIT)
    event_time = _event_time(data.get("event_time"))
    if op == "delete":
        return ProductEvent(op=op, product_id=product_id, version=version, event_time=event_time)
    title = _string(data, "title")
    if not title.strip():
        raise EventError("field 'title' is required for upsert and must not be blank")
    limits.check("max_title_chars", len(title), "field 'title' length")
    description = _string(data, "description")
    limits.check("max_description_chars", len(description), "field 'description' length")
    image_uris = _string_list(data.get("image_uris"), "image_uris")
    limits.check("max_image_uris", len(image_uris), "the number of image_uris")
    video_uri = _optional_string(data.get("video_uri"), "video_uri")
    for uri in [*image_uris, *([video_uri] if video_uri else [])]:
        limits.check("max_uri_chars", len(uri), "a media URI's length")
    return ProductEvent(
        op=op,
        product_id=product_id,
        version=version,
        title=title,
        description=description,
        attributes=_attributes(data.get("attributes"), limits),
        category=parse_category(data.get("category"), limits),
        price=_price(data.get("price")),
        currency=_string(data, "currency"),
        image_uris=image_uris,
        video_uri=video_uri,
        event_time=event_time,
    )


def parse_category(value: Any, limits: EventLimits = DEFAULT_LIMITS) -> list[str]:
    """A category path from a list or from one string like ``"Apparel > Topwear > Tshirts"``
    (the only place a category is split: the publisher and the catalog reader call this)."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        separator = next((s for s in CATEGORY_SEPARATORS if s in value), None)
        parts = value.split(separator) if separator else [value]
    else:
        parts = _string_list(value, "category")
    levels = [part.strip() for part in parts if part.strip()]
    limits.check("max_category_levels", len(levels), "the category's depth")
    for level in levels:
        limits.check("max_category_level_chars", len(level), "a category level's length")
    return levels


def _product_id(value: Any, limits: EventLimits) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_VERSION:
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise EventError(f"field 'product_id' must be a non-empty string, got {_shown(value)}")
    limits.check("max_id_chars", len(value), "field 'product_id' length")
    return _utf8(value, "product_id")


def _shown(value: Any) -> str:
    """``repr`` of an untrusted value, cut short: a reason must stay small."""
    text = repr(value) if not isinstance(value, int) or abs(value) < 10**60 else f"an integer of {len(str(abs(value)))} digits"
    return text if len(text) <= 80 else text[:77] + "..."


def _utf8(value: str, name: str) -> str:
    """``value`` if it can be written as UTF-8 (JSON escapes can produce lone surrogates)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise EventError(f"field '{name}' holds a lone UTF-16 surrogate (not valid Unicode text)") from None
    return value


def _string(data: Mapping[str, Any], name: str) -> str:
    value = data.get(name, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise EventError(f"field '{name}' must be a string, got {type(value).__name__}")
    return _utf8(value, name)


def _optional_string(value: Any, name: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise EventError(f"field '{name}' must be a string, got {type(value).__name__}")
    return _utf8(value, name)


def _string_list(value: Any, name: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [_utf8(value, name)] if value else []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise EventError(f"field '{name}' must be a list of strings")
    return [_utf8(item, name) for item in value if item]


def _attributes(value: Any, limits: EventLimits) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise EventError("field 'attributes' must be an object of strings")
    limits.check("max_attributes", len(value), "the number of attributes")
    out: dict[str, str] = {}
    for key, item in value.items():
        limits.check("max_attribute_key_chars", len(key), "an attribute name's length")
        if isinstance(item, bool) or not isinstance(item, (str, int, float)) or (
                isinstance(item, float) and not math.isfinite(item)):
            raise EventError(f"attribute {_shown(key)} must be a string or number, got {type(item).__name__}")
        text = str(item)
        limits.check("max_attribute_value_chars", len(text), "attribute {}'s length", key)
        out[_utf8(key, "attributes")] = _utf8(text, "attributes")
    return out


def _price(value: Any) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise EventError(f"field 'price' must be a number, got {_shown(value)}")
    try:
        price = float(value)
    except OverflowError:
        raise EventError(f"field 'price' must be a finite non-negative number, got {_shown(value)}") from None
    if not math.isfinite(price) or price < 0:
        raise EventError(f"field 'price' must be a finite non-negative number, got {_shown(value)}")
    return price


def _event_time(value: Any) -> float:
    """Epoch seconds from a number or an ISO-8601 string; now when absent."""
    if value is None:
        return time.time()
    try:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        if isinstance(value, str):
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
            # a time without a zone is UTC, never the worker's local time
            return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()
    except (ValueError, OverflowError, OSError):
        pass
    raise EventError(f"field 'event_time' must be epoch seconds or an ISO-8601 time, got {_shown(value)}")
