"""Unit tests of the settings (``SHELFSTREAM_*`` parsing, the embedded services' fallback) and of
the command line (parser, ``settings``, the result table, a query with no worker). No services;
the query test loads the exported ONNX models."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

from streams.settings import ENV_PREFIX, Settings
from streams.tools.cli import build_parser, main, query_from_args
from streams.tools.client import format_table
from tests.conftest import free_port

COMMANDS = ["up", "down", "status", "settings", "worker", "serve", "publish", "similar", "search", "recommend", "export",
            "bench", "demo", "make-videos", "train", "eval", "reindex", "dead-letters", "backup", "restore",
            "optimize", "publish-interactions", "forget-user", "wait", "finetune"]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No SHELFSTREAM_* from the outside, and a state dir of our own (no stray services.json)."""
    import os

    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    state = tmp_path / "state"
    monkeypatch.setenv("SHELFSTREAM_STATE_DIR", str(state))
    return state


# -- Settings.from_env ------------------------------------------------------------------------------


def test_defaults_without_any_variable(tmp_path):
    settings = Settings.from_env(env={"SHELFSTREAM_STATE_DIR": str(tmp_path)})
    assert settings.partitions == 4 and settings.web_port == 6066 and settings.batch_size == 32
    assert settings.text_weight == 0.5 and settings.allow_private_networks is False
    assert settings.kafka_bootstrap == "127.0.0.1:9092"
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.qdrant_path == str(tmp_path.resolve() / "qdrant")
    assert settings.worker_url == "http://127.0.0.1:6066"


def test_parses_ints_floats_bools_and_strings(tmp_path):
    settings = Settings.from_env(env={
        "SHELFSTREAM_STATE_DIR": str(tmp_path),
        "SHELFSTREAM_PARTITIONS": "8",
        "SHELFSTREAM_WEB_PORT": " 7070 ",
        "SHELFSTREAM_BATCH_WINDOW_S": "0.05",
        "SHELFSTREAM_TEXT_WEIGHT": "1",
        "SHELFSTREAM_ALLOW_PRIVATE_NETWORKS": "yes",
        "SHELFSTREAM_COLLECTION": "products_v2",
        "SHELFSTREAM_QDRANT_URL": "http://qdrant:6333",
        "OTHER_PARTITIONS": "x",  # not ours: ignored
    })
    assert settings.partitions == 8 and isinstance(settings.partitions, int)
    assert settings.web_port == 7070
    assert settings.batch_window_s == 0.05 and isinstance(settings.batch_window_s, float)
    assert settings.text_weight == 1.0 and isinstance(settings.text_weight, float)
    assert settings.allow_private_networks is True
    assert settings.collection == "products_v2"
    assert settings.qdrant_url == "http://qdrant:6333"
    assert settings.worker_url == "http://127.0.0.1:7070"


@pytest.mark.parametrize(
    "raw, expected",
    [("1", True), ("true", True), ("TRUE", True), (" on ", True), ("yes", True),
     ("0", False), ("false", False), ("Off", False), ("no", False), ("", False)],
)
def test_bool_spellings(tmp_path, raw, expected):
    env = {"SHELFSTREAM_STATE_DIR": str(tmp_path), "SHELFSTREAM_ALLOW_PRIVATE_NETWORKS": raw}
    assert Settings.from_env(env=env).allow_private_networks is expected


@pytest.mark.parametrize(
    "variable, raw, message",
    [
        ("SHELFSTREAM_PARTITIONS", "four", "SHELFSTREAM_PARTITIONS='four' is not a valid int"),
        ("SHELFSTREAM_WEB_PORT", "6066.5", "SHELFSTREAM_WEB_PORT='6066.5' is not a valid int"),
        ("SHELFSTREAM_BATCH_WINDOW_S", "fast", "SHELFSTREAM_BATCH_WINDOW_S='fast' is not a valid float"),
        ("SHELFSTREAM_ALLOW_PRIVATE_NETWORKS", "maybe", "SHELFSTREAM_ALLOW_PRIVATE_NETWORKS='maybe' is not a valid bool"),
        ("SHELFSTREAM_CACHE_TTL_S", "", "SHELFSTREAM_CACHE_TTL_S='' is not a valid int"),
    ],
)
def test_bad_values_are_rejected_naming_the_variable(tmp_path, variable, raw, message):
    with pytest.raises(ValueError) as info:
        Settings.from_env(env={"SHELFSTREAM_STATE_DIR": str(tmp_path), variable: raw})
    assert str(info.value) == message


