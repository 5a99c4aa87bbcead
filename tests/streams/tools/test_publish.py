"""Unit tests of the catalog -> event mapping (no services), and one integration test of
``publish_file`` against the real embedded broker."""

from __future__ import annotations

import csv
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from exporters.catalog import EVENT_FIELD_OF
from streams.schema.events import EVENT_FIELDS, EventError, parse_event
from streams.settings import Settings
from streams.tools.publish import PublishReport, catalog_events, load_mapping, publish_file, row_to_event_dict

REPO = Path(__file__).resolve().parents[3]
MYNTRA_MAPPING = REPO / "demo" / "catalog" / "mapping.json"

HEADER = ["id", "image", "productDisplayName", "gender", "masterCategory", "subCategory", "articleType",
          "baseColour", "season", "year", "usage", "price"]
ROWS = [
    ["53010", "images/53010.jpg", "FNF Yellow Printed Sari", "Women", "Apparel", "Saree", "Sarees",
     "Yellow", "Fall", "2012", "Ethnic", "499"],
    ["31237", "images/31237.jpg|images/31237-back.jpg", "Puma Men Polo T-shirt", "Men", "Apparel", "Topwear",
     "Tshirts", "Black", "Summer", "2012", "Casual", "799.50"],
    ["10001", "https://cdn.example.com/10001.jpg", "Nike Running Shoe", "Men", "Footwear", "Shoes",
     "Sports Shoes", "Red", "", "2013", "Sports", "2999"],
]


def write_csv(path: Path, rows: list[list[str]], header: list[str] = HEADER) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture
def myntra() -> dict[str, Any]:
    return load_mapping(str(MYNTRA_MAPPING))


# -- load_mapping ---------------------------------------------------------------------------------


def test_load_mapping_from_file_is_the_myntra_mapping(myntra):
    assert myntra == json.loads(MYNTRA_MAPPING.read_text())
    assert myntra["category"] == ["masterCategory", "subCategory", "articleType"]


def test_load_mapping_inline_json():
    assert load_mapping('  {"product_id": "sku", "currency": {"value": "EUR"}}') == {
        "product_id": "sku", "currency": {"value": "EUR"},
    }


def test_load_mapping_from_a_file_in_tmp(tmp_path):
    path = tmp_path / "m.json"
    path.write_text('{"title": "name"}')
    assert load_mapping(str(path)) == {"title": "name"}


@pytest.mark.parametrize("value", [None, ""])
def test_load_mapping_none_is_identity(value):
    assert load_mapping(value) == {}


def test_load_mapping_unknown_field_is_named():
    with pytest.raises(ValueError) as info:
        load_mapping('{"product_id": "id", "colour": "baseColour", "size": "s"}')
    message = str(info.value)
    assert message.startswith("mapping names unknown keys ['colour', 'size']; known: ")
    assert all(name in message.split(";")[1] for name in EVENT_FIELDS)


def test_the_catalog_reader_fills_exactly_the_events_fields():
    assert list(EVENT_FIELD_OF.values()) == list(EVENT_FIELDS)


def test_load_mapping_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_mapping(str(tmp_path / "absent.json"))


# -- row_to_event_dict / catalog_events with the Myntra mapping ----------------------------------------


def test_row_to_event_dict_with_the_myntra_mapping(myntra, tmp_path):
    row = dict(zip(HEADER, ROWS[1]))
    data = row_to_event_dict(row, myntra, tmp_path, version=5)
    assert data == {
        "op": "upsert",
        "product_id": "31237",
        "version": 5,
        "title": "Puma Men Polo T-shirt",
        "attributes": {"gender": "Men", "baseColour": "Black", "season": "Summer", "year": "2012", "usage": "Casual"},
        "category": ["Apparel", "Topwear", "Tshirts"],
        "price": 799.5,
        "currency": "INR",
        "image_uris": [(tmp_path / "images/31237.jpg").as_uri(), (tmp_path / "images/31237-back.jpg").as_uri()],
    }


