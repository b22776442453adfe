"""`rabbit://QUEUE` and `rabbit://EXCHANGE`: RabbitMQ through aio-pika (server: `RABBIT_SERVER_URL`).

Requests are consumed from a queue, declared durable when missing, with prefetch = max handlers
(RabbitMQ hands out no more than lingo can handle). A nack requeues the message; where a delay is
asked for, the nack is sent after it (the message stays unacked meanwhile, which holds back
further deliveries: the broker has no delayed requeue). RabbitMQ closes a channel whose message
stays unacked beyond its `consumer_timeout` (30 min by default): keep it above LINGO_MAX_WAIT.

Responses go to the exchange of that name when it exists (routing key ""; fanout exchanges suit
best), else to the default exchange with routing key = the name, i.e. straight into the queue of
that name, which lingo declares durable when missing. Publishes are mandatory and confirmed: an
unroutable or refused response raises, so the request is nacked and answered again later
rather than lost. Connections are robust: aio-pika reconnects and restores the consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections.abc import Mapping

import aio_pika
import aio_pika.exceptions
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)

from lingo.batch.brokers.base import BrokerError, PayloadTooLarge, ReceiveOptions
from lingo.batch.urls import BrokerURL

log = logging.getLogger(__name__)

#: Server when `RABBIT_SERVER_URL` is not set.
DEFAULT_SERVER = "amqp://guest:guest@127.0.0.1:5672/"
#: Seconds allowed for connecting and for each broker call.
TIMEOUT = 10.0
#: Header quorum queues set on a redelivered message: how many times it was delivered before.
DELIVERY_COUNT = "x-delivery-count"


def server_url() -> str:
    """The RabbitMQ server lingo connects to."""
    return os.environ.get("RABBIT_SERVER_URL") or DEFAULT_SERVER


async def connect() -> AbstractRobustConnection:
    try:
        return await aio_pika.connect_robust(
            server_url(), timeout=TIMEOUT, client_properties={"connection_name": "lingo"}
        )
    except (OSError, TimeoutError, aio_pika.exceptions.AMQPError) as exc:
        host = server_url().rpartition("@")[2]
        raise BrokerError(f"cannot connect to RabbitMQ at {host}: {exc!r}") from None


async def exists(connection: AbstractRobustConnection, kind: str, name: str) -> bool:
    """Whether an exchange or queue exists (a passive declare on a throwaway channel)."""
    channel = await connection.channel(publisher_confirms=False)
    try:
        if kind == "exchange":
            await channel.declare_exchange(name, passive=True, timeout=TIMEOUT)
        else:
            await channel.declare_queue(name, passive=True, timeout=TIMEOUT)
    except aio_pika.exceptions.ChannelNotFoundEntity:
        return False
    finally:
        with contextlib.suppress(Exception):
            await channel.close()
    return True


async def ensure_queue(
    connection: AbstractRobustConnection, channel: AbstractChannel, name: str
) -> AbstractQueue:
    """The queue called `name` on `channel`, declared durable first when it does not exist."""
    if not await exists(connection, "queue", name):
        await channel.declare_queue(name, durable=True, timeout=TIMEOUT)
        log.info("declared RabbitMQ queue", extra={"queue": name})
    return await channel.get_queue(name, ensure=False)


class RabbitMessage:
    """A message delivered by RabbitMQ, acked manually."""

    keepalive: float | None = None

    def __init__(self, message: AbstractIncomingMessage, pending: set[asyncio.Task[None]]) -> None:
        self._message = message
        self._pending = pending
        #: The message's `message_id` property, else its delivery tag.
        self.id = message.message_id or f"tag-{message.delivery_tag}"
        #: The payload.
        self.data = message.body
        #: The message's headers, as text.
        self.attributes = {str(k): _text(v) for k, v in (message.headers or {}).items()}
        #: Deliveries so far, this one included: 1 on a first delivery; from quorum queues'
        #: `x-delivery-count` (earlier deliveries) on a redelivery; None on a redelivery from a
        #: classic queue, whose `redelivered` flag does not say how often.
        self.deliveries = delivery_count(message.redelivered, (message.headers or {}).get(DELIVERY_COUNT))

    async def ack(self) -> None:
        await self._message.ack()

    async def nack(self, delay: float | None = None) -> None:
        if not delay:
            await self._message.nack(requeue=True)
            return
        task = asyncio.create_task(self._nack_later(delay))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _nack_later(self, delay: float) -> None:
        await asyncio.sleep(delay)
        try:
            await self._message.nack(requeue=True)
        except Exception as exc:  # channel gone: the broker requeued it already
            log.debug("delayed nack failed", extra={"message_id": self.id, "error": repr(exc)})

    async def in_progress(self) -> None:
        return None


def delivery_count(redelivered: bool | None, header: object) -> int | None:
    """Deliveries of a message, this one included, from what RabbitMQ tells (see `RabbitMessage`)."""
    if isinstance(header, int) and not isinstance(header, bool) and header >= 0:
        return header + 1
    return None if redelivered else 1


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class RabbitSubscription:
    """Consumes a queue with prefetch = max handlers."""

    def __init__(self, url: BrokerURL, options: ReceiveOptions) -> None:
        self.url = url
        self.options = options
        self._connection: AbstractRobustConnection | None = None
        self._queue: AbstractQueue | None = None
        self._channel: AbstractChannel | None = None
        self._tag = ""
        self._probe: AbstractChannel | None = None
        self._buffer: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        self._pending: set[asyncio.Task[None]] = set()

    async def open(self) -> None:
        self._connection = await connect()
        channel = self._channel = await self._connection.channel(publisher_confirms=False)
        await channel.set_qos(prefetch_count=self.options.max_outstanding)
        self._queue = await ensure_queue(self._connection, channel, self.url.name)
        self._tag = await self._queue.consume(self._buffer.put, no_ack=False)

    async def receive(self, limit: int, timeout: float) -> list[RabbitMessage]:
        if self._connection is None:
            raise BrokerError(f"{self.url.label}: not open")
        try:
            first = await asyncio.wait_for(self._buffer.get(), timeout)
        except TimeoutError:
            if not await self._consuming():
                raise BrokerError(f"{self.url.label}: the broker stopped delivering") from None
            return []
        messages = [first]
        while len(messages) < limit and not self._buffer.empty():
            messages.append(self._buffer.get_nowait())
        return [RabbitMessage(message, self._pending) for message in messages]

    async def _consuming(self) -> bool:
        """False when deliveries stopped for good: connection closed, or the broker cancelled the
        consumer (queue deleted) — a robust connection restores only what it saw being lost."""
        if self._connection is None or self._connection.is_closed or self._channel is None:
            return False
        try:
            async with asyncio.timeout(1):
                underlay = await self._channel.get_underlay_channel()
        except Exception:  # reconnecting: the robust connection restores the consumer
            return True
        return self._tag in underlay.consumers  # type: ignore[attr-defined]  # aiormq Channel has it

    async def backlog(self) -> int | None:
        """Messages ready in the queue (not counting those delivered and unacked)."""
        if self._connection is None:
            return None
        if self._probe is None or self._probe.is_closed:
            self._probe = await self._connection.channel(publisher_confirms=False)
        queue = await self._probe.declare_queue(self.url.name, passive=True, timeout=TIMEOUT)
        result = queue.declaration_result
        return int(result.message_count or 0) if result is not None else None

    async def close(self) -> None:
        for task in list(self._pending):
            task.cancel()
        connection, self._connection = self._connection, None
        # Messages delivered but not handed out return to the queue when the channel closes.
        self._buffer = asyncio.Queue()
        if connection is not None:
            await connection.close()


class RabbitPublisher:
    """Publishes confirmed, mandatory, persistent messages to an exchange or a queue."""

    def __init__(self, url: BrokerURL) -> None:
        self.url = url
        self._connection: AbstractRobustConnection | None = None
        self._exchange: AbstractExchange | None = None
        self._routing_key = ""

    async def open(self) -> None:
        self._connection = connection = await connect()
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        name = self.url.name
        if await exists(connection, "exchange", name):
            self._exchange = await channel.get_exchange(name, ensure=False)
            self._routing_key = ""
        else:
            await ensure_queue(connection, channel, name)
            self._exchange = channel.default_exchange
            self._routing_key = name

    async def publish(self, data: bytes, attributes: Mapping[str, str]) -> None:
        if self._exchange is None:
            raise BrokerError(f"{self.url.label}: not open")
        message = aio_pika.Message(
            body=data,
            headers=dict(attributes),
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=uuid.uuid4().hex,
        )
        try:
            await self._exchange.publish(message, routing_key=self._routing_key, timeout=TIMEOUT)
        except aio_pika.exceptions.DeliveryError as exc:
            raise BrokerError(f"{self.url.label}: the broker refused the message: {exc!r}") from None
        except aio_pika.exceptions.ChannelPreconditionFailed as exc:
            # Over the server's `max_message_size`: the broker closed the channel; open another one
            # so the (small) error answer can go out on it.
            if "max size" not in str(exc):
                raise
            await self.close()
            await self.open()
            raise PayloadTooLarge(f"{self.url.label}: {len(data)} bytes: {exc}") from None

    async def close(self) -> None:
        connection, self._connection, self._exchange = self._connection, None, None
        if connection is not None:
            await connection.close()