def test_reads_os_environ_by_default(monkeypatch):
    monkeypatch.setenv("SHELFSTREAM_BATCH_SIZE", "5")
    assert Settings.from_env().batch_size == 5


def test_overrides_beat_the_environment(tmp_path):
    env = {"SHELFSTREAM_STATE_DIR": str(tmp_path), "SHELFSTREAM_BATCH_SIZE": "5"}
    assert Settings.from_env(env=env, batch_size=9).batch_size == 9


def test_service_addresses_fall_back_to_services_json(tmp_path):
    (tmp_path / "services.json").write_text(json.dumps({
        "kafka_bootstrap": "127.0.0.1:41001", "redis_url": "redis://127.0.0.1:41002/0", "services": {},
    }))
    settings = Settings.from_env(env={"SHELFSTREAM_STATE_DIR": str(tmp_path)})
    assert settings.kafka_bootstrap == "127.0.0.1:41001"
    assert settings.redis_url == "redis://127.0.0.1:41002/0"
    # explicit addresses win over the recorded ones
    explicit = Settings.from_env(env={"SHELFSTREAM_STATE_DIR": str(tmp_path),
                                      "SHELFSTREAM_KAFKA_BOOTSTRAP": "kafka:9092",
                                      "SHELFSTREAM_REDIS_URL": "redis://cache:6379/1"})
    assert (explicit.kafka_bootstrap, explicit.redis_url) == ("kafka:9092", "redis://cache:6379/1")
    # an empty variable is "not set"
    empty = Settings.from_env(env={"SHELFSTREAM_STATE_DIR": str(tmp_path), "SHELFSTREAM_KAFKA_BOOTSTRAP": ""})
    assert empty.kafka_bootstrap == "127.0.0.1:41001"


def test_unreadable_services_json_falls_back_to_the_defaults(tmp_path):
    (tmp_path / "services.json").write_text("{not json")
    settings = Settings.from_env(env={"SHELFSTREAM_STATE_DIR": str(tmp_path)})
    assert settings.kafka_bootstrap == "127.0.0.1:9092"


def test_explicit_qdrant_path_is_kept(tmp_path):
    settings = Settings.from_env(env={"SHELFSTREAM_STATE_DIR": str(tmp_path), "SHELFSTREAM_QDRANT_PATH": "/data/q"})
    assert settings.qdrant_path == "/data/q"


def test_to_env_round_trips(tmp_path):
    settings = Settings.from_env(
        env={"SHELFSTREAM_STATE_DIR": str(tmp_path)},
        partitions=3, text_weight=0.25, allow_private_networks=True, batch_window_s=0.125,
        kafka_bootstrap="k:1", redis_url="redis://r:2/3", qdrant_api_key="", video_pooling="distinct",
    )
    env = settings.to_env()
    assert set(env) == {ENV_PREFIX + f.name.upper() for f in dataclasses.fields(Settings)}
    assert all(isinstance(value, str) for value in env.values())
    assert env["SHELFSTREAM_ALLOW_PRIVATE_NETWORKS"] == "True"
    assert env["SHELFSTREAM_PARTITIONS"] == "3"
    assert Settings.from_env(env=env) == settings
    defaults = Settings.from_env(env={"SHELFSTREAM_STATE_DIR": str(tmp_path)})
    assert Settings.from_env(env=defaults.to_env()) == defaults


def test_describe_lists_every_knob():
    described = Settings.describe()
    assert [variable for variable, _, _ in described] == [ENV_PREFIX + f.name.upper() for f in dataclasses.fields(Settings)]
    assert ("SHELFSTREAM_PARTITIONS", "4", "partitions of the events topic (the unit of scale-out)") in described
    assert all(doc for _, _, doc in described)


# -- the parser ----------------------------------------------------------------------------------------


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    [action] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_parser_has_every_subcommand():
    assert sorted(subcommands(build_parser())) == sorted(COMMANDS)


