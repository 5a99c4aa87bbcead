"""The query API v1: one FastAPI app, its pydantic models are the contract (``/openapi.json``,
``/docs``). Served inside the worker (same process as the store, on Faust's event loop) and by
``shelfstream serve`` (a stateless query service); the CLI and the demo reach it through
``streams.tools.client`` only.

Threat model: the port may be reached by anyone. Every malformed request is a 4xx that names
the field; unknown fields are refused; no input makes a 5xx that leaks a traceback (the handler
logs it and answers an id). With ``SHELFSTREAM_API_KEY`` set every endpoint but ``/health``
needs the key, and nothing that changes state answers GET.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
import uuid
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping, Protocol

from fastapi import APIRouter, Depends, FastAPI, File, Form, HTTPException, Query, Request, Security, UploadFile
from fastapi import Path as UrlPath
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic import Base64Bytes
from starlette.concurrency import run_in_threadpool

from encoders_onnx.decoding import MediaError
from streams.adapters.media import MediaLimits
from streams.adapters.profiles import UserProfiles
from streams.adapters.store import ProductStore, SearchFilters
from streams.settings import Settings
from streams.worker.encoders import load_encoders
from streams.worker.health import Probe, readiness
from streams.worker.metrics import CONTENT_TYPE, TimedStore, WorkerMetrics
from streams.worker.page import add_page
from streams.worker.recommend import Recommender
from streams.worker.reindex import ReindexJob
from streams.worker.search import ExplainedHit, Page, QueryError, Searcher, TextMode, UnknownProduct
from streams.worker.profiles import ProfileConfig

log = logging.getLogger("shelfstream.api")

API_VERSION = "1.0.0"
MAX_LIMIT = 100
MAX_OFFSET = 10_000
MAX_BATCH = 16
ProductId = Annotated[str, Field(min_length=1, max_length=256, description="a product id as published")]
UserId = Annotated[str, UrlPath(min_length=1, max_length=256, description="a user id as in the interactions")]


class Backend(Protocol):
    """What the API serves from: the worker (store, pipeline and counters) or a query service."""

    api_key: str
    max_upload_bytes: int
    metrics: WorkerMetrics
    media_limits: MediaLimits  # product images are loaded as ingestion loads them

    def searcher(self) -> Searcher: ...
    def probes(self) -> Mapping[str, Probe]:
        """What ``/health/ready`` checks: name -> probe (see ``streams.worker.health``)."""
    def stats_window(self, reset: bool) -> Any:
        """The counters' current window (a new one from now on if ``reset``); cheap, on the event loop."""
    def status(self, window: Any) -> dict[str, Any]: ...
    def start_reindex(self) -> ReindexJob: ...
    def reindex_status(self) -> ReindexJob: ...
    def backup(self, name: str, restore: bool) -> list[str]: ...
    def optimize(self) -> Optimized: ...
    def recommender(self) -> Recommender: ...
    def forget_user(self, user_id: str) -> bool: ...


