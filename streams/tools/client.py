"""The one client of the worker's query API: the CLI and the demo ask the running worker, or,
with no worker answering, open the store in this process."""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
from dataclasses import asdict
from typing import Any

from tqdm import tqdm

from streams.adapters.store import ProductStore, SearchFilters
from streams.settings import Settings
from streams.worker.encoders import load_encoders
from streams.worker.pipeline import Pipeline
from streams.worker.reindex import ReindexJob, run_reindex
from streams.worker.search import QueryError, Searcher


def query_request(mode: str, value: str | bytes, k: int, filters: SearchFilters) -> dict[str, Any]:
    request: dict[str, Any] = {"mode": mode, "k": k, **{f: v for f, v in asdict(filters).items() if v is not None}}
    if mode == "similar":
        request["product_id"] = value
    elif mode == "text":
        request["text"] = value
    else:
        request["media_b64"] = base64.b64encode(value if isinstance(value, bytes) else value.encode()).decode()
    return request


def run_query(settings: Settings, request: dict[str, Any]) -> list[dict[str, Any]]:
    """Ask the running worker; with no worker answering, open the store in this process."""
    try:
        return post_json(f"{settings.worker_url}/query", request)
    except ConnectionError:
        pass
    searcher = local_searcher(settings)
    try:
        return searcher.answer(request)
    finally:
        searcher.store.close()


def local_searcher(settings: Settings) -> Searcher:
    encoders = load_encoders(settings)
    return Searcher(ProductStore(settings, encoders.fusion.dims, encoders.store_version), encoders, settings.max_image_pixels)


def post_json(url: str, body: dict[str, Any], timeout: float = 30.0) -> Any:
    """POST JSON to the worker; ConnectionError when nothing listens, QueryError on a 4xx."""
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    return _open_json(request, timeout)


def get_json(url: str, timeout: float = 10.0) -> Any:
    return _open_json(urllib.request.Request(url), timeout)


def _open_json(request: urllib.request.Request, timeout: float) -> Any:
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        try:
            detail = json.loads(detail).get("error", detail)
        except (json.JSONDecodeError, AttributeError):
            pass
        raise QueryError(detail) from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, (ConnectionRefusedError, ConnectionResetError, FileNotFoundError)):
            raise ConnectionError(f"no worker at {request.full_url}") from None
        raise


def reindex_command(settings: Settings) -> ReindexJob:
    """Through the running worker when one answers (it holds local mode), else in this process."""
    url = f"{settings.worker_url}/reindex"
    try:
        status = post_json(url, {})
    except ConnectionError:
        pipeline = Pipeline.from_settings(settings)
        try:
            with tqdm(unit="product", desc="reindex") as bar:
                return run_reindex(pipeline, ReindexJob(), lambda job: _show(bar, job.total, job.done))
        finally:
            pipeline.close()
    with tqdm(unit="product", desc="reindex (worker)") as bar:
        while status["state"] == "running":
            _show(bar, status["total"], status["done"])
            time.sleep(0.5)
            status = get_json(url)
        _show(bar, status["total"], status["done"])
    return ReindexJob(**status)


def _show(bar: tqdm, total: int, done: int) -> None:
    bar.total = total or None
    bar.update(done - bar.n)


def format_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no results"
    columns = [("rank", 4), ("product_id", 10), ("score", 7), ("title", 48), ("category", 40), ("price", 8)]
    lines = ["  ".join(f"{name:<{width}}" for name, width in columns)]
    for row in rows:
        cells = []
        for name, width in columns:
            value = row.get(name)
            text = "" if value is None else (f"{value:.4f}" if isinstance(value, float) and name == "score" else str(value))
            cells.append(f"{text[:width]:<{width}}")
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
