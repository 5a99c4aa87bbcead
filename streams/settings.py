"""One settings object for every knob, read from ``SHELFSTREAM_*`` environment variables.

Where a service address is not set, the addresses that ``shelfstream up`` recorded in the
state directory are used, so the embedded services need no configuration at all.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from infra.services import read_service_state

ENV_PREFIX = "SHELFSTREAM_"


def is_set(name: str, env: Mapping[str, str] | None = None) -> bool:
    """Whether ``SHELFSTREAM_<NAME>`` is given (a command with its own default for a knob, like the
    demo's int8, yields to a value the user chose)."""
    return ENV_PREFIX + name.upper() in (os.environ if env is None else env)


def _knob(default: Any, doc: str) -> Any:
    return field(default=default, metadata={"doc": doc})


@dataclass(frozen=True)
class Settings:
    # services
    kafka_bootstrap: str = _knob("", "Kafka bootstrap servers (host:port,...); default: the embedded broker")
    redis_url: str = _knob("", "Redis URL; default: the embedded redis-server")
    qdrant_url: str = _knob("", "Qdrant server URL (qdrant-client); local:PATH = qdrant-client local mode; empty = Qdrant Edge at qdrant_path")
    qdrant_api_key: str = _knob("", "Qdrant API key (server mode)")
    qdrant_path: str = _knob("", "Qdrant Edge folder (a shard per model version); default: STATE_DIR/qdrant")
    collection: str = _knob("products", "Qdrant alias that queries use; each model version writes its own collection")
    state_dir: str = _knob(".shelfstream", "where `shelfstream up` keeps pids, ports, logs and data")
    backup_dir: str = _knob("", "the one folder `POST /v1/backup` writes named backups into; default: STATE_DIR/backups")
    # topics and the Faust app
    app_id: str = _knob("shelfstream", "Faust app id (consumer group)")
    events_topic: str = _knob("shelfstream.product-events", "topic of product events")
    dead_letter_topic: str = _knob("shelfstream.dead-letter", "topic of rejected events with their reason")
    retry_topic: str = _knob("shelfstream.media-retry", "topic of events whose media timed out, processed again later")
    media_retry_attempts: int = _knob(5, "retries of an event whose media timed out, then it is a dead letter")
    media_retry_backoff_s: float = _knob(10.0, "wait before the first media retry, seconds; doubled at each attempt")
    partitions: int = _knob(4, "partitions of the events topic (the unit of scale-out)")
    web_host: str = _knob("127.0.0.1", "host of the worker's query API")
    web_port: int = _knob(6066, "port of the worker's query API")
    # query API
    api_key: str = _knob("", "when set, every query API endpoint but /health needs it (X-API-Key or Bearer)")
    search_mode: str = _knob("hybrid", "default text search mode: dense, keyword or hybrid (per request: mode)")
    hybrid_keyword_weight: float = _knob(0.5, "weight of the free-text (title, description) BM25 list in hybrid DBSF; dense lists weigh 1")
    hybrid_value_weight: float = _knob(2.0, "weight of the category/attribute-values BM25 list in hybrid DBSF")
    # batching
    batch_size: int = _knob(32, "events per batch: each encoder runs once per batch")
    batch_window_s: float = _knob(0.1, "longest wait to fill a batch, seconds (a burst fills it sooner)")
    batches_in_flight: int = _knob(2, "batches a worker processes at once, so one encodes while another is read, fused and written (1 = one at a time)")
    fetch_max_wait_ms: int = _knob(100, "longest a consumer fetch waits for new data, ms (freshness when idle)")
    idle_flush_s: float = _knob(2.0, "the worker persists the store's new points once its stream has been idle this long, seconds")
    topic_check_s: float = _knob(10.0, "how often the worker re-creates topics a restarted broker lost, seconds")
    # models
    model_dir: str = _knob("models", "folder of the exported ONNX models and manifests")
    providers: str = _knob("auto", "onnxruntime providers: auto (CUDA when present, else CPU), cpu or cuda")
    precision: str = _knob("fp32", "encoder precision: fp32 or int8 (`shelfstream export` writes both; int8 has its own model version)")
    image_statistics: float = _knob(0.0, "weight of the colour and texture statistics of earlier MobileNetV2 blocks in the packaged image encoder's vector (0 = off; read by `shelfstream export`: a new image model version, so re-index)")
    inference_parallel: int = _knob(0, "parts each encoder batch is split into, run at once on a core each: 0 = one per usable core, 1 = whole batches on onnxruntime's threads (a GPU takes batches whole)")
    text_weight: float = _knob(0.5, "weight of the text block in the concatenation fusion (image gets 1 - w)")
    fusion_bundle: str = _knob("", "trained fusion bundle folder (`shelfstream train`); empty = concatenation fusion")
    fusion_method: str = _knob("learned", "fused vector of the bundle: learned or autoencoder")
    # media: untrusted seller URIs
    media_root: str = _knob("media", "local paths and file:// URIs must resolve inside this folder")
    allow_private_networks: bool = _knob(False, "allow http(s) media on private, loopback or link-local addresses")
    fetch_timeout_s: float = _knob(5.0, "time limit of one media download, seconds")
    max_image_bytes: int = _knob(10_000_000, "largest image file accepted, bytes")
    max_image_pixels: int = _knob(40_000_000, "largest image accepted, width x height")
    max_images: int = _knob(4, "images per product that are encoded (their vectors are averaged)")
    decode_pixel_budget: int = _knob(72_000_000, "pixels decoded at full size at once across threads (~4 bytes each, x3 at worst)")
    image_chunk: int = _knob(32, "images decoded and encoded together: a batch never holds more decoded images")
    fetch_per_host: int = _knob(4, "downloads at once per seller host, so one slow host cannot take every thread")
    media_deadline_s: float = _knob(10.0, "all downloads of a batch end by then; a late medium is retried later")
    max_video_bytes: int = _knob(50_000_000, "largest video file accepted, bytes")
    max_video_seconds: float = _knob(30.0, "longest stretch of video decoded, seconds of media time")
    max_video_frames: int = _knob(8, "frames kept per video (8-16: more frames, more cost)")
    video_max_side: int = _knob(320, "frames are downscaled so that their longer side is at most this")
    video_decode_timeout_s: float = _knob(10.0, "wall-clock limit of decoding one video, seconds")
    video_pooling: str = _knob("mean", "temporal pooling of frame vectors: mean or distinct")
    # events: untrusted seller input, every field bounded (over a limit: a dead letter naming the knob)
    max_event_bytes: int = _knob(1_000_000, "largest event accepted, bytes of JSON")
    max_id_chars: int = _knob(256, "longest product id, characters")
    max_title_chars: int = _knob(1_000, "longest title, characters")
    max_description_chars: int = _knob(20_000, "longest description, characters")
    max_attributes: int = _knob(100, "most attributes per event")
    max_attribute_key_chars: int = _knob(100, "longest attribute name, characters")
    max_attribute_value_chars: int = _knob(1_000, "longest attribute value, characters")
    max_category_levels: int = _knob(10, "deepest category path, levels")
    max_category_level_chars: int = _knob(200, "longest category level, characters")
    max_image_uris: int = _knob(32, "most image URIs per event (the first max_images are encoded)")
    max_uri_chars: int = _knob(4_096, "longest image or video URI, characters")
    dead_letter_max_bytes: int = _knob(900_000, "a dead letter's original over this is cut to it (size and sha256 in headers)")
    # shoppers: interactions, profiles, recommendations
    interactions_topic: str = _knob("shelfstream.interactions", "topic of shopper interactions, keyed by user id")
    interactions_retention_s: int = _knob(7 * 24 * 3600, "how long the interactions topic keeps records (retention.ms when shelfstream creates it)")
    interaction_weights: str = _knob("view=1,click=2,add_to_cart=4,purchase=4,dislike=0",
                                     "weight of each interaction kind in a profile (KIND=NUMBER,...; see the shopper evaluation)")
    profile_half_life_s: float = _knob(3 * 24 * 3600.0, "an interaction counts half as much this long before the user's newest (0 = no decay)")
    profile_ttl_s: int = _knob(90 * 24 * 3600, "a profile is forgotten this long after the user's last interaction, seconds (0 = never)")
    profile_max_events: int = _knob(200, "interactions kept per user (the newest)")
    profile_vector: str = _knob("fused", "named vector that profiles and recommendations use")
    # cache
    cache_ttl_s: int = _knob(30 * 24 * 3600, "lifetime of a cached modality vector, seconds (0 = forever)")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> "Settings":
        """Read every knob from ``SHELFSTREAM_<NAME>``; fall back to the embedded services' state."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is not None:
                values[f.name] = _parse(raw, f.type, f.name)
        values.update(overrides)
        settings = cls(**values)
        return settings._with_embedded_defaults()

    def _with_embedded_defaults(self) -> "Settings":
        state = read_service_state(self.state_path)
        updates: dict[str, Any] = {}
        if not self.kafka_bootstrap:
            updates["kafka_bootstrap"] = state.get("kafka_bootstrap", "127.0.0.1:9092")
        if not self.redis_url:
            updates["redis_url"] = state.get("redis_url", "redis://127.0.0.1:6379/0")
        if not self.qdrant_path:
            updates["qdrant_path"] = str(self.state_path / "qdrant")
        return dataclasses.replace(self, **updates) if updates else self

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir).expanduser().resolve()

    @property
    def backup_path(self) -> Path:
        return Path(self.backup_dir).expanduser().resolve() if self.backup_dir else self.state_path / "backups"

    @property
    def worker_url(self) -> str:
        return f"http://{self.web_host}:{self.web_port}"

    def to_env(self) -> dict[str, str]:
        """These settings as ``SHELFSTREAM_*`` variables, to hand to a worker process."""
        return {ENV_PREFIX + f.name.upper(): str(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def describe(cls) -> list[tuple[str, str, str]]:
        """(variable, default, meaning) for every knob: the README table and `--help` use it."""
        return [
            (ENV_PREFIX + f.name.upper(), repr(f.default), f.metadata.get("doc", ""))
            for f in dataclasses.fields(cls)
        ]


def _parse(raw: str, type_name: Any, name: str) -> Any:
    type_name = getattr(type_name, "__name__", type_name)
    try:
        if type_name == "bool":
            lowered = raw.strip().lower()
            if lowered in {"1", "true", "yes", "on"}:
                return True
            if lowered in {"0", "false", "no", "off", ""}:
                return False
            raise ValueError(raw)
        if type_name == "int":
            return int(raw)
        if type_name == "float":
            return float(raw)
        return raw
    except ValueError as exc:
        raise ValueError(f"{ENV_PREFIX}{name.upper()}={raw!r} is not a valid {type_name}") from exc