class NotServedHere(RuntimeError):
    """An endpoint this process does not serve (re-indexing on a stateless query service)."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Filter(Strict):
    """Every condition must hold. Strings match case-insensitively."""

    category: str | None = Field(None, min_length=1, max_length=300, examples=["footwear", "Apparel > Topwear"],
                                 description="a category at any level, or a path prefix with ' > '")
    price_min: float | None = Field(None, ge=0, description="lowest price, inclusive")
    price_max: float | None = Field(None, ge=0, description="highest price, inclusive; never below price_min")
    attributes: dict[Annotated[str, Field(min_length=1, max_length=100)],
                     str | Annotated[list[Annotated[str, Field(max_length=200)]], Field(min_length=1, max_length=50)]] = Field(
        default_factory=dict, examples=[{"gender": "Women", "baseColour": ["Red", "Maroon"]}],
        description="attribute -> a value (equals) or a list of values (any of)")
    modalities: list[Literal["text", "image", "video"]] = Field(
        default_factory=list, description="the product has every one of these modalities")
    exclude_product_ids: list[ProductId] = Field(default_factory=list, max_length=1000)

    @model_validator(mode="after")
    def _price_range(self) -> "Filter":
        if self.price_min is not None and self.price_max is not None and self.price_min > self.price_max:
            raise ValueError(f"price_min ({self.price_min}) is greater than price_max ({self.price_max})")
        return self

    def to_store(self) -> SearchFilters:
        return SearchFilters(
            self.category, self.price_min, self.price_max,
            {key: (value,) if isinstance(value, str) else tuple(value) for key, value in self.attributes.items()},
            tuple(self.modalities), tuple(self.exclude_product_ids),
        )


class QueryBase(Strict):
    limit: int = Field(10, ge=1, le=MAX_LIMIT, description="hits to return")
    offset: int = Field(0, ge=0, le=MAX_OFFSET, description="hits to skip (pagination)")
    score_threshold: float | None = Field(None, description="drop hits scoring below this (see score_kind)")
    filter: Filter | None = None

    def page(self) -> Page:
        return Page(self.limit, self.offset, self.score_threshold)

    def filters(self) -> SearchFilters | None:
        return self.filter.to_store() if self.filter else None


class TextQuery(QueryBase):
    type: Literal["text"] = "text"
    text: str = Field(min_length=1, max_length=1000, pattern=r"\S", examples=["red running shoes"])
    mode: TextMode | None = Field(None, description="dense (vectors), keyword (BM25) or hybrid; default: the "
                                                    "server's SHELFSTREAM_SEARCH_MODE")


class SimilarQuery(QueryBase):
    type: Literal["similar"] = "similar"
    product_id: ProductId


class RecommendQuery(QueryBase):
    type: Literal["recommend"] = "recommend"
    positive: list[ProductId] = Field(min_length=1, max_length=50, description="liked products")
    negative: list[ProductId] = Field(default_factory=list, max_length=50, description="disliked products")


class ImageQuery(QueryBase):
    type: Literal["image"] = "image"
    image_b64: Base64Bytes = Field(description="the image file, base64")


class VideoQuery(QueryBase):
    type: Literal["video"] = "video"
    video_b64: Base64Bytes = Field(description="the video file, base64")


class UserRecommendQuery(QueryBase):
    diversity: float = Field(0.0, ge=0.0, le=1.0, description="0: nearest the profile; up to 1: re-ranked for variety (MMR)")


class UserRecommendations(BaseModel):
    user_id: str
    source: Literal["profile", "popular", "none"] = Field(
        description="profile: the user's interactions; popular: cold start (nearest the most-interacted products); "
                    "none: no interactions anywhere yet")
    hits: list[SearchHit]
    limit: int
    offset: int
    next_offset: int | None


class ForgottenUser(BaseModel):
    user_id: str
    forgotten: bool = Field(description="false when nothing was stored for this user")


AnyQuery = Annotated[TextQuery | SimilarQuery | RecommendQuery | ImageQuery | VideoQuery, Field(discriminator="type")]


class BatchRequest(Strict):
    queries: list[AnyQuery] = Field(min_length=1, max_length=MAX_BATCH)


class ModalityScores(BaseModel):
    """Why a hit matched: the query's cosine to each of the hit's stored vectors it was compared
    with, and its BM25 score where keyword search ran; absent where not computed."""

    text: float | None = None
    image: float | None = None
    video: float | None = None
    keyword: float | None = None


class Product(BaseModel):
    product_id: str
    title: str = ""
    description: str = ""
    category: list[str] = []
    price: float | None = None
    currency: str | None = None
    attributes: dict[str, str] = {}
    image_uris: list[str] = []
    video_uri: str | None = None
    modalities: list[str] = []
    version: int | None = None

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> "Product":
        return cls(**{name: payload[name] for name in cls.model_fields if payload.get(name) is not None})


class SearchHit(Product):
    rank: int
    score: float
    score_kind: Literal["cosine", "bm25", "dbsf"] = Field(
        description="cosine: one vector list; bm25: keyword search; dbsf: distribution-based score fusion of several lists (each normalised by its mean and 3 std, weighted sum)")
    scores: ModalityScores


class SearchResults(BaseModel):
    type: str
    hits: list[SearchHit]
    limit: int
    offset: int
    next_offset: int | None = Field(description="offset of the next page; null when this page is not full")


class BatchResults(BaseModel):
    results: list[SearchResults]


class ProductRecord(Product):
    payload: dict[str, Any]
    vectors: dict[str, list[float]] | None = None


BACKUP_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"  # one folder name: no separator, never "." or ".."


class BackupRequest(Strict):
    name: str = Field(pattern=BACKUP_NAME, description="the backup's folder name inside the server's "
                      "SHELFSTREAM_BACKUP_DIR (a caller never names a path: it cannot write elsewhere)")
    restore: bool = Field(False, description="restore from the named backup instead of snapshotting into it")


class BackupDone(BaseModel):
    done: list[str] = Field(description="snapshot files written, or collections restored")


class Optimized(BaseModel):
    collection: str
    optimized: bool = Field(description="whether indexes were built now; false: nothing to build (indexed already, "
                            "too few new points) or a Qdrant server, which indexes by itself")
    seconds: float


class ReindexStatus(BaseModel):
    state: Literal["idle", "running", "done", "failed"]
    source: str | None
    target: str | None
    total: int
    done: int
    counts: dict[str, int]
    message: str
    seconds: float


def answer(searcher: Searcher, query: AnyQuery) -> SearchResults:
    """One query, whatever its type: the single endpoints and the batch share it."""
    filters, page = query.filters(), query.page()
    if isinstance(query, TextQuery):
        hits = searcher.by_text(query.text, filters, page, query.mode)
    elif isinstance(query, SimilarQuery):
        hits = searcher.similar(query.product_id, filters, page)
    elif isinstance(query, RecommendQuery):
        hits = searcher.recommend(query.positive, query.negative, filters, page)
    elif isinstance(query, ImageQuery):
        hits = searcher.by_image(query.image_b64, filters, page)
    else:
        hits = searcher.by_video(query.video_b64, filters, page)
    return SearchResults(
        type=query.type, hits=[_hit(rank, hit) for rank, hit in enumerate(hits, start=query.offset + 1)],
        limit=query.limit, offset=query.offset,
        next_offset=query.offset + query.limit if len(hits) == query.limit else None,
    )


def recommend_for_user(recommender: Recommender, user_id: str, query: UserRecommendQuery) -> UserRecommendations:
    """The user's recommendations; a page is cut from the first ``offset + limit``."""
    result = recommender.recommend(user_id, query.offset + query.limit, query.filters(), query.diversity)
    page = result.hits[query.offset:]
    if query.score_threshold is not None:
        page = [hit for hit in page if hit.score >= query.score_threshold]
    hits = [_hit(rank, ExplainedHit(hit.product_id, hit.score, "cosine", hit.payload))
            for rank, hit in enumerate(page, start=query.offset + 1)]
    return UserRecommendations(user_id=user_id, source=result.source, hits=hits, limit=query.limit, offset=query.offset,
                               next_offset=query.offset + query.limit if len(hits) == query.limit else None)


