"""Strict parsing of interaction events: valid ones become typed records, anything else an
InteractionError with a reason, never another exception."""

from __future__ import annotations

import json

import pytest

from streams.schema.interactions import Interaction, InteractionError, parse_interaction

VALID = {"schema_version": 1, "user_id": "u1", "product_id": "42", "kind": "view", "event_time": 1700000000.5}


def test_a_valid_interaction_round_trips() -> None:
    parsed = parse_interaction(json.dumps({**VALID, "session_id": "s9"}))
    assert parsed == Interaction("u1", "42", "view", 1700000000.5, "s9")
    assert parse_interaction(parsed.to_bytes()) == parsed


def test_numeric_ids_and_iso_times_are_accepted() -> None:
    parsed = parse_interaction(json.dumps({**VALID, "product_id": 42, "event_time": "2023-11-14T22:13:20Z"}))
    assert parsed.product_id == "42" and parsed.event_time == 1700000000.0


def test_event_id_is_stable_and_ignores_the_session() -> None:
    a = parse_interaction(json.dumps(VALID))
    b = parse_interaction(json.dumps({**VALID, "session_id": "other"}))
    c = parse_interaction(json.dumps({**VALID, "kind": "click"}))
    assert a.event_id == b.event_id != c.event_id


@pytest.mark.parametrize(("raw", "reason"), [
    (b"", "empty message"),
    (None, "empty message"),
    (b"\xff\xfe", "malformed JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (b"[" * 100_000, "malformed JSON"),
    (json.dumps({**VALID, "kind": "like"}), "unknown kind 'like'"),
    (json.dumps({**VALID, "schema_version": 2}), "unsupported schema_version"),
    (json.dumps({**VALID, "user_id": ""}), "'user_id' must be a non-empty string"),
    (json.dumps({**VALID, "user_id": True}), "'user_id' must be a non-empty string"),
    (json.dumps({**VALID, "product_id": "x" * 300}), "longer than 256"),
    (json.dumps({k: v for k, v in VALID.items() if k != "event_time"}), "'event_time'"),
    (json.dumps({**VALID, "event_time": "yesterday"}), "'event_time'"),
    (json.dumps({**VALID, "event_time": -5}), "'event_time'"),
    (json.dumps({**VALID, "rating": 5}), "unknown fields ['rating']"),
])
def test_bad_interactions_are_rejected_with_a_reason(raw: bytes | str | None, reason: str) -> None:
    with pytest.raises(InteractionError, match=__import__("re").escape(reason)):
        parse_interaction(raw)
