"""publish-interactions: rows through a mapping into interactions, bad rows skipped with a reason,
and the records on the interactions topic keyed by user id (real broker)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streams.adapters.kafka import read_topic
from streams.schema.interactions import Interaction, parse_interaction
from streams.settings import Settings
from streams.tools.cli import main
from streams.tools.interactions import file_interactions, load_interaction_mapping


def test_rows_map_to_interactions_and_bad_rows_are_reported(tmp_path: Path) -> None:
    log = tmp_path / "log.csv"
    log.write_text("who,item,ts\nu1,42,1700000000\nu2,43,2023-11-14T22:13:20Z\n,44,5\n")
    mapping = load_interaction_mapping('{"user_id": "who", "product_id": "item", "event_time": "ts", "kind": {"value": "click"}}')
    errors: list[tuple[int, str]] = []
    found = list(file_interactions(log, mapping, lambda n, reason: errors.append((n, reason))))
    assert found == [Interaction("u1", "42", "click", 1700000000.0), Interaction("u2", "43", "click", 1700000000.0)]
    assert errors == [(3, "field 'user_id' must be a non-empty string, got None")]
    with pytest.raises(ValueError, match="unknown interaction fields"):
        load_interaction_mapping('{"rating": "r"}')


@pytest.mark.integration
def test_publish_interactions_command_keys_records_by_user(settings: Settings, tmp_path: Path, monkeypatch, capsys) -> None:
    log = tmp_path / "log.jsonl"
    rows = [{"user_id": "u1", "product_id": "p1", "kind": "view", "event_time": 10},
            {"user_id": "u2", "product_id": "p2", "kind": "purchase", "event_time": 11}]
    log.write_text("\n".join(json.dumps(r) for r in rows) + "\nnot json\n")
    for variable, value in settings.to_env().items():
        monkeypatch.setenv(variable, value)
    assert main(["publish-interactions", str(log)]) == 0
    assert "published 2 events" in capsys.readouterr().out
    records = read_topic(settings, settings.interactions_topic, expected=2)
    assert sorted((r.key, parse_interaction(r.value).kind) for r in records) == [(b"u1", "view"), (b"u2", "purchase")]
