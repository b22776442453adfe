"""`awssqs://HOST/ACCOUNT/QUEUE` and `awssns:///arn:aws:sns:…`: AWS SQS and SNS through aiobotocore.

Requests are received from an SQS queue (which must exist) with long polling, at most as many as
lingo has free handlers (SQS hands out 10 per call: further calls follow at once when the first
came back full). The queue's visibility timeout is the lease: while a message waits or runs,
lingo extends it (back to the full timeout every third of it); a nack sets it to the delay (0: at
once); an ack deletes the message. Deletes and extensions go out in batch calls of up to 10.
SQS counts receives (`ApproximateReceiveCount`): the message's `deliveries`. A redrive policy on the queue
(`maxReceiveCount` → dead-letter queue) is the broker's own dead-letter path.

Responses go to an SQS queue (SendMessage) or an SNS topic (Publish), with `request_message_id`
as a message attribute. Messages are text: SQS and SNS refuse bodies that are not UTF-8 (or hold
characters XML cannot carry).

Credentials and region come from the usual AWS sources (environment, profile, instance role); the
region from `?region=`, else the queue host or topic ARN. `AWS_ENDPOINT_URL` (or
`AWS_ENDPOINT_URL_SQS` / `AWS_ENDPOINT_URL_SNS`) sends the calls elsewhere (moto, LocalStack).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from lingo.batch.brokers.base import BrokerError, PayloadTooLarge, ReceiveOptions
from lingo.batch.urls import BrokerURL, aws_region

log = logging.getLogger(__name__)

#: Most messages one ReceiveMessage call returns (an SQS limit).
RECEIVE_BATCH = 10
#: Longest long poll SQS allows, in seconds.
MAX_WAIT_SECONDS = 20
#: Receive calls made at once to fill a large number of free handlers.
PARALLEL_RECEIVES = 8
#: Longest visibility timeout SQS accepts, in seconds (12 hours).
MAX_VISIBILITY = 43200
#: Seconds allowed for connecting and for each call (beyond a long poll's own wait).
TIMEOUT = 10.0
#: Seconds an ack or a visibility extension waits for others to share its batch call.
BATCH_LINGER = 0.02
#: Largest SQS message or SNS notification, body and attributes together (256 KiB).
MAX_MESSAGE_BYTES = 262_144


def _config() -> AioConfig:
    return AioConfig(
        connect_timeout=TIMEOUT,
        read_timeout=MAX_WAIT_SECONDS + TIMEOUT,
        retries={"max_attempts": 2, "mode": "standard"},
        max_pool_connections=64,
    )


class _Client:
    """One aiobotocore client for a service, opened and closed with its adapter."""

    def __init__(self, service: str, url: BrokerURL) -> None:
        self.service = service
        self.url = url
        self.client: Any = None
        self._stack = contextlib.AsyncExitStack()

    async def open(self) -> Any:
        region = aws_region(self.url)
        session = get_session()
        try:
            # aiobotocore honours AWS_ENDPOINT_URL(_SQS/_SNS) and the usual credential sources.
            self.client = await self._stack.enter_async_context(
                session.create_client(self.service, region_name=region, config=_config())
            )
        except (BotoCoreError, ClientError, OSError) as exc:
            what = f"cannot create an AWS {self.service} client"
            raise BrokerError(f"{self.url.label}: {what}: {exc!r}") from None
        return self.client

    async def close(self) -> None:
        self.client = None
        await self._stack.aclose()


def _error(url: BrokerURL, what: str, exc: Exception) -> BrokerError:
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        message = exc.response.get("Error", {}).get("Message", "")
        return BrokerError(f"{url.label}: {what} failed: {code} {message}".rstrip())
    return BrokerError(f"{url.label}: {what} failed: {exc!r}")


async def queue_url(client: Any, url: BrokerURL) -> str:
    """The queue's URL as the service (or the endpoint override) knows it; raises when missing."""
    _, account, name = url.name.split("/")
    try:
        answer = await client.get_queue_url(QueueName=name, QueueOwnerAWSAccountId=account)
    except (BotoCoreError, ClientError, OSError) as exc:
        raise _error(url, f"finding queue {name!r}", exc) from None
    return str(answer["QueueUrl"])