def test_row_to_event_dict_integer_price_and_empty_columns_left_out(myntra, tmp_path):
    row = dict(zip(HEADER, ROWS[2]))
    data = row_to_event_dict(row, myntra, tmp_path, version=1)
    assert data["price"] == 2999 and isinstance(data["price"], int)
    assert "season" not in data["attributes"]  # empty column: no attribute
    assert data["image_uris"] == ["https://cdn.example.com/10001.jpg"]  # absolute http kept as is
    assert "video_uri" not in data and "description" not in data


def test_row_to_event_dict_bad_number_raises_event_error(myntra, tmp_path):
    row = dict(zip(HEADER, ROWS[0]), price="cheap")
    with pytest.raises(EventError, match=r"^field 'price' must be a number, got 'cheap'$"):
        row_to_event_dict(row, myntra, tmp_path, version=1)


def test_catalog_events_from_csv_with_the_myntra_mapping(myntra, tmp_path):
    path = write_csv(tmp_path / "catalog" / "products.csv", ROWS)
    events = list(catalog_events(path, myntra, version=42))
    assert [e.product_id for e in events] == ["53010", "31237", "10001"]
    sari, polo, shoe = events
    assert all(e.op == "upsert" and e.version == 42 and e.currency == "INR" for e in events)
    assert sari.category == ["Apparel", "Saree", "Sarees"]
    assert shoe.category == ["Footwear", "Shoes", "Sports Shoes"]
    assert sari.attributes == {"gender": "Women", "baseColour": "Yellow", "season": "Fall", "year": "2012",
                               "usage": "Ethnic"}
    assert (sari.price, polo.price, shoe.price) == (499.0, 799.5, 2999.0)
    base = (tmp_path / "catalog").resolve()
    assert sari.image_uris == [f"file://{base}/images/53010.jpg"]
    assert polo.image_uris == [(base / "images" / "31237.jpg").as_uri(), (base / "images" / "31237-back.jpg").as_uri()]
    assert all(uri.startswith("file:///") for uri in sari.image_uris + polo.image_uris)
    assert shoe.image_uris == ["https://cdn.example.com/10001.jpg"]
    assert sari.title == "FNF Yellow Printed Sari" and sari.description == ""


def test_relative_paths_resolve_against_the_catalog_folder_not_the_cwd(myntra, tmp_path, monkeypatch):
    path = write_csv(tmp_path / "deep" / "cat" / "products.csv", ROWS[:1])
    monkeypatch.chdir(tmp_path)
    [event] = catalog_events(Path("deep/cat/products.csv"), myntra, version=1)
    assert event.image_uris == [(tmp_path / "deep" / "cat" / "images" / "53010.jpg").resolve().as_uri()]
    assert path.exists()


def test_video_column_and_absolute_local_paths(myntra, tmp_path):
    header = HEADER + ["video"]
    rows = [ROWS[0] + ["videos/53010.mp4"], ROWS[1][:1] + ["/srv/media/x.jpg"] + ROWS[1][2:] + ["https://v.example.com/x.mp4"]]
    path = write_csv(tmp_path / "products.csv", rows, header)
    sari, polo = catalog_events(path, {**myntra, "video_uri": "video"}, version=1)
    assert sari.video_uri == (tmp_path / "videos" / "53010.mp4").resolve().as_uri()
    assert polo.image_uris == ["/srv/media/x.jpg"]  # absolute path: left for the media root check
    assert polo.video_uri == "https://v.example.com/x.mp4"


def test_version_defaults_to_now_in_ms(myntra, tmp_path):
    import time

    path = write_csv(tmp_path / "products.csv", ROWS[:1])
    before = int(time.time() * 1000)
    [event] = catalog_events(path, myntra)
    after = int(time.time() * 1000)
    assert before <= event.version <= after


def test_csv_version_column_overrides_the_default(tmp_path):
    path = write_csv(tmp_path / "p.csv", [["a", "T", "12"]], ["product_id", "title", "version"])
    [event] = catalog_events(path, {}, version=99)
    assert event.version == 12


