"""Engine-neutral types of the product store: what goes in, what comes out, what filters ask.

Nothing here imports an engine. The engines (``edge.py``, ``client.py``) translate these types
into their own; everything above the store sees only these.

Three payload fields are derived by the store from the product's own fields and written with
every point (all are stripped on read); two make filters exact keyword matches an index answers:

- ``category_keys``: every level and every path prefix of the category, lower-cased
  (``apparel``, ``topwear``, ``apparel > topwear``): a category filter on any level or prefix,
  case-insensitive, is one match.
- ``attribute_terms``: ``key=value`` lower-cased for every attribute: one keyword index serves
  every attribute key, including keys nobody has filtered on yet.

A third, ``payload_digest``, is a digest of everything but the fields a price change touches
(``VOLATILE_FIELDS``): a payload rewrite whose digest matches the stored one sends only those.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import uuid
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Sequence

import numpy as np
import orjson

# Point ids are UUIDv5 of the product id: stable across workers, replays and machines.
POINT_NAMESPACE = uuid.UUID("6f1d3c52-8a59-4c4e-9a8e-3b0c2f7d9e41")
KEYWORDS = "keywords"  # the sparse named vector of keyword search
PAYLOAD_DIGEST = "payload_digest"
DERIVED_FIELDS = ("category_keys", "attribute_terms", PAYLOAD_DIGEST)
VOLATILE_FIELDS = ("version", "price", "event_time", "indexed_at")  # what a price-only update changes
# Payload indexes created on both engines: keyword fields, then float fields.
KEYWORD_INDEXES = ("category_path", "category_keys", "attribute_terms", "product_id", "modalities")
FLOAT_INDEXES = ("price",)
# What the pipeline reads of a stored product to order and skip work (``StoredState``).
STATE_FIELDS = ("product_id", "version", "fingerprint", "modalities", "errors", PAYLOAD_DIGEST)
# Kept as their own payload fields by an engine that packs the rest (``packed_payload``): what
# filters and payload indexes read, what a price-only update sets, and the stored state.
NATIVE_FIELDS = frozenset((*KEYWORD_INDEXES, *FLOAT_INDEXES, *VOLATILE_FIELDS, *STATE_FIELDS))
PACKED = "_packed"  # the other fields, as one JSON string

# BM25's term-frequency saturation, applied client-side; the engines apply IDF (modifier=IDF).
BM25_K1 = 1.2
BM25_B = 0.75
BM25_AVG_LEN = 40.0  # typical title + description + attributes length in tokens
KeywordField = Literal["text", "values"]
KEYWORD_FIELDS: tuple[KeywordField, ...] = ("text", "values")
TOKEN = re.compile(r"\w+", re.UNICODE)


@functools.lru_cache(maxsize=1 << 16)
def point_id(product_id: str) -> str:
    """Memoized: a batch asks for the same ids several times, and uuid5 costs ~15 us a call."""
    return str(uuid.uuid5(POINT_NAMESPACE, product_id))


def category_prefixes(category: Sequence[str]) -> list[str]:
    """``["A", "B"]`` -> ``["A", "A > B"]``."""
    return [" > ".join(category[: i + 1]) for i in range(len(category))]


def normalize_category(text: str) -> str:
    """``" Apparel/topwear "`` -> ``"apparel > topwear"``: the form ``category_keys`` holds."""
    return " > ".join(part.strip().lower() for part in text.replace("/", ">").split(">") if part.strip())


def category_keys(category: Sequence[str]) -> list[str]:
    levels = [level.strip().lower() for level in category if level.strip()]
    return sorted(set(levels) | {normalize_category(path) for path in category_prefixes(levels)})


def attribute_term(key: str, value: str) -> str:
    return f"{key.strip().lower()}={value.strip().lower()}"


def with_derived_fields(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The payload as stored: the product's fields plus the derived fields."""
    attributes = payload.get("attributes") or {}
    return {
        **payload,
        "category_keys": category_keys(payload.get("category") or []),
        "attribute_terms": sorted(attribute_term(k, str(v)) for k, v in attributes.items()),
        PAYLOAD_DIGEST: payload_digest(payload),
    }


