"""Batch test fixtures: one `BrokerKit` per broker, driving it with the broker's own client library.

A kit makes uniquely named requests/responses places for one test (so runs never collide), gives
the `--messenger` spec for lingo, publishes requests, collects responses, and cleans up. The
Google Pub/Sub emulator is started once per session; NATS and RabbitMQ are the machine's servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.batch.support import (
    EMULATOR_PACKAGE,
    MOTO_ACCOUNT,
    MOTO_REGION,
    NatsServer,
    PubSubEmulator,
    emulator_launcher,
    reachable,
    running_nats,
)

__all__ = [
    "EMULATOR_PACKAGE",
    "NatsServer",
    "PubSubEmulator",
    "emulator_launcher",
    "reachable",
    "running_nats",
]

NATS_URL = os.environ.get("NATS_SERVER_URL") or "nats://127.0.0.1:4222"
RABBIT_URL = os.environ.get("RABBIT_SERVER_URL") or "amqp://guest:guest@127.0.0.1:5672/"
REDIS_URL = os.environ.get("REDIS_SERVER_URL") or "redis://127.0.0.1:6379"
BROKERS = ("mem", "nats", "rabbit", "gcppubsub", "awssqs", "awssns", "redisstream", "kafka")
#: Brokers that keep messages across a lingo restart (the kill tests).
DURABLE_BROKERS = ("nats", "rabbit", "awssqs", "redisstream", "kafka")

FAKE_MODEL = f"[{sys.executable}, -m, lingo, fake-model, --port, '{{port}}'"


def fake_model_entry(name: str = "fake", *flags: str, **keys: object) -> str:
    """A models-file entry running `lingo fake-model` with `flags`; `keys` are extra YAML keys."""
    command = FAKE_MODEL + "".join(f", '{flag}'" for flag in flags) + "]"
    extra = "".join(f"\n    {key}: {value}" for key, value in keys.items())
    return f"  - name: {name}\n    command: {command}{extra}\n"


@dataclass
class Response:
    """A response message as a test sees it."""

    status_code: int
    metadata: Any
    body: Any
    attributes: dict[str, str]
    #: The typed `error: {code, message}` of an answer lingo made up itself, else None.
    error: Any = None

    @property
    def custom_id(self) -> str | None:
        return self.metadata.get("custom_id") if isinstance(self.metadata, dict) else None


def decode(data: bytes, attributes: dict[str, str]) -> Response:
    document = orjson.loads(data)
    return Response(
        document["status_code"], document["metadata"], document["body"], attributes, document.get("error")
    )


def count(lingo, outcome: str) -> float:  # type: ignore[no-untyped-def]
    """Messages of lingo's first batch stream counted with `outcome`."""
    label = lingo.batch.streams[0].label
    value = lingo.metrics.prometheus.get_sample_value(
        "lingo_batch_messages_total", {"stream": label, "outcome": outcome}
    )
    return value or 0.0


def envelope(custom_id: str, model: str = "fake", **extra: Any) -> bytes:
    document: dict[str, Any] = {
        "path": "/v1/completions",
        "metadata": {"custom_id": custom_id},
        "body": {"model": model, "prompt": "hello", "max_tokens": 2},
    }
    document.update(extra)
    return orjson.dumps(document)


