"""`mem://NAME`: in-process topics, for tests and the demo.

A module-level registry maps names to `MemTopic`s; publishers append to a topic, subscriptions
take from it, and a nacked message goes back on it (after its delay). Nothing survives the process.
`MemTopic.fail_publishes` makes the next publishes fail, to exercise the nack path, and
`MemTopic.max_message_size` refuses larger messages (`PayloadTooLarge`), like a real broker's limit.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Mapping

from lingo.batch.brokers.base import BrokerError, PayloadTooLarge
from lingo.batch.urls import BrokerURL

_ids = itertools.count(1)


class MemMessage:
    """A message on a mem topic; redelivered (as the same object) when nacked."""

    keepalive: float | None = None

    def __init__(self, topic: MemTopic, data: bytes, attributes: Mapping[str, str]) -> None:
        self._topic = topic
        #: Sequence number within the process, as text.
        self.id = str(next(_ids))
        #: The payload.
        self.data = data
        #: The attributes it was published with.
        self.attributes = dict(attributes)
        #: Times it was handed to a subscriber, the current time included.
        self.deliveries: int | None = 0

    async def ack(self) -> None:
        self._topic.unacked.discard(self)

    async def nack(self, delay: float | None = None) -> None:
        self._topic.unacked.discard(self)
        if delay:
            asyncio.get_running_loop().call_later(delay, self._topic.requeue, self)
        else:
            self._topic.requeue(self)

    async def in_progress(self) -> None:
        return None


class MemTopic:
    """A named FIFO of messages shared by every publisher and subscription of that name."""

    def __init__(self, name: str) -> None:
        #: The topic's name (`mem://NAME`).
        self.name = name
        #: Messages waiting to be received.
        self.queue: asyncio.Queue[MemMessage] = asyncio.Queue()
        #: Messages handed out and not settled yet.
        self.unacked: set[MemMessage] = set()
        #: The next this many publishes fail with BrokerError (for tests).
        self.fail_publishes = 0
        #: Largest message accepted in bytes, None for no limit (for tests).
        self.max_message_size: int | None = None

    def publish(self, data: bytes, attributes: Mapping[str, str] | None = None) -> MemMessage:
        if self.fail_publishes > 0:
            self.fail_publishes -= 1
            raise BrokerError(f"mem://{self.name}: publish failed on purpose")
        if self.max_message_size is not None and len(data) > self.max_message_size:
            raise PayloadTooLarge(f"mem://{self.name}: {len(data)} bytes, limit {self.max_message_size}")
        message = MemMessage(self, data, attributes or {})
        self.queue.put_nowait(message)
        return message

    def requeue(self, message: MemMessage) -> None:
        self.queue.put_nowait(message)

    async def get(self, limit: int, timeout: float) -> list[MemMessage]:
        """Up to `limit` messages, waiting at most `timeout` seconds for the first."""
        try:
            first = await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            return []
        messages = [first]
        while len(messages) < limit and not self.queue.empty():
            messages.append(self.queue.get_nowait())
        for message in messages:
            message.deliveries = (message.deliveries or 0) + 1
            self.unacked.add(message)
        return messages


_TOPICS: dict[str, MemTopic] = {}


def topic(name: str) -> MemTopic:
    """The topic called `name`, created on first use."""
    found = _TOPICS.get(name)
    if found is None:
        found = _TOPICS[name] = MemTopic(name)
    return found


def delete_topic(name: str) -> None:
    """Forget a topic and whatever it holds."""
    _TOPICS.pop(name, None)


class MemSubscription:
    """Receives from a mem topic."""

    def __init__(self, url: BrokerURL) -> None:
        self.url = url
        self._topic: MemTopic | None = None

    async def open(self) -> None:
        self._topic = topic(self.url.name)

    async def receive(self, limit: int, timeout: float) -> list[MemMessage]:
        if self._topic is None:
            raise BrokerError(f"{self.url.label}: not open")
        return await self._topic.get(limit, timeout)

    async def backlog(self) -> int | None:
        return self._topic.queue.qsize() if self._topic is not None else None

    async def close(self) -> None:
        self._topic = None


class MemPublisher:
    """Publishes to a mem topic."""

    def __init__(self, url: BrokerURL) -> None:
        self.url = url

    async def open(self) -> None:
        return None

    async def publish(self, data: bytes, attributes: Mapping[str, str]) -> None:
        topic(self.url.name).publish(data, attributes)

    async def close(self) -> None:
        return None
