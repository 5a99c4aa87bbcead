"""The batch pipeline on real Redis and Qdrant local mode (no broker needed): what lands in
Qdrant, what the cache saves, how versions, deletes and bad input are handled."""

from __future__ import annotations

import io
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from PIL import Image

from streams.adapters.media import local_path
from streams.settings import Settings
from streams.worker.pipeline import IncomingMessage, Pipeline, ProductClaims

pytestmark = pytest.mark.integration


@pytest.fixture
def pipeline(settings: Settings) -> Iterator[Pipeline]:
    pipeline = Pipeline.from_settings(settings)
    yield pipeline
    pipeline.close()


def messages(*events) -> list[IncomingMessage]:
    return [IncomingMessage(e.to_bytes(), e.product_id.encode()) for e in events]


def test_products_land_with_named_vectors_and_payload(pipeline, catalog):
    outcome = pipeline.process(messages(*catalog))
    assert outcome.counts["indexed"] == len(catalog)
    assert not outcome.dead_letters
    points = {p.payload["product_id"]: p for p in pipeline.store.all_points()}
    assert set(points) == {e.product_id for e in catalog}
    for event in catalog:
        point = points[event.product_id]
        assert {name: len(v) for name, v in point.vector.items()} == {"text": 384, "image": 1280, "fused": 1664}
        for vector in point.vector.values():
            assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-4)
        payload = point.payload
        assert payload["title"] == event.title
        assert payload["category"] == event.category
        assert payload["category_path"][-1] == " > ".join(event.category)
        assert payload["price"] == event.price and payload["version"] == 1
        assert payload["modalities"] == ["image", "text"] and payload["errors"] == {}
        assert set(payload["model_version"]) == {"text", "image", "video", "fusion"}


def test_price_only_update_reencodes_nothing_and_changes_payload(pipeline, catalog):
    pipeline.process(messages(*catalog))
    before = {p.payload["product_id"]: p.vector["fused"] for p in pipeline.store.all_points()}
    updates = [e.derive(version=2, price=123.0) for e in catalog]
    outcome = pipeline.process(messages(*updates))
    assert outcome.counts["encoded_text"] == 0 and outcome.counts["encoded_image"] == 0
    assert outcome.counts["payload_only"] == len(catalog)
    for point in pipeline.store.all_points():
        assert point.payload["price"] == 123.0 and point.payload["version"] == 2
        np.testing.assert_allclose(point.vector["fused"], before[point.payload["product_id"]], atol=1e-6)


def test_title_change_reencodes_only_text(pipeline, catalog):
    pipeline.process(messages(*catalog[:4]))
    outcome = pipeline.process(messages(catalog[0].derive(version=2, title="Completely new title")))
    assert outcome.counts["encoded_text"] == 1 and outcome.counts["encoded_image"] == 0
    assert outcome.counts["cache_hits_image"] == 1 and outcome.counts["payload_only"] == 0
    assert pipeline.store.get(catalog[0].product_id).payload["title"] == "Completely new title"


def test_older_and_duplicate_versions_change_nothing(pipeline, catalog):
    event = catalog[0].derive(version=5, price=50.0)
    pipeline.process(messages(event))
    indexed_at = pipeline.store.get(event.product_id).payload["indexed_at"]
    older = pipeline.process(messages(event.derive(version=4, price=1.0)))
    assert older.counts["stale_skipped"] == 1 and older.counts["indexed"] == 0
    duplicate = pipeline.process(messages(event))
    assert duplicate.counts["duplicates"] == 1 and duplicate.counts["indexed"] == 0
    payload = pipeline.store.get(event.product_id).payload
    assert (payload["price"], payload["version"], payload["indexed_at"]) == (50.0, 5, indexed_at)


def test_claims_let_disjoint_batches_run_and_make_overlapping_ones_wait():
    claims = ProductClaims()
    entered = threading.Event()

    def overlapping() -> None:
        with claims.hold(["b", "c"]):
            entered.set()

    with claims.hold(["a", "b"]):
        thread = threading.Thread(target=overlapping)
        thread.start()
        with claims.hold(["d"]):  # disjoint: taken at once, even beside a waiting claim
            pass
        assert not entered.wait(0.3)
    assert entered.wait(5.0)
    thread.join()