@dataclass
class BrokerKit:
    """Base of the per-broker kits; see the module docstring."""

    name: str
    unique: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    collected: list[Response] = field(default_factory=list)
    #: Publishing is slower than lingo answers (moto), and `setup()` makes the requests place, so
    #: tests that need a backlog publish before lingo starts.
    slow_publisher = False

    def messenger(self, max_handlers: int = 100, model: str | None = None) -> str:
        query = f"model={model}" if model else ""
        return f"{self.requests_url(query)}|{self.responses_url()}|{max_handlers}"

    def requests_url(self, query: str = "") -> str:
        raise NotImplementedError

    def responses_url(self) -> str:
        raise NotImplementedError

    async def setup(self) -> None:
        """Create what the test's responses are collected from."""

    async def publish(self, data: bytes, attributes: Mapping[str, str] | None = None) -> str:
        """Publish a request; returns the id lingo answers with (`request_message_id`)."""
        raise NotImplementedError

    async def receive(self, timeout: float) -> list[tuple[bytes, dict[str, str]]]:
        """Responses that arrived, acked; waits up to `timeout` seconds for the first."""
        raise NotImplementedError

    async def publish_many(self, items: list[bytes]) -> list[str]:
        """Publish requests in order (in batches where the broker has them); their ids."""
        return [await self.publish(data) for data in items]

    async def break_responses(self) -> None:
        """Make the next response publishes fail in the broker's own way."""
        raise NotImplementedError

    async def heal_responses(self) -> None:
        """Let response publishes succeed again."""

    async def vanish_requests(self) -> None:
        """Delete lingo's consumer of the requests out of band (NATS consumer, RabbitMQ queue)."""
        raise NotImplementedError

    async def requests_left(self) -> int:
        """Requests on the broker not acked yet (waiting, or handed out and unsettled).

        Call it once lingo stopped: brokers count a message handed to a live consumer differently.
        """
        raise NotImplementedError

    async def cleanup(self) -> None:
        """Delete what the test created."""

    def environment(self) -> dict[str, str]:
        """Variables a `lingo serve` subprocess needs to reach this kit's broker."""
        return {}

    async def collect(self, count: int, timeout: float = 30.0) -> list[Response]:
        """Wait until `count` responses arrived in all (this call and earlier ones); return all."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self.collected) < count:
            remaining = deadline - loop.time()
            if remaining <= 0:
                ids = sorted(str(r.custom_id) for r in self.collected)
                raise AssertionError(
                    f"{self.name}: {len(self.collected)}/{count} responses in {timeout}s: {ids}"
                )
            for data, attributes in await self.receive(min(1.0, remaining)):
                self.collected.append(decode(data, attributes))
        return self.collected

    async def quiet(self, seconds: float) -> list[Response]:
        """Collect whatever else arrives within `seconds` (to check nothing more does)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while (remaining := deadline - loop.time()) > 0:
            for data, attributes in await self.receive(min(0.5, remaining)):
                self.collected.append(decode(data, attributes))
        return self.collected