def test_identity_mapping_on_csv(tmp_path):
    header = ["product_id", "title", "description", "category", "price", "currency", "image_uris", "event_time"]
    rows = [["p1", "Blue Jeans", "Slim fit", "Apparel > Bottomwear > Jeans", "1299", "EUR", "a.jpg|b.jpg", "1700000000"]]
    path = write_csv(tmp_path / "p.csv", rows, header)
    [event] = catalog_events(path, load_mapping(None), version=3)
    assert event.product_id == "p1" and event.title == "Blue Jeans" and event.description == "Slim fit"
    assert event.category == ["Apparel", "Bottomwear", "Jeans"]
    assert event.price == 1299.0 and event.currency == "EUR"
    assert event.image_uris == [(tmp_path / "a.jpg").as_uri(), (tmp_path / "b.jpg").as_uri()]
    assert event.event_time == 1700000000.0
    assert event.version == 3


def test_jsonl_catalog_identity_mapping(tmp_path):
    rows = [
        {"product_id": 7, "title": "Mug", "category": ["Home", "Kitchen"], "price": 9.5, "attributes": {"colour": "white"},
         "image_uris": ["img/mug.jpg", "http://cdn.example.com/mug2.jpg"], "version": 4},
        {"op": "delete", "product_id": "8", "version": 5},
        {"product_id": "9", "title": "Plate", "category": "Home/Kitchen", "price": "3"},
    ]
    path = write_jsonl(tmp_path / "c.jsonl", rows)
    mug, deleted, plate = catalog_events(path, {}, version=100)
    assert (mug.product_id, mug.version, mug.op) == ("7", 4, "upsert")
    assert mug.category == ["Home", "Kitchen"] and mug.price == 9.5 and mug.attributes == {"colour": "white"}
    assert mug.image_uris == [(tmp_path / "img" / "mug.jpg").as_uri(), "http://cdn.example.com/mug2.jpg"]
    assert (deleted.op, deleted.product_id, deleted.version) == ("delete", "8", 5)
    assert plate.category == ["Home", "Kitchen"] and plate.price == 3.0 and plate.version == 100


def test_jsonl_catalog_with_a_mapping_and_blank_lines(tmp_path):
    path = tmp_path / "c.ndjson"
    path.write_text('{"sku": "a1", "name": "Lamp", "cost": 20}\n\n{"sku": "a2", "name": "Desk", "cost": 150}\n')
    mapping = {"product_id": "sku", "title": "name", "price": "cost", "currency": {"value": "USD"}}
    events = list(catalog_events(path, mapping, version=1))
    assert [(e.product_id, e.title, e.price, e.currency) for e in events] == [
        ("a1", "Lamp", 20.0, "USD"), ("a2", "Desk", 150.0, "USD"),
    ]


def test_bad_rows_go_to_on_error_with_their_number_and_the_rest_are_yielded(myntra, tmp_path):
    rows = [
        ROWS[0],
        ROWS[1][:2] + [""] + ROWS[1][3:],  # row 2: no title
        ROWS[2][:11] + ["free"],  # row 3: price is not a number
        ["", *ROWS[0][1:]],  # row 4: no product id
        ["20002", *ROWS[0][1:11], "-5"],  # row 5: negative price
        ["20003", *ROWS[0][1:]],
    ]
    path = write_csv(tmp_path / "products.csv", rows)
    errors: list[tuple[int, str]] = []
    events = list(catalog_events(path, myntra, version=1, on_error=lambda number, why: errors.append((number, why))))
    assert [e.product_id for e in events] == ["53010", "20003"]
    assert errors == [
        (2, "field 'title' is required for upsert and must not be blank"),
        (3, "field 'price' must be a number, got 'free'"),
        (4, "field 'product_id' must be a non-empty string, got None"),
        (5, "field 'price' must be a finite non-negative number, got -5"),
    ]