def test_two_batches_in_flight_on_one_product_end_on_its_newest_version(pipeline, catalog, monkeypatch):
    """The older event's batch reads first and is slow to encode; the newer one's batch must not
    read the state the older one is about to change, or the older write would land last."""
    event = catalog[0]
    pipeline.process(messages(event))
    older, newer = event.derive(version=2, title="Older title"), event.derive(version=3, title="Newest title", price=3.0)
    encode, older_encoding, newer_done = pipeline._encode, threading.Event(), threading.Event()

    def slow_for_the_older(products, counts):
        if any(p.event.version == 2 for p in products):
            older_encoding.set()
            newer_done.wait(timeout=2.0)  # without claims the newer batch finishes meanwhile
        return encode(products, counts)

    monkeypatch.setattr(pipeline, "_encode", slow_for_the_older)
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(pipeline.process, messages(older, catalog[1]))
        assert older_encoding.wait(30.0)
        second = pool.submit(pipeline.process, messages(newer, catalog[2]))
        second.result(timeout=60.0)
        newer_done.set()
        first.result(timeout=60.0)
    payload = pipeline.store.get(event.product_id).payload
    assert (payload["title"], payload["version"], payload["price"]) == ("Newest title", 3, 3.0)
    assert first.result().counts["indexed"] == 2 and second.result().counts["indexed"] == 2


def test_a_batch_is_counted_in_the_same_step_as_its_writes(pipeline, catalog):
    seen = []

    def committed(outcome):
        seen.append((outcome, pipeline.committing.locked(), pipeline.store.count()))

    outcome = pipeline.process(messages(*catalog[:3]), committed=committed)
    assert seen == [(outcome, True, 3)]


def test_highest_version_in_one_batch_wins(pipeline, catalog):
    event = catalog[0]
    outcome = pipeline.process(messages(event.derive(version=3, price=3.0), event.derive(version=2, price=2.0)))
    assert outcome.counts["indexed"] == 1 and outcome.counts["stale_skipped"] == 1
    assert pipeline.store.get(event.product_id).payload["price"] == 3.0


def test_delete_removes_the_point_and_an_older_replay_cannot_resurrect_it(pipeline, catalog):
    pipeline.process(messages(*catalog[:3]))
    delete = {"op": "delete", "product_id": catalog[0].product_id, "version": 2}
    outcome = pipeline.process([IncomingMessage(json.dumps(delete).encode())])
    assert outcome.counts["deleted"] == 1
    assert pipeline.store.get(catalog[0].product_id) is None
    assert pipeline.store.count() == 2
    replay = pipeline.process(messages(catalog[0]))  # version 1, published before the delete
    assert replay.counts["stale_skipped"] == 1 and pipeline.store.get(catalog[0].product_id) is None
    recreate = pipeline.process(messages(catalog[0].derive(version=3)))
    assert recreate.counts["indexed"] == 1 and pipeline.store.get(catalog[0].product_id) is not None


def test_a_recreated_product_loses_its_tombstone_and_other_batches_touch_none(pipeline, catalog, monkeypatch):
    pipeline.process(messages(*catalog[:2]))
    pipeline.process([IncomingMessage(json.dumps({"op": "delete", "product_id": catalog[0].product_id, "version": 2}).encode())])
    assert pipeline.tombstones.versions([catalog[0].product_id]) == {catalog[0].product_id: 2}
    deleted: list[tuple] = []
    delete = pipeline.tombstones.client.delete
    monkeypatch.setattr(pipeline.tombstones.client, "delete", lambda *keys: deleted.append(keys) or delete(*keys))
    pipeline.process(messages(catalog[1].derive(version=2, price=1.0)))  # no tombstone: no round trip
    assert deleted == []
    pipeline.process(messages(catalog[0].derive(version=3), catalog[1].derive(version=3, price=2.0)))
    assert len(deleted) == 1 and len(deleted[0]) == 1  # only the re-created product's
    assert pipeline.tombstones.versions([catalog[0].product_id]) == {}


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b"{not json", "malformed JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (json.dumps({"op": "upsert", "version": 1, "title": "x"}).encode(), "'product_id'"),
        (json.dumps({"op": "upsert", "product_id": "p", "version": "7", "title": "x"}).encode(), "'version' must be a non-negative integer"),
        (json.dumps({"op": "explode", "product_id": "p", "version": 1}).encode(), "unknown op 'explode'"),
        (json.dumps({"op": "upsert", "product_id": "p", "version": 1, "title": "x", "price": "cheap"}).encode(), "'price' must be a number"),
        (json.dumps({"op": "upsert", "product_id": "p", "version": 1}).encode(), "'title' is required"),
        (b"", "empty message"),
    ],
)
def test_bad_events_are_dead_lettered_and_the_rest_indexed(pipeline, catalog, raw, reason):
    batch = [*messages(catalog[0]), IncomingMessage(raw, b"bad"), *messages(catalog[1])]
    outcome = pipeline.process(batch)
    assert outcome.counts["indexed"] == 2
    assert len(outcome.dead_letters) == 1
    letter = outcome.dead_letters[0]
    assert letter.message.value == raw and reason in letter.reason
    assert letter.failure.code == "invalid_event"