async def collect_ids(kit: BrokerKit, wanted: set[str], timeout: float) -> set[str]:
    """Receive until every id in `wanted` was answered 200 at least once (duplicates allowed)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    seen: set[str] = set()
    while not wanted <= seen:
        remaining = deadline - loop.time()
        if remaining <= 0:
            missing = sorted(wanted - seen)
            raise AssertionError(f"{len(missing)} custom_id(s) never answered: {missing[:10]}")
        await kit.collect(len(kit.collected) + 1, timeout=remaining)
        seen = {r.custom_id for r in kit.collected if r.status_code == 200 and r.custom_id}
    return seen


class MemKit(BrokerKit):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        #: Every request published, to check how often each was delivered and whether it was acked.
        self.published: list[Any] = []

    def requests_url(self, query: str = "") -> str:
        return f"mem://req-{self.unique}" + (f"?{query}" if query else "")

    def responses_url(self) -> str:
        return f"mem://resp-{self.unique}"

    async def publish(self, data: bytes, attributes: Mapping[str, str] | None = None) -> str:
        from lingo.batch.brokers import mem

        message = mem.topic(f"req-{self.unique}").publish(data, attributes)
        self.published.append(message)
        return message.id

    async def receive(self, timeout: float) -> list[tuple[bytes, dict[str, str]]]:
        from lingo.batch.brokers import mem

        messages = await mem.topic(f"resp-{self.unique}").get(100, timeout)
        for message in messages:
            await message.ack()
        return [(m.data, dict(m.attributes)) for m in messages]

    async def break_responses(self) -> None:
        from lingo.batch.brokers import mem

        mem.topic(f"resp-{self.unique}").fail_publishes = 2

    async def requests_left(self) -> int:
        from lingo.batch.brokers import mem

        topic = mem.topic(f"req-{self.unique}")
        return topic.queue.qsize() + len(topic.unacked)

    async def cleanup(self) -> None:
        from lingo.batch.brokers import mem

        mem.delete_topic(f"req-{self.unique}")
        mem.delete_topic(f"resp-{self.unique}")


class NatsKit(BrokerKit):
    """Requests stream created by lingo (named in the URL); responses stream created here."""

    def __init__(self, name: str, server: str = NATS_URL) -> None:
        super().__init__(name)
        self.server = server
        self.req_subject = f"lbt.{self.unique}.req"
        self.resp_subject = f"lbt.{self.unique}.resp"
        self.req_stream = f"LBTREQ_{self.unique}"
        self.resp_stream = f"LBTRESP_{self.unique}"
        self.client: Any = None
        self.pull: Any = None

    def requests_url(self, query: str = "") -> str:
        return f"nats://{self.req_subject}?stream={self.req_stream}&ack_wait=3s" + (
            f"&{query}" if query else ""
        )

    def responses_url(self) -> str:
        return f"nats://{self.resp_subject}"

    def environment(self) -> dict[str, str]:
        return {"NATS_SERVER_URL": self.server}

    async def _js(self) -> Any:
        import nats

        if self.client is None:
            self.client = await nats.connect(self.server, max_reconnect_attempts=-1, reconnect_time_wait=0.5)
        return self.client.jetstream()

    async def setup(self, **stream_limits: Any) -> None:
        from nats.js.api import RetentionPolicy

        js = await self._js()
        await js.add_stream(
            name=self.resp_stream,
            subjects=[self.resp_subject],
            retention=RetentionPolicy.WORK_QUEUE,
            **stream_limits,
        )
        self.pull = await js.pull_subscribe(self.resp_subject, durable="test", stream=self.resp_stream)

    async def publish(self, data: bytes, attributes: Mapping[str, str] | None = None) -> str:
        js = await self._js()
        ack = await js.publish(self.req_subject, data, timeout=10, headers=dict(attributes or {}) or None)
        return f"{ack.stream}:{ack.seq}"

    async def receive(self, timeout: float) -> list[tuple[bytes, dict[str, str]]]:
        import nats.errors

        try:
            messages = await self.pull.fetch(100, timeout=timeout)
            for message in messages:
                await message.ack_sync()
        except (TimeoutError, nats.errors.TimeoutError):
            return []
        except nats.errors.Error:  # the server is restarting: the client reconnects by itself
            await asyncio.sleep(0.2)
            return []
        return [(m.data, dict(m.headers or {})) for m in messages]

    async def vanish_requests(self) -> None:
        js = await self._js()
        await js.delete_consumer(self.req_stream, "lingo")

    async def requests_left(self) -> int:
        js = await self._js()
        info = await js.consumer_info(self.req_stream, "lingo")
        return int(info.num_pending or 0) + int(info.num_ack_pending or 0)

    async def break_responses(self) -> None:
        # A full work-queue stream that refuses new messages: JetStream answers the publish with an error.
        js = await self._js()
        await js.delete_stream(self.resp_stream)
        await self.setup(max_msgs=1, discard="new")

    async def cleanup(self) -> None:
        # Lingo or `lingo batch` may have created the streams even if this kit never connected.
        js = await self._js()
        for stream in (self.req_stream, self.resp_stream):
            with contextlib.suppress(Exception):
                await js.delete_stream(stream)
        await self.client.close()


class RabbitKit(BrokerKit):
    """Requests queue declared by lingo; responses queue declared here (or by lingo)."""

    def __init__(self, name: str, server: str = RABBIT_URL) -> None:
        super().__init__(name)
        self.server = server
        self.req_queue = f"lbt-req-{self.unique}"
        self.resp_queue = f"lbt-resp-{self.unique}"
        self.connection: Any = None
        self.channel: Any = None

    def requests_url(self, query: str = "") -> str:
        return f"rabbit://{self.req_queue}" + (f"?{query}" if query else "")

    def responses_url(self) -> str:
        return f"rabbit://{self.resp_queue}"

    def environment(self) -> dict[str, str]:
        return {"RABBIT_SERVER_URL": self.server}

    async def _channel(self) -> Any:
        import aio_pika

        if self.connection is None:
            self.connection = await aio_pika.connect_robust(self.server)
            self.channel = await self.connection.channel()
        return self.channel

    async def setup(self, **arguments: Any) -> None:
        channel = await self._channel()
        await channel.declare_queue(self.resp_queue, durable=True, arguments=arguments or None)

    async def publish(self, data: bytes, attributes: Mapping[str, str] | None = None) -> str:
        import aio_pika

        channel = await self._channel()
        message_id = uuid.uuid4().hex
        message = aio_pika.Message(
            data,
            headers=dict(attributes or {}),
            message_id=message_id,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,  # survives a broker restart
        )
        await channel.default_exchange.publish(message, routing_key=self.req_queue)
        return message_id

    async def receive(self, timeout: float) -> list[tuple[bytes, dict[str, str]]]:
        import aio_pika.exceptions

        try:
            return await self._receive(timeout)
        except (aio_pika.exceptions.AMQPError, ConnectionError, RuntimeError, TimeoutError):
            # The broker is restarting: the robust connection comes back by itself; unacked
            # responses are redelivered.
            await asyncio.sleep(0.2)
            return []

    async def _receive(self, timeout: float) -> list[tuple[bytes, dict[str, str]]]:
        channel = await self._channel()
        queue = await channel.get_queue(self.resp_queue)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        out: list[tuple[bytes, dict[str, str]]] = []
        while True:
            message = await queue.get(no_ack=False, fail=False)
            if message is None:
                if out or loop.time() >= deadline:
                    return out
                await asyncio.sleep(0.05)
                continue
            await message.ack()
            out.append((message.body, {k: str(v) for k, v in (message.headers or {}).items()}))

    async def vanish_requests(self) -> None:
        channel = await self._channel()
        await channel.queue_delete(self.req_queue)

    async def requests_left(self) -> int:
        # Unacked messages of a consumer that went away are back among the ready ones.
        channel = await self._channel()
        queue = await channel.declare_queue(self.req_queue, passive=True)
        result = queue.declaration_result
        return int(result.message_count or 0) if result is not None else 0

    async def break_responses(self) -> None:
        # A queue that holds one message and refuses more: the broker nacks the publish.
        channel = await self._channel()
        await channel.queue_delete(self.resp_queue)
        await self.setup(**{"x-max-length": 1, "x-overflow": "reject-publish"})

    async def cleanup(self) -> None:
        channel = await self._channel()  # lingo declares the queues even if this kit never connected
        for queue in (self.req_queue, self.resp_queue):
            with contextlib.suppress(Exception):
                await channel.queue_delete(queue)
        await self.connection.close()


class PubSubKit(BrokerKit):
    """Topics and subscriptions created here through the emulator's admin API."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.project = "lingo-test"
        self.req_topic = f"projects/{self.project}/topics/req-{self.unique}"
        self.req_sub = f"projects/{self.project}/subscriptions/req-{self.unique}"
        self.resp_topic = f"projects/{self.project}/topics/resp-{self.unique}"
        self.resp_sub = f"projects/{self.project}/subscriptions/resp-{self.unique}"
        self._publisher: Any = None
        self._subscriber: Any = None

    def requests_url(self, query: str = "") -> str:
        return f"gcppubsub://{self.req_sub}" + (f"?{query}" if query else "")

    def responses_url(self) -> str:
        return f"gcppubsub://{self.resp_topic}"

    def _clients(self) -> tuple[Any, Any]:
        from google.cloud import pubsub_v1

        if self._publisher is None:
            self._publisher = pubsub_v1.PublisherClient()
            self._subscriber = pubsub_v1.SubscriberClient()
        return self._publisher, self._subscriber

    def _create(self, topic: str, subscription: str) -> None:
        publisher, subscriber = self._clients()
        publisher.create_topic(name=topic)
        subscriber.create_subscription(name=subscription, topic=topic, ack_deadline_seconds=10)

    async def setup(self) -> None:
        await asyncio.to_thread(self._create, self.req_topic, self.req_sub)
        await asyncio.to_thread(self._create, self.resp_topic, self.resp_sub)

    async def publish(self, data: bytes, attributes: Mapping[str, str] | None = None) -> str:
        publisher, _ = self._clients()
        return str(await asyncio.wrap_future(publisher.publish(self.req_topic, data, **(attributes or {}))))

    def _pull(self, timeout: float) -> list[tuple[bytes, dict[str, str]]]:
        _, subscriber = self._clients()
        try:
            response = subscriber.pull(
                request={"subscription": self.resp_sub, "max_messages": 100}, timeout=max(0.5, timeout)
            )
        except Exception:  # DeadlineExceeded when nothing arrived
            return []
        if response.received_messages:
            subscriber.acknowledge(
                request={
                    "subscription": self.resp_sub,
                    "ack_ids": [m.ack_id for m in response.received_messages],
                }
            )
        return [(m.message.data, dict(m.message.attributes)) for m in response.received_messages]

    async def receive(self, timeout: float) -> list[tuple[bytes, dict[str, str]]]:
        messages = await asyncio.to_thread(self._pull, timeout)
        if not messages:
            await asyncio.sleep(0.05)
        return messages

    async def break_responses(self) -> None:
        # The responses topic is gone: publishing fails with NotFound until it is back.
        def delete() -> None:
            _, subscriber = self._clients()
            subscriber.delete_subscription(request={"subscription": self.resp_sub})
            self._publisher.delete_topic(request={"topic": self.resp_topic})

        await asyncio.to_thread(delete)

    async def heal_responses(self) -> None:
        await asyncio.to_thread(self._create, self.resp_topic, self.resp_sub)

    async def requests_left(self) -> int:
        # Pub/Sub cannot count: pull what is deliverable now and hand it straight back.
        def pull() -> int:
            _, subscriber = self._clients()
            try:
                request = {"subscription": self.req_sub, "max_messages": 100}
                response = subscriber.pull(request=request, timeout=3)
            except Exception:  # DeadlineExceeded: nothing deliverable
                return 0
            ack_ids = [m.ack_id for m in response.received_messages]
            if ack_ids:
                subscriber.modify_ack_deadline(
                    request={"subscription": self.req_sub, "ack_ids": ack_ids, "ack_deadline_seconds": 0}
                )
            return len(ack_ids)

        return await asyncio.to_thread(pull)

    async def cleanup(self) -> None:
        if self._publisher is None:
            return

        def delete() -> None:
            for call, name in (
                (self._subscriber.delete_subscription, {"subscription": self.req_sub}),
                (self._subscriber.delete_subscription, {"subscription": self.resp_sub}),
                (self._publisher.delete_topic, {"topic": self.req_topic}),
                (self._publisher.delete_topic, {"topic": self.resp_topic}),
            ):
                with contextlib.suppress(Exception):
                    call(request=name)
            self._subscriber.close()

        await asyncio.to_thread(delete)


