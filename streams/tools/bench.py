"""``shelfstream bench``: encoder-only throughput against the whole pipeline, measured side by side
in one run on the same machine, plus price-only updates and freshness.

Phases, each on products the previous phases did not see:
1. encoders alone: decode + preprocess + encode text and image at the worker's batch size, the
   precisions (fp32, int8) taking turns batch by batch, so ``int8_over_fp32`` is a same-run ratio;
   then the naive baseline on the same products (``bench_naive``: torch, one product at a time,
   one qdrant-client upsert each): ``speedup_over_naive`` = end-to-end rate / naive rate;
2. end to end: publish N new products to Kafka, time until all N are in Qdrant;
3. price-only updates of the same N products, PRICE_ROUNDS rounds (encoders must stay idle);
4. freshness: new products published at a steady half of the measured end-to-end rate, event
   time to visible in Qdrant, p50 and p99 (a burst would measure queueing, not freshness);
5. shopper profiles (``streams.tools.interactions.bench_profiles``): interaction throughput,
   profile freshness under a steady load, recommendation latency;
6. the encoders alone again, once the worker is gone: ``e2e_over_encoder`` divides by the mean of
   phases 1 and 6, so that the machine's drift between them cancels.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import tempfile
import time
import uuid
from itertools import islice
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image

from encoders_onnx.decoding import load_image
from encoders_onnx.image import ImageEncoder
from encoders_onnx.session import FP32, INT8, PRECISIONS
from encoders_onnx.video import Pooling, VideoEncoder, VideoLimits
from infra.services import cpu_seconds
from streams.adapters.cache import FeatureCache
from streams.adapters.media import MediaLimits, fetch_bytes
from streams.schema.events import ProductEvent
from streams.settings import Settings
from streams.tools.bench_naive import naive_items_per_s
from streams.tools.interactions import bench_profiles
from streams.tools.publish import EventPublisher, catalog_events, load_mapping, publish_events
from streams.tools.runner import WorkerProcess, encoded_count
from streams.tools.videogen import make_clip
from streams.worker.encoders import Encoders, load_encoders

REPO = Path(__file__).resolve().parents[2]
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
    say(f"[1/6] encoders alone on {n} products (batch {settings.batch_size}), fp32 and int8 side by side")
    loaded = {p: load_encoders(dataclasses.replace(bench_settings, precision=p)) for p in PRECISIONS}
    precision_rates = measure_encoders(bench_settings, loaded, measured)
    encoders = loaded[settings.precision]
    say(f"      naive baseline: the same {n} products one at a time (torch, one qdrant-client upsert each)")
    naive_rate = naive_items_per_s(bench_settings, measured)
    say("      video: decode + sample + encode of a 5 s 320x240 clip")
    video = bench_video(encoders.image, VideoLimits.from_settings(settings), pooling=settings.video_pooling)

    state_dir = settings.state_path / "bench"
    shutil.rmtree(state_dir / "qdrant", ignore_errors=True)
    services = start_services(state_dir)
    bench_settings = dataclasses.replace(
        bench_settings, state_dir=str(state_dir), kafka_bootstrap=services["kafka_bootstrap"],
        redis_url=services["redis_url"], qdrant_url="", qdrant_path=str(state_dir / "qdrant"),
        app_id=f"shelfstream-bench-{uuid.uuid4().hex[:8]}", events_topic=f"bench-{uuid.uuid4().hex[:8]}.events",
        interactions_topic=f"bench-{uuid.uuid4().hex[:8]}.interactions",
    )
    FeatureCache(bench_settings.redis_url).client.flushdb()
    try:
        with WorkerProcess(bench_settings, state_dir / "logs" / "worker.log") as worker:
            publish_events(bench_settings, warmup)
            worker.wait_until(lambda s: s["points"] >= WARMUP, 300, "the worker to join and index the warm-up")

            say(f"[2/6] end to end: {n} new products through Kafka, Faust, Redis and Qdrant")
            processes = {"worker": worker.pid, "bench": os.getpid(),
                         **{name: record["pid"] for name, record in services["services"].items()}}
            with CoresBusy(processes) as e2e_cores:
                e2e_rate = _timed_rate(bench_settings, worker, measured, lambda s: s["points"] >= WARMUP + n)

            say(f"[3/6] price-only updates: {PRICE_ROUNDS} rounds over the same {n} products")
            updates = [e.derive(version=1 + r, price=round((e.price or 100.0) * (1 - r / 100), 2))
                       for r in range(1, PRICE_ROUNDS + 1) for e in measured]
            indexed = WARMUP + n + len(updates)
            encoded_before = encoded_count(worker.stats())
            update_rate = _timed_rate(bench_settings, worker, updates, lambda s: s["counts"].get("indexed", 0) >= indexed)
            encoded_on_update = encoded_count(worker.stats()) - encoded_before

            pace = e2e_rate / 2
            say(f"[4/6] freshness: {len(fresh)} new products at a steady {pace:.0f}/s")
            worker.stats_reset()
            with EventPublisher(bench_settings) as publisher:
                for event in fresh:
                    publisher.send_event(event.derive(event_time=time.time()))
                    time.sleep(1.0 / pace)
            stats = worker.wait_until(lambda s: s["points"] >= WARMUP + n + len(fresh), 300, "the freshness products")

            say("[5/6] shopper profiles: interaction burst, profile freshness under steady load, recommendations")
            profiles = bench_profiles(bench_settings, worker.wait_until, [e.product_id for e in measured])
    finally:
        stop_services(state_dir)
    # the encoders alone once more, now that the worker is gone: the end-to-end rate is compared
    # with the mean of before and after, so that the machine's drift over these minutes cancels
    say(f"[6/6] encoders alone again on the same {n} products, the worker stopped")
    encoders_after = measure_encoders(bench_settings, {settings.precision: encoders}, measured)[settings.precision]
    encoder_rate = (precision_rates[settings.precision] + encoders_after) / 2
    return {
        "machine": _machine(),
        "products": n,
        "batch_size": settings.batch_size,
        "precision": settings.precision,
        "encoder_items_per_s": round(encoder_rate, 1),
        "encoder_items_per_s_before_after": [round(precision_rates[settings.precision], 1), round(encoders_after, 1)],
        **{f"encoder_items_per_s_{p}": round(rate, 1) for p, rate in precision_rates.items()},
        "int8_over_fp32": round(precision_rates[INT8] / precision_rates[FP32], 2),
        "e2e_items_per_s": round(e2e_rate, 1),
        "e2e_over_encoder": round(e2e_rate / encoder_rate, 3),
        "e2e_cores_busy": e2e_cores.shares,
        "naive_items_per_s": round(naive_rate, 1),
        "speedup_over_naive": round(e2e_rate / naive_rate, 2),
        "price_update_items_per_s": round(update_rate, 1),
        "update_over_create": round(update_rate / e2e_rate, 2),
        "encoded_by_price_updates": encoded_on_update,
        "freshness_p50_ms": round(stats["freshness_p50_ms"], 1),
        "freshness_p99_ms": round(stats["freshness_p99_ms"], 1),
        **{key: round(value, 1) for key, value in video.items()},
        **profiles,
    }


def measure_encoders(settings: Settings, encoders: Mapping[str, Encoders], events: list[ProductEvent]) -> dict[str, float]:
    """Items per second of each set of encoders (by precision) through image decoding +
    preprocessing + both encoders, in the worker's batches; reading the files is left out (the
    pipeline overlaps it with other work). The sets take turns batch by batch, so that the
    machine's drift (~10% from one minute to the next on 2 shared cores) falls on each alike."""
    limits = MediaLimits.for_images(settings)
    images = [fetch_bytes(e.image_uris[0], limits) for e in events]
    spent = dict.fromkeys(encoders, 0.0)
    for each in encoders.values():
        each.text.encode([events[0].text])  # first-run allocations out of the timing
    for i in range(0, len(events), settings.batch_size):
        batch = events[i:i + settings.batch_size]
        for precision, each in encoders.items():
            started = time.perf_counter()
            each.text.encode([e.text for e in batch], batch_size=settings.batch_size)
            decoded = [load_image(data, settings.max_image_pixels) for data in images[i:i + settings.batch_size]]
            each.image.encode(decoded, batch_size=settings.batch_size)
            spent[precision] += time.perf_counter() - started
    return {precision: len(events) / seconds for precision, seconds in spent.items()}