@pytest.mark.parametrize(
    "changes, knob",
    [
        ({"category": [f"level {i}" for i in range(10_000)]}, "SHELFSTREAM_MAX_CATEGORY_LEVELS"),
        ({"title": "x" * 5_000_000}, "SHELFSTREAM_MAX_EVENT_BYTES"),
        ({"image_uris": [f"images/{i}.jpg" for i in range(100)]}, "SHELFSTREAM_MAX_IMAGE_URIS"),
    ],
)
def test_an_event_over_a_limit_is_dead_lettered_naming_it_and_nothing_is_stored(pipeline, catalog, changes, knob):
    hostile = catalog[0].derive(**changes)
    outcome = pipeline.process(messages(hostile, catalog[1]))
    assert outcome.indexed == [catalog[1].product_id]
    [letter] = outcome.dead_letters
    assert letter.failure.code == "over_limit" and letter.reason.endswith(f"({knob})")
    assert letter.message.value == hostile.to_bytes()
    assert pipeline.store.get(hostile.product_id) is None


def _enormous_png() -> bytes:
    """A real 9000 x 9000 PNG that compresses to a few kB: over the default 40 Mpixel limit."""
    buffer = io.BytesIO()
    Image.new("1", (9000, 9000)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "content, uri, code",
    [
        (None, "images/missing.jpg", "not_found"),
        (b"this is not an image", "images/text.jpg", "not_an_image"),
        ("truncate", "images/truncated.jpg", "truncated"),
        (_enormous_png(), "images/huge.png", "too_many_pixels"),
        (None, "/etc/passwd", "outside_media_root"),
    ],
)
def test_failed_image_still_indexes_the_text(pipeline, catalog, settings, content, uri, code):
    media_root = Path(settings.media_root)
    if content == "truncate":
        content = (media_root / catalog[0].image_uris[0].removeprefix("file://")).read_bytes()[:400]
    if content is not None:
        (media_root / uri).write_bytes(content)
    broken = catalog[0].derive(image_uris=[uri])
    outcome = pipeline.process(messages(broken, catalog[1]))
    assert outcome.counts["indexed"] == 2
    point = pipeline.store.get(broken.product_id, with_vectors=True)
    assert set(point.vector) == {"text", "fused"}
    assert point.payload["modalities"] == ["text"]
    assert code in point.payload["errors"]["image"]
    assert [letter.reason.split(":")[0] for letter in outcome.dead_letters] == ["image"]
    assert code in outcome.dead_letters[0].reason and outcome.dead_letters[0].failure.code == code
    assert set(pipeline.store.get(catalog[1].product_id, with_vectors=True).vector) == {"text", "image", "fused"}


def test_fused_vectors_rank_same_category_first(pipeline, catalog):
    pipeline.process(messages(*catalog))
    hits = 0
    for event in catalog:
        top = pipeline.store.recommend([event.product_id], limit=1)[0]
        hits += top.payload["category"][-1] == event.category[-1]
    random_rate = 1 / 30  # the demo catalog spreads products over 30 article types
    assert hits / len(catalog) > 5 * random_rate


def test_cache_is_addressed_by_content_not_by_product(pipeline, catalog):
    pipeline.process(messages(catalog[0]))
    twin = catalog[0].derive(product_id="twin-of-" + catalog[0].product_id)
    outcome = pipeline.process(messages(twin))
    assert outcome.counts["encoded_text"] == 0 and outcome.counts["encoded_image"] == 0
    assert outcome.counts["cache_hits_text"] == 1 and outcome.counts["cache_hits_image"] == 1
    np.testing.assert_allclose(pipeline.store.vector(twin.product_id, "fused"),
                               pipeline.store.vector(catalog[0].product_id, "fused"), atol=1e-6)