class SqsKit(BrokerKit):
    """Requests and responses queues created here on the moto server (lingo needs them to exist).

    The requests queue's visibility timeout (lingo's lease) is 10 s: moto takes up to a second per
    receive call on a queue of 1,000 messages, and shorter leases expire while extensions wait.
    """

    slow_publisher = True

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.req_queue = f"lbt-req-{self.unique}"
        self.resp_queue = f"lbt-resp-{self.unique}"
        self.urls: dict[str, str] = {}
        self._sqs: Any = None

    def requests_url(self, query: str = "") -> str:
        return f"awssqs://sqs.{MOTO_REGION}.amazonaws.com/{MOTO_ACCOUNT}/{self.req_queue}" + (
            f"?{query}" if query else ""
        )

    def responses_url(self) -> str:
        return f"awssqs://sqs.{MOTO_REGION}.amazonaws.com/{MOTO_ACCOUNT}/{self.resp_queue}"

    def environment(self) -> dict[str, str]:
        keys = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
        return {key: os.environ[key] for key in keys if key in os.environ}

    def client(self, service: str = "sqs") -> Any:
        import boto3

        if service == "sqs":
            if self._sqs is None:
                self._sqs = boto3.client("sqs", region_name=MOTO_REGION)
            return self._sqs
        return boto3.client(service, region_name=MOTO_REGION)

    def _create(self, name: str, **attributes: str) -> str:
        url = self.client().create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
        self.urls[name] = url
        return str(url)

    async def setup(self) -> None:
        await asyncio.to_thread(self._create, self.req_queue, VisibilityTimeout="10")
        await asyncio.to_thread(self._create, self.resp_queue)

    async def publish(self, data: bytes, attributes: Mapping[str, str] | None = None) -> str:
        arguments: dict[str, Any] = {"QueueUrl": self.urls[self.req_queue], "MessageBody": data.decode()}
        if attributes:
            arguments["MessageAttributes"] = {
                k: {"DataType": "String", "StringValue": v} for k, v in attributes.items()
            }
        answer = await asyncio.to_thread(self.client().send_message, **arguments)
        return str(answer["MessageId"])

    def _send_batch(self, items: list[bytes]) -> list[str]:
        entries = [{"Id": str(i), "MessageBody": data.decode()} for i, data in enumerate(items)]
        answer = self.client().send_message_batch(QueueUrl=self.urls[self.req_queue], Entries=entries)
        assert not answer.get("Failed"), answer["Failed"]
        ids = {entry["Id"]: entry["MessageId"] for entry in answer["Successful"]}
        return [ids[str(i)] for i in range(len(items))]

    async def publish_many(self, items: list[bytes]) -> list[str]:
        ids: list[str] = []
        for start in range(0, len(items), 10):
            ids += await asyncio.to_thread(self._send_batch, items[start : start + 10])
        return ids

    def _receive(self, timeout: float) -> list[tuple[bytes, dict[str, str]]]:
        sqs = self.client()
        try:
            answer = sqs.receive_message(
                QueueUrl=self.urls[self.resp_queue],
                MaxNumberOfMessages=10,
                WaitTimeSeconds=max(0, min(20, int(timeout))),
                MessageAttributeNames=["All"],
            )
        except Exception:  # the server is restarting
            time.sleep(0.2)
            return []
        messages = answer.get("Messages") or []
        if messages:
            sqs.delete_message_batch(
                QueueUrl=self.urls[self.resp_queue],
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)],
            )
        return [
            (
                m["Body"].encode(),
                {k: v.get("StringValue", "") for k, v in (m.get("MessageAttributes") or {}).items()},
            )
            for m in messages
        ]

    async def receive(self, timeout: float) -> list[tuple[bytes, dict[str, str]]]:
        messages = await asyncio.to_thread(self._receive, timeout)
        if not messages and timeout < 1:
            await asyncio.sleep(min(timeout, 0.1))  # a short poll returns at once
        return messages

    async def break_responses(self) -> None:
        # The responses queue is gone: SendMessage fails until it is back.
        await asyncio.to_thread(self.client().delete_queue, QueueUrl=self.urls[self.resp_queue])

    async def heal_responses(self) -> None:
        await asyncio.to_thread(self._create, self.resp_queue)

    async def vanish_requests(self) -> None:
        pytest.skip("SQS: lingo does not create queues; a queue recreated under its name has the same URL")

    async def requests_left(self) -> int:
        names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        answer = await asyncio.to_thread(
            self.client().get_queue_attributes, QueueUrl=self.urls[self.req_queue], AttributeNames=names
        )
        return sum(int(answer["Attributes"].get(name, 0)) for name in names)

    async def cleanup(self) -> None:
        for url in self.urls.values():
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.client().delete_queue, QueueUrl=url)


