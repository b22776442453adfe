"""`kafka://GROUP?topic=TOPIC` and `kafka://TOPIC`: Kafka through aiokafka (servers: `KAFKA_BROKERS`).

Requests are consumed by the consumer group GROUP (auto commit off, reading a new group from the
earliest offset). Kafka has no per-message ack: lingo commits, per partition, the offset of the
lowest message not answered yet (or past the last one received when all are answered). So:

- after a crash or a rebalance, everything after the committed offset is delivered again,
  answered messages included: duplicates are possible, losses are not;
- a nack cannot go back to the broker: the message is handed out again locally after the delay
  (its `deliveries` is a local count), and it holds back the partition's commit until answered.
  At most `max_outstanding` messages wait for such a local redelivery; lingo fetches nothing new
  meanwhile.

A missing topic is created (1 partition: create topics with the partitions you want beforehand).
Responses are produced to TOPIC (acks from all in-sync replicas), `request_message_id` and the
request's other attributes as headers. Backlog: the group's lag over the topic's partitions
(end offset minus this consumer's position on its partitions, minus the committed offset on others).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import os
from collections import deque
from collections.abc import Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, MessageSizeTooLargeError, TopicAlreadyExistsError
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata

from lingo.batch.brokers.base import BrokerError, PayloadTooLarge, ReceiveOptions
from lingo.batch.urls import BrokerURL

log = logging.getLogger(__name__)

#: Servers when `KAFKA_BROKERS` is not set.
DEFAULT_BROKERS = "127.0.0.1:9092"
#: Seconds allowed for connecting and for each request.
TIMEOUT = 10.0
#: Seconds between commits of the offsets answered so far.
COMMIT_INTERVAL = 0.2
#: Least seconds between checks, while nothing arrives, that the log did not restart below lingo's
#: position (a topic deleted and recreated, a broker that lost its data).
RESET_CHECK_INTERVAL = 5.0
#: Milliseconds without heartbeat after which the group gives a member's partitions to others
#: (Kafka's smallest allowed by default: a dead lingo's messages move on soon).
SESSION_TIMEOUT_MS = 6000


def brokers() -> str:
    """The Kafka bootstrap servers lingo connects to (comma-separated `host:port`)."""
    return os.environ.get("KAFKA_BROKERS") or DEFAULT_BROKERS


async def ensure_topic(url: BrokerURL, topic: str) -> None:
    """Create `topic` (1 partition) where the cluster does not have it."""
    admin = AIOKafkaAdminClient(bootstrap_servers=brokers(), request_timeout_ms=int(TIMEOUT * 1000))
    try:
        await admin.start()
        if topic in set(await admin.list_topics()):
            return
        with contextlib.suppress(TopicAlreadyExistsError):
            await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
            log.info("created Kafka topic", extra={"topic": topic})
    except (KafkaError, OSError, TimeoutError) as exc:
        raise BrokerError(f"{url.label}: cannot reach Kafka at {brokers()}: {exc!r}") from None
    finally:
        with contextlib.suppress(Exception):
            await admin.close()


class KafkaMessage:
    """A record of a request topic; settling it moves the partition's commit point."""

    keepalive: float | None = None

    __slots__ = ("_subscription", "attributes", "data", "deliveries", "id", "offset", "partition")

    def __init__(self, subscription: KafkaSubscription, record: ConsumerRecord[Any, Any]) -> None:
        self._subscription = subscription
        #: Where it is: topic, partition, offset.
        self.partition = TopicPartition(record.topic, record.partition)
        self.offset = int(record.offset)
        #: `TOPIC:PARTITION:OFFSET`, the same on every delivery.
        self.id = f"{record.topic}:{record.partition}:{record.offset}"
        #: The record's value.
        self.data = bytes(record.value or b"")
        #: The record's headers, as text.
        self.attributes = {
            key: bytes(value or b"").decode("utf-8", "replace") for key, value in record.headers
        }
        #: Deliveries by this process (Kafka does not count them): 1, plus one per local redelivery.
        self.deliveries: int | None = 1

    async def ack(self) -> None:
        self._subscription.settle(self)

    async def nack(self, delay: float | None = None) -> None:
        self._subscription.redeliver(self, delay or 0.0)

    async def in_progress(self) -> None:
        return None


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, subscription: KafkaSubscription) -> None:
        self.subscription = subscription

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self.subscription.partitions_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        return None


