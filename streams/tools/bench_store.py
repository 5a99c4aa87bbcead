"""``shelfstream bench --store``: the product store alone, Qdrant Edge against qdrant-client's
local mode, side by side in one run on the same machine.

Points have the real schema (named vectors text 384, image 1280, video 1280 (left empty), fused
1664, the keywords sparse vector, the pipeline's payload keys) with random unit vectors: this
measures the store, not the encoders. Queries are timed one at a time, as a query API issues them:

- ``query``: top-10 on ``fused``; ``filtered_query``: with a category (any level), then with a
  price range; ``similar``: what the worker's similar-item query does, timed through the query
  API over HTTP (``streams.worker.api`` served by uvicorn on a free port against the bench's
  store), unfiltered and with a category filter.
- Edge is measured before ``optimize()`` (``brute_force_*``: float vectors, what a fresh shard
  serves), then ``index_build_s`` times ``optimize()`` (int8 quantization of ``fused``) and the
  queries are measured again: those are the main figures. ``recall_at_10``: the share of the
  exact top-10 (numpy) the store returns. ``wal_bytes``: the WAL after the load.
- Local mode answers the same queries in-process, fewer of them (it takes ~1 s each at 44k).
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from streams.adapters.store import ProductPoint, ProductStore, SearchFilters, category_prefixes
from streams.settings import Settings

DIMS = {"text": 384, "image": 1280, "video": 1280, "fused": 1664}  # the encoders' schema
WITHOUT = {"video"}  # bench products have no video, like most of the catalog
BATCH = 256
QUERIES = 200
LOCAL_QUERIES = 10
MASTERS = ["Apparel", "Footwear", "Accessories", "Personal Care", "Free Items", "Sporting Goods", "Home"]
SUBS = [f"Sub{i}" for i in range(45)]
COLOURS = ["Blue", "Black", "White", "Red", "Green", "Grey", "Brown", "Navy Blue"]


def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def make_points(n: int, seed: int = 0) -> list[ProductPoint]:
    rng = np.random.default_rng(seed)
    vectors = {name: _unit(rng, n, dim) for name, dim in DIMS.items() if name not in WITHOUT}
    points = []
    for i in range(n):
        category = [MASTERS[i % len(MASTERS)], SUBS[i % len(SUBS)], f"Type{i % 141}"]
        colour = COLOURS[i % len(COLOURS)]
        payload = {
            "product_id": str(i), "version": 1, "title": f"{colour} {category[2]} {i}",
            "description": f"a {colour.lower()} product of {category[1]}", "attributes": {"colour": colour},
            "category": category, "category_path": category_prefixes(category), "price": float(rng.uniform(1, 5000)),
            "currency": "INR", "image_uris": [f"images/{i}.jpg"], "video_uri": None, "event_time": 0.0,
            "indexed_at": 0.0, "modalities": ["image", "text"], "errors": {},
            "model_version": {"text": "bench", "image": "bench", "fusion": "bench"}, "fingerprint": f"fp{i}",
        }
        points.append(ProductPoint(str(i), {name: v[i] for name, v in vectors.items()}, payload))
    return points


def _percentiles(timings: list[float]) -> tuple[float, float]:
    ms = np.asarray(timings) * 1000
    return round(float(np.percentile(ms, 50)), 2), round(float(np.percentile(ms, 95)), 2)


def _time(calls: list[Callable[[], Any]]) -> list[float]:
    timings = []
    for call in calls:
        started = time.perf_counter()
        call()
        timings.append(time.perf_counter() - started)
    return timings


def measure_queries(store: ProductStore, n: int, queries: int, seed: int = 1) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    vectors = _unit(rng, queries, DIMS["fused"])
    ids = [str(i) for i in rng.integers(0, n, queries)]

    def similar(product_id: str) -> None:
        vector = store.vector(product_id, "fused", collection=store.alias)
        store.search("fused", vector, 10, SearchFilters(exclude_product_ids=(product_id,)))

    plain = _time([lambda v=v: store.search("fused", v, 10) for v in vectors])
    by_category = _time([lambda v=v, i=i: store.search("fused", v, 10, SearchFilters(category=SUBS[i % len(SUBS)]))
                         for i, v in enumerate(vectors)])
    by_price = _time([lambda v=v, i=i: store.search("fused", v, 10, SearchFilters(price_min=100.0 * (i % 40), price_max=100.0 * (i % 40) + 250))
                      for i, v in enumerate(vectors)])
    similars = _time([lambda p=p: similar(p) for p in ids])
    p50, p95 = _percentiles(plain)
    return {
        "query_p50_ms": p50, "query_p95_ms": p95,
        "filtered_category_p95_ms": _percentiles(by_category)[1], "filtered_price_p95_ms": _percentiles(by_price)[1],
        "filtered_query_p95_ms": max(_percentiles(by_category)[1], _percentiles(by_price)[1]),
        "similar_p50_ms": _percentiles(similars)[0], "similar_p95_ms": _percentiles(similars)[1],
    }


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def measure_similar_http(settings: Settings, n: int, queries: int, seed: int = 3) -> dict[str, float]:
    """Similar items through the query API over HTTP (one keep-alive connection, as a client
    would hold), unfiltered and with a category filter, against the store under ``settings``."""
    import uvicorn

    from streams.worker.api import QueryService, create_api

    service = QueryService(settings)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_api(service), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError(f"the query API did not start on port {port}")
            time.sleep(0.05)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        headers = {"Content-Type": "application/json", **({"X-API-Key": settings.api_key} if settings.api_key else {})}

        def similar(body: dict[str, Any]) -> None:
            connection.request("POST", "/v1/search/similar", json.dumps(body), headers)
            response = connection.getresponse()
            answer = response.read()
            if response.status != 200 or not json.loads(answer)["hits"]:
                raise RuntimeError(f"similar items answered {response.status}: {answer[:300]!r}")

        ids = [str(i) for i in np.random.default_rng(seed).integers(0, n, queries)]
        plain = _time([lambda p=p: similar({"product_id": p}) for p in ids])
        filtered = _time([lambda p=p, i=i: similar({"product_id": p, "filter": {"category": SUBS[i % len(SUBS)]}})
                          for i, p in enumerate(ids)])
        connection.close()
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        service.close()
    return {"similar_p50_ms": _percentiles(plain)[0], "similar_p95_ms": _percentiles(plain)[1],
            "filtered_similar_p95_ms": _percentiles(filtered)[1]}


def measure_recall(store: ProductStore, points: list[ProductPoint], queries: int = 50, seed: int = 4) -> float:
    """Mean share of the exact top-10 on ``fused`` (numpy over the loaded points) that the store
    returns: what int8 quantization with rescoring costs in quality."""
    vectors = _unit(np.random.default_rng(seed), queries, DIMS["fused"])
    fused = np.stack([p.vectors["fused"] for p in points])
    exact = np.argsort(-(vectors @ fused.T), axis=1)[:, :10]
    found = [len({points[i].product_id for i in row} & {hit.product_id for hit in store.search("fused", v, 10)})
             for v, row in zip(vectors, exact)]
    return round(float(np.mean(found)) / 10, 3)


def _load(store: ProductStore, points: list[ProductPoint]) -> float:
    started = time.perf_counter()
    for i in range(0, len(points), BATCH):
        store.upsert(points[i:i + BATCH])
    return len(points) / (time.perf_counter() - started)


def _folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_store_bench(settings: Settings, n: int, quiet: bool = False, local_mode: bool = True,
                    optimize: bool = True) -> dict[str, Any]:
    say = (lambda *_: None) if quiet else (lambda *parts: print(*parts, file=sys.stderr, flush=True))
    points = make_points(n)
    result: dict[str, Any] = {"points": n}
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        root = Path(tmp)
        edge_settings = dataclasses.replace(settings, qdrant_url="", qdrant_path=str(root / "edge"), collection="bench")
        say(f"[1/3] Qdrant Edge: upsert {n} points in batches of {BATCH}")
        rss = _rss_bytes()
        store = ProductStore(edge_settings, DIMS, version="v1")
        try:
            result["store_upsert_points_per_s"] = round(_load(store, points))
            result["memory_bytes_per_point"] = round((_rss_bytes() - rss) / n)
            result["wal_bytes"] = _folder_bytes(root / "edge" / store.collection / "wal")
            say(f"      {QUERIES} queries of each kind, float vectors, before optimize()")
            measured = measure_queries(store, n, QUERIES)
            if optimize:
                result.update({f"brute_force_{k}": v for k, v in measured.items()})
                say(f"      {json.dumps(result)}")
                say("      optimize(): int8 quantization of fused")
                started = time.perf_counter()
                store.optimize()
                result["index_build_s"] = round(time.perf_counter() - started, 1)
                measured = measure_queries(store, n, QUERIES, seed=2)
            result.update(measured)
            result["recall_at_10"] = measure_recall(store, points)
        finally:
            store.close()
        say(f"      similar items through the query API over HTTP, {QUERIES} of each kind")
        result["in_process_similar_p95_ms"] = result.pop("similar_p95_ms")
        result.pop("similar_p50_ms")
        result.update(measure_similar_http(edge_settings, n, QUERIES))
        say(f"      {json.dumps(result)}")
        result["bytes_per_point"] = round(_folder_bytes(root / "edge") / n)
        if local_mode:
            say(f"[2/3] qdrant-client local mode: upsert {n} points, {LOCAL_QUERIES} queries of each kind")
            local_settings = dataclasses.replace(settings, qdrant_url=f"local:{root / 'local'}", collection="bench")
            local = ProductStore(local_settings, DIMS, version="v1")
            try:
                result["local_mode_upsert_points_per_s"] = round(_load(local, points))
                measured = measure_queries(local, n, LOCAL_QUERIES)
            finally:
                local.close()
            result["local_mode_query_p95_ms"] = measured["query_p95_ms"]
            result["local_mode_filtered_query_p95_ms"] = measured["filtered_query_p95_ms"]
            result["local_mode_similar_p95_ms"] = measured["similar_p95_ms"]
            result["speedup_over_local_mode"] = round(measured["query_p95_ms"] / max(result["query_p95_ms"], 1e-3), 1)
        shutil.rmtree(root, ignore_errors=True)
    say("[3/3] done")
    return result