class SnsKit(SqsKit):
    """Requests from an SQS queue, responses published to an SNS topic that feeds an SQS queue
    (raw message delivery: the queue gets the message itself, attributes included)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.topic_arn = f"arn:aws:sns:{MOTO_REGION}:{MOTO_ACCOUNT}:lbt-resp-{self.unique}"

    def responses_url(self) -> str:
        return f"awssns:///{self.topic_arn}"

    def _topic(self) -> None:
        sns = self.client("sns")
        sns.create_topic(Name=self.topic_arn.rpartition(":")[2])
        queue_arn = self.client().get_queue_attributes(
            QueueUrl=self.urls[self.resp_queue], AttributeNames=["QueueArn"]
        )["Attributes"]["QueueArn"]
        sns.subscribe(
            TopicArn=self.topic_arn,
            Protocol="sqs",
            Endpoint=queue_arn,
            Attributes={"RawMessageDelivery": "true"},
        )

    async def setup(self) -> None:
        await super().setup()
        await asyncio.to_thread(self._topic)

    async def break_responses(self) -> None:
        # The topic is gone: Publish fails with NotFound until it is back.
        await asyncio.to_thread(self.client("sns").delete_topic, TopicArn=self.topic_arn)

    async def heal_responses(self) -> None:
        await asyncio.to_thread(self._topic)

    async def cleanup(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self.client("sns").delete_topic, TopicArn=self.topic_arn)
        await super().cleanup()


class RedisKit(BrokerKit):
    """Requests stream and group created by lingo; responses read through a group made here."""

    def __init__(self, name: str, server: str = REDIS_URL) -> None:
        super().__init__(name)
        self.server = server
        self.req_stream = f"lbt-req-{self.unique}"
        self.resp_stream = f"lbt-resp-{self.unique}"
        self._client: Any = None

    def requests_url(self, query: str = "") -> str:
        return f"redisstream://{self.req_stream}?group=lingo&lease=3s" + (f"&{query}" if query else "")

    def responses_url(self) -> str:
        return f"redisstream://{self.resp_stream}"

    def environment(self) -> dict[str, str]:
        return {"REDIS_SERVER_URL": self.server}

    def client(self) -> Any:
        from redis.asyncio import Redis

        if self._client is None:
            self._client = Redis.from_url(self.server, socket_connect_timeout=2)
        return self._client

    async def _group(self) -> None:
        from redis.exceptions import ResponseError

        with contextlib.suppress(ResponseError):  # BUSYGROUP: it exists
            await self.client().xgroup_create(self.resp_stream, "test", id="0", mkstream=True)

    async def setup(self) -> None:
        await self._group()

    async def publish(self, data: bytes, attributes: Mapping[str, str] | None = None) -> str:
        fields = {**(attributes or {}), "data": data}
        entry_id = await self.client().xadd(self.req_stream, fields)
        return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)

    async def receive(self, timeout: float) -> list[tuple[bytes, dict[str, str]]]:
        from redis.exceptions import RedisError

        client = self.client()
        try:
            answer = await client.xreadgroup(
                "test", "kit", {self.resp_stream: ">"}, count=100, block=max(1, int(timeout * 1000))
            )
            entries = answer[0][1] if answer else []
            if entries:
                await client.xack(self.resp_stream, "test", *[entry_id for entry_id, _ in entries])
        except (RedisError, OSError):  # the server is restarting
            await asyncio.sleep(0.2)
            return []
        return [
            (fields.get(b"data", b""), {k.decode(): v.decode() for k, v in fields.items() if k != b"data"})
            for _, fields in entries
        ]

    async def break_responses(self) -> None:
        # A string where the stream should be: XADD fails with WRONGTYPE.
        await self.client().delete(self.resp_stream)
        await self.client().set(self.resp_stream, "not a stream")

    async def heal_responses(self) -> None:
        await self.client().delete(self.resp_stream)
        await self._group()

    async def vanish_requests(self) -> None:
        await self.client().delete(self.req_stream)

    async def requests_left(self) -> int:
        # Answered entries are deleted: what is left was never answered (pending or unread).
        return int(await self.client().xlen(self.req_stream))

    async def cleanup(self) -> None:
        client = self.client()
        await client.delete(self.req_stream, self.resp_stream)
        await client.aclose()


class KafkaKit(BrokerKit):
    """Topics made here (requests: 2 partitions); responses read by the consumer group `test`."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.group = f"lbt-g-{self.unique}"
        self.req_topic = f"lbt-req-{self.unique}"
        self.resp_topic = f"lbt-resp-{self.unique}"
        self._producer: Any = None
        self._consumer: Any = None

    @property
    def servers(self) -> str:
        return os.environ["KAFKA_BROKERS"]

    def requests_url(self, query: str = "") -> str:
        return f"kafka://{self.group}?topic={self.req_topic}" + (f"&{query}" if query else "")

    def responses_url(self) -> str:
        return f"kafka://{self.resp_topic}"

    def environment(self) -> dict[str, str]:
        return {"KAFKA_BROKERS": self.servers}

    async def _admin(self) -> Any:
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=self.servers)
        await admin.start()
        return admin

    async def setup(self) -> None:
        from aiokafka.admin import NewTopic
        from aiokafka.errors import TopicAlreadyExistsError

        admin = await self._admin()
        try:
            for topic, partitions in ((self.req_topic, 2), (self.resp_topic, 1)):
                with contextlib.suppress(TopicAlreadyExistsError):
                    await admin.create_topics(
                        [NewTopic(topic, num_partitions=partitions, replication_factor=1)]
                    )
        finally:
            await admin.close()
        if self._consumer is not None:  # a new broker (restarted): start reading it afresh
            with contextlib.suppress(Exception):
                await self._consumer.stop()
            self._consumer = None
        await self._consume()  # joining the group takes seconds: not while the test waits

    async def _consume(self) -> Any:
        from aiokafka import AIOKafkaConsumer

        if self._consumer is None:
            self._consumer = AIOKafkaConsumer(
                self.resp_topic,
                bootstrap_servers=self.servers,
                group_id="test",
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                session_timeout_ms=6000,
                heartbeat_interval_ms=2000,
            )
            await self._consumer.start()
        return self._consumer

    async def publish(self, data: bytes, attributes: Mapping[str, str] | None = None) -> str:
        from aiokafka import AIOKafkaProducer

        if self._producer is None:
            self._producer = AIOKafkaProducer(bootstrap_servers=self.servers, acks="all")
            await self._producer.start()
        headers = [(k, v.encode()) for k, v in (attributes or {}).items()]
        record = await self._producer.send_and_wait(self.req_topic, data, headers=headers)
        return f"{record.topic}:{record.partition}:{record.offset}"

    async def receive(self, timeout: float) -> list[tuple[bytes, dict[str, str]]]:
        from aiokafka.errors import KafkaError

        consumer = await self._consume()
        try:
            batches = await consumer.getmany(timeout_ms=int(timeout * 1000), max_records=500)
            if batches:
                await consumer.commit()
        except KafkaError:  # the broker is restarting
            await asyncio.sleep(0.2)
            return []
        return [
            (bytes(r.value or b""), {k: bytes(v).decode() for k, v in r.headers})
            for records in batches.values()
            for r in records
        ]

    async def break_responses(self) -> None:
        pytest.skip("Kafka: the broker creates a missing topic on produce; no refusal to provoke")

    async def vanish_requests(self) -> None:
        pytest.skip("Kafka: a consumer group is not deleted while a member is in it")

    async def requests_left(self) -> int:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        # A consumer of lingo's group that does not join it: it only reads the committed offsets.
        consumer = AIOKafkaConsumer(bootstrap_servers=self.servers, group_id=self.group)
        await consumer.start()
        try:
            partitions = [TopicPartition(self.req_topic, p) for p in range(2)]
            ends = await consumer.end_offsets(partitions)
            committed = {p: await consumer.committed(p) or 0 for p in partitions}
        finally:
            await consumer.stop()
        return sum(ends[p] - committed[p] for p in partitions)

    async def cleanup(self) -> None:
        for client in (self._producer, self._consumer):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.stop()
        with contextlib.suppress(Exception):
            admin = await self._admin()
            try:
                await admin.delete_topics([self.req_topic, self.resp_topic])
            finally:
                await admin.close()


