"""The one catalog reader: relative dataset paths, bad lines reported and skipped, missing columns
and unreadable media named with the flag that fixes them. No torch, no services."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from exporters.catalog import CatalogMapping, load_catalog


def _shop(folder: Path) -> Path:
    (folder / "images").mkdir(parents=True)
    for product_id in ("1", "2"):
        (folder / "images" / f"{product_id}.jpg").write_bytes(b"jpeg")
    (folder / "products.csv").write_text("id,name,kind\n1,Shirt,Tops\n2,Jeans,Bottoms\n")
    return folder


def test_a_relative_dataset_path_finds_the_images_once_prefixed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _shop(tmp_path / "shared" / "shop")
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    catalog = load_catalog("../shared/shop", CatalogMapping(title="name", fine=("kind",), image="images/{id}.jpg"))
    assert [p.image for p in catalog.products] == [Path("../shared/shop/images/1.jpg"), Path("../shared/shop/images/2.jpg")]
    assert all(p.image.is_file() for p in catalog.products)
    catalog.check_media()


def test_no_readable_image_names_the_path_tried_and_the_flags(tmp_path: Path) -> None:
    _shop(tmp_path)
    catalog = load_catalog(tmp_path, CatalogMapping(title="name", fine=("kind",), image="pics/{id}.png"))
    with pytest.raises(ValueError) as info:
        catalog.check_media()
    message = str(info.value)
    assert f"first tried: {tmp_path / 'pics' / '1.png'}" in message
    assert "fix --image (now 'pics/{id}.png') or --media-root" in message


def test_a_bad_jsonl_line_is_reported_and_skipped(tmp_path: Path) -> None:
    lines = [json.dumps({"id": "a", "title": "Lamp", "category": "Home"}), '{"id": "b", "title": ', "[1, 2]",
             json.dumps({"id": "", "title": "No id", "category": "Home"}), json.dumps({"id": "c", "title": "Desk"})]
    (tmp_path / "items.ndjson").write_text("\n".join(lines) + "\n")
    errors: list[tuple[int, str]] = []
    catalog = load_catalog(tmp_path / "items.ndjson", CatalogMapping(image=None),
                           on_error=lambda number, why: errors.append((number, why)))
    assert catalog.ids == ["a"]
    assert [number for number, _ in errors] == [2, 3, 4, 5]
    assert "not valid JSON" in errors[0][1] and errors[1][1] == "not a JSON object but list"
    assert errors[2][1] == "empty product id" and errors[3][1] == "column 'category' is missing"


def test_a_missing_csv_column_lists_the_files_columns(tmp_path: Path) -> None:
    _shop(tmp_path)
    with pytest.raises(ValueError, match=r"column 'title' is missing \(nor 'image', 'category'\); the file's columns: id, name, kind"):
        load_catalog(tmp_path, CatalogMapping())


def test_publish_spellings_of_event_fields_are_the_same_keys(tmp_path: Path) -> None:
    mapping = CatalogMapping.from_dict({"product_id": "sku", "image_uris": "photo", "video_uri": "clip", "fine": "kind"})
    assert (mapping.id, mapping.image, mapping.video, mapping.fine) == ("sku", "photo", "clip", ("kind",))
