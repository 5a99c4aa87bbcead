"""``shelfstream bench --consumer``: Faust's consumer alone, with mode's per-message wait and with
``LeanConsumer`` (``streams/worker/lean.py``), side by side in one run.

Each variant is a Faust app in its own process, configured as the worker's (``faust_app``), that
takes the same number of events already in a topic of the embedded broker, in batches of 32 on
two actors as the worker does, and spends ``work_ms`` of CPU per event in its executor while
holding the GIL (0.24 ms: a price update's pipeline cost), so the rate shows what Faust's own
per-event steps take from the one core Python has. The variants alternate ``rounds`` times; the ratio is of the medians.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import time
import uuid
from typing import Any, Callable

from streams.settings import Settings

VARIANTS = ("mode", "lean")
PAYLOAD = b'{"title": "' + b"x" * 600 + b'"}'  # about a product event's size
KEYS = 500
RESULT = re.compile(r'\{"events_per_s": [0-9.eE+-]+\}')


def run_consumer_bench(settings: Settings, events: int = 20_000, work_ms: float = 0.24, rounds: int = 2,
                       say: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    from infra.services import start_services, stop_services
    from streams.tools.publish import EventPublisher

    state = settings.state_path / "bench-consumer"
    services = start_services(state)
    try:
        rates: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
        for round_ in range(rounds):
            for variant in VARIANTS:
                tag = uuid.uuid4().hex[:8]
                bench = Settings.from_env(state_dir=str(state), kafka_bootstrap=services["kafka_bootstrap"],
                                          redis_url=services["redis_url"], app_id=f"bench-consumer-{tag}",
                                          events_topic=f"bench-consumer-{tag}")
                with EventPublisher(bench) as publisher:
                    for i in range(events):
                        publisher.send(f"p{i % KEYS}".encode(), PAYLOAD)
                rate = _consume(bench, variant, events, work_ms)
                rates[variant].append(rate)
                say(f"round {round_ + 1}/{rounds}: {variant} {rate:.0f} events/s")
    finally:
        stop_services(state)
    mode_rate, lean_rate = (statistics.median(rates[variant]) for variant in VARIANTS)
    return {"events": events, "work_ms": work_ms, "rounds": rounds,
            "mode_wait_events_per_s": [round(r, 1) for r in rates["mode"]],
            "lean_events_per_s": [round(r, 1) for r in rates["lean"]],
            "lean_over_mode": round(lean_rate / mode_rate, 2)}


def _consume(settings: Settings, variant: str, events: int, work_ms: float, timeout_s: float = 600.0) -> float:
    """Run one variant's app in a process of its own; its events per second."""
    env = {**os.environ, **settings.to_env()}
    result = subprocess.run([sys.executable, "-m", "streams.tools.bench_consumer", variant, str(events), str(work_ms)],
                            env=env, capture_output=True, text=True, timeout=timeout_s)
    found = RESULT.search(result.stdout + result.stderr)  # Faust's worker logs what its process prints
    if found:
        return float(json.loads(found.group(0))["events_per_s"])
    raise RuntimeError(f"the {variant} consumer did not finish (exit {result.returncode}): {result.stderr[-2000:]}")


def _child(variant: str, events: int, work_ms: float) -> None:
    """One variant: consume ``events`` events, print the rate as JSON, exit."""
    import faust

    from streams.worker.app import faust_app
    from streams.worker.lean import LeanApp

    settings = Settings.from_env()
    app = faust_app(settings, LeanApp if variant == "lean" else faust.App)
    topic = app.topic(settings.events_topic, key_serializer="raw", value_serializer="raw", partitions=settings.partitions)
    seen, started = [0], [0.0]

    def work(count: int) -> None:
        until = time.thread_time() + work_ms / 1000 * count
        while time.thread_time() < until:
            pass

    @app.agent(topic, concurrency=2)
    async def consume(stream: faust.StreamT) -> None:
        loop = asyncio.get_running_loop()
        async for batch in stream.take_events(32, within=0.1):
            started[0] = started[0] or time.perf_counter()
            await loop.run_in_executor(None, work, len(batch))
            seen[0] += len(batch)
            if seen[0] >= events:
                print(json.dumps({"events_per_s": events / (time.perf_counter() - started[0])}), flush=True)
                os._exit(0)

    faust.Worker(app, loglevel="warn").execute_from_commandline()


if __name__ == "__main__":
    _child(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]))