def test_without_on_error_a_bad_row_raises(myntra, tmp_path):
    path = write_csv(tmp_path / "products.csv", [ROWS[0], ROWS[1][:11] + ["free"]])
    events = catalog_events(path, myntra, version=1)
    assert next(events).product_id == "53010"
    with pytest.raises(EventError, match="field 'price' must be a number, got 'free'"):
        next(events)


def test_malformed_jsonl_line_goes_to_on_error(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"product_id": "1", "title": "a"}\n{"product_id": "2", "title": \n{"product_id": "3", "title": "c"}\n')
    errors: list[tuple[int, str]] = []
    events = list(catalog_events(path, {}, version=1, on_error=lambda n, why: errors.append((n, why))))
    assert [e.product_id for e in events] == ["1", "3"]
    assert [n for n, _ in errors] == [2] and "not valid JSON" in errors[0][1]


def test_jsonl_line_that_is_not_an_object_goes_to_on_error(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"product_id": "1", "title": "a"}, [1, 2], {"product_id": "3", "title": "c"}])
    errors: list[tuple[int, str]] = []
    events = list(catalog_events(path, {}, version=1, on_error=lambda n, why: errors.append((n, why))))
    assert [e.product_id for e in events] == ["1", "3"]
    assert [n for n, _ in errors] == [2]


def test_delete_mapping_gives_delete_events(myntra, tmp_path):
    path = write_csv(tmp_path / "products.csv", ROWS)
    events = list(catalog_events(path, {**myntra, "op": {"value": "delete"}}, version=9))
    assert [(e.op, e.product_id, e.version) for e in events] == [
        ("delete", "53010", 9), ("delete", "31237", 9), ("delete", "10001", 9),
    ]
    assert all(e.title == "" and e.image_uris == [] and e.price is None for e in events)
    # the delete still parses from its wire form
    assert parse_event(events[0].to_bytes()).op == "delete"


def test_delete_mapping_accepts_rows_without_a_title(myntra, tmp_path):
    path = write_csv(tmp_path / "products.csv", [ROWS[0][:2] + [""] + ROWS[0][3:]])
    [event] = catalog_events(path, {**myntra, "op": {"value": "delete"}}, version=1)
    assert (event.op, event.product_id) == ("delete", "53010")


def test_publish_report_line():
    assert PublishReport(10, 0, 2.0).line("topic-a") == "published 10 events to topic-a in 2.00 s (5 events/s)"
    assert PublishReport(3000, 2, 1.5).line("t") == "published 3000 events to t in 1.50 s (2,000 events/s), 2 rows rejected"
    assert PublishReport(0, 0, 0.0).rate == 0.0


# -- integration: the real embedded broker ---------------------------------------------------------------


@pytest.mark.integration
def test_publish_file_publishes_rows_keyed_by_product_id(services, myntra, tmp_path, capsys):
    from streams.adapters.kafka import read_topic

    run = uuid.uuid4().hex[:10]
    settings = Settings.from_env(
        env={},
        kafka_bootstrap=services["kafka_bootstrap"],
        redis_url=services["redis_url"],
        state_dir=str(tmp_path / "state"),
        events_topic=f"t-{run}",
        dead_letter_topic=f"t-{run}.dead-letter",
        partitions=2,
    )
    rows = [[str(60000 + i), f"images/{60000 + i}.jpg", f"Product {i}", "Men", "Apparel", "Topwear", "Tshirts",
             "Blue", "Summer", "2012", "Casual", str(100 + i)] for i in range(12)]
    rows.insert(5, ["60099", "images/x.jpg", "Broken", "Men", "Apparel", "Topwear", "Tshirts", "Blue", "Summer",
                    "2012", "Casual", "n/a"])  # row 6 is rejected
    path = write_csv(tmp_path / "catalog" / "products.csv", rows)

    report = publish_file(settings, path, myntra, version=17, progress=False)

    assert (report.published, report.rejected) == (12, 1)
    assert report.seconds > 0
    line = report.line(settings.events_topic)
    assert line.startswith(f"published 12 events to t-{run} in ")
    assert line.endswith(", 1 rows rejected")
    assert "skipped products.csv row 6: field 'price' must be a number, got 'n/a'" in capsys.readouterr().err

    records = read_topic(settings, settings.events_topic, expected=12, timeout_s=30)
    expected_ids = [str(60000 + i) for i in range(12)]
    assert sorted(r.key.decode() for r in records) == expected_ids  # exactly these: no duplicate, no rejected row
    by_key = {r.key.decode(): parse_event(r.value) for r in records}
    for i, product_id in enumerate(expected_ids):
        event = by_key[product_id]
        assert (event.product_id, event.version, event.title, event.price) == (product_id, 17, f"Product {i}", 100.0 + i)
        assert event.image_uris == [(tmp_path / "catalog" / "images" / f"{product_id}.jpg").as_uri()]
    # keyed by product id: records are spread over the topic's partitions by key
    assert {r.partition for r in records} <= {0, 1}



