"""``shelfstream demo``: the whole path on embedded services with the sample catalog shipped in
``demo/catalog``: start services, publish, wait until every product is in Qdrant, query, update a
price (re-encoding nothing), stop what it started.

The demo runs the int8 encoders unless ``SHELFSTREAM_PRECISION`` says otherwise: with the default
fusion it serves they encode 1.7-1.8x the products a second of fp32, item-to-item quality within
0.02 (text-to-image through a learned bundle loses more: README, int8 encoders)."""

from __future__ import annotations

import dataclasses
import shutil
import time
import uuid
from pathlib import Path

from encoders_onnx.image import IMAGE_MODEL
from encoders_onnx.session import FP32, INT8, exported_manifest, model_name
from encoders_onnx.text import TEXT_MODEL
from streams.settings import Settings, is_set
from streams.tools.client import Client, format_table
from streams.tools.publish import catalog_events, load_mapping, publish_events
from streams.tools.runner import WorkerProcess, encoded_count
from streams.tools.videogen import catalog_products, make_videos

REPO = Path(__file__).resolve().parents[2]
CATALOG = REPO / "demo" / "catalog"
TEXT_QUERIES = ("red running shoes", "red handbag for women", "women's black handbag")
VIDEO_PRODUCTS = 20  # products that get a generated clip (no real product video exists here)


DEMO_PRECISION = INT8


def ensure_exported(model_dir: Path, precision: str = FP32, image_statistics: float = 0.0) -> None:
    """Export the encoders if they are missing; torch (the export extra) is imported only then."""
    if all(exported_manifest(model_dir, model_name(name, precision)) for name in (TEXT_MODEL, IMAGE_MODEL)):
        return
    try:
        from exporters.encoders import ensure_models
    except ImportError as exc:
        raise RuntimeError(f"no exported models in {model_dir} and no torch to export them ({exc}): "
                           "pip install -e '.[export]' and run `shelfstream export`") from None
    ensure_models(model_dir, image_statistics)


def run_demo(settings: Settings, catalog: Path = CATALOG) -> int:
    from infra.services import start_services, stop_services

    state_dir = settings.state_path / "demo"
    shutil.rmtree(state_dir / "qdrant", ignore_errors=True)
    precision = settings.precision if is_set("precision") else DEMO_PRECISION
    ensure_exported(Path(settings.model_dir), precision, settings.image_statistics)
    print(f"starting embedded services in {state_dir}; encoders at {precision}")
    services = start_services(state_dir)
    demo = dataclasses.replace(
        settings,
        state_dir=str(state_dir),
        kafka_bootstrap=services["kafka_bootstrap"],
        redis_url=services["redis_url"],
        qdrant_url="",
        qdrant_path=str(state_dir / "qdrant"),
        media_root=str(catalog),
        app_id=f"shelfstream-demo-{uuid.uuid4().hex[:8]}",
        precision=precision,
    )
    try:
        with WorkerProcess(demo, state_dir / "logs" / "worker.log") as worker:
            return _run(demo, worker, catalog)
    finally:
        stop_services(state_dir)


def _run(settings: Settings, worker: WorkerProcess, catalog: Path) -> int:
    mapping = load_mapping(str(catalog / "mapping.json"))
    events = list(catalog_events(catalog / "products.csv", mapping, version=1))
    clips = dict(make_videos(catalog_products(catalog / "products.csv"), catalog / "videos",
                             codecs=("h264", "vp9"), count=VIDEO_PRODUCTS, seconds=3.0))
    print(f"made {len(clips)} product clips (h264, vp9) in {catalog / 'videos'}")
    events = [e.derive(video_uri=clips[e.product_id].as_uri()) if e.product_id in clips else e for e in events]
    report = publish_events(settings, events, total=len(events), progress=True)
    print(report.line(settings.events_topic))
    started = time.monotonic()
    stats = worker.wait_until(lambda s: s["points"] >= len(events), 600, f"{len(events)} products in Qdrant")
    print(f"indexed {stats['points']} products in {time.monotonic() - started:.1f} s "
          f"(freshness p50 {stats['freshness_p50_ms']:.0f} ms): {stats['counts']}")

    with Client.remote(settings) as client:
        queries = _queries(client, events, clips)

    product = events[0]
    updated = product.derive(version=2, price=round((product.price or 0) * 0.8), event_time=time.time())
    before = worker.stats()
    publish_events(settings, [updated])
    after = worker.wait_until(lambda s: s["counts"].get("indexed", 0) > before["counts"].get("indexed", 0), 120,
                              "the price update")
    encoded = encoded_count(after) - encoded_count(before)
    print(f"\nprice cut for {product.product_id}: {product.price} -> {updated.price:.0f}, re-encoded {encoded} modalities")
    print(f"\ndemo ok: {after['points']} products indexed, {queries} queries answered")
    return 0


def _queries(client: Client, events: list, clips: dict) -> int:
    """Every kind of query the API answers, each hit explained by its per-modality scores."""
    asked: list[tuple[str, dict]] = [
        (f"similar to {e.product_id} {e.title!r}", {"type": "similar", "product_id": e.product_id, "limit": 5})
        for e in events[:2]
    ]
    asked += [(f"search {text!r} (default mode)", {"type": "text", "text": text, "limit": 5}) for text in TEXT_QUERIES]
    asked.append(("search 'red running shoes' (keyword mode)", {"type": "text", "text": "red running shoes", "mode": "keyword", "limit": 5}))
    clip_owner, clip = next(iter(clips.items()))
    asked.append((f"search by the video of {clip_owner} ({clip.name})", {"type": "video", "file": clip.read_bytes(), "limit": 5}))
    asked.append(("search 'watch' under 1000 INR in accessories, for women",
                  {"type": "text", "text": "watch", "limit": 5,
                   "filter": {"category": "accessories", "price_max": 1000, "attributes": {"gender": "Women"}}}))
    liked, disliked = events[0].product_id, events[1].product_id
    asked.append((f"recommended: like {liked}, unlike {disliked}",
                  {"type": "recommend", "positive": [liked], "negative": [disliked], "limit": 5}))
    for title, query in asked:
        print(f"\n{title}:")
        print(format_table(client.query(query)["hits"]))
    return len(asked)
