"""Shopper interactions from the command line: publishing a CSV/JSONL log, asking the worker for a
user's recommendations, and forgetting a user.

The mapping dialect is ``publish``'s: a JSON object from interaction fields to the file's columns,
a string names a column and ``{"value": ...}`` is a constant, e.g.

    {"user_id": "user", "product_id": "item", "kind": {"value": "view"}, "event_time": "ts"}

Without a mapping, columns (or JSONL keys) are taken as the interaction's own field names.
Records are keyed by user id, so one user's interactions stay in one partition.
"""

from __future__ import annotations

import json
import sys
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping
from urllib.parse import quote, urlencode

from streams.adapters.profiles import UserProfiles
from streams.schema.interactions import FIELDS, Interaction, InteractionError, interaction_from_dict
from streams.settings import Settings
from streams.tools.client import get_json
from streams.tools.publish import PublishReport, publish_raw, read_rows


def load_interaction_mapping(path_or_json: str | None) -> dict[str, Any]:
    if not path_or_json:
        return {}
    text = path_or_json if path_or_json.lstrip().startswith("{") else Path(path_or_json).read_text()
    mapping = json.loads(text)
    unknown = set(mapping) - set(FIELDS)
    if unknown:
        raise ValueError(f"mapping names unknown interaction fields {sorted(unknown)}; known: {', '.join(FIELDS)}")
    return mapping


def row_to_interaction(row: Mapping[str, Any], mapping: Mapping[str, Any]) -> Interaction:
    data: dict[str, Any] = {}
    for name in FIELDS:
        spec = mapping.get(name, name)
        value = spec.get("value") if isinstance(spec, dict) else row.get(spec)
        if value not in (None, ""):
            data[name] = value
    for name in ("event_time", "schema_version"):
        if isinstance(data.get(name), str):
            data[name] = _number(data[name])
    return interaction_from_dict(data)


def file_interactions(path: Path, mapping: Mapping[str, Any], on_error: Callable[[int, str], None]) -> Iterator[Interaction]:
    """Valid interactions of a file; invalid rows go to ``on_error`` and are skipped."""
    for number, row in enumerate(read_rows(path), start=1):
        try:
            if isinstance(row, ValueError):
                raise row
            yield row_to_interaction(row, mapping)
        except (InteractionError, ValueError) as exc:
            on_error(number, str(exc))


def publish_interactions(settings: Settings, interactions: Iterable[Interaction], progress: bool = False) -> PublishReport:
    records = ((i.user_id.encode(), i.to_bytes()) for i in interactions)
    return publish_raw(settings, records, progress=progress, topic=settings.interactions_topic)


def publish_interactions_file(settings: Settings, path: Path, mapping: Mapping[str, Any], limit: int | None = None) -> PublishReport:
    rejected: list[str] = []

    def reject(number: int, reason: str) -> None:
        rejected.append(reason)
        print(f"skipped {path.name} row {number}: {reason}", file=sys.stderr)

    interactions: Iterable[Interaction] = file_interactions(path, mapping, reject)
    if limit is not None:
        interactions = islice(interactions, limit)
    report = publish_interactions(settings, interactions, progress=True)
    return PublishReport(report.published, len(rejected), report.seconds)


def recommend_for_user(settings: Settings, user_id: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """The running worker's recommendations (it holds the store); ConnectionError when none answers."""
    query = urlencode({k: v for k, v in params.items() if v is not None})
    return get_json(f"{settings.worker_url}/users/{quote(user_id, safe='')}/recommendations?{query}")


def forget_user(settings: Settings, user_id: str) -> bool:
    """Straight in Redis, so it works whether or not a worker runs."""
    profiles = UserProfiles(settings.redis_url, settings.profile_ttl_s, settings.profile_max_events)
    try:
        return profiles.forget(user_id)
    finally:
        profiles.close()


def _number(value: str) -> float | int | str:
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value  # an ISO-8601 time stays a string
