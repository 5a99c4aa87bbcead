"""The one client of the query API (``streams.worker.api``): the CLI, the demo, the benchmark and
the tests call it over HTTP (a worker or ``shelfstream serve``), or, with nothing answering,
in this process through the same app and the same code path."""

from __future__ import annotations

import json
import time
from typing import Any, Mapping
from urllib.parse import quote

import httpx
from tqdm import tqdm

from streams.settings import Settings
from streams.worker.pipeline import Pipeline
from streams.worker.reindex import ReindexJob, run_reindex

UPLOADS = {"image": "image/jpeg", "video": "video/mp4"}
QUERY_PATHS = {"text": "/v1/search/text", "similar": "/v1/search/similar", "recommend": "/v1/recommend",
               "image": "/v1/search/image", "video": "/v1/search/video"}


class ApiError(RuntimeError):
    """A 4xx or 5xx of the API; the message is the API's own ('field: problem' for validation)."""

    def __init__(self, status: int, detail: Any) -> None:
        self.status, self.detail = status, detail
        super().__init__(_describe(detail))


def _describe(detail: Any) -> str:
    if isinstance(detail, list):  # FastAPI's validation errors: name the field of each
        return "; ".join(f"{'.'.join(str(p) for p in e.get('loc', [])[1:]) or 'body'}: {e.get('msg')}" for e in detail)
    return str(detail)


class Client:
    def __init__(self, http: httpx.Client, api_key: str = "", service: Any = None) -> None:
        self.http = http
        self.headers = {"X-API-Key": api_key} if api_key else {}
        self.service = service  # the in-process backend, closed with the client

    @classmethod
    def remote(cls, settings: Settings, url: str | None = None, timeout_s: float = 60.0) -> "Client":
        return cls(httpx.Client(base_url=url or settings.worker_url, timeout=timeout_s), settings.api_key)

    @classmethod
    def in_process(cls, settings: Settings) -> "Client":
        """The API app in this process on a fresh query service (opens the store: no worker may hold it)."""
        from fastapi.testclient import TestClient

        from streams.worker.api import QueryService, create_api

        service = QueryService(settings)
        return cls(TestClient(create_api(service), raise_server_exceptions=False), settings.api_key, service)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()
        if self.service is not None:
            self.service.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """ConnectionError when nothing listens; ApiError on a 4xx or 5xx."""
        try:
            response = self.http.request(method, path, headers=self.headers, **kwargs)
        except (httpx.ConnectError, httpx.RemoteProtocolError) as exc:
            raise ConnectionError(f"no query API at {self.http.base_url}: {exc}") from None
        if response.is_error:
            try:
                detail = response.json().get("detail", response.text)
            except (ValueError, AttributeError):
                detail = response.text
            raise ApiError(response.status_code, detail)
        return response.json()

    def query(self, query: Mapping[str, Any]) -> dict[str, Any]:
        """One query in the API's JSON form (``type`` says which endpoint; ``user`` with a
        ``user_id``: that user's recommendations); for ``image`` and ``video`` the ``file`` field
        holds the bytes, uploaded as multipart."""
        body = {key: value for key, value in query.items() if key != "type"}
        if query["type"] == "user":
            return self.request("POST", f"{user_path(body.pop('user_id'))}/recommendations", json=body)
        if query["type"] in UPLOADS:
            data = {key: json.dumps(value) if key == "filter" else str(value)
                    for key, value in body.items() if key != "file" and value is not None}
            files = {"file": (f"query.{query['type']}", body["file"], UPLOADS[query["type"]])}
            return self.request("POST", QUERY_PATHS[query["type"]], data=data, files=files)
        return self.request("POST", QUERY_PATHS[query["type"]], json=body)

    def batch(self, queries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return self.request("POST", "/v1/search/batch", json={"queries": queries})["results"]

    def forget_user(self, user_id: str) -> dict[str, Any]:
        return self.request("DELETE", user_path(user_id))

    def product(self, product_id: str, vectors: bool = False) -> dict[str, Any]:
        return self.request("GET", f"/v1/products/{product_id}", params={"vectors": vectors})

    def stats(self, reset: bool = False) -> dict[str, Any]:
        return self.request("POST", "/v1/stats/reset") if reset else self.request("GET", "/v1/stats")

    def start_reindex(self) -> dict[str, Any]:
        return self.request("POST", "/v1/reindex")

    def reindex_status(self) -> dict[str, Any]:
        return self.request("GET", "/v1/reindex")


def user_path(user_id: str) -> str:
    return f"/v1/users/{quote(user_id, safe='')}"


def connect(settings: Settings, timeout_s: float = 60.0) -> Client:
    """The running worker (or query service) at ``SHELFSTREAM_WEB_HOST:PORT``; with nothing
    answering there, the same API in this process."""
    client = Client.remote(settings, timeout_s=timeout_s)
    try:
        client.request("GET", "/health")
        return client
    except ConnectionError:
        client.close()
    return Client.in_process(settings)


def run_query(settings: Settings, query: Mapping[str, Any]) -> dict[str, Any]:
    with connect(settings) as client:
        return client.query(query)


def reindex_command(settings: Settings) -> ReindexJob:
    """Through the running worker when one answers (it holds the store), else in this process."""
    client = Client.remote(settings)
    try:
        status = client.start_reindex()
    except ConnectionError:
        client.close()
        pipeline = Pipeline.from_settings(settings)
        try:
            with tqdm(unit="product", desc="reindex") as bar:
                return run_reindex(pipeline, ReindexJob(), lambda job: _show(bar, job.total, job.done))
        finally:
            pipeline.close()
    with client, tqdm(unit="product", desc="reindex (worker)") as bar:
        while status["state"] == "running":
            _show(bar, status["total"], status["done"])
            time.sleep(0.5)
            status = client.reindex_status()
        _show(bar, status["total"], status["done"])
    return ReindexJob(**status)


def backup_command(settings: Settings, name: str, restore: bool = False) -> list[str]:
    """Snapshot the store into the backup ``name`` under SHELFSTREAM_BACKUP_DIR (or restore from it)
    through the API: the running worker when one answers (it holds the Edge shards), else the same
    API in this process."""
    with connect(settings, timeout_s=3600) as client:
        return client.request("POST", "/v1/backup", json={"name": name, "restore": restore})["done"]


def optimize_command(settings: Settings) -> dict[str, Any]:
    """Build the store's vector indexes now, through the API: the running worker when one answers
    (it holds the Edge shards), else the same API in this process."""
    with connect(settings, timeout_s=3600) as client:
        return client.request("POST", "/v1/optimize")


def _show(bar: tqdm, total: int, done: int) -> None:
    bar.total = total or None
    bar.update(done - bar.n)


def format_table(hits: list[dict[str, Any]]) -> str:
    """Hits as a table: the final score with its kind, the per-modality scores that explain it."""
    if not hits:
        return "no results"
    columns = [("rank", 4), ("product_id", 10), ("score", 7), ("kind", 6), ("text", 6), ("image", 6), ("keyword", 7),
               ("title", 44), ("category", 34), ("price", 8)]
    lines = ["  ".join(f"{name:<{width}}" for name, width in columns)]
    for hit in hits:
        row = {**hit, **(hit.get("scores") or {}), "kind": hit.get("score_kind"),
               "category": " > ".join(hit.get("category") or [])}
        cells = []
        for name, width in columns:
            value = row.get(name)
            text = "" if value is None else (f"{value:.4f}" if isinstance(value, float) and name != "price" else str(value))
            cells.append(f"{text[:width]:<{width}}")
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
