"""``LeanWait``: the drain loop's callback finishes in place without a task, and a callback
blocked on a full buffer still races the flow's suspension as in mode. No services."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import warnings
from typing import Any, Iterator

import faust
import pytest
from faust.types import Message
from mode import Service

from streams.worker.lean import LeanWait, RawSchema


class Drain(LeanWait, Service):
    """The part of Faust's consumer ``LeanWait`` needs."""

    def __init__(self) -> None:
        super().__init__()
        self.suspend_flow = asyncio.Event()

    async def drain(self, callback: Any) -> Any:
        """The drain loop's call, as Faust makes it."""
        return await self.wait_first(callback, self.suspend_flow.wait())


@contextlib.contextmanager
def every_coroutine_awaited_or_closed() -> Iterator[None]:
    """The unstarted ``suspend_flow.wait()`` must be closed, not dropped (a warning per message)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
        gc.collect()
    assert not [w for w in caught if "never awaited" in str(w.message)]


def tasks_made_during(coroutine_factory) -> tuple[Any, int]:
    """Run on a fresh loop: the result, and how many tasks were made meanwhile."""
    made = []

    async def main() -> Any:
        loop = asyncio.get_running_loop()
        loop.set_task_factory(lambda loop, coro, **kwargs: made.append(coro) or asyncio.Task(coro, loop=loop, **kwargs))
        try:
            return await coroutine_factory()
        finally:
            loop.set_task_factory(None)

    return asyncio.run(main()), len(made)


def test_a_callback_that_does_not_wait_runs_in_place_without_a_task():
    drain = Drain()
    delivered = []

    async def callback() -> None:
        delivered.append("event")

    async def run() -> Any:
        return await drain.drain(callback())

    with every_coroutine_awaited_or_closed():
        result, tasks = tasks_made_during(run)
    assert delivered == ["event"] and tasks == 0
    assert result.done and not result.stopped  # what mode's wait_first returns


def test_a_blocked_callback_finishes_once_the_buffer_has_room():
    async def run() -> list[str]:
        drain, buffer = Drain(), asyncio.Queue(maxsize=1)
        buffer.put_nowait("first")
        waiting = asyncio.ensure_future(drain.drain(buffer.put("second")))
        await asyncio.sleep(0.01)
        assert not waiting.done()  # blocked on the full buffer
        taken = [buffer.get_nowait()]
        await asyncio.wait_for(waiting, 1)
        return taken + [buffer.get_nowait()]

    assert asyncio.run(run()) == ["first", "second"]


def test_a_blocked_callback_gives_way_when_the_flow_is_suspended():
    """A rebalance suspends the flow: the wait ends and the blocked put is cancelled, so the
    event never reaches the stream (its offset is not acked; the partition's next owner reads it)."""
    async def run() -> tuple[int, bool]:
        drain, buffer = Drain(), asyncio.Queue(maxsize=1)
        buffer.put_nowait("first")
        waiting = asyncio.ensure_future(drain.drain(buffer.put("second")))
        await asyncio.sleep(0.01)
        drain.suspend_flow.set()
        await asyncio.wait_for(waiting, 1)
        buffer.get_nowait()
        await asyncio.sleep(0.01)
        return buffer.qsize(), waiting.done()

    assert asyncio.run(run()) == (0, True)


def test_an_error_in_the_callback_reaches_the_drain_loop():
    async def broken() -> None:
        raise ValueError("undecodable")

    async def run() -> None:
        await Drain().drain(broken())

    with every_coroutine_awaited_or_closed(), pytest.raises(ValueError, match="undecodable"):
        asyncio.run(run())


def test_other_waits_go_to_mode():
    """Not the drain loop's shape (here: racing another event than ``suspend_flow``): mode's
    ``wait_first``, its tasks and its result."""
    async def run() -> Any:
        drain, other, unrelated = Drain(), asyncio.Event(), asyncio.Event()
        other.set()
        return await drain.wait_first(other.wait(), unrelated.wait())

    result, tasks = tasks_made_during(run)
    assert tasks >= 2 and result.done and not result.stopped


def test_the_raw_schema_hands_over_a_records_bytes_unchanged():
    """``RawSchema``: the event's key and value are the record's bytes, whatever they hold (bad
    UTF-8, not JSON: the pipeline judges them), and what a worker sends goes out as given."""
    app = faust.App("raw-schema-test", broker="memory://")  # nothing started
    topic = app.topic("events", schema=RawSchema())
    message = Message(topic="events", partition=0, offset=7, timestamp=0.0, timestamp_type=0,
                      headers=[("h", b"1")], key=b"\xff key", value=b"\x00 not json", checksum=None)
    event = asyncio.run(topic.decode(message))
    assert (event.key, event.value, event.message) == (b"\xff key", b"\x00 not json", message)
    assert topic.prepare_key(b"\xff", None)[0] == b"\xff"
    assert topic.prepare_value(b"\x00 not json", None)[0] == b"\x00 not json"
