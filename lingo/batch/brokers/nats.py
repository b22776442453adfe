"""`nats://SUBJECT[?stream=NAME&consumer=NAME&ack_wait=30s]`: NATS JetStream (server: `NATS_SERVER_URL`).

Requests come from a durable pull consumer. Lingo creates what is missing: the stream (the one
covering the subject, else `LINGO`, extended with the subject) and the consumer (`lingo`, or
`lingo_<subject>` when `lingo` already serves another subject of the stream). Streams lingo
creates use work-queue retention, so acked requests do not pile up. Lingo fetches only as many
messages as it has free handlers, sends in-progress acks while a message waits (every third of
`ack_wait`), and naks with a delay when its response could not be published.

Responses are published with JetStream (the broker confirms storage) when a stream covers the
subject, else with core NATS publish plus a flush (no storage: a subscriber must be listening).
The client reconnects by itself after a server restart; a connection that stays broken makes the
calls fail, and the stream reopens it with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import weakref
from collections import deque
from collections.abc import Mapping

import nats
import nats.errors
import nats.js.errors
import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, RetentionPolicy, StorageType

from lingo.batch.brokers.base import BrokerError, PayloadTooLarge, ReceiveOptions
from lingo.batch.urls import BrokerURL, ack_wait_seconds, subject_matches

log = logging.getLogger(__name__)

#: Server when `NATS_SERVER_URL` is not set.
DEFAULT_SERVER = "nats://127.0.0.1:4222"
#: Stream created when no stream covers the subject and the URL names none.
DEFAULT_STREAM = "LINGO"
#: Seconds the server waits for an ack before redelivering, unless the URL says `ack_wait=`.
DEFAULT_ACK_WAIT = 30.0
#: Seconds allowed for connecting and for each JetStream API call.
TIMEOUT = 5.0
#: Least seconds between checks that the consumer still exists, made while no messages come.
CONSUMER_CHECK_INTERVAL = 10.0
#: JetStream's error code for a message larger than the stream's `max_msg_size`.
MESSAGE_SIZE_ERROR = 10054
#: Deliveries JetStream makes beyond lingo's own limit before it gives up on a message (its
#: dead-letter path): room for lingo to publish the error answer, and to retry publishing it.
MAX_DELIVER_MARGIN = 5


def server_url() -> str:
    """The NATS server lingo connects to."""
    return os.environ.get("NATS_SERVER_URL") or DEFAULT_SERVER


async def connect(name: str) -> Client:
    """A connection that reconnects forever after it was established once."""

    async def on_error(exc: Exception) -> None:
        log.debug("nats connection error", extra={"connection": name, "error": repr(exc)})

    async def on_disconnected() -> None:
        if not client.is_closed:
            log.info("nats disconnected; reconnecting", extra={"connection": name})

    async def on_reconnected() -> None:
        log.info("nats reconnected", extra={"connection": name})

    client = Client()
    try:
        # With unlimited reconnects the first connect would retry forever: bound it here.
        async with asyncio.timeout(TIMEOUT):
            await client.connect(
                servers=[server_url()],
                name=name,
                connect_timeout=2,
                reconnect_time_wait=0.5,  # type: ignore[arg-type]  # seconds; nats-py hints int, takes float
                max_reconnect_attempts=-1,
                error_cb=on_error,
                disconnected_cb=on_disconnected,
                reconnected_cb=on_reconnected,
            )
    except BaseException as exc:
        with contextlib.suppress(Exception):
            await client.close()
        if isinstance(exc, TimeoutError | OSError | nats.errors.Error):
            raise BrokerError(f"cannot connect to NATS at {server_url()}: {exc!r}") from None
        raise
    return client


def consumer_name_for(subject: str, base: str) -> str:
    """The durable name used when `base` is taken by a consumer of another subject."""
    return f"{base}_{re.sub(r'[^A-Za-z0-9_-]', '_', subject)}"


async def ensure_stream(js: JetStreamContext, subject: str, name: str | None) -> str:
    """The stream holding `subject`: the named one or the one covering it, created or extended."""
    async with _setup_lock():
        if name is None:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                return await js.find_stream_name_by_subject(subject)
            name = DEFAULT_STREAM
        for _ in range(3):  # another lingo may create or extend the same stream at the same time
            try:
                info = await js.stream_info(name)
            except nats.js.errors.NotFoundError:
                try:
                    await js.add_stream(
                        name=name,
                        subjects=[subject],
                        retention=RetentionPolicy.WORK_QUEUE,
                        storage=StorageType.FILE,
                    )
                except nats.js.errors.APIError:
                    continue
                log.info("created NATS stream", extra={"stream": name, "subject": subject})
                return name
            subjects = list(info.config.subjects or [])
            if any(subject_matches(pattern, subject) for pattern in subjects):
                return name
            info.config.subjects = [*subjects, subject]
            with contextlib.suppress(nats.js.errors.APIError):
                await js.update_stream(info.config)
                log.info("added subject to NATS stream", extra={"stream": name, "subject": subject})
        raise BrokerError(f"could not create NATS stream {name!r} or add subject {subject!r} to it")


_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()


def _setup_lock() -> asyncio.Lock:
    """Serialises stream set-up within this process (streams sharing `LINGO` start together)."""
    loop = asyncio.get_running_loop()
    lock = _locks.get(loop)
    if lock is None:
        lock = _locks[loop] = asyncio.Lock()
    return lock


async def ensure_consumer(
    js: JetStreamContext,
    stream: str,
    subject: str,
    name: str | None,
    base: str,
    ack_wait: float,
    max_deliver: int = -1,
) -> tuple[str, float]:
    """(durable name, its ack_wait) of a pull consumer of `stream` filtered on `subject`; one lingo
    creates gets `max_deliver` (-1: unlimited), an existing one is used as it is."""
    candidates = [name] if name else [base, consumer_name_for(subject, base)]
    for durable in candidates:
        try:
            info = await js.consumer_info(stream, durable)
        except nats.js.errors.NotFoundError:
            config = ConsumerConfig(
                durable_name=durable,
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                ack_wait=ack_wait,
                filter_subject=subject,
                max_deliver=max_deliver,
            )
            await js.add_consumer(stream, config)
            log.info(
                "created NATS consumer", extra={"stream": stream, "consumer": durable, "subject": subject}
            )
            return durable, ack_wait
        if info.config.filter_subject in (subject, None, "") and not info.config.deliver_subject:
            return durable, float(info.config.ack_wait or ack_wait)
    raise BrokerError(
        f"NATS consumer(s) {', '.join(candidates)} of stream {stream!r} serve other subjects or are push "
        f"consumers; name one with ?consumer="
    )


class NatsMessage:
    """A JetStream message from a pull consumer."""

    __slots__ = ("_msg", "attributes", "data", "deliveries", "id", "keepalive")

    def __init__(self, msg: Msg, keepalive: float) -> None:
        self._msg = msg
        #: Stream name and stream sequence (`STREAM:SEQ`), stable across redeliveries.
        self.id = f"{msg.metadata.stream}:{msg.metadata.sequence.stream}"
        #: The payload.
        self.data = msg.data
        #: The message's headers.
        self.attributes: dict[str, str] = dict(msg.headers or {})
        #: Seconds between in-progress acks: a third of the consumer's ack_wait.
        self.keepalive = keepalive
        #: JetStream's delivery count of the message (`num_delivered`), this delivery included.
        self.deliveries: int | None = msg.metadata.num_delivered

    async def ack(self) -> None:
        await self._msg.ack()

    async def nack(self, delay: float | None = None) -> None:
        await self._msg.nak(delay=delay)

    async def in_progress(self) -> None:
        await self._msg.in_progress()


class NatsSubscription:
    """Receives from a durable JetStream pull consumer.

    Messages stream into a local buffer through one outstanding pull request at a time (asking
    for as many messages as there are free handlers), delivered to a subscription callback: no
    round trip and no task per message, and nothing is pulled that no handler could take.
    """

    def __init__(self, url: BrokerURL, options: ReceiveOptions) -> None:
        self.url = url
        self.options = options
        #: Stream and durable consumer in use, once open.
        self.stream: str | None = None
        self.consumer: str | None = None
        self._client: Client | None = None
        self._js: JetStreamContext | None = None
        self._inbox = ""
        self._buffer: deque[Msg] = deque()
        self._arrived = asyncio.Event()
        # Messages asked for by the outstanding pull request and not delivered yet.
        self._requested = 0
        self._request_ends = 0.0
        self._keepalive = DEFAULT_ACK_WAIT / 3
        self._next_check = 0.0

    async def open(self) -> None:
        client = self._client = await connect(f"lingo {self.url.label}")
        js = self._js = client.jetstream(timeout=TIMEOUT)
        subject = self.url.name
        self.stream = await ensure_stream(js, subject, self.url.params.get("stream"))
        self.consumer, ack_wait = await ensure_consumer(
            js,
            self.stream,
            subject,
            self.url.params.get("consumer"),
            self.options.default_consumer,
            ack_wait_seconds(self.url, DEFAULT_ACK_WAIT),
            -1 if self.options.max_deliveries is None else self.options.max_deliveries + MAX_DELIVER_MARGIN,
        )
        self._keepalive = max(0.2, ack_wait / 3)
        self._inbox = client.new_inbox()
        await client.subscribe(self._inbox, cb=self._on_message)

    async def _on_message(self, msg: Msg) -> None:
        # A stored message carries its ack subject as reply; the server's status messages do not.
        # Its own headers may include one called Status: they do not make it a status message.
        if msg.reply.startswith("$JS.ACK."):
            self._requested = max(0, self._requested - 1)
            self._buffer.append(msg)
            self._arrived.set()
            return
        status = msg.headers.get("Status") if msg.headers else None
        if status != "100":  # 404/408/409: the pull request ended (100 is a heartbeat)
            self._requested = 0

    async def receive(self, limit: int, timeout: float) -> list[NatsMessage]:
        client = self._client
        if client is None or self.stream is None or self.consumer is None:
            raise BrokerError(f"{self.url.label}: not open")
        if client.is_closed:
            raise BrokerError(f"{self.url.label}: connection closed")
        loop = asyncio.get_running_loop()
        if self._requested and loop.time() > self._request_ends:
            self._requested = 0  # ended without a status (e.g. lost in a reconnect)
        wanted = limit - len(self._buffer)
        if wanted > 0 and not self._requested:
            request = {"batch": wanted, "expires": int(timeout * 1e9)}
            subject = f"$JS.API.CONSUMER.MSG.NEXT.{self.stream}.{self.consumer}"
            await client.publish(subject, orjson.dumps(request), reply=self._inbox)
            self._requested = wanted
            self._request_ends = loop.time() + timeout + 1.0
        if not self._buffer:
            self._arrived.clear()
            try:
                async with asyncio.timeout(timeout):
                    await self._arrived.wait()
            except TimeoutError:
                await self._check_consumer()
                return []
        count = min(limit, len(self._buffer))
        return [NatsMessage(self._buffer.popleft(), self._keepalive) for _ in range(count)]

    async def _check_consumer(self) -> None:
        """Raise when the consumer is gone: a deleted consumer just yields empty fetches."""
        loop = asyncio.get_running_loop()
        if self._js is None or loop.time() < self._next_check:
            return
        self._next_check = loop.time() + CONSUMER_CHECK_INTERVAL
        try:
            await self._js.consumer_info(self.stream or "", self.consumer or "")
        except nats.js.errors.NotFoundError:
            raise BrokerError(f"{self.url.label}: consumer {self.consumer!r} no longer exists") from None

    async def backlog(self) -> int | None:
        """Messages in the stream not yet delivered to the consumer (`num_pending`)."""
        if self._js is None or self.stream is None or self.consumer is None:
            return None
        info = await self._js.consumer_info(self.stream, self.consumer)
        return int(info.num_pending or 0)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None and not client.is_closed:
            # Received but never handed out: redeliver now rather than after ack_wait.
            while self._buffer:
                with contextlib.suppress(Exception):
                    await self._buffer.popleft().nak()
            await client.close()
        self._buffer.clear()


class NatsPublisher:
    """Publishes to a subject: JetStream where a stream covers it, core NATS otherwise."""

    def __init__(self, url: BrokerURL, ensure_stream: bool = False) -> None:
        self.url = url
        #: Create a stream for the subject where none covers it (when publishing requests).
        self.ensure_stream = ensure_stream
        #: The stream covering the subject, None when publishing with core NATS.
        self.stream: str | None = None
        self._client: Client | None = None
        self._js: JetStreamContext | None = None

    async def open(self) -> None:
        self._client = await connect(f"lingo publisher {self.url.label}")
        js = self._js = self._client.jetstream(timeout=TIMEOUT)
        subject = self.url.name
        if self.ensure_stream:
            self.stream = await ensure_stream(js, subject, self.url.params.get("stream"))
            return
        name = self.url.params.get("stream")
        if name is not None:
            info = await js.stream_info(name)
            if not any(subject_matches(p, subject) for p in info.config.subjects or []):
                raise BrokerError(f"{self.url.label}: stream {name!r} does not cover subject {subject!r}")
            self.stream = name
            return
        try:
            self.stream = await js.find_stream_name_by_subject(subject)
        except nats.js.errors.NotFoundError:
            self.stream = None

    async def publish(self, data: bytes, attributes: Mapping[str, str]) -> None:
        if self._client is None or self._js is None:
            raise BrokerError(f"{self.url.label}: not open")
        headers = dict(attributes) or None
        if self.stream is not None:
            # JetStream publish = a request answered with a PubAck (or an error) by the stream.
            try:
                reply = await self._client.request(self.url.name, data, timeout=TIMEOUT, headers=headers)
            except nats.errors.NoRespondersError:
                raise BrokerError(f"{self.url.label}: no stream stores subject {self.url.name!r}") from None
            except nats.errors.MaxPayloadError:
                raise self._too_large(len(data)) from None
            answer = orjson.loads(reply.data)
            if "error" in answer:
                error = answer["error"]
                if error.get("err_code") == MESSAGE_SIZE_ERROR:
                    raise PayloadTooLarge(f"{self.url.label}: {error.get('description') or error}")
                raise BrokerError(f"{self.url.label}: {error.get('description') or error}")
            return
        try:
            await self._client.publish(self.url.name, data, headers=headers)
        except nats.errors.MaxPayloadError:
            raise self._too_large(len(data)) from None
        await self._client.flush(timeout=int(TIMEOUT))

    def _too_large(self, size: int) -> PayloadTooLarge:
        limit = self._client.max_payload if self._client is not None else "?"
        return PayloadTooLarge(f"{self.url.label}: {size} bytes exceed the server's max_payload ({limit})")

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None and not client.is_closed:
            await client.close()
