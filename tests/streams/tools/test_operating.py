"""Operating the system from the command line, on real services and a real worker: `wait` returns
once the published events are in the store, `status --json` is one document that shows it,
`down` leaves no process of the project behind, and `dead-letters` stops at the topic's end."""

from __future__ import annotations

import dataclasses
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from streams.adapters.kafka import ensure_topics
from streams.settings import Settings
from streams.tools.cli import main
from streams.tools.publish import publish_events
from streams.tools.runner import WorkerProcess, recorded_workers
from tests.conftest import free_port

pytestmark = pytest.mark.integration


def processes_with(variable: str, value: str) -> list[int]:
    """Pids of the processes (not this one) started with ``variable=value`` in their environment."""
    wanted = f"{variable}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if wanted in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue  # exited meanwhile, or not ours to read
    return found


def use(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``settings`` the environment of the CLI and of every process it starts."""
    for variable, value in settings.to_env().items():
        monkeypatch.setenv(variable, value)


def test_wait_status_and_down_with_a_real_worker(settings: Settings, catalog, tmp_path: Path, monkeypatch, capsys):
    own = dataclasses.replace(settings, kafka_bootstrap="", redis_url="", web_port=free_port())
    use(own, monkeypatch)
    monkeypatch.delenv("SHELFSTREAM_KAFKA_BOOTSTRAP")  # the addresses `up` records, not the session's services
    monkeypatch.delenv("SHELFSTREAM_REDIS_URL")
    assert main(["up"]) == 0
    try:
        own = Settings.from_env()
        assert own.kafka_bootstrap != settings.kafka_bootstrap
        # Published before the worker starts, and `wait` reading its targets while the worker
        # is still starting (seconds): with a running worker the 20 events could all be indexed
        # before `wait` looked, and it would rightly say it waited for 0.
        products = catalog[:20]
        publish_events(own, products)
        capsys.readouterr()
        worker = WorkerProcess(own, tmp_path / "worker.log")
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(main, ["wait", "--timeout", "300"])
            worker.start()
            assert waiting.result() == 0
        [record] = recorded_workers(own.state_path)
        assert record.pid == worker.process.pid and record.url == own.worker_url
        assert worker.stats()["points"] == len(products)  # `wait` returned only once all were in the store
        assert "20 events indexed" in capsys.readouterr().err

        assert main(["status", "--json"]) == 0
        status = json.loads(capsys.readouterr().out)
        assert status["worker"]["answering"] and status["worker"]["points"] == len(products)
        assert [w["pid"] for w in status["workers"]] == [record.pid]
        assert status["services"]["kafka"]["answering"] and status["services"]["redis"]["answering"]
        consumer = status["consumer"]
        assert consumer["group"] == own.app_id and consumer["lag"] == 0
        assert sum(p["end"] for p in consumer["partitions"]) == len(products)
        assert all(p["committed"] == p["end"] for p in consumer["partitions"] if p["end"])
        assert status["counts"]["indexed"] == len(products) and status["freshness"]["p50_ms"] > 0
        assert main(["status"]) == 0
        assert "backlog  0 events" in capsys.readouterr().out

        ready = httpx.get(f"{own.worker_url}/health/ready", timeout=30)
        assert ready.status_code == 200, ready.text
        checks = ready.json()["checks"]
        assert set(checks) == {"broker", "redis", "models", "store", "partitions"}
        assert all(check["ok"] for check in checks.values()) and "20 points" in checks["store"]["detail"]
        assert httpx.get(f"{own.worker_url}/health/live", timeout=30).json() == {"ok": True}

        exposition = httpx.get(f"{own.worker_url}/metrics", timeout=30).text
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for family in text_string_to_metric_families(exposition) for s in family.samples}
        assert samples[("shelfstream_events_consumed_total", ())] == len(products)
        assert samples[("shelfstream_products_indexed_total", ())] == len(products)
        assert samples[("shelfstream_cache_lookups_total", (("modality", "text"),))] == len(products)
        assert samples[("shelfstream_encode_duration_seconds_count", (("modality", "image"),))] >= 1
        assert samples[("shelfstream_store_write_duration_seconds_count", ())] >= 1
        assert samples[("shelfstream_freshness_seconds_count", ())] == len(products)
        assert samples[("shelfstream_batch_size_events_sum", ())] == len(products)
        lag = {labels: value for (name, labels), value in samples.items() if name == "shelfstream_consumer_lag_messages"}
        assert len(lag) == own.partitions and sum(lag.values()) == 0
        assert any(name == "shelfstream_model_info" and dict(labels)["modality"] == "text" for name, labels in samples)
    finally:
        assert main(["down"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"stopped worker {record.pid}, kafka, redis")
    assert worker.process.wait(10) is not None
    assert recorded_workers(own.state_path) == []
    assert processes_with("SHELFSTREAM_STATE_DIR", str(own.state_path)) == []


def test_down_never_signals_a_recycled_pid(settings: Settings, capsys, monkeypatch):
    """A record whose pid now belongs to another process (here: this test) is dropped, not killed."""
    use(settings, monkeypatch)
    folder = settings.state_path / "workers"
    folder.mkdir(parents=True)
    (folder / f"{os.getpid()}.json").write_text(json.dumps(
        {"pid": os.getpid(), "cmd": ["/usr/bin/python3"], "proc_start": 1, "started_at": 0.0, "url": "http://x"}))
    assert main(["down"]) == 0
    assert capsys.readouterr().out.strip() == "nothing to stop"
    assert not list(folder.iterdir())


def test_dead_letters_returns_at_the_end_of_an_empty_topic(settings: Settings, capsys, monkeypatch):
    ensure_topics(settings)
    use(settings, monkeypatch)
    assert main(["dead-letters", "--wait", "600"]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "0 dead letters shown: the end of the topic was reached" in captured.err