def _hit(rank: int, hit: ExplainedHit) -> SearchHit:
    product = Product.from_payload({**hit.payload, "product_id": hit.product_id})
    return SearchHit(**product.model_dump(), rank=rank, score=round(hit.score, 6), score_kind=hit.score_kind,
                     scores=ModalityScores(**hit.scores))


def create_api(backend: Backend) -> FastAPI:
    app = FastAPI(
        title="shelfstream query API", version=API_VERSION,
        description="Search, recommendations and product lookups over the fresh multimodal index. "
                    "With SHELFSTREAM_API_KEY set, send it as `X-API-Key` or `Authorization: Bearer`.",
    )
    _add_error_handlers(app)
    api_key = APIKeyHeader(name="X-API-Key", auto_error=False)
    bearer = HTTPBearer(auto_error=False)

    def require_key(key: str | None = Security(api_key),
                    credentials: HTTPAuthorizationCredentials | None = Security(bearer)) -> None:
        if not backend.api_key:
            return
        given = key or (credentials.credentials if credentials else "")
        if not secrets.compare_digest(given.encode(), backend.api_key.encode()):
            raise HTTPException(401, "a valid API key is required: header X-API-Key or Authorization: Bearer",
                                headers={"WWW-Authenticate": "Bearer"})

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_key)])

    @app.get("/health", tags=["service"])
    @app.get("/health/live", tags=["service"])
    async def health() -> dict[str, bool]:
        """Liveness: answers without a key and without touching the store."""
        return {"ok": True}

    @app.get("/health/ready", tags=["service"], responses={503: {"description": "a dependency is not ready"}})
    def ready(key: str | None = Security(api_key),
              credentials: HTTPAuthorizationCredentials | None = Security(bearer)) -> JSONResponse:
        """Every dependency probed (broker, Redis, store, models, partitions): 200 when all are
        ready, else 503; without the API key (when one is set) only which checks failed, not why."""
        try:
            require_key(key, credentials)
            shown = True
        except HTTPException:
            shown = False
        verdict = readiness(backend.probes())
        checks = {name: {"ok": check.ok, **({"detail": check.detail} if shown else {})}
                  for name, check in verdict.checks.items()}
        return JSONResponse({"ok": verdict.ok, "checks": checks}, status_code=200 if verdict.ok else 503)

    @app.get("/metrics", tags=["service"], dependencies=[Depends(require_key)], response_class=Response)
    def metrics() -> Response:
        """Prometheus exposition of this process's metrics (``shelfstream_*``)."""
        return Response(backend.metrics.exposition(), media_type=CONTENT_TYPE)

    @v1.post("/search/text", tags=["search"])
    def search_text(query: TextQuery) -> SearchResults:
        return answer(backend.searcher(), query)

    @v1.post("/search/similar", tags=["search"])
    def search_similar(query: SimilarQuery) -> SearchResults:
        """Products like this one (its fused vector); the product itself is never a hit."""
        return answer(backend.searcher(), query)

    @v1.post("/recommend", tags=["search"])
    def recommend(query: RecommendQuery) -> SearchResults:
        """Products like the positives and unlike the negatives; the inputs are never hits."""
        return answer(backend.searcher(), query)

    def upload_query(kind: type[ImageQuery] | type[VideoQuery], field: str):
        def endpoint(file: UploadFile = File(description=f"the {field} file"),
                     limit: int = Form(10, ge=1, le=MAX_LIMIT), offset: int = Form(0, ge=0, le=MAX_OFFSET),
                     score_threshold: float | None = Form(None),
                     filter: str | None = Form(None, description="a Filter object as JSON")) -> SearchResults:
            data = file.file.read(backend.max_upload_bytes + 1)
            if len(data) > backend.max_upload_bytes:
                raise HTTPException(413, f"file: larger than {backend.max_upload_bytes} bytes")
            query = kind.model_construct(limit=limit, offset=offset, score_threshold=score_threshold,
                                         filter=_form_filter(filter), **{f"{field}_b64": data})
            return answer(backend.searcher(), query)
        return endpoint

    v1.post("/search/image", tags=["search"], summary="Search by an uploaded image")(upload_query(ImageQuery, "image"))
    v1.post("/search/video", tags=["search"], summary="Search by an uploaded video")(upload_query(VideoQuery, "video"))

    @v1.post("/search/batch", tags=["search"])
    def search_batch(batch: BatchRequest) -> BatchResults:
        """Several queries of any type in one request, answered in order; the first that fails
        fails the request, and its error names its index."""
        searcher, results = backend.searcher(), []
        for index, query in enumerate(batch.queries):
            try:
                results.append(answer(searcher, query))
            except (QueryError, MediaError) as exc:
                raise (UnknownProduct if isinstance(exc, UnknownProduct) else QueryError)(f"queries[{index}]: {exc}") from exc
        return BatchResults(results=results)

    @v1.get("/products/{product_id}", tags=["products"])
    def product(product_id: str, vectors: bool = False) -> ProductRecord:
        """A product as queries see it (the served collection), with its vectors on request."""
        store = backend.searcher().store
        record = store.get(product_id, with_vectors=vectors, collection=store.alias)
        if record is None or not record.payload:
            raise UnknownProduct(f"product {product_id!r} is not indexed")
        stored = record.vector if vectors and isinstance(record.vector, dict) else None
        return ProductRecord(**Product.from_payload(record.payload).model_dump(), payload=record.payload,
                             vectors={name: list(map(float, v)) for name, v in stored.items()} if stored else None)

    @v1.get("/users/{user_id}/recommendations", tags=["users"])
    def user_recommendations(user_id: UserId, limit: int = Query(10, ge=1, le=MAX_LIMIT),
                             offset: int = Query(0, ge=0, le=MAX_OFFSET), diversity: float = Query(0.0, ge=0.0, le=1.0),
                             category: str | None = Query(None, min_length=1, max_length=300),
                             price_min: float | None = Query(None, ge=0), price_max: float | None = Query(None, ge=0),
                             ) -> UserRecommendations:
        """Products nearest the user's live profile, never one the user purchased or disliked
        (the POST form takes every filter)."""
        try:
            filters = Filter(category=category, price_min=price_min, price_max=price_max)
        except ValidationError as exc:
            raise RequestValidationError(exc.errors(include_url=False)) from None
        query = UserRecommendQuery(limit=limit, offset=offset, diversity=diversity,
                                   filter=filters if filters.model_dump(exclude_defaults=True) else None)
        return recommend_for_user(backend.recommender(), user_id, query)

    @v1.post("/users/{user_id}/recommendations", tags=["users"])
    def user_recommendations_post(user_id: UserId, query: UserRecommendQuery) -> UserRecommendations:
        return recommend_for_user(backend.recommender(), user_id, query)

    @v1.delete("/users/{user_id}", tags=["users"])
    def forget_user(user_id: UserId) -> ForgottenUser:
        """Delete the user's interactions, profile and purchased/disliked sets (see the README for
        what the interactions topic still holds)."""
        return ForgottenUser(user_id=user_id, forgotten=backend.forget_user(user_id))

    @v1.get("/stats", tags=["service"])
    async def stats() -> dict[str, Any]:
        """Counters, freshness percentiles, points and model versions."""
        return await run_in_threadpool(backend.status, backend.stats_window(False))

    @v1.post("/stats/reset", tags=["service"])
    async def stats_reset() -> dict[str, Any]:
        """The counters so far; a new measuring window starts (benchmarks)."""
        return await run_in_threadpool(backend.status, backend.stats_window(True))

    @v1.post("/reindex", tags=["service"], status_code=202)
    def reindex_start() -> ReindexStatus:
        """Start re-embedding the served catalog with this worker's models; the alias switches at the end."""
        return ReindexStatus(**backend.start_reindex().as_dict())

    @v1.get("/reindex", tags=["service"])
    def reindex_status() -> ReindexStatus:
        return ReindexStatus(**backend.reindex_status().as_dict())

    @v1.post("/backup", tags=["service"])
    def backup(request: BackupRequest) -> BackupDone:
        """Snapshot the store into the named folder under the server's backup folder (Edge shards,
        or the Qdrant server's snapshot API), or restore from it."""
        try:
            return BackupDone(done=backend.backup(request.name, request.restore))
        except (OSError, ValueError, LookupError) as exc:
            raise HTTPException(400, f"name: {type(exc).__name__}: {exc}") from None

    @v1.post("/optimize", tags=["service"])
    def optimize() -> Optimized:
        """Build the store's vector indexes now (Edge: int8 copies of ``fused``, seconds at 44k,
        during which writes and queries wait): for a catalog that arrived through the stream,
        which re-indexing would otherwise optimize. A Qdrant server builds its own: a no-op there."""
        return backend.optimize()

    add_page(app, v1, lambda product_id: product(product_id).image_uris, backend.media_limits)
    app.include_router(v1)
    return app