def payload_digest(payload: Mapping[str, Any]) -> str:
    """A digest of the product's own fields but ``VOLATILE_FIELDS`` (the derived fields follow
    from them), and of which volatile fields are present (a volatile field dropped is a change
    too). Computed before anything is derived: a price update whose digest matches the stored
    one derives nothing. orjson: ~5 us where the standard library's sorted dump took ~18."""
    steady = {k: v for k, v in payload.items() if k not in VOLATILE_FIELDS and k not in DERIVED_FIELDS}
    present = sorted(k for k in VOLATILE_FIELDS if k in payload)
    return hashlib.blake2b(orjson.dumps([steady, present], option=orjson.OPT_SORT_KEYS, default=str),
                           digest_size=12).hexdigest()


def packed_payload(payload: Mapping[str, Any]) -> dict[str, Any]:
    """``NATIVE_FIELDS`` as they are, every other field in one JSON string under ``PACKED``.

    Qdrant Edge converts a Python payload value by value at ~2-4 us each (measured: a product's
    ~60 values took 0.22 ms, more than the rest of its upsert), and one string is one value. The
    unpacked form is what every reader sees (``unpacked_payload``)."""
    native = {k: v for k, v in payload.items() if k in NATIVE_FIELDS}
    rest = {k: v for k, v in payload.items() if k not in NATIVE_FIELDS}
    if rest:
        native[PACKED] = json.dumps(rest, separators=(",", ":"))
    return native


def unpacked_payload(payload: Mapping[str, Any] | None) -> dict[str, Any]:
    """The payload as written, packed or not (an Edge snapshot restored on a server stays packed)."""
    payload = dict(payload or {})
    packed = payload.pop(PACKED, None)
    return {**json.loads(packed), **payload} if packed else payload


def stored_keys(keys: Sequence[str]) -> list[str]:
    """The stored fields that may hold ``keys``: the keys, and the pack if any is not native."""
    return [*keys] + ([] if NATIVE_FIELDS.issuperset(keys) else [PACKED])


def only_keys(point: StoredPoint, keys: Sequence[str]) -> StoredPoint:
    """The point with just the payload ``keys`` a reader asked for (a pack holds more)."""
    return StoredPoint(point.product_id, {k: point.payload[k] for k in keys if k in point.payload}, point.vector)