def _timed_rate(settings: Settings, worker: WorkerProcess, events: list[ProductEvent], done: Any) -> float:
    """Events per second from the first publish until the worker's batch that made ``done(stats)``
    true ended (its own wall clock, same machine). The events are serialized and the producer
    connected before the clock starts: building events and a client's setup (topic check,
    producer id: ~0.3-1 s on the embedded broker) are the benchmark's cost, not the pipeline's.
    ``/stats`` is polled once a second: polling at 10 Hz, to time the end by it, took ~0.1 of the
    2 cores from the worker being measured."""
    now = time.time()
    records = [(e.product_id.encode(), e.derive(event_time=now).to_bytes()) for e in events]
    publisher = EventPublisher(settings)
    publisher.producer.list_topics(publisher.topic, timeout=10)  # connected, metadata in hand
    started = time.time()
    for key, value in records:
        publisher.send(key, value)
    publisher.close()  # every event acknowledged; an idle producer would only take CPU from the worker
    stats = worker.wait_until(done, 1800, f"{len(events)} events", poll_s=1.0)
    return len(events) / (stats["last_batch_at"] - started)


class CoresBusy:
    """Cores each process kept busy, on average, over the ``with`` block's wall time: where the
    machine's two cores went during the end-to-end phase (the encoders alone have both)."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self.pids = dict(pids)
        self.shares: dict[str, float] = {}

    def __enter__(self) -> "CoresBusy":
        self._before = {name: cpu_seconds(pid) or 0.0 for name, pid in self.pids.items()}
        self._started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self._started
        self.shares = {name: round(((cpu_seconds(pid) or 0.0) - self._before[name]) / wall, 2)
                       for name, pid in self.pids.items()}


def _machine() -> str:
    """Architecture, CPU model and its int8 dot-product instructions (VNNI, AMX): without them
    onnxruntime's int8 kernels gain far less over fp32 (measured: 2.0x with AVX-512 VNNI, 1.4x
    on AVX2 alone), so an ``int8_over_fp32`` means little without this line."""
    import platform

    model, flags = cpu_info()
    int8 = sorted(flags & {"avx512_vnni", "avx_vnni", "amx_int8"}) or ["no VNNI/AMX"]
    return (f"{platform.machine()}, {model}, {os.cpu_count()} cores, int8: {' '.join(int8)}, "
            f"Python {platform.python_version()}")


def cpu_info(cpuinfo: Path = Path("/proc/cpuinfo")) -> tuple[str, set[str]]:
    """The CPU's model name and flags from ``/proc/cpuinfo`` (Linux); ("unknown CPU", {}) elsewhere."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return "unknown CPU", set()
    fields = dict(line.split(":", 1) for line in text.split("\n\n")[0].splitlines() if ":" in line)
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    return fields.get("model name", "unknown CPU"), set(fields.get("flags", "").split())


