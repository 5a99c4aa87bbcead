"""Worker processes: the ones `shelfstream worker` records in the state dir, so that
`shelfstream down` can stop them, and ``WorkerProcess``, a worker for the demo, the benchmark
and the integration tests (started with given settings, awaited until its query API answers,
stopped with SIGTERM, then SIGKILL).

A recorded pid is only signalled after ``/proc`` confirms it is still the process that
recorded itself (same executable, same start time): pids are recycled, and a stale record must
never kill someone else's process.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from infra.services import _owns, _proc_start  # the one /proc identity check, shared with the services
from streams.settings import Settings
from streams.tools.client import Client

WORKERS_DIR = "workers"
STOP_GRACE_S = 30.0


@dataclass(frozen=True)
class WorkerRecord:
    """``STATE_DIR/workers/<pid>.json``: enough to find the worker again and to prove it is ours."""

    pid: int
    cmd: list[str]  # argv[0] as /proc shows it, for the identity check
    proc_start: int | None  # start time in clock ticks since boot
    started_at: float
    url: str

    @property
    def alive(self) -> bool:
        return _owns(asdict(self))


@contextlib.contextmanager
def recorded_worker(settings: Settings) -> Iterator[WorkerRecord]:
    """Record this process as a worker of ``settings.state_dir`` while the block runs."""
    folder = settings.state_path / WORKERS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    pid = os.getpid()
    argv0 = Path("/proc/self/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    record = WorkerRecord(pid, [argv0], _proc_start(pid), time.time(), settings.worker_url)
    path = folder / f"{pid}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(record)))
    os.replace(tmp, path)
    try:
        yield record
    finally:
        path.unlink(missing_ok=True)


def recorded_workers(state_dir: Path) -> list[WorkerRecord]:
    """The recorded workers that still run; records of exited (or recycled) pids are removed."""
    running = []
    for path in sorted((state_dir / WORKERS_DIR).glob("*.json")):
        try:
            record = WorkerRecord(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            record = None  # half-written or foreign: not a worker we can prove is ours
        if record is not None and record.alive:
            running.append(record)
        else:
            path.unlink(missing_ok=True)
    return running


def stop_workers(state_dir: Path, grace_s: float = STOP_GRACE_S) -> list[int]:
    """SIGTERM every recorded worker, SIGKILL those still running after ``grace_s``; their pids."""
    workers = recorded_workers(state_dir)
    for worker in workers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker.pid, signal.SIGTERM)
    _wait_until_gone(workers, grace_s)
    for worker in workers:
        if worker.alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGKILL)
    _wait_until_gone(workers, 5.0)
    recorded_workers(state_dir)  # drops the records of the stopped ones
    return [worker.pid for worker in workers]


def _wait_until_gone(workers: list[WorkerRecord], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while any(worker.alive for worker in workers) and time.monotonic() < deadline:
        time.sleep(0.1)


def encoded_count(stats: dict[str, Any]) -> int:
    """How many modality vectors the worker has encoded (all of ``encoded_text/image/video``)."""
    return sum(value for key, value in stats["counts"].items() if key.startswith("encoded_"))


class WorkerProcess:
    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.settings = settings
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> "WorkerProcess":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError("the worker process is not started")
        return self.process.pid

    def start(self, timeout_s: float = 120.0) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.settings.to_env()}
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "streams.tools.cli", "worker"], env=env, stdout=log, stderr=subprocess.STDOUT,
            )
        try:
            self.wait_until(lambda stats: True, timeout_s, "the worker's query API to answer")
        except BaseException:
            self.stop()
            raise

    def stats(self) -> dict[str, Any]:
        with Client.remote(self.settings) as client:
            return client.stats()

    def stats_reset(self) -> dict[str, Any]:
        """Counters so far, and a new freshness window from now on."""
        with Client.remote(self.settings) as client:
            return client.stats(reset=True)

    def wait_until(self, done: Callable[[dict[str, Any]], bool], timeout_s: float, what: str,
                   poll_s: float = 0.2) -> dict[str, Any]:
        """Poll ``/stats`` until ``done(stats)``; fail with the log's tail if the worker died or
        the time ran out."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"the worker exited with {self.process.returncode} while waiting for {what}:\n{self.log_tail()}")
            try:
                stats = self.stats()
                if done(stats):
                    return stats
            except ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}:\n{self.log_tail()}")
            time.sleep(poll_s)

    def stop(self, grace_s: float = 15.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"
