"""One received message and its settlement: acked or nacked once, whatever happens (Lingo #93).

Every ack, nack and in-progress call of the batch code goes through a `Delivery`; broker errors
from them are logged and swallowed here, so a failing ack can never take the process down
(Lingo #100). A message whose ack failed is redelivered by the broker: at-least-once.

`DeliveryCounter` tells how many times a message was delivered: the broker's count where it has
one, else lingo's own count by message id (bounded; it starts afresh when lingo restarts).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Literal

from lingo.batch.brokers.base import Message

log = logging.getLogger(__name__)


class Delivery:
    """Guards one message: the first of `ack()` / `nack()` settles it, later calls do nothing."""

    __slots__ = ("alive_at", "deliveries", "message", "settled", "stream")

    def __init__(self, message: Message, stream: str, now: float = 0.0, deliveries: int = 1) -> None:
        #: The broker's message.
        self.message = message
        #: Times the message was delivered, this time included (see `DeliveryCounter`).
        self.deliveries = deliveries
        #: The stream label, for logs.
        self.stream = stream
        #: How the message was settled, None while it is still being handled.
        self.settled: Literal["ack", "nack"] | None = None
        #: Loop time of receipt or of the last in-progress call.
        self.alive_at = now

    async def ack(self) -> bool:
        """Settle as done; False when already settled or the broker failed the ack."""
        if self.settled is not None:
            return False
        self.settled = "ack"
        try:
            await self.message.ack()
        except Exception as exc:
            log.warning(
                "ack failed; the broker will redeliver the message",
                extra={"stream": self.stream, "message_id": self.message.id, "error": repr(exc)},
            )
            return False
        return True

    async def nack(self, delay: float | None = None) -> bool:
        """Settle as not done (redeliver, after `delay` seconds where the broker can wait)."""
        if self.settled is not None:
            return False
        self.settled = "nack"
        try:
            await self.message.nack(delay)
        except Exception as exc:
            log.warning(
                "nack failed; the broker will redeliver the message when its lease ends",
                extra={"stream": self.stream, "message_id": self.message.id, "error": repr(exc)},
            )
            return False
        return True

    async def in_progress(self, now: float = 0.0) -> None:
        """Postpone redelivery of an unsettled message; errors are logged, not raised."""
        if self.settled is not None:
            return
        self.alive_at = now
        try:
            await self.message.in_progress()
        except Exception as exc:
            log.debug(
                "in-progress ack failed",
                extra={"stream": self.stream, "message_id": self.message.id, "error": repr(exc)},
            )


#: Message ids a `DeliveryCounter` remembers; the least recently seen is forgotten beyond it.
COUNTER_CAPACITY = 50_000


class DeliveryCounter:
    """Deliveries per message id for brokers that do not count them (`Message.deliveries` None).

    A bounded LRU: an id is forgotten once its message is acked, or when `capacity` other ids were
    seen since — so a message redelivered after more than `capacity` others counts from 1 again.
    """

    def __init__(self, capacity: int = COUNTER_CAPACITY) -> None:
        #: Most ids remembered at once.
        self.capacity = capacity
        self._seen: OrderedDict[str, int] = OrderedDict()

    def observe(self, message: Message) -> int:
        """Count one delivery of `message`; its deliveries so far, this one included."""
        seen = self._seen.pop(message.id, 0) + 1
        self._seen[message.id] = seen
        if len(self._seen) > self.capacity:
            self._seen.popitem(last=False)
        told = getattr(message, "deliveries", None)  # adapters written before the field: None
        return told if told is not None and told > 0 else seen

    def forget(self, message_id: str) -> None:
        """The message was acked: it will not be delivered again (barring a lost ack)."""
        self._seen.pop(message_id, None)

    def __len__(self) -> int:
        return len(self._seen)
