"""``shelfstream bench``: encoder-only throughput against the whole pipeline, measured side by side
in one run on the same machine, plus price-only updates and freshness.

Phases, each on products the previous phases did not see:
1. encoders alone: decode + preprocess + encode text and image at the worker's batch size;
2. end to end: publish N new products to Kafka, time until all N are in Qdrant;
3. price-only updates of the same N products, PRICE_ROUNDS rounds (encoders must stay idle);
4. freshness: new products published at a steady half of the measured end-to-end rate, event
   time to visible in Qdrant, p50 and p99 (a burst would measure queueing, not freshness).
"""

from __future__ import annotations

import dataclasses
from itertools import islice
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from encoders_onnx.video import VideoLimits, bench_video
from streams.cache import FeatureCache
from streams.events import ProductEvent
from streams.media import MediaLimits, fetch_bytes, load_image
from streams.models import Models, load_models
from streams.publish import EventPublisher, catalog_events, load_mapping, publish_events, publish_raw
from streams.runner import WorkerProcess, encoded_count
from streams.settings import Settings

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATASET = REPO.parent / "shared" / "datasets" / "myntra-fashion-small"
DEFAULT_MAPPING = REPO / "demo" / "catalog" / "mapping.json"
WARMUP = 32
FRESHNESS_PRODUCTS = 150
PRICE_ROUNDS = 5  # price updates are fast: several rounds make a stream long enough to measure


def run_bench(settings: Settings, dataset: Path | None, n: int, quiet: bool = False,
              mapping_path: Path = DEFAULT_MAPPING) -> dict[str, Any]:
    from infra.services import start_services, stop_services

    dataset = (dataset or DEFAULT_DATASET).resolve()
    catalog = dataset / "products.csv"
    if not catalog.exists():
        raise FileNotFoundError(f"no catalog at {catalog}: pass --dataset DIR (a folder with products.csv)")
    say = (lambda *_: None) if quiet else (lambda *parts: print(*parts, file=sys.stderr, flush=True))
    events = list(islice(catalog_events(catalog, load_mapping(str(mapping_path)), version=1), WARMUP + n + FRESHNESS_PRODUCTS))
    if len(events) < WARMUP + n + FRESHNESS_PRODUCTS:
        raise ValueError(f"{catalog} has {len(events)} usable products; the benchmark needs {WARMUP + n + FRESHNESS_PRODUCTS}")
    warmup, measured, fresh = events[:WARMUP], events[WARMUP:WARMUP + n], events[WARMUP + n:]

    bench_settings = dataclasses.replace(settings, media_root=str(dataset))
    say(f"[1/4] encoders alone on {n} products (batch {settings.batch_size})")
    models = load_models(bench_settings)
    encoder_rate = measure_encoders(bench_settings, models, measured)
    say("      video: decode + sample + encode of a 5 s 320x240 clip")
    video = bench_video(models.image, VideoLimits.from_settings(settings), pooling=settings.video_pooling)

    state_dir = settings.state_path / "bench"
    shutil.rmtree(state_dir / "qdrant", ignore_errors=True)
    services = start_services(state_dir)
    bench_settings = dataclasses.replace(
        bench_settings, state_dir=str(state_dir), kafka_bootstrap=services["kafka_bootstrap"],
        redis_url=services["redis_url"], qdrant_url="", qdrant_path=str(state_dir / "qdrant"),
        app_id=f"shelfstream-bench-{uuid.uuid4().hex[:8]}", events_topic=f"bench-{uuid.uuid4().hex[:8]}.events",
    )
    FeatureCache(bench_settings.redis_url).client.flushdb()
    try:
        with WorkerProcess(bench_settings, state_dir / "logs" / "worker.log") as worker:
            publish_events(bench_settings, warmup)
            worker.wait_until(lambda s: s["points"] >= WARMUP, 300, "the worker to join and index the warm-up")

            say(f"[2/4] end to end: {n} new products through Kafka, Faust, Redis and Qdrant")
            e2e_rate = _timed_rate(bench_settings, worker, measured, lambda s: s["points"] >= WARMUP + n)

            say(f"[3/4] price-only updates: {PRICE_ROUNDS} rounds over the same {n} products")
            updates = [e.derive(version=1 + r, price=round((e.price or 100.0) * (1 - r / 100), 2))
                       for r in range(1, PRICE_ROUNDS + 1) for e in measured]
            indexed = WARMUP + n + len(updates)
            encoded_before = encoded_count(worker.stats())
            update_rate = _timed_rate(bench_settings, worker, updates, lambda s: s["counts"].get("indexed", 0) >= indexed)
            encoded_on_update = encoded_count(worker.stats()) - encoded_before

            pace = e2e_rate / 2
            say(f"[4/4] freshness: {len(fresh)} new products at a steady {pace:.0f}/s")
            worker.stats_reset()
            with EventPublisher(bench_settings) as publisher:
                for event in fresh:
                    publisher.send_event(event.derive(event_time=time.time()))
                    time.sleep(1.0 / pace)
            stats = worker.wait_until(lambda s: s["points"] >= WARMUP + n + len(fresh), 300, "the freshness products")
    finally:
        stop_services(state_dir)
    return {
        "machine": _machine(),
        "products": n,
        "batch_size": settings.batch_size,
        "encoder_items_per_s": round(encoder_rate, 1),
        "e2e_items_per_s": round(e2e_rate, 1),
        "e2e_over_encoder": round(e2e_rate / encoder_rate, 3),
        "price_update_items_per_s": round(update_rate, 1),
        "update_over_create": round(update_rate / e2e_rate, 2),
        "encoded_by_price_updates": encoded_on_update,
        "freshness_p50_ms": round(stats["freshness_p50_ms"], 1),
        "freshness_p99_ms": round(stats["freshness_p99_ms"], 1),
        **{key: round(value, 1) for key, value in video.items()},
    }


def measure_encoders(settings: Settings, models: Models, events: list[ProductEvent]) -> float:
    """Items per second through image decoding + preprocessing + both encoders, in the worker's
    batches; reading the files is left out (the pipeline overlaps it with other work)."""
    limits = MediaLimits.for_images(settings)
    images = [fetch_bytes(e.image_uris[0], limits) for e in events]
    models.text.encode([events[0].text])  # first-run allocations out of the timing
    started = time.perf_counter()
    for i in range(0, len(events), settings.batch_size):
        batch = events[i:i + settings.batch_size]
        models.text.encode([e.text for e in batch], batch_size=settings.batch_size)
        decoded = [load_image(data, settings.max_image_pixels) for data in images[i:i + settings.batch_size]]
        models.image.encode(decoded, batch_size=settings.batch_size)
    return len(events) / (time.perf_counter() - started)


def _timed_rate(settings: Settings, worker: WorkerProcess, events: list[ProductEvent], done: Any) -> float:
    """Events per second from the first publish until ``done(stats)``; the events are serialized
    before the clock starts (building them is the benchmark's cost, not the pipeline's)."""
    now = time.time()
    records = [(e.product_id.encode(), e.derive(event_time=now).to_bytes()) for e in events]
    started = time.perf_counter()
    publish_raw(settings, records)
    worker.wait_until(done, 1800, f"{len(events)} events", poll_s=0.1)
    return len(events) / (time.perf_counter() - started)


def _machine() -> str:
    import os
    import platform

    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
