"""Faust with less work per event: price-only updates are bound by one Python core (the GIL), and
Faust's own per-event steps were half of a price update's CPU.

- ``EventlessMonitor`` skips the monitor's four per-event hooks (``/metrics`` counts events
  already; ~2% of the worker's time during price updates).
- ``RawSchema`` hands each record's bytes over as they are.
- ``LeanConsumer`` makes the consumer's per-message wait cheaper. Faust's drain loop hands every
  message to the conductor with ``await self.wait_first(callback(message), self.suspend_flow.wait())``
  (the callback races a rebalance suspending the flow), and mode's ``wait_first`` races with four
  tasks (the two coroutines and the service's stopped and crashed events), an ``asyncio.wait`` and
  three cancellations a message, though the callback waits only when a stream's buffer is full.
  Here the callback's first step runs in place: finished there (almost always), no task is made;
  blocked, the rest of it races the flow's suspension exactly as in mode. Measured (Faust alone
  moving 20,000 events through ``take_events`` with 0.24 ms of GIL-held work an event, a price
  update's pipeline cost, 2 cores): 1,850-2,160 events/s with mode's wait, 2,690-2,990 with this.
  Any other call, or a drain loop of another shape (a Faust upgrade), takes mode's ``wait_first``.
"""

from __future__ import annotations

import asyncio
import inspect
import types
from collections.abc import Coroutine, Generator
from typing import Any

import faust
from faust.sensors import Monitor
from faust.transport.drivers import aiokafka
from faust.types import TransportT
from mode import Service
from mode.services import WaitResults


class EventlessMonitor(Monitor):
    """Faust's monitor without its per-event bookkeeping; rebalances, commits and sends are
    still recorded."""

    def on_message_in(self, tp: Any, offset: int, message: Any) -> None:
        return None

    def on_stream_event_in(self, tp: Any, offset: int, stream: Any, event: Any) -> None:
        return None

    def on_stream_event_out(self, tp: Any, offset: int, stream: Any, event: Any, state: Any = None) -> None:
        return None

    def on_message_out(self, tp: Any, offset: int, message: Any) -> None:
        return None


@types.coroutine
def _resumed(coroutine: Coroutine[Any, Any, Any], pending: Any) -> Generator[Any, Any, Any]:
    """The rest of a coroutine whose first step already ran and yielded ``pending`` (what it
    waits on), to be driven by a task as if that task had run it from the start."""
    yielded = pending
    while True:
        try:
            sent = yield yielded
        except GeneratorExit:
            coroutine.close()
            raise
        except BaseException as exc:  # thrown in by the task (a cancellation): into the coroutine
            try:
                yielded = coroutine.throw(exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                yielded = coroutine.send(sent)
            except StopIteration as stop:
                return stop.value


async def _rest_of(coroutine: Coroutine[Any, Any, Any], pending: Any) -> Any:
    """``_resumed`` as a coroutine: mode's ``wait_first`` takes awaitables, not generators."""
    return await _resumed(coroutine, pending)


class LeanWait(Service):
    """The drain loop's ``wait_first`` without a task per message (see the module's docstring).
    Needs the ``suspend_flow`` event of Faust's consumer."""

    suspend_flow: asyncio.Event

    async def wait_first(self, *coros: Any, timeout: Any = None) -> WaitResults:
        if not self._is_drain_wait(coros, timeout):
            return await super().wait_first(*coros, timeout=timeout)
        callback, suspended = coros
        try:
            pending = callback.send(None)
        except StopIteration as finished:  # done in place: the suspension it raced against is moot
            suspended.close()
            return WaitResults([callback], [finished.value], False)
        except BaseException:
            suspended.close()
            raise
        return await super().wait_first(_rest_of(callback, pending), suspended)

    def _is_drain_wait(self, coros: tuple[Any, ...], timeout: Any) -> bool:
        """``(callback(message), self.suspend_flow.wait())``, not yet started, and no timeout."""
        if timeout is not None or len(coros) != 2:
            return False
        callback, suspended = coros
        return (inspect.iscoroutine(callback) and inspect.getcoroutinestate(callback) == inspect.CORO_CREATED
                and inspect.iscoroutine(suspended) and suspended.cr_code is asyncio.Event.wait.__code__
                and suspended.cr_frame is not None and suspended.cr_frame.f_locals.get("self") is self.suspend_flow)


class RawSchema(faust.Schema):
    """Keys and values as the bytes on the wire (the pipeline parses and judges them). Faust's own
    schema passes each through the serializer registry even for the ``raw`` codec (settings and
    codec lookups, a chain of calls) to return the same bytes. Measured through the real worker
    (400 products, 40 price rounds, six runs each, alternating): 3,073 -> 3,288 updates/s."""

    def __init__(self) -> None:
        super().__init__(key_serializer="raw", value_serializer="raw")

    def compile(self, app: Any, **_: Any) -> Any:
        create_event = app.create_event

        async def decode(message: Any, *, propagate: bool = False) -> Any:
            return create_event(message.key, message.value, message.headers, message)

        return decode


class LeanConsumer(LeanWait, aiokafka.Consumer):
    """Faust's aiokafka consumer with ``LeanWait``."""


class LeanTransport(aiokafka.Transport):
    Consumer = LeanConsumer


class LeanApp(faust.App):
    """A Faust app whose Kafka consumer is ``LeanConsumer``."""

    def _new_transport(self) -> TransportT:
        return LeanTransport(self.conf.broker_consumer, self)
