"""The product event: a typed, versioned record, and strict parsing of untrusted bytes.

The Kafka key is the product id, so one product's events stay ordered in one partition.
Parsing never raises anything but ``EventError``, whose message becomes the dead-letter reason.
"""

from __future__ import annotations

import json
import math
import time
from datetime import datetime, timezone
from typing import Any, Mapping

import faust

from encoders_onnx.text import encoder_text

SCHEMA_VERSION = 1
OPS = ("upsert", "delete")
MAX_ID_LENGTH = 256
CATEGORY_SEPARATORS = (" > ", ">", "/")


class EventError(ValueError):
    """An event that cannot be processed; the message says why (it goes to the dead-letter topic)."""


class ProductEvent(faust.Record, serializer="json"):
    """One change to one product. ``version`` grows per product; the highest version wins."""

    op: str
    product_id: str
    version: int
    schema_version: int = SCHEMA_VERSION
    title: str = ""
    description: str = ""
    attributes: dict[str, str] = {}
    category: list[str] = []
    price: float | None = None
    currency: str = ""
    image_uris: list[str] = []
    video_uri: str | None = None
    event_time: float = 0.0

    def __post_init__(self) -> None:
        # faust.Record shares class-level mutable defaults between instances: copy them.
        self.attributes = dict(self.attributes)
        self.category = list(self.category)
        self.image_uris = list(self.image_uris)

    @property
    def text(self) -> str:
        """What the text encoder reads: title, then description (attributes stay in the payload)."""
        return encoder_text(self.title, self.description)

    def derive(self, **changes: Any) -> "ProductEvent":
        """A copy with some fields changed (a newer version, a new price, ...)."""
        return ProductEvent(**{**self.asdict(), **changes})

    def to_bytes(self) -> bytes:
        return json.dumps(self.asdict(), separators=(",", ":"), ensure_ascii=False).encode()


def parse_event(raw: bytes | str | None) -> ProductEvent:
    """Validate untrusted bytes into a ProductEvent, or raise EventError with the reason."""
    if raw is None or len(raw) == 0:
        raise EventError("empty message")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EventError(f"malformed JSON: {exc}") from None
    if not isinstance(data, dict):
        raise EventError(f"event must be a JSON object, got {type(data).__name__}")
    return event_from_dict(data)


def event_from_dict(data: Mapping[str, Any]) -> ProductEvent:
    schema_version = data.get("schema_version", SCHEMA_VERSION)
    if type(schema_version) is not int or schema_version != SCHEMA_VERSION:
        raise EventError(f"unsupported schema_version {schema_version!r} (supported: {SCHEMA_VERSION})")
    op = data.get("op")
    if op not in OPS:
        raise EventError(f"unknown op {op!r} (expected one of {', '.join(OPS)})")
    product_id = _product_id(data.get("product_id"))
    version = data.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise EventError(f"field 'version' must be a non-negative integer, got {version!r}")
    event_time = _event_time(data.get("event_time"))
    if op == "delete":
        return ProductEvent(op=op, product_id=product_id, version=version, event_time=event_time)
    title = _string(data, "title")
    if not title.strip():
        raise EventError("field 'title' is required for upsert and must not be blank")
    return ProductEvent(
        op=op,
        product_id=product_id,
        version=version,
        title=title,
        description=_string(data, "description"),
        attributes=_attributes(data.get("attributes")),
        category=parse_category(data.get("category")),
        price=_price(data.get("price")),
        currency=_string(data, "currency"),
        image_uris=_string_list(data.get("image_uris"), "image_uris"),
        video_uri=_optional_string(data.get("video_uri"), "video_uri"),
        event_time=event_time,
    )


def parse_category(value: Any) -> list[str]:
    """A category path from a list or from one string like ``"Apparel > Topwear > Tshirts"``."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        for separator in CATEGORY_SEPARATORS:
            if separator in value:
                return [part.strip() for part in value.split(separator) if part.strip()]
        return [value.strip()]
    return [part.strip() for part in _string_list(value, "category") if part.strip()]


def _product_id(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise EventError(f"field 'product_id' must be a non-empty string, got {value!r}")
    if len(value) > MAX_ID_LENGTH:
        raise EventError(f"field 'product_id' is longer than {MAX_ID_LENGTH} characters")
    return value


def _string(data: Mapping[str, Any], name: str) -> str:
    value = data.get(name, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise EventError(f"field '{name}' must be a string, got {type(value).__name__}")
    return value


def _optional_string(value: Any, name: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise EventError(f"field '{name}' must be a string, got {type(value).__name__}")
    return value


def _string_list(value: Any, name: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise EventError(f"field '{name}' must be a list of strings")
    return [item for item in value if item]


def _attributes(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise EventError("field 'attributes' must be an object of strings")
    out: dict[str, str] = {}
    for key, item in value.items():
        if isinstance(item, bool) or not isinstance(item, (str, int, float)):
            raise EventError(f"attribute {key!r} must be a string or number, got {type(item).__name__}")
        out[str(key)] = str(item)
    return out


def _price(value: Any) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise EventError(f"field 'price' must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise EventError(f"field 'price' must be a finite non-negative number, got {value!r}")
    return float(value)


def _event_time(value: Any) -> float:
    """Epoch seconds from a number or an ISO-8601 string; now when absent."""
    if value is None:
        return time.time()
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            pass
        else:  # a time without a zone is UTC, never the worker's local time
            return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()
    raise EventError(f"field 'event_time' must be epoch seconds or an ISO-8601 time, got {value!r}")