def test_a_mapping_naming_a_missing_column_is_refused_with_the_files_columns(myntra, tmp_path, capsys):
    from streams.tools.cli import main

    path = write_csv(tmp_path / "products.csv", ROWS)
    mapping = {**myntra, "video_uri": "video", "description": "blurb"}
    with pytest.raises(ValueError) as info:
        publish_file(Settings(), path, mapping, version=1, progress=False)  # refused before any broker is needed
    assert str(info.value) == f"{path}: column 'video' is missing (nor 'blurb'); the file's columns: {', '.join(HEADER)}"
    (tmp_path / "m.json").write_text(json.dumps(mapping))
    assert main(["publish", str(path), "--mapping", str(tmp_path / "m.json")]) == 1
    assert "column 'video' is missing" in capsys.readouterr().err


def test_columns_the_mapping_leaves_to_the_identity_default_may_be_absent(myntra, tmp_path):
    from streams.tools.publish import catalog_mapping

    path = write_csv(tmp_path / "products.csv", ROWS)
    catalog_mapping(myntra).check_columns(path, list(myntra))  # no 'description' or 'video_uri' column: fine


@pytest.mark.integration
def test_publish_exits_non_zero_when_every_row_is_rejected(services, myntra, tmp_path, capsys):
    from streams.tools.cli import main

    path = write_csv(tmp_path / "products.csv", [row[:11] + ["n/a"] for row in ROWS])
    env = {"SHELFSTREAM_KAFKA_BOOTSTRAP": services["kafka_bootstrap"], "SHELFSTREAM_REDIS_URL": services["redis_url"],
           "SHELFSTREAM_STATE_DIR": str(tmp_path / "state"), "SHELFSTREAM_EVENTS_TOPIC": f"t-{uuid.uuid4().hex[:10]}"}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        assert main(["publish", str(path), "--mapping", str(MYNTRA_MAPPING)]) == 1
    err = capsys.readouterr().err
    assert "every row was rejected (3; first row 1: field 'price' must be a number, got 'n/a')" in err


def test_a_closed_publisher_has_delivered_everything_and_holds_no_producer(services, tmp_path):
    """``close`` releases the producer at once: a publisher left referenced (a caller's local)
    must not keep a client that reconnects to a broker that is gone (the benchmark's did)."""
    from streams.adapters.kafka import read_topic
    from streams.tools.publish import EventPublisher

    run = uuid.uuid4().hex[:10]
    settings = Settings.from_env(env={}, kafka_bootstrap=services["kafka_bootstrap"], redis_url=services["redis_url"],
                                 state_dir=str(tmp_path / "state"), events_topic=f"t-{run}", partitions=1)
    publisher = EventPublisher(settings)
    for i in range(3):
        publisher.send(f"p{i}".encode(), b"{}")
    publisher.close()

    assert sorted(r.key for r in read_topic(settings, settings.events_topic, expected=3, timeout_s=30)) == [b"p0", b"p1", b"p2"]
    with pytest.raises(RuntimeError, match="closed"):
        publisher.send(b"p3", b"{}")
