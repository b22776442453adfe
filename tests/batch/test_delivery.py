"""A message is settled once, whatever the handler does; broker errors on settling never escape."""

from __future__ import annotations

from lingo.batch.delivery import Delivery


class RecordingMessage:
    id = "m-1"
    data = b"{}"
    attributes: dict[str, str] = {}
    keepalive = None

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[str, float | None]] = []
        self.fail = fail

    async def ack(self) -> None:
        self.calls.append(("ack", None))
        if self.fail:
            raise ConnectionError("broker went away")

    async def nack(self, delay: float | None = None) -> None:
        self.calls.append(("nack", delay))
        if self.fail:
            raise ConnectionError("broker went away")

    async def in_progress(self) -> None:
        self.calls.append(("in_progress", None))
        if self.fail:
            raise ConnectionError("broker went away")


async def test_the_first_settlement_wins_and_later_ones_do_nothing() -> None:
    message = RecordingMessage()
    delivery = Delivery(message, "mem://x")
    assert await delivery.ack() is True
    assert await delivery.ack() is False
    assert await delivery.nack(1.0) is False
    await delivery.in_progress()
    assert message.calls == [("ack", None)]
    assert delivery.settled == "ack"


async def test_a_nack_passes_its_delay_once() -> None:
    message = RecordingMessage()
    delivery = Delivery(message, "mem://x")
    assert await delivery.nack(2.5) is True
    assert await delivery.ack() is False
    assert message.calls == [("nack", 2.5)]


async def test_broker_errors_on_ack_nack_and_in_progress_are_swallowed() -> None:
    message = RecordingMessage(fail=True)
    delivery = Delivery(message, "mem://x")
    await delivery.in_progress()
    assert await delivery.ack() is False
    assert await delivery.nack() is False
    assert message.calls == [("in_progress", None), ("ack", None)]