@pytest.fixture
def clip(settings, catalog) -> str:
    """A real h264 clip of the first product's photo, inside the media root."""
    from streams.tools.videogen import make_clip

    media_root = Path(settings.media_root)
    with Image.open(media_root / "images" / Path(catalog[0].image_uris[0]).name) as image:
        make_clip([image.convert("RGB")], media_root / "clip.mp4", codec="h264", seconds=2.0)
    return "clip.mp4"


def test_a_video_becomes_a_named_vector_near_its_own_image(pipeline, catalog, clip):
    outcome = pipeline.process(messages(catalog[0].derive(video_uri=clip), *catalog[1:10]))
    assert outcome.counts["encoded_video"] == 1 and not outcome.dead_letters
    point = pipeline.store.get(catalog[0].product_id, with_vectors=True)
    assert set(point.vector) == {"text", "image", "video", "fused"}
    assert point.payload["modalities"] == ["image", "text", "video"]
    video = np.asarray(point.vector["video"])
    hits = pipeline.store.search("image", video, 3)
    assert hits[0].product_id == catalog[0].product_id
    assert set(pipeline.store.get(catalog[1].product_id, with_vectors=True).vector) == {"text", "image", "fused"}


def test_the_same_video_is_decoded_once(pipeline, catalog, clip):
    pipeline.process(messages(catalog[0].derive(video_uri=clip)))
    outcome = pipeline.process(messages(catalog[1].derive(video_uri=clip)))
    assert outcome.counts["encoded_video"] == 0 and outcome.counts["cache_hits_video"] == 1
    assert "video" in pipeline.store.get(catalog[1].product_id, with_vectors=True).vector


@pytest.mark.parametrize(
    "content, code",
    [(b"", "empty"), (b"\x00garbage" * 1000, "not_a_video"), ("jpeg", "not_a_video"), ("truncated", "not_a_video")],
)
def test_a_bad_video_leaves_the_other_modalities_indexed(pipeline, catalog, settings, clip, content, code):
    media_root = Path(settings.media_root)
    if content == "jpeg":
        content = (media_root / "images" / Path(catalog[0].image_uris[0]).name).read_bytes()
    elif content == "truncated":
        content = (media_root / clip).read_bytes()[:2000]
    (media_root / "bad.mp4").write_bytes(content)
    outcome = pipeline.process(messages(catalog[0].derive(video_uri="bad.mp4"), catalog[1]))
    assert outcome.counts["indexed"] == 2
    point = pipeline.store.get(catalog[0].product_id, with_vectors=True)
    assert set(point.vector) == {"text", "image", "fused"}
    assert code in point.payload["errors"]["video"]
    assert [letter.reason.split(":")[0] for letter in outcome.dead_letters] == ["video"]
    # the event is not retried: republishing the same version is a duplicate
    again = pipeline.process(messages(catalog[0].derive(video_uri="bad.mp4")))
    assert again.counts["duplicates"] == 1 and again.counts["indexed"] == 0


def test_an_oversized_video_is_refused_before_decoding(settings, catalog, clip):
    import dataclasses

    small = dataclasses.replace(settings, max_video_bytes=1000)
    pipeline = Pipeline.from_settings(small)
    try:
        outcome = pipeline.process(messages(catalog[0].derive(video_uri=clip)))
        assert outcome.counts["encoded_video"] == 0
        assert "too_large" in pipeline.store.get(catalog[0].product_id).payload["errors"]["video"]
    finally:
        pipeline.close()


def test_search_by_video_finds_the_product_by_its_video_or_its_photo(pipeline, catalog, settings, clip):
    from streams.worker.search import Page, Searcher

    pipeline.process(messages(catalog[0].derive(video_uri=clip), *catalog[1:20]))
    searcher = Searcher(pipeline.store, pipeline.encoders, settings.max_image_pixels)
    data = (Path(settings.media_root) / clip).read_bytes()
    assert searcher.by_video(data, page=Page(3))[0].product_id == catalog[0].product_id
    # without a video stored, the photo alone still matches the clip
    pipeline.process(messages(catalog[0].derive(version=2, video_uri=None)))
    assert "video" not in pipeline.store.get(catalog[0].product_id, with_vectors=True).vector
    assert searcher.by_video(data, page=Page(3))[0].product_id == catalog[0].product_id


