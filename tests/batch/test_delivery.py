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


class Counted(RecordingMessage):
    def __init__(self, message_id: str, deliveries: int | None) -> None:
        super().__init__()
        self.id = message_id
        self.deliveries = deliveries


def test_the_broker_count_wins_and_lingo_counts_where_the_broker_cannot() -> None:
    from lingo.batch.delivery import DeliveryCounter

    counter = DeliveryCounter(capacity=2)
    assert counter.observe(Counted("n", 4)) == 4
    assert [counter.observe(Counted("r", None)) for _ in range(3)] == [1, 2, 3]
    counter.forget("r")
    assert counter.observe(Counted("r", None)) == 1


def test_the_local_count_is_bounded_least_recently_seen_first() -> None:
    from lingo.batch.delivery import DeliveryCounter

    counter = DeliveryCounter(capacity=2)
    for message_id in ("a", "a", "b", "c"):
        counter.observe(Counted(message_id, None))
    assert len(counter) == 2
    assert counter.observe(Counted("a", None)) == 1, "forgotten beyond the capacity"
    assert counter.observe(Counted("c", None)) == 2


def test_rabbitmq_deliveries_come_from_quorum_queues_header_or_a_first_delivery() -> None:
    from lingo.batch.brokers.rabbit import delivery_count

    assert delivery_count(False, None) == 1
    assert delivery_count(True, 3) == 4
    assert delivery_count(True, None) is None, "a classic queue's redelivery: lingo counts itself"