# -- video: one clip at a time -------------------------------------------------------------


def bench_video(
    image_encoder: ImageEncoder,
    limits: VideoLimits,
    n: int = 30,
    images: Sequence[Image.Image] | None = None,
    pooling: Pooling | str = "mean",
    batch: int = 8,
) -> dict[str, float]:
    """``video_ms_p50`` / ``video_ms_p99``: decode + sample + encode of one 5 s 320x240 h264 clip of
    3 shots, one video at a time; ``video_items_per_s``: the same clip through ``encode_many`` in
    batches of ``batch``, as the worker runs it. ``images`` default to the first 3 Myntra photos."""
    encoder = VideoEncoder(image_encoder, limits, pooling)
    clip = _bench_clip(images if images is not None else _myntra_images(3))
    encoder.encode(clip)  # warm-up: onnxruntime allocations, decoder init
    latencies = []
    for _ in range(n):
        started = time.perf_counter()
        encoder.encode(clip)
        latencies.append((time.perf_counter() - started) * 1000)
    started = time.perf_counter()
    for first in range(0, n, batch):
        encoder.encode_many([clip] * min(batch, n - first))
    elapsed = time.perf_counter() - started
    return {
        "video_ms_p50": float(np.percentile(latencies, 50)),
        "video_ms_p99": float(np.percentile(latencies, 99)),
        "video_items_per_s": n / elapsed,
    }


def _bench_clip(images: Sequence[Image.Image]) -> bytes:
    """The benchmark's clip, written to a temporary file by the test-clip generator."""
    with tempfile.TemporaryDirectory() as tmp:
        return make_clip(images, Path(tmp) / "bench.mp4", codec="h264", seconds=5.0, size=(320, 240)).read_bytes()


def _myntra_images(count: int) -> list[Image.Image]:
    """The first ``count`` Myntra product photos (the shared dataset the benchmark is defined on)."""
    folder = DEFAULT_DATASET / "images"
    paths = sorted(folder.glob("*.jpg"))[:count]
    if len(paths) < count:
        raise FileNotFoundError(f"bench_video needs {count} Myntra images in {folder}; pass images= instead")
    return [Image.open(path).convert("RGB") for path in paths]