def test_a_command_is_required(capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args([])
    assert info.value.code == 2
    assert "required: COMMAND" in capsys.readouterr().err


def test_publish_arguments():
    args = build_parser().parse_args(["publish", "c.csv", "--mapping", "m.json", "--version", "7", "--limit", "5", "--delete"])
    assert (args.command, args.file, args.mapping, args.version, args.limit, args.delete) == (
        "publish", Path("c.csv"), "m.json", 7, 5, True,
    )
    defaults = build_parser().parse_args(["publish", "c.jsonl"])
    assert (defaults.mapping, defaults.version, defaults.limit, defaults.delete) == (None, None, None, False)


def test_query_arguments_become_the_api_request():
    args = build_parser().parse_args(["similar", "53010", "-k", "3", "--category", "Apparel > Topwear",
                                      "--price-min", "100", "--price-max", "999.5", "--json", "--offset", "3",
                                      "--attr", "gender=Women", "--attr", "baseColour=Red", "--attr", "baseColour=Pink",
                                      "--has", "image", "--exclude", "1", "--score-threshold", "0.5"])
    assert query_from_args(args) == {
        "type": "similar", "product_id": "53010", "limit": 3, "offset": 3, "score_threshold": 0.5,
        "filter": {"category": "Apparel > Topwear", "price_min": 100.0, "price_max": 999.5,
                   "attributes": {"gender": ["Women"], "baseColour": ["Red", "Pink"]}, "modalities": ["image"],
                   "exclude_product_ids": ["1"]},
    }
    search = build_parser().parse_args(["search", "--text", "red shoes", "--mode", "keyword"])
    assert query_from_args(search) == {"type": "text", "text": "red shoes", "mode": "keyword", "limit": 10, "offset": 0}
    recommend = build_parser().parse_args(["recommend", "1", "2", "--negative", "3"])
    assert query_from_args(recommend) == {"type": "recommend", "positive": ["1", "2"], "negative": ["3"],
                                          "limit": 10, "offset": 0}
    with pytest.raises(ValueError, match="--attr 'gender': expected KEY=VALUE"):
        query_from_args(build_parser().parse_args(["search", "--text", "x", "--attr", "gender"]))


@pytest.mark.parametrize("argv", [["search"], ["search", "--text", "a", "--image", "b.jpg"], ["similar"],
                                  ["worker", "--loglevel", "loud"], ["publish"], ["nope"]])
def test_bad_command_lines_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(argv)
    assert info.value.code == 2
    assert "error:" in capsys.readouterr().err


# -- commands --------------------------------------------------------------------------------------------


def test_settings_command_prints_every_variable(monkeypatch, capsys, clean_env):
    monkeypatch.setenv("SHELFSTREAM_BATCH_SIZE", "7")
    monkeypatch.setenv("SHELFSTREAM_COLLECTION", "catalog_x")
    assert main(["settings"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(dataclasses.fields(Settings))
    by_variable = {line.split()[0]: line for line in lines}
    assert set(by_variable) == {ENV_PREFIX + f.name.upper() for f in dataclasses.fields(Settings)}
    assert by_variable["SHELFSTREAM_BATCH_SIZE"].split()[1] == "7"
    assert by_variable["SHELFSTREAM_COLLECTION"].split()[1] == "'catalog_x'"
    assert by_variable["SHELFSTREAM_STATE_DIR"].split()[1] == repr(str(clean_env))
    assert by_variable["SHELFSTREAM_PARTITIONS"].endswith("partitions of the events topic (the unit of scale-out)")


def test_bad_variable_is_a_clean_cli_error(monkeypatch, capsys):
    monkeypatch.setenv("SHELFSTREAM_PARTITIONS", "four")
    assert main(["settings"]) == 1
    assert "shelfstream settings: error: SHELFSTREAM_PARTITIONS='four' is not a valid int" in capsys.readouterr().err


def test_status_with_nothing_running(monkeypatch, capsys, tmp_path):
    port = free_port()
    monkeypatch.setenv("SHELFSTREAM_WEB_PORT", str(port))
    monkeypatch.setenv("SHELFSTREAM_QDRANT_PATH", str(tmp_path / "q"))
    monkeypatch.setenv("SHELFSTREAM_KAFKA_BOOTSTRAP", f"127.0.0.1:{free_port()}")
    assert main(["status"]) == 0
    summary = capsys.readouterr().out
    assert f"worker   none answering at http://127.0.0.1:{port} (pids: none recorded)" in summary
    assert "kafka    stopped" in summary and "backlog  unknown: no Kafka broker answers" in summary

    completed = subprocess.run([sys.executable, "-m", "streams.tools.cli", "status", "--json"],
                               capture_output=True, check=True)
    checked = subprocess.run([sys.executable, "-m", "json.tool"], input=completed.stdout, capture_output=True)
    assert checked.returncode == 0, checked.stderr
    status = json.loads(completed.stdout)
    assert status["services"]["qdrant"] == {"mode": "edge", "path": str(tmp_path / "q")}
    assert not status["services"]["kafka"]["alive"] and not status["services"]["redis"]["alive"]
    assert status["worker"]["answering"] is False and status["workers"] == []
    assert "no Kafka broker answers" in status["consumer"]["error"]
    assert status["counts"] == {} and status["freshness"] == {"p50_ms": None, "p99_ms": None}


def test_format_table_columns():
    hits = [
        {"rank": 1, "product_id": "53010", "score": 0.912345, "score_kind": "dbsf", "title": "FNF Yellow Printed Sari",
         "category": ["Apparel", "Saree", "Sarees"], "price": 499.0, "modalities": ["image", "text"],
         "scores": {"text": 0.8, "image": None, "video": None, "keyword": 3.5}},
        {"rank": 2, "product_id": "1234567890123", "score": 0.5, "score_kind": "cosine", "title": "T" * 60,
         "category": [], "price": None, "scores": {}},
    ]
    lines = format_table(hits).splitlines()
    assert len(lines) == 3
    names = ["rank", "product_id", "score", "kind", "text", "image", "keyword", "title", "category", "price"]
    assert lines[0].split() == names
    starts = {name: lines[0].index(name) for name in names}
    first, second = lines[1], lines[2]
    assert first[starts["score"]:].startswith("0.9123 ")  # four decimals
    assert first[starts["kind"]:].startswith("dbsf ")
    assert first[starts["text"]:].startswith("0.8000 ") and first[starts["image"]:].startswith("  ")
    assert first[starts["keyword"]:].startswith("3.5000 ")
    assert first[starts["category"]:].startswith("Apparel > Saree > Sarees ")
    assert first[starts["price"]:] == "499.0"
    assert second[starts["product_id"]:starts["score"]] == "1234567890  "  # cut to the column width
    assert second[starts["title"]:] == "T" * 44  # cut to 44, no trailing blanks


def test_format_table_no_results():
    assert format_table([]) == "no results"


def test_similar_with_no_worker_and_an_empty_store_names_the_product(monkeypatch, capsys, tmp_path, model_dir):
    monkeypatch.setenv("SHELFSTREAM_QDRANT_PATH", str(tmp_path / "qdrant"))
    monkeypatch.setenv("SHELFSTREAM_WEB_PORT", str(free_port()))
    monkeypatch.setenv("SHELFSTREAM_MODEL_DIR", str(model_dir))
    monkeypatch.setenv("SHELFSTREAM_PROVIDERS", "cpu")
    assert main(["similar", "no-such-product-42"]) == 1
    captured = capsys.readouterr()
    assert captured.err.strip() == "shelfstream similar: error: product 'no-such-product-42' is not indexed"
    assert captured.out == ""
    assert (tmp_path / "qdrant").is_dir()  # the CLI opened the store itself

    # the same empty store answers a text search with no results
    assert main(["search", "--text", "red running shoes", "--category", "Footwear"]) == 0
    assert capsys.readouterr().out.strip() == "no results"
    assert main(["search", "--text", "red running shoes", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["hits"] == []
    # a malformed query is refused by the same API, naming the field
    assert main(["search", "--text", "shoes", "-k", "0"]) == 1
    assert capsys.readouterr().err.strip() == "shelfstream search: error: limit: Input should be greater than or equal to 1"


def test_the_worker_path_imports_no_torch():
    code = ("import sys, streams.worker.app, streams.tools.cli, streams.worker.pipeline, streams.worker.search; streams.tools.cli.build_parser(); "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_the_readme_documents_every_setting_with_its_default():
    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    for variable, default, doc in Settings.describe():
        assert f"| `{variable}` | `{default}` | {doc} |" in readme, variable


@pytest.fixture
def cli_store(monkeypatch, tmp_path, model_dir) -> Callable[[], Any]:
    """The settings a CLI command in this process reads (an Edge store under ``tmp_path``, no
    worker answering), and an opener of that store holding products "a" and "b"."""
    import numpy as np

    from streams.adapters.store import ProductPoint, ProductStore
    from streams.worker.encoders import load_encoders

    for name, value in {"QDRANT_PATH": tmp_path / "qdrant", "WEB_PORT": free_port(), "MODEL_DIR": model_dir,
                        "PROVIDERS": "cpu", "STATE_DIR": tmp_path / "state", "BACKUP_DIR": tmp_path / "backups"}.items():
        monkeypatch.setenv(f"SHELFSTREAM_{name}", str(value))
    settings = Settings.from_env()
    encoders = load_encoders(settings)
    fusion = encoders.fusion

    def open_store() -> ProductStore:  # the collection the CLI's in-process API writes to
        return ProductStore(settings, fusion.dims, encoders.store_version)

    store = open_store()
    unit = {name: np.full(dim, 1 / np.sqrt(dim), dtype=np.float32) for name, dim in fusion.dims.items()}
    tilted = {name: np.eye(dim, dtype=np.float32)[0] for name, dim in fusion.dims.items()}
    store.upsert([ProductPoint(pid, vectors, {"product_id": pid, "version": 1, "title": pid})
                  for pid, vectors in (("a", unit), ("b", tilted))])
    store.close()
    return open_store


def test_backup_and_restore_with_no_worker_round_trip(capsys, tmp_path, cli_store):
    """`shelfstream backup NAME` then `restore NAME` on the Edge store, opened by the CLI itself; the
    snapshots land in SHELFSTREAM_BACKUP_DIR/NAME."""
    assert main(["backup", "nightly"]) == 0
    store = cli_store()
    assert f"{store.collection}.snapshot" in capsys.readouterr().out
    assert any((tmp_path / "backups" / "nightly").iterdir())
    store.delete(["a"])
    store.close()
    assert main(["restore", "nightly"]) == 0
    store = cli_store()
    try:
        assert store.count() == 2 and store.get("a").payload["title"] == "a"
        assert store.serving_collection() == store.collection
    finally:
        store.close()


def test_optimize_with_no_worker_indexes_the_edge_store_and_keeps_its_answers(capsys, cli_store):
    """3,000 points are enough for Edge to build the int8 copies of ``fused`` (a handful are not:
    then the command says there was nothing to build)."""
    import numpy as np

    from streams.adapters.store import ProductPoint

    rng = np.random.default_rng(0)
    store = cli_store()
    vectors = rng.standard_normal((3_000, store.dims["fused"])).astype(np.float32)
    store.upsert([ProductPoint(str(i), {"fused": v}, {"product_id": str(i), "version": 1}) for i, v in enumerate(vectors)])
    queries = rng.standard_normal((5, store.dims["fused"])).astype(np.float32)
    before = [[h.product_id for h in store.search("fused", q)] for q in queries]
    store.close()
    assert main(["optimize"]) == 0
    assert re.fullmatch(r"optimize: \S+: indexes built in [0-9.]+ s\n", capsys.readouterr().out)
    assert main(["optimize"]) == 0
    assert "nothing to build" in capsys.readouterr().out
    store = cli_store()
    try:
        assert [[h.product_id for h in store.search("fused", q)] for q in queries] == before
        assert store.count() == 3_002
    finally:
        store.close()


def test_is_set_tells_a_chosen_value_from_a_default():
    from streams.settings import is_set

    assert is_set("precision", {"SHELFSTREAM_PRECISION": "fp32"})
    assert not is_set("precision", {"SHELFSTREAM_BATCH_SIZE": "8"})
