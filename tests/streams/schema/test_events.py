"""Unit tests of the product event: strict parsing of untrusted bytes, the exact reasons that
become dead-letter headers, and the record's helpers. No services needed."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import pytest

from streams.schema.events import MAX_ID_LENGTH, EventError, ProductEvent, parse_event


def raw(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


def upsert(**overrides: Any) -> dict[str, Any]:
    return {"op": "upsert", "product_id": "p1", "version": 3, "title": "Red Shirt", **overrides}


FULL = {
    "schema_version": 1,
    "op": "upsert",
    "product_id": "53010",
    "version": 7,
    "title": "FNF Yellow Printed Sari",
    "description": "Soft cotton, printed border",
    "attributes": {"gender": "Women", "year": 2012, "weight": 0.5},
    "category": ["Apparel", "Saree", "Sarees"],
    "price": 499,
    "currency": "INR",
    "image_uris": ["file:///m/a.jpg", "https://example.com/b.jpg"],
    "video_uri": "file:///m/a.mp4",
    "event_time": 1700000000.5,
}


# -- accepted events ----------------------------------------------------------------------------


def test_full_upsert_keeps_every_field():
    event = parse_event(json.dumps(FULL).encode())
    assert event.op == "upsert"
    assert event.product_id == "53010"
    assert event.version == 7
    assert event.schema_version == 1
    assert event.title == "FNF Yellow Printed Sari"
    assert event.description == "Soft cotton, printed border"
    assert event.attributes == {"gender": "Women", "year": "2012", "weight": "0.5"}  # numbers become strings
    assert event.category == ["Apparel", "Saree", "Sarees"]
    assert event.price == 499.0 and isinstance(event.price, float)
    assert event.currency == "INR"
    assert event.image_uris == ["file:///m/a.jpg", "https://example.com/b.jpg"]
    assert event.video_uri == "file:///m/a.mp4"
    assert event.event_time == 1700000000.5


def test_str_input_is_accepted_like_bytes():
    assert parse_event(json.dumps(FULL)) == parse_event(json.dumps(FULL).encode())


def test_minimal_delete_needs_no_title_and_drops_content_fields():
    event = parse_event(raw(op="delete", product_id="p9", version=4, title="ignored", price=-1))
    assert (event.op, event.product_id, event.version) == ("delete", "p9", 4)
    assert event.title == "" and event.price is None and event.category == [] and event.image_uris == []


def test_minimal_upsert_defaults():
    event = parse_event(raw(**upsert()))
    assert event.description == "" and event.attributes == {} and event.category == []
    assert event.price is None and event.currency == "" and event.image_uris == [] and event.video_uri is None
    assert event.schema_version == 1


def test_missing_event_time_is_now():
    before = datetime.now(timezone.utc).timestamp()
    event = parse_event(raw(**upsert()))
    after = datetime.now(timezone.utc).timestamp()
    assert before <= event.event_time <= after


@pytest.mark.parametrize(
    "value, expected",
    [
        (1700000000, 1700000000.0),
        (1700000000.25, 1700000000.25),
        ("2024-01-02T03:04:05Z", datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc).timestamp()),
        ("2024-01-02T03:04:05+02:00", datetime(2024, 1, 2, 1, 4, 5, tzinfo=timezone.utc).timestamp()),
        ("2024-01-02T03:04:05.500Z", datetime(2024, 1, 2, 3, 4, 5, 500000, tzinfo=timezone.utc).timestamp()),
        ("2024-01-02T03:04:05", datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc).timestamp()),  # no zone: UTC
    ],
)
def test_event_time_epoch_or_iso(value, expected):
    event = parse_event(raw(**upsert(event_time=value)))
    assert event.event_time == pytest.approx(expected)
    assert isinstance(event.event_time, float)


@pytest.mark.parametrize(
    "category, expected",
    [
        (["Apparel", " Topwear ", "", "Tshirts"], ["Apparel", "Topwear", "Tshirts"]),
        ("Apparel > Topwear > Tshirts", ["Apparel", "Topwear", "Tshirts"]),
        ("Apparel>Topwear", ["Apparel", "Topwear"]),
        ("Apparel/Topwear", ["Apparel", "Topwear"]),
        ("Footwear", ["Footwear"]),
        ("", []),
        (None, []),
    ],
)
def test_category_forms(category, expected):
    assert parse_event(raw(**upsert(category=category))).category == expected


def test_integer_product_id_becomes_string():
    event = parse_event(raw(**upsert(product_id=53010)))
    assert event.product_id == "53010"
    assert isinstance(event.product_id, str)


def test_single_image_uri_string_becomes_list_and_empty_entries_drop():
    assert parse_event(raw(**upsert(image_uris="a.jpg"))).image_uris == ["a.jpg"]
    assert parse_event(raw(**upsert(image_uris=["a.jpg", "", "b.jpg"]))).image_uris == ["a.jpg", "b.jpg"]


def test_product_id_at_the_length_limit_is_accepted():
    assert parse_event(raw(**upsert(product_id="x" * MAX_ID_LENGTH))).product_id == "x" * MAX_ID_LENGTH


# -- rejected events: the exact reason ------------------------------------------------------------


def reason(data: bytes | str | None) -> str:
    with pytest.raises(EventError) as info:
        parse_event(data)
    return str(info.value)


def test_empty_bytes_and_none():
    assert reason(b"") == "empty message"
    assert reason("") == "empty message"
    assert reason(None) == "empty message"


def test_non_utf8_bytes():
    assert reason(b'{"op": "\xff"}') == (
        "malformed JSON: 'utf-8' codec can't decode byte 0xff in position 8: invalid start byte"
    )


def test_malformed_json():
    assert reason(b'{"op": ') == "malformed JSON: Expecting value: line 1 column 8 (char 7)"


@pytest.mark.parametrize(
    "data, kind",
    [(b"[1, 2]", "list"), (b'"text"', "str"), (b"42", "int"), (b"null", "NoneType")],
)
def test_not_an_object(data, kind):
    assert reason(data) == f"event must be a JSON object, got {kind}"


def test_unknown_op():
    assert reason(raw(**upsert(op="merge"))) == "unknown op 'merge' (expected one of upsert, delete)"
    assert reason(raw(product_id="p", version=1)) == "unknown op None (expected one of upsert, delete)"


@pytest.mark.parametrize(
    "version, shown", [(2, "2"), (0, "0"), ("1", "'1'"), (True, "True"), (1.0, "1.0")],
)
def test_unsupported_schema_version(version, shown):
    assert reason(raw(**upsert(schema_version=version))) == f"unsupported schema_version {shown} (supported: 1)"


@pytest.mark.parametrize("version, shown", [(True, "True"), (False, "False"), (-1, "-1"), ("5", "'5'"), (1.5, "1.5"), (None, "None")])
def test_bad_version(version, shown):
    assert reason(raw(**upsert(version=version))) == f"field 'version' must be a non-negative integer, got {shown}"


def test_missing_version():
    assert reason(raw(op="delete", product_id="p")) == "field 'version' must be a non-negative integer, got None"


@pytest.mark.parametrize("title", ["", "   ", None])
def test_blank_title_on_upsert(title):
    assert reason(raw(**upsert(title=title))) == "field 'title' is required for upsert and must not be blank"


def test_missing_title_on_upsert():
    data = upsert()
    del data["title"]
    assert reason(raw(**data)) == "field 'title' is required for upsert and must not be blank"


def test_title_not_a_string():
    assert reason(raw(**upsert(title=5))) == "field 'title' must be a string, got int"


def test_price_nan():
    assert reason(b'{"op":"upsert","product_id":"p","version":1,"title":"t","price":NaN}') == (
        "field 'price' must be a finite non-negative number, got nan"
    )


def test_price_infinite():
    assert reason(b'{"op":"upsert","product_id":"p","version":1,"title":"t","price":Infinity}') == (
        "field 'price' must be a finite non-negative number, got inf"
    )


def test_price_negative():
    assert reason(raw(**upsert(price=-0.01))) == "field 'price' must be a finite non-negative number, got -0.01"


@pytest.mark.parametrize("price, shown", [("499", "'499'"), (True, "True"), ([1], "[1]")])
def test_price_not_a_number(price, shown):
    assert reason(raw(**upsert(price=price))) == f"field 'price' must be a number, got {shown}"


def test_price_zero_is_fine():
    assert parse_event(raw(**upsert(price=0))).price == 0.0


@pytest.mark.parametrize("attributes", [["a", "b"], "gender=Women", 5])
def test_attributes_not_an_object(attributes):
    assert reason(raw(**upsert(attributes=attributes))) == "field 'attributes' must be an object of strings"


@pytest.mark.parametrize(
    "value, kind", [({"inner": "x"}, "dict"), (["x"], "list"), (True, "bool"), (None, "NoneType")],
)
def test_attribute_values_must_be_flat(value, kind):
    assert reason(raw(**upsert(attributes={"size": value}))) == f"attribute 'size' must be a string or number, got {kind}"


@pytest.mark.parametrize("image_uris", [[1, 2], ["a.jpg", None], {"a": "b"}, 7])
def test_image_uris_not_a_list_of_strings(image_uris):
    assert reason(raw(**upsert(image_uris=image_uris))) == "field 'image_uris' must be a list of strings"


def test_category_list_of_non_strings():
    assert reason(raw(**upsert(category=["A", 2]))) == "field 'category' must be a list of strings"


def test_video_uri_not_a_string():
    assert reason(raw(**upsert(video_uri=["a.mp4"]))) == "field 'video_uri' must be a string, got list"


def test_too_long_product_id():
    assert reason(raw(**upsert(product_id="x" * (MAX_ID_LENGTH + 1)))) == (
        f"field 'product_id' length is {MAX_ID_LENGTH + 1}, over the limit of {MAX_ID_LENGTH} (SHELFSTREAM_MAX_ID_CHARS)"
    )


@pytest.mark.parametrize("product_id, shown", [("", "''"), ("  ", "'  '"), (None, "None"), (True, "True"), (1.5, "1.5")])
def test_bad_product_id(product_id, shown):
    assert reason(raw(**upsert(product_id=product_id))) == f"field 'product_id' must be a non-empty string, got {shown}"


@pytest.mark.parametrize("value, shown", [("yesterday", "'yesterday'"), (True, "True"), ([1], "[1]")])
def test_bad_event_time(value, shown):
    assert reason(raw(**upsert(event_time=value))) == (
        f"field 'event_time' must be epoch seconds or an ISO-8601 time, got {shown}"
    )


def test_event_error_is_a_value_error():
    with pytest.raises(ValueError):
        parse_event(b"[]")


# -- the record's helpers -------------------------------------------------------------------------


def test_to_bytes_round_trips_upsert():
    event = parse_event(json.dumps(FULL).encode())
    data = event.to_bytes()
    assert isinstance(data, bytes)
    assert json.loads(data)["product_id"] == "53010"
    assert parse_event(data) == event


def test_to_bytes_round_trips_delete_and_unicode():
    delete = parse_event(raw(op="delete", product_id="p9", version=4, event_time=10))
    assert parse_event(delete.to_bytes()) == delete
    sari = parse_event(raw(**upsert(title="Saree — ছাপা", event_time=10)))
    data = sari.to_bytes()
    assert "ছাপা".encode() in data  # UTF-8, not \u escapes
    assert parse_event(data).title == "Saree — ছাপা"


def test_derive_changes_only_the_given_fields():
    event = parse_event(json.dumps(FULL).encode())
    cheaper = event.derive(price=399.0, version=8)
    assert cheaper.price == 399.0 and cheaper.version == 8
    before, after = event.asdict(), cheaper.asdict()
    assert {k for k in before if before[k] != after[k]} == {"price", "version"}
    assert event.price == 499.0 and event.version == 7  # the original is untouched
    assert isinstance(cheaper, ProductEvent)


def test_text_joins_title_and_description():
    assert parse_event(raw(**upsert(title="Red Shirt", description="Cotton"))).text == "Red Shirt. Cotton"
    assert parse_event(raw(**upsert(title="Red Shirt"))).text == "Red Shirt"
    assert parse_event(raw(**upsert(title="Red Shirt", description=""))).text == "Red Shirt"


def test_default_collections_are_not_shared_between_events():
    first = ProductEvent(op="upsert", product_id="a", version=1, title="A")
    second = ProductEvent(op="upsert", product_id="b", version=1, title="B")
    first.attributes["colour"] = "red"
    first.category.append("Apparel")
    first.image_uris.append("a.jpg")
    assert second.attributes == {} and second.category == [] and second.image_uris == []
    assert ProductEvent(op="delete", product_id="c", version=1).category == []


def test_derive_does_not_share_collections_with_the_original():
    event = parse_event(json.dumps(FULL).encode())
    copy = event.derive(version=8)
    copy.category.append("Extra")
    copy.attributes["gender"] = "Men"
    copy.image_uris.clear()
    assert event.category == ["Apparel", "Saree", "Sarees"]
    assert event.attributes["gender"] == "Women"
    assert len(event.image_uris) == 2


# -- limits: every field bounded, the knob named -------------------------------------------------

from hypothesis import given  # noqa: E402
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from streams.schema.events import MAX_VERSION, OVER_LIMIT, EventLimits  # noqa: E402

SMALL = EventLimits(max_event_bytes=2_000, max_id_chars=8, max_title_chars=10, max_description_chars=20, max_attributes=2,
                    max_attribute_key_chars=5, max_attribute_value_chars=6, max_category_levels=3,
                    max_category_level_chars=7, max_image_uris=2, max_uri_chars=30)


@pytest.mark.parametrize(
    "fields, knob",
    [
        ({"product_id": "x" * 9}, "MAX_ID_CHARS"),
        ({"title": "t" * 11}, "MAX_TITLE_CHARS"),
        ({"description": "d" * 21}, "MAX_DESCRIPTION_CHARS"),
        ({"attributes": {"a": "1", "b": "2", "c": "3"}}, "MAX_ATTRIBUTES"),
        ({"attributes": {"colour": "red"}}, "MAX_ATTRIBUTE_KEY_CHARS"),
        ({"attributes": {"size": "1234567"}}, "MAX_ATTRIBUTE_VALUE_CHARS"),
        ({"category": ["a", "b", "c", "d"]}, "MAX_CATEGORY_LEVELS"),
        ({"category": " > ".join(["level"] * 100)}, "MAX_CATEGORY_LEVELS"),
        ({"category": ["Apparel!"]}, "MAX_CATEGORY_LEVEL_CHARS"),
        ({"image_uris": ["a.jpg", "b.jpg", "c.jpg"]}, "MAX_IMAGE_URIS"),
        ({"video_uri": "v" * 31}, "MAX_URI_CHARS"),
        ({"description": "d" * 1_990}, "MAX_EVENT_BYTES"),
    ],
)
def test_every_field_over_its_limit_is_rejected_naming_the_knob(fields, knob):
    with pytest.raises(EventError) as info:
        parse_event(raw(**{**upsert(title="Shirt"), **fields}), SMALL)
    assert info.value.code == OVER_LIMIT
    assert str(info.value).endswith(f"(SHELFSTREAM_{knob})")


def test_an_attribute_over_its_limit_is_named_in_the_reason():
    with pytest.raises(EventError, match=r"^attribute 'size''s length is 7, over the limit of 6 "):
        parse_event(raw(**upsert(title="Shirt", attributes={"size": "1234567"})), SMALL)


def test_within_every_limit_is_accepted():
    event = parse_event(raw(**upsert(product_id="p" * 8, title="t" * 10, attributes={"sizes": "123456"},
                                     category="A > B > Topwear", image_uris=["a.jpg", "b.jpg"])), SMALL)
    assert event.category == ["A", "B", "Topwear"]


def test_version_is_bounded_by_a_signed_64_bit_integer():
    assert parse_event(raw(**upsert(version=MAX_VERSION))).version == MAX_VERSION
    with pytest.raises(EventError, match=r"over the limit of 9223372036854775807") as info:
        parse_event(raw(**upsert(version=2**70)))
    assert info.value.code == OVER_LIMIT


@pytest.mark.parametrize(
    "data, reason",
    [
        (b'{"op": "upsert", "product_id": "p", "version": 1, "title": "\\ud800"}',
         "field 'title' holds a lone UTF-16 surrogate (not valid Unicode text)"),
        (b"[" * 10_000 + b"]" * 10_000, "malformed JSON: nested too deeply"),
        (b'{"op": "upsert", "product_id": "p", "version": ' + b"9" * 5_000 + b', "title": "t"}', "malformed JSON: Exceeds"),
        (b'{"op": "upsert", "product_id": "p", "version": 1, "title": "t", "price": 1e400}', "field 'price' must be"),
        (b'{"op": "upsert", "product_id": "p", "version": 1, "title": "t", "event_time": 1e400}', "field 'event_time'"),
    ],
)
def test_hostile_inputs_are_event_errors(data, reason):
    with pytest.raises(EventError) as info:
        parse_event(data)
    assert str(info.value).startswith(reason)
    assert len(str(info.value)) < 300  # a reason stays small whatever the input


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
FIELD_VALUES = st.fixed_dictionaries(
    {}, optional={name: JSON_VALUES for name in ("op", "product_id", "version", "schema_version", "title", "description",
                                                 "attributes", "category", "price", "currency", "image_uris",
                                                 "video_uri", "event_time")},
)


@hypothesis_settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_parse_or_raise_event_error(data):
    try:
        parse_event(data)
    except EventError:
        pass


@hypothesis_settings(max_examples=500, deadline=None)
@given(FIELD_VALUES, st.sampled_from(["upsert", "delete"]))
def test_any_json_object_parses_or_raises_event_error(fields, op):
    for candidate in (fields, {"op": op, "product_id": "p", "version": 1, "title": "t", **fields}):
        try:
            event = parse_event(json.dumps(candidate).encode())
        except EventError:
            continue
        assert parse_event(event.to_bytes()) == event  # what was accepted round-trips
