"""Dead letters are never lost: an oversize original is cut to fit with its size and sha256 in
headers, and a failed delivery fails the batch (the agent retries it before committing)."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from streams.worker.app import (
    CODE_HEADER,
    ORIGINAL_SHA256_HEADER,
    ORIGINAL_SIZE_HEADER,
    REASON_HEADER,
    SOURCE_HEADER,
    DeadLetterDeliveryError,
    _send,
    _with_retry,
    dead_letter_record,
)
from streams.worker.pipeline import DeadLetter, Failure, IncomingMessage

HUGE = b'{"title": "' + b"x" * 5_000_000 + b'"}'


def letter(value: bytes, key: bytes = b"p1") -> DeadLetter:
    return DeadLetter(IncomingMessage(value, key, "events", 2, 41), Failure("over_limit", "invalid event: too big"))


def test_a_small_original_is_forwarded_whole_with_reason_code_and_source():
    record = dead_letter_record(letter(b'{"op": 1}'), max_value_bytes=1000)
    assert (record.key, record.value) == (b"p1", b'{"op": 1}')
    assert record.headers == {REASON_HEADER: b"invalid event: too big", CODE_HEADER: b"over_limit",
                              SOURCE_HEADER: b"events/2/41"}


def test_an_oversize_original_is_cut_with_its_size_and_sha256():
    record = dead_letter_record(letter(HUGE, key=b"k" * 5000), max_value_bytes=900_000)
    assert record.value == HUGE[:900_000]
    assert record.headers[ORIGINAL_SIZE_HEADER] == str(len(HUGE)).encode()
    assert record.headers[ORIGINAL_SHA256_HEADER] == hashlib.sha256(HUGE).hexdigest().encode()
    assert len(record.key) == 1024
    assert sum(map(len, record.headers.values())) + len(record.key) + len(record.value) < 1_000_000


class FakeTopic:
    """A topic whose deliveries fail ``failures`` times, then succeed; it keeps what it took."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.delivered: list[tuple[bytes | None, bytes, dict[str, bytes]]] = []

    async def send(self, key: bytes | None, value: bytes, headers: dict[str, bytes]) -> asyncio.Future:
        delivery = asyncio.get_running_loop().create_future()
        if self.failures:
            self.failures -= 1
            delivery.set_exception(RuntimeError("MessageSizeTooLargeError"))
        else:
            self.delivered.append((key, value, headers))
            delivery.set_result(None)
        return delivery


def test_a_failed_delivery_raises_so_the_batch_is_not_committed():
    topic = FakeTopic(failures=1)
    with pytest.raises(DeadLetterDeliveryError, match="2 records not delivered"):
        asyncio.run(_send(topic, [dead_letter_record(letter(v), 1000) for v in (b"a", b"b")]))


def test_the_agent_retries_delivery_until_every_dead_letter_is_taken(monkeypatch):
    async def no_wait(_: float) -> None:
        return None

    monkeypatch.setattr(asyncio, "sleep", no_wait)
    topic = FakeTopic(failures=3)
    letters = [letter(b"a"), letter(HUGE)]
    asyncio.run(_with_retry(lambda: _send(topic, [dead_letter_record(l, 900_000) for l in letters])))
    assert [value[:1] for _, value, _ in topic.delivered][-2:] == [b"a", b"{"]
    assert topic.delivered[-1][2][ORIGINAL_SIZE_HEADER] == str(len(HUGE)).encode()