def backup_folder(settings: Settings, name: str) -> Path:
    """The folder of the backup ``name``: always directly inside ``settings.backup_path`` (checked
    here too, not only by the request model, so no other caller can name a path)."""
    if not re.fullmatch(BACKUP_NAME, name):
        raise ValueError(f"backup name {name!r} is not a folder name matching {BACKUP_NAME}")
    return settings.backup_path / name


def backup_store(store: ProductStore, settings: Settings, name: str, restore: bool) -> list[str]:
    directory = backup_folder(settings, name)
    return store.restore(directory) if restore else [str(f) for f in store.backup(directory)]


def optimize_store(store: ProductStore) -> Optimized:
    started = time.perf_counter()
    optimized = store.optimize()
    return Optimized(collection=store.collection, optimized=optimized, seconds=round(time.perf_counter() - started, 2))


def _form_filter(raw: str | None) -> Filter | None:
    """The multipart form's ``filter`` field, validated like the JSON bodies' ``filter``."""
    if raw is None or not raw.strip():
        return None
    try:
        return Filter.model_validate_json(raw)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**error, "loc": ("body", "filter", *error["loc"])} for error in exc.errors(include_url=False)]
        ) from None


def _add_error_handlers(app: FastAPI) -> None:
    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"detail": message}, status_code=status)

    @app.exception_handler(UnknownProduct)
    async def unknown_product(request: Request, exc: UnknownProduct) -> JSONResponse:
        return error(404, str(exc))

    @app.exception_handler(QueryError)
    async def bad_query(request: Request, exc: QueryError) -> JSONResponse:
        return error(400, str(exc))

    @app.exception_handler(MediaError)
    async def bad_media(request: Request, exc: MediaError) -> JSONResponse:
        return error(422, f"file: {exc}")

    @app.exception_handler(NotServedHere)
    async def not_here(request: Request, exc: NotServedHere) -> JSONResponse:
        return error(409, str(exc))

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        incident = uuid.uuid4().hex[:12]
        log.error("internal error %s on %s %s", incident, request.method, request.url.path, exc_info=exc)
        return error(500, f"internal error {incident}; the server log has the details")