class KafkaSubscription:
    """Consumes a topic as a member of a consumer group, committing answered prefixes."""

    def __init__(self, url: BrokerURL, options: ReceiveOptions) -> None:
        self.url = url
        self.options = options
        #: The consumer group and the topic.
        self.group = url.name
        self.topic = url.params["topic"]
        self._consumer: AIOKafkaConsumer | None = None
        # Per partition: offsets handed out and not answered (a heap), and the next offset after
        # the highest received.
        self._open: dict[TopicPartition, list[int]] = {}
        self._answered: dict[TopicPartition, set[int]] = {}
        self._next: dict[TopicPartition, int] = {}
        self._committed: dict[TopicPartition, int] = {}
        self._again: deque[KafkaMessage] = deque()
        self._waiting_again = 0
        self._arrived = asyncio.Event()
        self._commit_task: asyncio.Task[None] | None = None
        self._timers: set[asyncio.TimerHandle] = set()
        self._next_reset_check = 0.0

    async def open(self) -> None:
        await ensure_topic(self.url, self.topic)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=brokers(),
            group_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=SESSION_TIMEOUT_MS,
            heartbeat_interval_ms=SESSION_TIMEOUT_MS // 3,
            request_timeout_ms=int(TIMEOUT * 1000) + 30000,
            # The receive loop pauses while every handler is busy (a cold start): not a dead member.
            max_poll_interval_ms=int(self.options.max_lease * 1000),
        )
        consumer.subscribe([self.topic], listener=_Rebalance(self))
        try:
            async with asyncio.timeout(TIMEOUT):
                await consumer.start()
        except (KafkaError, OSError, TimeoutError) as exc:
            with contextlib.suppress(Exception):
                await consumer.stop()
            raise BrokerError(f"{self.url.label}: cannot reach Kafka at {brokers()}: {exc!r}") from None
        self._consumer = consumer
        self._commit_task = asyncio.create_task(self._commit_loop(), name=f"commit {self.url.label}")

    async def receive(self, limit: int, timeout: float) -> list[KafkaMessage]:
        consumer = self._consumer
        if consumer is None:
            raise BrokerError(f"{self.url.label}: not open")
        if self._again:
            return [self._again.popleft() for _ in range(min(limit, len(self._again)))]
        if self._waiting_again >= self.options.max_outstanding:
            # Nacked messages fill the local bound: wait for them rather than fetch more.
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._arrived.wait()
            return [self._again.popleft() for _ in range(min(limit, len(self._again)))]
        try:
            batches = await consumer.getmany(timeout_ms=int(timeout * 1000), max_records=limit)
        except KafkaError as exc:
            raise BrokerError(f"{self.url.label}: fetching failed: {exc!r}") from None
        messages: list[KafkaMessage] = []
        for records in batches.values():
            for record in records:
                message = KafkaMessage(self, record)
                heapq.heappush(self._open.setdefault(message.partition, []), message.offset)
                self._next[message.partition] = max(self._next.get(message.partition, 0), message.offset + 1)
                messages.append(message)
        if not messages and self._again:  # a nacked message came due while waiting
            return [self._again.popleft() for _ in range(min(limit, len(self._again)))]
        if not messages:
            await self._check_reset(consumer)
        return messages

    async def _check_reset(self, consumer: AIOKafkaConsumer) -> None:
        """Read from the start of partitions whose log now ends before lingo's position: the fetch
        would otherwise wait, silently, until the new log grew past it."""
        loop = asyncio.get_running_loop()
        if loop.time() < self._next_reset_check:
            return
        self._next_reset_check = loop.time() + RESET_CHECK_INTERVAL
        partitions = list(consumer.assignment())
        if not partitions:
            return
        try:
            ends = await consumer.end_offsets(partitions)
            for partition in partitions:
                if await consumer.position(partition) > ends[partition]:
                    log.warning(
                        "kafka log restarted below lingo's position; reading it from the start",
                        extra={
                            "group": self.group,
                            "topic": partition.topic,
                            "partition": partition.partition,
                        },
                    )
                    consumer.seek_to_beginning(partition)
                    for tracked in (self._open, self._answered, self._next, self._committed):
                        tracked.pop(partition, None)
        except KafkaError as exc:
            log.debug("kafka reset check failed", extra={"group": self.group, "error": repr(exc)})

    def settle(self, message: KafkaMessage) -> None:
        """Answered: its offset no longer holds the partition's commit back."""
        if message.partition in self._open:
            self._answered.setdefault(message.partition, set()).add(message.offset)

    def redeliver(self, message: KafkaMessage, delay: float) -> None:
        """Hand the message out again after `delay` seconds (Kafka cannot take it back)."""
        self._waiting_again += 1

        def due() -> None:
            self._timers.discard(timer)
            self._waiting_again -= 1
            if message.partition not in self._open:
                return  # the partition went to another member, which delivers it again
            message.deliveries = (message.deliveries or 1) + 1
            self._again.append(message)
            self._arrived.set()

        timer = asyncio.get_running_loop().call_later(delay, due)
        self._timers.add(timer)

    def _commit_points(self) -> dict[TopicPartition, OffsetAndMetadata]:
        """Per partition, the offset before which everything was answered, where it moved."""
        points: dict[TopicPartition, OffsetAndMetadata] = {}
        for partition, heap in self._open.items():
            answered = self._answered.get(partition, set())
            while heap and heap[0] in answered:
                answered.discard(heapq.heappop(heap))
            point = heap[0] if heap else self._next.get(partition, 0)
            if point > self._committed.get(partition, -1):
                points[partition] = OffsetAndMetadata(point, "")
        return points

    async def _commit(self, consumer: AIOKafkaConsumer | None = None) -> None:
        consumer = consumer or self._consumer
        points = self._commit_points()
        if consumer is None or not points:
            return
        try:
            await consumer.commit(points)
        except (KafkaError, OSError) as exc:
            # A rebalance took the partitions (they are delivered again elsewhere) or the broker
            # is away: the next commit carries the same points.
            log.debug("kafka commit failed", extra={"group": self.group, "error": repr(exc)})
            return
        for partition, point in points.items():
            self._committed[partition] = point.offset

    async def _commit_loop(self) -> None:
        while True:
            await asyncio.sleep(COMMIT_INTERVAL)
            await self._commit()

    async def partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        """Commit what was answered on partitions leaving this member, then forget them."""
        await self._commit()
        for partition in revoked:
            self._open.pop(partition, None)
            self._answered.pop(partition, None)
            self._next.pop(partition, None)
            self._committed.pop(partition, None)
        self._again = deque(m for m in self._again if m.partition not in revoked)

    async def backlog(self) -> int | None:
        """Records of the topic the group has not taken yet."""
        consumer = self._consumer
        if consumer is None:
            return None
        partitions = [TopicPartition(self.topic, p) for p in consumer.partitions_for_topic(self.topic) or ()]
        if not partitions:
            return None
        ends = await consumer.end_offsets(partitions)
        mine = consumer.assignment()
        total = 0
        for partition in partitions:
            if partition in mine:
                taken = await consumer.position(partition)
            else:
                taken = await consumer.committed(partition) or 0
            total += max(0, ends[partition] - taken)
        return total

    async def close(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        if self._commit_task is not None:
            self._commit_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._commit_task
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(TIMEOUT):
                    await self._commit(consumer)
            await consumer.stop()


class KafkaPublisher:
    """Produces records to a topic, waiting for the brokers' acknowledgement of each."""

    def __init__(self, url: BrokerURL) -> None:
        self.url = url
        self._producer: AIOKafkaProducer | None = None

    async def open(self) -> None:
        await ensure_topic(self.url, self.url.name)
        producer = AIOKafkaProducer(
            bootstrap_servers=brokers(), acks="all", request_timeout_ms=int(TIMEOUT * 1000)
        )
        try:
            async with asyncio.timeout(TIMEOUT):
                await producer.start()
        except (KafkaError, OSError, TimeoutError) as exc:
            with contextlib.suppress(Exception):
                await producer.stop()
            raise BrokerError(f"{self.url.label}: cannot reach Kafka at {brokers()}: {exc!r}") from None
        self._producer = producer

    async def publish(self, data: bytes, attributes: Mapping[str, str]) -> None:
        if self._producer is None:
            raise BrokerError(f"{self.url.label}: not open")
        headers = [(key, value.encode()) for key, value in attributes.items()]
        try:
            await self._producer.send_and_wait(self.url.name, data, headers=headers)
        except MessageSizeTooLargeError as exc:
            raise PayloadTooLarge(
                f"{self.url.label}: {len(data)} bytes are more than Kafka accepts: {exc}"
            ) from None
        except KafkaError as exc:
            raise BrokerError(f"{self.url.label}: produce failed: {exc!r}") from None

    async def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()
