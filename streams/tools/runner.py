"""A worker in its own process, for the demo, the benchmark and the integration tests: started
with given settings, awaited until its query API answers, and stopped (SIGTERM, then SIGKILL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from streams.settings import Settings
from streams.tools.client import Client


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
