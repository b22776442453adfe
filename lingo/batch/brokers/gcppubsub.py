"""`gcppubsub://projects/P/subscriptions/S` and `gcppubsub://projects/P/topics/T`: Google Cloud Pub/Sub.

Requests come through a streaming pull with flow control: at most max-handlers messages are
outstanding (received and not acked/nacked), and the client library keeps extending their leases
for up to `max_lease` seconds — as long as a message may wait and run — so a slow cold start
does not cause redeliveries. The library calls back in its own threads; messages are handed to
the event loop with `call_soon_threadsafe`. ack/nack/modify_ack_deadline only enqueue a request
for the library's dispatcher thread, so calling them from the loop never blocks it.

A nack with a delay drops the message from lease management and sets its ack deadline to the
delay (at most 600 s), so Pub/Sub redelivers it then. Pub/Sub gives no backlog count through its
API (only Cloud Monitoring's `num_undelivered_messages`, not available from the emulator), so
these subscriptions report none. `PUBSUB_EMULATOR_HOST` is honoured by the client library.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from concurrent.futures import Future
from typing import Any

from google.api_core import exceptions as google_exceptions
from google.cloud import pubsub_v1
from google.cloud.pubsub_v1.publisher import exceptions as publisher_exceptions

from lingo.batch.brokers.base import BrokerError, PayloadTooLarge, ReceiveOptions
from lingo.batch.urls import BrokerURL

log = logging.getLogger(__name__)

#: Seconds allowed for admin calls (checking the subscription or topic exists).
TIMEOUT = 10.0
#: Longest ack deadline Pub/Sub accepts.
MAX_ACK_DEADLINE = 600


class PubSubMessage:
    """A message from a streaming pull; its lease is kept by the client library."""

    keepalive: float | None = None

    def __init__(self, message: Any) -> None:
        self._message = message
        #: Pub/Sub's message id.
        self.id: str = message.message_id
        #: The payload.
        self.data: bytes = message.data
        #: The message's attributes.
        self.attributes: dict[str, str] = dict(message.attributes)
        #: Pub/Sub's delivery attempt, set only on subscriptions with a dead-letter policy.
        self.deliveries: int | None = message.delivery_attempt

    async def ack(self) -> None:
        self._message.ack()

    async def nack(self, delay: float | None = None) -> None:
        if not delay:
            self._message.nack()
            return
        self._message.drop()
        self._message.modify_ack_deadline(int(min(MAX_ACK_DEADLINE, max(1, delay))))

    async def in_progress(self) -> None:
        return None


class _Failed:
    """Put in the local buffer when the streaming pull ended: wakes `receive` with the error."""

    def __init__(self, error: BaseException | None) -> None:
        self.error = error


class PubSubSubscription:
    """Streaming pull from a subscription into the event loop."""

    def __init__(self, url: BrokerURL, options: ReceiveOptions) -> None:
        self.url = url
        self.options = options
        self._client: pubsub_v1.SubscriberClient | None = None
        self._future: Any = None
        self._buffer: asyncio.Queue[Any] = asyncio.Queue()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def open(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        client = await loop.run_in_executor(None, pubsub_v1.SubscriberClient)
        self._client = client
        try:
            await loop.run_in_executor(
                None,
                lambda: client.get_subscription(request={"subscription": self.url.name}, timeout=TIMEOUT),
            )
        except google_exceptions.PermissionDenied:
            pass  # roles/pubsub.subscriber may consume but not look: the pull itself will tell
        except google_exceptions.GoogleAPICallError as exc:
            raise BrokerError(f"{self.url.label}: {exc.message or exc!r}") from None
        flow_control = pubsub_v1.types.FlowControl(
            max_messages=self.options.max_outstanding, max_lease_duration=self.options.max_lease
        )
        self._future = client.subscribe(self.url.name, callback=self._on_message, flow_control=flow_control)
        self._future.add_done_callback(self._on_done)

    def _on_message(self, message: Any) -> None:
        # Runs in a library thread.
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._buffer.put_nowait, message)

    def _on_done(self, future: Future[Any]) -> None:
        # Runs in a library thread when the streaming pull ends (error or cancel).
        error = None if future.cancelled() else future.exception()
        if self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._buffer.put_nowait, _Failed(error))

    async def receive(self, limit: int, timeout: float) -> list[PubSubMessage]:
        if self._future is None:
            raise BrokerError(f"{self.url.label}: not open")
        try:
            item = await asyncio.wait_for(self._buffer.get(), timeout)
        except TimeoutError:
            return []
        items = [item]
        while len(items) < limit and not self._buffer.empty():
            items.append(self._buffer.get_nowait())
        messages: list[PubSubMessage] = []
        for item in items:
            if isinstance(item, _Failed):
                for message in messages:
                    await message.nack()
                raise BrokerError(f"{self.url.label}: streaming pull ended: {item.error!r}")
            messages.append(PubSubMessage(item))
        return messages

    async def backlog(self) -> int | None:
        return None

    async def close(self) -> None:
        future, self._future = self._future, None
        client, self._client = self._client, None
        while not self._buffer.empty():
            item = self._buffer.get_nowait()
            if not isinstance(item, _Failed):
                item.nack()
        loop = asyncio.get_running_loop()
        if future is not None:
            future.cancel()
            with contextlib.suppress(Exception):
                await loop.run_in_executor(None, lambda: future.result(timeout=TIMEOUT))
        if client is not None:
            await loop.run_in_executor(None, client.close)


class PubSubPublisher:
    """Publishes to a topic; each publish returns once Pub/Sub stored the message."""

    def __init__(self, url: BrokerURL) -> None:
        self.url = url
        self._client: pubsub_v1.PublisherClient | None = None

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        settings = pubsub_v1.types.BatchSettings(max_messages=100, max_latency=0.005)
        # No existence check: roles/pubsub.publisher may publish but not look; a missing topic
        # fails each publish (NotFound), and the requests are redelivered until it exists.
        self._client = await loop.run_in_executor(
            None, lambda: pubsub_v1.PublisherClient(batch_settings=settings)
        )

    async def publish(self, data: bytes, attributes: Mapping[str, str]) -> None:
        if self._client is None:
            raise BrokerError(f"{self.url.label}: not open")
        try:
            future = self._client.publish(self.url.name, data, **attributes)
        except publisher_exceptions.MessageTooLargeError as exc:
            raise PayloadTooLarge(f"{self.url.label}: {len(data)} bytes: {exc}") from None
        try:
            await asyncio.wrap_future(future)
        except google_exceptions.InvalidArgument as exc:
            text = exc.message or repr(exc)
            if "size" in text.lower() or "too large" in text.lower():
                raise PayloadTooLarge(f"{self.url.label}: {len(data)} bytes: {text}") from None
            raise BrokerError(f"{self.url.label}: {text}") from None
        except google_exceptions.GoogleAPICallError as exc:
            raise BrokerError(f"{self.url.label}: {exc.message or exc!r}") from None

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await asyncio.get_running_loop().run_in_executor(None, _stop_publisher, client)


def _stop_publisher(client: pubsub_v1.PublisherClient) -> None:
    """Send what is batched, then close the gRPC channel (the library has no close of its own)."""
    client.stop()
    with contextlib.suppress(Exception):
        client._transport.grpc_channel.close()
