"""The small interface every broker adapter implements: receive, ack, nack, publish.

Adapters do I/O only; what to do with a message is decided in `lingo.batch.handler`. Broker
errors surface as exceptions from these methods and are handled by the caller — they never end
the process.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

#: The response attribute naming the request message it answers.
REQUEST_MESSAGE_ID = "request_message_id"


class BrokerError(Exception):
    """A broker refused or failed an operation (missing topic, closed connection, full stream…)."""


@dataclass(frozen=True)
class ReceiveOptions:
    """How a subscription is opened."""

    #: Messages held at once (handed out and not settled): flow control on the broker side.
    max_outstanding: int
    #: Seconds a message may stay unsettled before the broker may redeliver it, where the broker
    #: needs to be told up front (Pub/Sub's lease management).
    max_lease: float = 3600.0
    #: Durable consumer name when the URL names none (NATS).
    default_consumer: str = "lingo"


class Message(Protocol):
    """One received message, settled exactly once through `lingo.batch.delivery.Delivery`."""

    #: The broker's id of the message (stable across redeliveries where the broker has one).
    id: str
    #: The payload.
    data: bytes
    #: Broker attributes / headers, as text.
    attributes: Mapping[str, str]
    #: Seconds between `in_progress()` calls while the message is handled, or None when the
    #: adapter (or broker) keeps the message's lease by itself.
    keepalive: float | None
    #: How many times the broker has delivered this message, this time included (1 on the first
    #: delivery), or None where the broker cannot tell.
    deliveries: int | None

    async def ack(self) -> None:
        """Done: the broker forgets the message."""

    async def nack(self, delay: float | None = None) -> None:
        """Not done: the broker redelivers the message, after `delay` seconds where given."""

    async def in_progress(self) -> None:
        """Still working on it: postpone redelivery."""


class Subscription(Protocol):
    """Where request messages are received from."""

    async def open(self) -> None:
        """Connect, create what is missing (where the adapter does), start receiving."""

    async def receive(self, limit: int, timeout: float) -> list[Message]:
        """Up to `limit` messages; waits at most `timeout` seconds for the first, [] if none came."""

    async def backlog(self) -> int | None:
        """Messages waiting on the broker not yet handed to any consumer, or None if unknown."""

    async def close(self) -> None:
        """Stop receiving; messages received but not handed out are returned to the broker."""


class Publisher(Protocol):
    """Where response messages are published to."""

    async def open(self) -> None:
        """Connect and find (or create, where the adapter does) the destination."""

    async def publish(self, data: bytes, attributes: Mapping[str, str]) -> None:
        """Publish one message; returns once the broker accepted it, raises if it did not."""

    async def close(self) -> None: ...