class QueryService:
    """The backend of ``shelfstream serve`` and of the CLI's in-process answers: the encoders and
    the store, nothing else. Stateless apart from them, so replicas can stand behind a load
    balancer against one Qdrant server; re-indexing stays with the workers."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.api_key = settings.api_key
        self.max_upload_bytes = max(settings.max_image_bytes, settings.max_video_bytes)
        self.media_limits = MediaLimits.for_images(settings)
        self.started_at = time.time()
        self.metrics = WorkerMetrics()
        self.encoders = load_encoders(settings)
        self.metrics.set_models(self.encoders.versions)
        self.store = TimedStore(ProductStore(settings, self.encoders.fusion.dims, self.encoders.store_version), self.metrics)
        self.profiles = UserProfiles(settings.redis_url, settings.profile_ttl_s, settings.profile_max_events)
        self.profile_config = ProfileConfig.parse(settings.interaction_weights, settings.profile_half_life_s,
                                                  settings.profile_vector)

    def searcher(self) -> Searcher:
        return Searcher(self.store, self.encoders, self.settings.max_image_pixels,
                        self.settings.search_mode, self.settings.hybrid_keyword_weight,
                        self.settings.hybrid_value_weight)

    def stats_window(self, reset: bool) -> None:
        return None

    def probes(self) -> Mapping[str, Probe]:
        return {"store": lambda: f"{self.store.point_count(self.store.alias)} points served",
                "models": lambda: ", ".join(f"{k} {v}" for k, v in self.encoders.versions.items())}

    def status(self, window: None) -> dict[str, Any]:
        return {"points": self.store.point_count(self.store.alias), "collection": self.store.serving_collection(),
                "model_version": self.encoders.versions, "uptime_s": round(time.time() - self.started_at, 1)}

    def start_reindex(self) -> ReindexJob:
        raise NotServedHere("this query service does not index: POST /v1/reindex to a worker, or run `shelfstream reindex`")

    def reindex_status(self) -> ReindexJob:
        raise NotServedHere("this query service does not index: ask a worker for GET /v1/reindex")

    def backup(self, name: str, restore: bool) -> list[str]:
        return backup_store(self.store, self.settings, name, restore)

    def optimize(self) -> Optimized:
        return optimize_store(self.store)

    def recommender(self) -> Recommender:
        return Recommender(self.store, self.profiles, self.profile_config)

    def forget_user(self, user_id: str) -> bool:
        return self.profiles.forget(user_id)

    def close(self) -> None:
        self.store.close()
        self.profiles.close()
