"""Decoding untrusted message bytes into a JSON object: the first step of every record schema."""

from __future__ import annotations

import json
from typing import Any, Mapping


def json_object(raw: bytes | str | None, error: type[ValueError], what: str) -> dict[str, Any]:
    """``raw`` as a JSON object, or ``error`` with the reason: never any other exception, whatever
    the bytes (bad UTF-8, deep nesting, integers too long to convert, a non-object)."""
    if raw is None or len(raw) == 0:
        raise error("empty message")
    try:
        data = json.loads(raw)
    except RecursionError:
        raise error("malformed JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer of too many digits
        raise error(f"malformed JSON: {exc}") from None
    if not isinstance(data, dict):
        raise error(f"{what} must be a JSON object, got {type(data).__name__}")
    return data


def check_schema_version(data: Mapping[str, Any], supported: int, error: type[ValueError]) -> None:
    """A record's ``schema_version`` (absent: the supported one) must be exactly that integer."""
    version = data.get("schema_version", supported)
    if type(version) is not int or version != supported:
        raise error(f"unsupported schema_version {version!r} (supported: {supported})")