def without_derived_fields(payload: Mapping[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (payload or {}).items() if k not in DERIVED_FIELDS}


def tokens(text: str) -> list[str]:
    return TOKEN.findall(text.lower())


def token_index(token: str) -> int:
    """A stable 31-bit index per token (crc32), the same in every process and on every engine."""
    return zlib.crc32(token.encode("utf-8")) & 0x7FFFFFFF


@dataclass(frozen=True)
class SparseVector:
    indices: tuple[int, ...]
    values: tuple[float, ...]


def field_tokens(payload: Mapping[str, Any]) -> dict[KeywordField, list[str]]:
    """The words of each keyword field: free text (title, description) and structured values
    (every category level and attribute value; the attribute names come from the data)."""
    attributes = payload.get("attributes") or {}
    return {"text": tokens(" ".join([str(payload.get("title") or ""), str(payload.get("description") or "")])),
            "values": tokens(" ".join([*map(str, payload.get("category") or []), *map(str, attributes.values())]))}


def field_token_index(field: KeywordField, token: str) -> int:
    """A token's index in one field: each field is its own term space in the one sparse vector, so
    the engine's IDF is per field and a query can ask one field ("red" the colour is not "Red" the
    brand word in a title)."""
    return token_index(token if field == "text" else f"{field}:{token}")


def keyword_document(payload: Mapping[str, Any]) -> SparseVector | None:
    """BM25-style term weights of each field, saturated per field (None: no words)."""
    weights: dict[int, float] = {}
    for name, words in field_tokens(payload).items():
        counts = Counter(field_token_index(name, word) for word in words)
        norm = BM25_K1 * (1 - BM25_B + BM25_B * len(words) / BM25_AVG_LEN)
        weights.update({i: n * (BM25_K1 + 1) / (n + norm) for i, n in counts.items()})
    if not weights:
        return None
    indices = sorted(weights)
    return SparseVector(tuple(indices), tuple(weights[i] for i in indices))


def keyword_query(text: str, fields: Sequence[KeywordField] = KEYWORD_FIELDS) -> SparseVector | None:
    """The query's words in each of ``fields``: the score is the BM25 sum over those fields."""
    indices = sorted({field_token_index(field, word) for field in fields for word in tokens(text)})
    return SparseVector(tuple(indices), tuple(1.0 for _ in indices)) if indices else None


@dataclass(frozen=True)
class ProductPoint:
    """One product as the pipeline writes it: named dense vectors (only those it has) and payload."""

    product_id: str
    vectors: dict[str, np.ndarray]
    payload: dict[str, Any]


@dataclass(frozen=True)
class StoredPoint:
    """A product as stored: ``vector`` holds the named dense vectors asked for, as lists."""

    product_id: str
    payload: dict[str, Any]
    vector: dict[str, list[float]] = field(default_factory=dict)


@dataclass(frozen=True)
class StoredState:
    """What the pipeline needs to know of a stored product to order and skip work."""

    version: int
    fingerprint: str | None = None  # None: a tombstone, not a live point
    modalities: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    payload_digest: str | None = None  # ``with_derived_fields``' digest of the stored payload


@dataclass(frozen=True)
class Hit:
    product_id: str
    score: float
    payload: dict[str, Any]


@dataclass(frozen=True)
class Conditions:
    """A filter in engine-neutral form: every ``match`` key has one of its values, every range
    holds (bounds inclusive), and no point of ``exclude_ids`` is returned."""

    match: tuple[tuple[str, tuple[str, ...]], ...] = ()
    ranges: tuple[tuple[str, float | None, float | None], ...] = ()
    exclude_ids: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.match or self.ranges or self.exclude_ids)


@dataclass(frozen=True)
class SearchFilters:
    category: str | None = None  # any level or path prefix, case-insensitive: "apparel", "Apparel > Topwear"
    price_min: float | None = None
    price_max: float | None = None
    attributes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # key -> any of, case-insensitive
    modalities: tuple[str, ...] = ()  # the product has all of these
    exclude_product_ids: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.price_min is not None and self.price_max is not None and self.price_min > self.price_max:
            raise ValueError(f"price_min ({self.price_min}) is greater than price_max ({self.price_max})")

    def conditions(self, exclude: Sequence[str] = ()) -> Conditions:
        match: list[tuple[str, tuple[str, ...]]] = []
        if self.category and normalize_category(self.category):
            match.append(("category_keys", (normalize_category(self.category),)))
        for key, values in self.attributes.items():
            values = (values,) if isinstance(values, str) else tuple(values)
            match.append(("attribute_terms", tuple(attribute_term(key, value) for value in values)))
        match.extend(("modalities", (modality,)) for modality in self.modalities)
        ranges = ((("price", self.price_min, self.price_max),)
                  if self.price_min is not None or self.price_max is not None else ())
        excluded = tuple(dict.fromkeys(point_id(pid) for pid in (*self.exclude_product_ids, *exclude)))
        return Conditions(tuple(match), ranges, excluded)


# Queries an engine answers, in engine-neutral form.
@dataclass(frozen=True)
class Nearest:
    using: str
    vector: np.ndarray | SparseVector


@dataclass(frozen=True)
class Recommend:
    """Best-score recommendation: near any positive, away from the negatives."""

    using: str
    positives: tuple[np.ndarray, ...]
    negatives: tuple[np.ndarray, ...] = ()


Query = Nearest | Recommend


def check_dims(collection: str, existing: Mapping[str, int], wanted: Mapping[str, int]) -> None:
    """Refuse a collection whose named vectors differ from the models' (names listed in order)."""
    if dict(existing) != dict(wanted):
        raise RuntimeError(
            f"Qdrant collection {collection!r} has vectors {dict(sorted(existing.items()))}, but the models produce "
            f"{dict(sorted(wanted.items()))}: use another SHELFSTREAM_COLLECTION or re-index into a new collection"
        )