@pytest.fixture(scope="session")
def pubsub_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`host:port` of a Pub/Sub emulator started for this session; PUBSUB_EMULATOR_HOST is set."""
    reason = PubSubEmulator.unavailable()
    if reason is not None:
        pytest.skip(reason)
    emulator = PubSubEmulator(str(emulator_launcher()), tmp_path_factory.mktemp("pubsub"))
    try:
        try:
            emulator.start()
        except AssertionError as error:
            pytest.fail(str(error))
        previous = os.environ.get("PUBSUB_EMULATOR_HOST")
        os.environ["PUBSUB_EMULATOR_HOST"] = emulator.address
        yield emulator.address
        if previous is None:
            os.environ.pop("PUBSUB_EMULATOR_HOST", None)
        else:
            os.environ["PUBSUB_EMULATOR_HOST"] = previous
    finally:
        emulator.stop()


def make_kit(
    name: str, request: pytest.FixtureRequest, emulator_fixture: str = "pubsub_emulator"
) -> BrokerKit:
    """A kit for broker `name`; skips when its server is missing. Pub/Sub needs `emulator_fixture`
    (a fixture that sets PUBSUB_EMULATOR_HOST) to be visible from the requesting test."""
    if name == "mem":
        return MemKit(name)
    if name == "nats":
        if not reachable(NATS_URL, 4222):
            pytest.skip(f"no NATS server at {NATS_URL} (make services starts one)")
        return NatsKit(name)
    if name == "rabbit":
        if not reachable(RABBIT_URL, 5672):
            pytest.skip("no RabbitMQ server at 127.0.0.1:5672 (make services starts one)")
        return RabbitKit(name)
    if name in ("awssqs", "awssns"):
        request.getfixturevalue("moto_server")
        return SqsKit(name) if name == "awssqs" else SnsKit(name)
    if name == "redisstream":
        if not reachable(REDIS_URL, 6379):
            pytest.skip(f"no Redis server at {REDIS_URL} (make services starts one)")
        return RedisKit(name)
    if name == "kafka":
        request.getfixturevalue("kafka_brokers")
        return KafkaKit(name)
    request.getfixturevalue(emulator_fixture)
    return PubSubKit(name)


@pytest.fixture(params=BROKERS)
async def kit(request: pytest.FixtureRequest) -> AsyncIterator[BrokerKit]:
    """A fresh kit for each broker (the test runs once per broker)."""
    broker = make_kit(request.param, request)
    try:
        yield broker
    finally:
        await broker.cleanup()


@pytest.fixture(params=DURABLE_BROKERS)
async def durable_kit(request: pytest.FixtureRequest) -> AsyncIterator[BrokerKit]:
    """A fresh kit for each broker that keeps messages across a lingo restart."""
    broker = make_kit(request.param, request)
    try:
        yield broker
    finally:
        await broker.cleanup()


@pytest.fixture
def private_nats(tmp_path: Path) -> Iterator[NatsServer]:
    if not NatsServer.available():
        pytest.skip("nats-server is not installed")
    with running_nats(tmp_path / "jetstream") as server:
        yield server