def test_a_delete_wins_a_tie_with_the_stored_version(pipeline, catalog):
    pipeline.process(messages(catalog[0].derive(version=5)))
    delete = {"op": "delete", "product_id": catalog[0].product_id, "version": 5}
    outcome = pipeline.process([IncomingMessage(json.dumps(delete).encode())])
    assert outcome.counts["deleted"] == 1 and pipeline.store.get(catalog[0].product_id) is None
    again = pipeline.process([IncomingMessage(json.dumps(delete).encode())])
    assert again.counts["duplicates"] == 1 and again.counts["deleted"] == 0


def test_a_price_update_keeps_the_decode_error_in_the_payload(pipeline, catalog, settings):
    (Path(settings.media_root) / "images" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff" + b"\x00" * 500)
    broken = catalog[0].derive(image_uris=["images/corrupt.jpg"])
    pipeline.process(messages(broken))
    error = pipeline.store.get(broken.product_id).payload["errors"]["image"]
    outcome = pipeline.process(messages(broken.derive(version=2, price=1.0)))
    assert outcome.counts["payload_only"] == 1
    payload = pipeline.store.get(broken.product_id).payload
    assert payload["price"] == 1.0 and payload["errors"] == {"image": error} and payload["modalities"] == ["text"]


def test_a_new_photo_under_the_same_uri_is_reencoded_and_an_unchanged_one_is_not_read(pipeline, catalog, settings, monkeypatch):
    """Local files known unchanged by their identity are not read again (a price update would read
    every photo); a file rewritten in place is, and its new content is encoded."""
    pipeline.process(messages(catalog[0], catalog[1]))
    product = catalog[0]
    before = pipeline.store.vector(product.product_id, "image")
    reads: list[str] = []
    read = pipeline._local.read
    monkeypatch.setattr(pipeline._local, "read", lambda path, limits: reads.append(path) or read(path, limits))

    outcome = pipeline.process(messages(product.derive(version=2, price=1.0)))
    assert outcome.counts["payload_only"] == 1 and reads == []

    photo = Path(local_path(product.image_uris[0]))
    photo.write_bytes(Path(local_path(catalog[1].image_uris[0])).read_bytes())  # another product's photo
    outcome = pipeline.process(messages(product.derive(version=3, price=1.0)))
    assert reads == [str(photo)] and outcome.counts["payload_only"] == 0
    assert outcome.counts["cache_hits_image"] == 1  # the other product's photo is in the cache already
    after = pipeline.store.vector(product.product_id, "image")
    np.testing.assert_allclose(after, pipeline.store.vector(catalog[1].product_id, "image"), atol=1e-5)
    assert float(np.dot(before, after)) < 0.99


def test_a_photo_spared_by_its_digest_is_read_when_the_cache_misses(pipeline, catalog, settings):
    """A new title with an unchanged photo whose vector left the cache: the photo is read then,
    and a photo that changed in the meantime is a retried ``changed`` failure, not a stale vector."""
    product = catalog[0]
    pipeline.process(messages(product))
    image = pipeline.store.vector(product.product_id, "image")
    pipeline.cache.client.flushdb()
    outcome = pipeline.process(messages(product.derive(version=2, title="A new title")))
    assert outcome.counts["encoded_image"] == 1 and not outcome.failures
    np.testing.assert_allclose(pipeline.store.vector(product.product_id, "image"), image, atol=1e-5)

    pipeline.cache.client.flushdb()
    known = pipeline._local.known
    photo = Path(local_path(product.image_uris[0]))

    def known_then_changed(path, limits):  # the file changes between the fingerprint and the encoder
        digest = known(path, limits)
        assert digest is not None
        photo.write_bytes(Path(local_path(catalog[1].image_uris[0])).read_bytes())
        return digest

    pipeline._local.known = known_then_changed
    outcome = pipeline.process(messages(product.derive(version=3, title="Another title")))
    assert [f.code for f in outcome.failures[product.product_id]] == ["changed"]
    assert [r.failure.code for r in outcome.retries] == ["changed"] and not outcome.dead_letters