class _Batch:
    """Gathers calls that SQS takes in batches of 10 (deletes, visibility changes) into batch calls.

    A call waits at most `BATCH_LINGER` for others; each caller learns whether its entry failed.
    """

    def __init__(
        self, url: BrokerURL, what: str, send: Callable[[list[dict[str, Any]]], Awaitable[Any]]
    ) -> None:
        self.url = url
        self.what = what
        self._send = send
        self._waiting: list[tuple[dict[str, Any], asyncio.Future[None]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._calls: set[asyncio.Task[None]] = set()

    def add(self, entry: dict[str, Any]) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._waiting.append((entry, future))
        if len(self._waiting) >= RECEIVE_BATCH:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(BATCH_LINGER, self._flush)
        return future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._waiting:
            batch, self._waiting = self._waiting[:RECEIVE_BATCH], self._waiting[RECEIVE_BATCH:]
            call = asyncio.create_task(self._call(batch))
            self._calls.add(call)
            call.add_done_callback(self._calls.discard)

    async def _call(self, batch: list[tuple[dict[str, Any], asyncio.Future[None]]]) -> None:
        try:
            answer = await self._send([{**entry, "Id": str(i)} for i, (entry, _) in enumerate(batch)])
        except Exception as exc:
            error = _error(self.url, self.what, exc)
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        failed = {str(f.get("Id")): f for f in answer.get("Failed") or []}
        for i, (_, future) in enumerate(batch):
            if future.done():
                continue
            failure = failed.get(str(i))
            if failure is None:
                future.set_result(None)
            else:
                message = f"{failure.get('Code', '')} {failure.get('Message', '')}".strip()
                future.set_exception(BrokerError(f"{self.url.label}: {self.what} failed: {message}"))

    async def close(self) -> None:
        """Send what waits and let the calls under way finish (bounded by the client's timeouts)."""
        self._flush()
        if self._calls:
            await asyncio.wait(set(self._calls), timeout=TIMEOUT)


def _attributes(attributes: Mapping[str, str]) -> dict[str, dict[str, str]]:
    return {key: {"DataType": "String", "StringValue": value} for key, value in attributes.items()}


class SqsMessage:
    """A received SQS message, held through its receipt handle."""

    __slots__ = ("_receipt", "_subscription", "attributes", "data", "deliveries", "id", "keepalive")

    def __init__(self, subscription: SqsSubscription, raw: Mapping[str, Any]) -> None:
        self._subscription = subscription
        self._receipt = str(raw["ReceiptHandle"])
        #: SQS's MessageId (the same on every receive of the message).
        self.id = str(raw["MessageId"])
        #: The body, UTF-8 encoded.
        self.data = str(raw.get("Body", "")).encode()
        #: String message attributes (binary and number ones as their text).
        attributes = raw.get("MessageAttributes") or {}
        self.attributes = {key: str(value.get("StringValue", "")) for key, value in attributes.items()}
        count = (raw.get("Attributes") or {}).get("ApproximateReceiveCount")
        #: `ApproximateReceiveCount`: receives of this message so far, this one included.
        self.deliveries: int | None = int(count) if count else None
        #: Seconds between visibility extensions: a third of the visibility timeout.
        self.keepalive: float | None = subscription.lease / 3

    async def ack(self) -> None:
        await self._subscription.deletes.add({"ReceiptHandle": self._receipt})

    async def nack(self, delay: float | None = None) -> None:
        seconds = min(MAX_VISIBILITY, math.ceil(delay or 0))
        await self._subscription.call(
            "nack", "change_message_visibility", ReceiptHandle=self._receipt, VisibilityTimeout=seconds
        )

    async def in_progress(self) -> None:
        # Not awaited: one sweep over the messages in flight must not wait for each batch call.
        extended = self._subscription.extensions.add(
            {"ReceiptHandle": self._receipt, "VisibilityTimeout": math.ceil(self._subscription.lease)}
        )
        extended.add_done_callback(self._extended)

    def _extended(self, future: asyncio.Future[None]) -> None:
        if not future.cancelled() and future.exception() is not None:
            log.debug(
                "visibility extension failed", extra={"message_id": self.id, "error": str(future.exception())}
            )


class SqsSubscription:
    """Receives from an SQS queue with long polling."""

    def __init__(self, url: BrokerURL, options: ReceiveOptions) -> None:
        self.url = url
        self.options = options
        #: The queue's visibility timeout in seconds, once open.
        self.lease = 30.0
        #: The queue's URL, once open.
        self.queue_url = ""
        self._client = _Client("sqs", url)
        #: Acks (DeleteMessageBatch) and visibility extensions (ChangeMessageVisibilityBatch).
        self.deletes = _Batch(
            url, "delete", lambda entries: self.call("delete", "delete_message_batch", Entries=entries)
        )
        self.extensions = _Batch(
            url,
            "extend",
            lambda entries: self.call("extend", "change_message_visibility_batch", Entries=entries),
        )

    async def open(self) -> None:
        client = await self._client.open()
        self.queue_url = await queue_url(client, self.url)
        answer = await self.call(
            "read attributes", "get_queue_attributes", AttributeNames=["VisibilityTimeout"]
        )
        self.lease = float(answer.get("Attributes", {}).get("VisibilityTimeout") or 30)
        if self.lease < 3:
            log.warning(
                "SQS visibility timeout below 3 s: messages may be redelivered while handled",
                extra={"queue": self.url.label, "visibility_timeout": self.lease},
            )

    async def call(self, what: str, operation: str, **arguments: Any) -> Any:
        """One SQS call on the queue; failures become BrokerError."""
        client = self._client.client
        if client is None:
            raise BrokerError(f"{self.url.label}: not open")
        try:
            return await getattr(client, operation)(QueueUrl=self.queue_url, **arguments)
        except (BotoCoreError, ClientError, OSError) as exc:
            raise _error(self.url, what, exc) from None

    async def _receive(self, count: int, wait: int) -> list[dict[str, Any]]:
        answer = await self.call(
            "receive",
            "receive_message",
            MaxNumberOfMessages=count,
            WaitTimeSeconds=wait,
            AttributeNames=["ApproximateReceiveCount"],
            MessageAttributeNames=["All"],
        )
        return list(answer.get("Messages") or [])

    async def receive(self, limit: int, timeout: float) -> list[SqsMessage]:
        wait = max(0, min(MAX_WAIT_SECONDS, int(timeout)))
        raw = await self._receive(min(RECEIVE_BATCH, limit), wait)
        left = limit - len(raw)
        if len(raw) == RECEIVE_BATCH and left > 0:
            # The queue had more: fill the free handlers with short polls made at once.
            calls = min(PARALLEL_RECEIVES, math.ceil(left / RECEIVE_BATCH))
            counts = [min(RECEIVE_BATCH, left - i * RECEIVE_BATCH) for i in range(calls)]
            for more in await asyncio.gather(
                *(self._receive(count, 0) for count in counts), return_exceptions=True
            ):
                if isinstance(more, BaseException):
                    # Messages of the calls that worked are in hand; these come back after the lease.
                    log.debug("SQS receive failed", extra={"queue": self.url.label, "error": repr(more)})
                    continue
                raw.extend(more)
        return [SqsMessage(self, message) for message in raw]

    async def backlog(self) -> int | None:
        """`ApproximateNumberOfMessages`: messages available for receiving (not in flight)."""
        answer = await self.call(
            "read backlog", "get_queue_attributes", AttributeNames=["ApproximateNumberOfMessages"]
        )
        return int(answer.get("Attributes", {}).get("ApproximateNumberOfMessages") or 0)

    async def close(self) -> None:
        for batch in (self.deletes, self.extensions):
            with contextlib.suppress(Exception):
                await batch.close()
        await self._client.close()


class SqsPublisher:
    """Sends messages to an SQS queue (which must exist)."""

    def __init__(self, url: BrokerURL) -> None:
        self.url = url
        self._client = _Client("sqs", url)
        self._queue_url = ""

    async def open(self) -> None:
        client = await self._client.open()
        self._queue_url = await queue_url(client, self.url)

    async def publish(self, data: bytes, attributes: Mapping[str, str]) -> None:
        client = self._client.client
        if client is None:
            raise BrokerError(f"{self.url.label}: not open")
        _check_size(self.url, data, attributes)
        arguments: dict[str, Any] = {"QueueUrl": self._queue_url, "MessageBody": _text(self.url, data)}
        if attributes:
            arguments["MessageAttributes"] = _attributes(attributes)
        try:
            await client.send_message(**arguments)
        except (BotoCoreError, ClientError, OSError) as exc:
            raise _error(self.url, "send", exc) from None

    async def close(self) -> None:
        await self._client.close()


class SnsPublisher:
    """Publishes messages to an SNS topic (which must exist)."""

    def __init__(self, url: BrokerURL) -> None:
        self.url = url
        self._client = _Client("sns", url)

    async def open(self) -> None:
        client = await self._client.open()
        try:
            await client.get_topic_attributes(TopicArn=self.url.name)
        except (BotoCoreError, ClientError, OSError) as exc:
            raise _error(self.url, "finding the topic", exc) from None

    async def publish(self, data: bytes, attributes: Mapping[str, str]) -> None:
        client = self._client.client
        if client is None:
            raise BrokerError(f"{self.url.label}: not open")
        _check_size(self.url, data, attributes)
        arguments: dict[str, Any] = {"TopicArn": self.url.name, "Message": _text(self.url, data)}
        if attributes:
            arguments["MessageAttributes"] = _attributes(attributes)
        try:
            await client.publish(**arguments)
        except (BotoCoreError, ClientError, OSError) as exc:
            raise _error(self.url, "publish", exc) from None

    async def close(self) -> None:
        await self._client.close()


def _check_size(url: BrokerURL, data: bytes, attributes: Mapping[str, str]) -> None:
    """Refuse up front what SQS and SNS would refuse for its size (a retry cannot cure it)."""
    size = len(data) + sum(len(key.encode()) + len(value.encode()) + 6 for key, value in attributes.items())
    if size > MAX_MESSAGE_BYTES:
        raise PayloadTooLarge(f"{url.label}: {size} bytes exceed the {MAX_MESSAGE_BYTES}-byte message limit")


def _text(url: BrokerURL, data: bytes) -> str:
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise BrokerError(f"{url.label}: SQS and SNS carry text only; the message is not UTF-8") from None
