"""`redisstream://STREAM?group=GROUP[&lease=30s]` and `redisstream://STREAM[?maxlen=N]`: Redis Streams.

Server: `REDIS_SERVER_URL` (default `redis://127.0.0.1:6379`). The envelope is the entry's field
`data`; its other fields are the message's attributes.

Requests are read with XREADGROUP as one consumer of the group (created with MKSTREAM where
missing, reading the stream from its start); each lingo process is its own consumer. A message
stays in the group's pending list until it is answered: then XACK and XDEL in one transaction,
together with the other entries answered in the same loop iteration (the requests stream is a work
queue: answered entries are removed, so it does not grow without bound — give it no other
consumer group). Entries pending longer than the lease (`?lease=`,
default 30 s) on any consumer — a lingo that died — are taken over with XAUTOCLAIM. While a
message waits or runs, lingo resets its idle time (XCLAIM to itself, every third of the lease).
A nack leaves the entry pending and sets its idle time so that it becomes claimable after the
delay (XCLAIM … IDLE lease - delay): the entry keeps its id and its delivery count, and nothing is
duplicated if lingo dies at that moment (re-adding it would create a second entry).

Responses are added with XADD, fields `data` and the attributes (`request_message_id`), trimmed
approximately to `?maxlen=` entries (default 100,000): the oldest responses go first once the
consumer of the responses stream falls that far behind. Requests published by `lingo batch` are
never trimmed.

Backlog: the group's `lag` (XINFO GROUPS, Redis 7), else stream length minus pending entries.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import Mapping
from typing import Any

from redis import exceptions as redis_errors
from redis.asyncio import BlockingConnectionPool, Redis

from lingo.batch.brokers.base import BrokerError, ReceiveOptions
from lingo.batch.urls import BrokerURL, duration_param

log = logging.getLogger(__name__)

#: Server when `REDIS_SERVER_URL` is not set.
DEFAULT_SERVER = "redis://127.0.0.1:6379"
#: Seconds an entry may stay pending without news before another consumer takes it over.
DEFAULT_LEASE = 30.0
#: Responses kept in a responses stream when the URL says no `maxlen`.
DEFAULT_MAXLEN = 100_000
#: Seconds allowed for connecting and for each call (beyond a blocking read's own wait).
TIMEOUT = 10.0
#: Connections per client: calls beyond wait up to TIMEOUT for a free one (not fail at once).
MAX_CONNECTIONS = 32
#: Longest pause between looks for entries to claim while waiting for new ones.
CLAIM_INTERVAL = 1.0
#: This process's consumer name prefix: host and pid, plus a random part (pids repeat in containers).
_CONSUMER = f"lingo-{os.uname().nodename}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def server_url() -> str:
    """The Redis server lingo connects to."""
    return os.environ.get("REDIS_SERVER_URL") or DEFAULT_SERVER


def connect() -> Redis:
    pool = BlockingConnectionPool.from_url(
        server_url(),
        max_connections=MAX_CONNECTIONS,
        timeout=TIMEOUT,
        socket_connect_timeout=TIMEOUT,
        health_check_interval=30,
    )
    return Redis(connection_pool=pool)


def _host() -> str:
    return server_url().rpartition("@")[2]


def _error(url: BrokerURL, what: str, exc: Exception) -> BrokerError:
    return BrokerError(f"{url.label}: {what} failed (Redis at {_host()}): {exc!r}")


def _text(value: bytes) -> str:
    return value.decode("utf-8", "replace")


class RedisMessage:
    """One stream entry received through the group."""

    __slots__ = ("_subscription", "attributes", "data", "deliveries", "id", "keepalive")

    def __init__(
        self, subscription: RedisSubscription, entry_id: bytes, fields: Mapping[bytes, bytes], deliveries: int
    ) -> None:
        self._subscription = subscription
        #: The entry's id (`MILLISECONDS-SEQUENCE`), the same on every delivery.
        self.id = _text(entry_id)
        #: The entry's field `data` (empty when it has none: answered 400).
        self.data = bytes(fields.get(b"data", b""))
        #: The entry's other fields, as text.
        self.attributes = {_text(k): _text(v) for k, v in fields.items() if k != b"data"}
        #: Times the group handed out the entry (its pending entry's delivery count).
        self.deliveries: int | None = deliveries
        #: Seconds between idle-time resets: a third of the lease.
        self.keepalive: float | None = subscription.lease / 3

    async def ack(self) -> None:
        await self._subscription.settle(self.id)

    async def nack(self, delay: float | None = None) -> None:
        await self._subscription.claim(self.id, idle=max(0.0, self._subscription.lease - (delay or 0.0)))

    async def in_progress(self) -> None:
        await self._subscription.claim(self.id, idle=0.0)


class RedisSubscription:
    """Reads a stream as one consumer of a group; claims what dead consumers left pending."""

    def __init__(self, url: BrokerURL, options: ReceiveOptions) -> None:
        self.url = url
        self.options = options
        #: The stream and the group.
        self.stream = url.name
        self.group = url.params["group"]
        #: This subscription's consumer name in the group.
        self.consumer = f"{_CONSUMER}-{uuid.uuid4().hex[:4]}"
        #: Seconds of silence after which a pending entry is claimed by another consumer.
        self.lease = duration_param(url, "lease", DEFAULT_LEASE)
        self._client: Redis | None = None
        self._cursor = b"0-0"
        self._next_claim = 0.0
        self._to_settle: list[tuple[str, asyncio.Future[None]]] = []
        self._settling: set[asyncio.Task[None]] = set()

    async def open(self) -> None:
        client = self._client = connect()
        try:
            async with asyncio.timeout(TIMEOUT):
                await client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
            log.info("created Redis consumer group", extra={"stream": self.stream, "group": self.group})
        except redis_errors.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise _error(self.url, "creating the group", exc) from None
        except (redis_errors.RedisError, OSError, TimeoutError) as exc:
            raise _error(self.url, "connecting", exc) from None

    def _ready(self) -> Redis:
        if self._client is None:
            raise BrokerError(f"{self.url.label}: not open")
        return self._client

    async def receive(self, limit: int, timeout: float) -> list[RedisMessage]:
        client = self._ready()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            while True:
                if loop.time() >= self._next_claim:
                    claimed = await self._claim_idle(client, limit)
                    if claimed:
                        return claimed
                wait = min(deadline, self._next_claim) - loop.time()
                answer: Any = await client.xreadgroup(
                    self.group, self.consumer, {self.stream: ">"}, count=limit, block=max(1, int(wait * 1000))
                )
                entries = answer[0][1] if answer else []
                if entries:
                    return [RedisMessage(self, entry_id, fields, 1) for entry_id, fields in entries]
                if loop.time() >= deadline:
                    return []
        except redis_errors.ResponseError as exc:
            if "NOGROUP" in str(exc):  # stream or group deleted behind lingo's back: reopen
                raise BrokerError(f"{self.url.label}: the stream or its group no longer exists") from None
            raise _error(self.url, "reading", exc) from None
        except (redis_errors.RedisError, OSError) as exc:
            raise _error(self.url, "reading", exc) from None

    async def _claim_idle(self, client: Redis, limit: int) -> list[RedisMessage]:
        """Entries idle for a lease on any consumer (a dead lingo's, or nacked ones), taken over."""
        answer = await client.xautoclaim(
            self.stream, self.group, self.consumer, int(self.lease * 1000), start_id=self._cursor, count=limit
        )
        self._cursor = answer[0]
        if self._cursor in (b"0-0", "0-0"):
            # A full pass over the pending list: look again after a pause.
            self._next_claim = asyncio.get_running_loop().time() + min(CLAIM_INTERVAL, self.lease / 4)
        entries = [(entry_id, fields) for entry_id, fields in answer[1] if fields is not None]
        if len(answer) > 2 and answer[2]:
            # Deleted from the stream while pending: nothing left to answer.
            await client.xack(self.stream, self.group, *answer[2])
        if not entries:
            return []
        counts = await self._delivery_counts(client, [entry_id for entry_id, _ in entries])
        return [RedisMessage(self, i, fields, counts.get(_text(i), 1)) for i, fields in entries]

    async def _delivery_counts(self, client: Redis, ids: list[bytes]) -> dict[str, int]:
        first, last = min(ids, key=_order), max(ids, key=_order)
        # This consumer's pending entries in that range: the claimed ones and at most those in flight.
        pending: Any = await client.xpending_range(
            self.stream,
            self.group,
            min=first,
            max=last,
            count=len(ids) + self.options.max_outstanding,
            consumername=self.consumer,
        )
        return {_text(p["message_id"]): int(p["times_delivered"]) for p in pending}

    async def settle(self, entry_id: str) -> None:
        """Answered: acknowledge and delete the entry (with the others answered in the same loop
        iteration, in one transaction)."""
        self._ready()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._to_settle.append((entry_id, future))
        if len(self._to_settle) == 1:
            loop.call_soon(self._flush_settles)
        await future

    def _flush_settles(self) -> None:
        batch, self._to_settle = self._to_settle, []
        if batch:
            task = asyncio.create_task(self._settle_batch(batch))
            self._settling.add(task)
            task.add_done_callback(self._settling.discard)

    async def _settle_batch(self, batch: list[tuple[str, asyncio.Future[None]]]) -> None:
        ids = [entry_id for entry_id, _ in batch]
        try:
            async with self._ready().pipeline(transaction=True) as pipe:
                pipe.xack(self.stream, self.group, *ids)
                pipe.xdel(self.stream, *ids)
                await pipe.execute()
        except (BrokerError, redis_errors.RedisError, OSError) as exc:
            error = exc if isinstance(exc, BrokerError) else _error(self.url, "ack", exc)
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        for _, future in batch:
            if not future.done():
                future.set_result(None)

    async def claim(self, entry_id: str, idle: float) -> None:
        """Keep the entry pending on this consumer with the given idle time (0: just touched)."""
        client = self._ready()
        try:
            await client.xclaim(
                self.stream, self.group, self.consumer, 0, [entry_id], idle=int(idle * 1000), justid=True
            )
        except (redis_errors.RedisError, OSError) as exc:
            raise _error(self.url, "claim", exc) from None

    async def backlog(self) -> int | None:
        """Entries not yet delivered to the group: its `lag`, else length minus pending."""
        client = self._ready()
        groups = await client.xinfo_groups(self.stream)
        for group in groups:
            name = group["name"]
            if (_text(name) if isinstance(name, bytes) else name) == self.group:
                lag = group.get("lag")
                if lag is not None:
                    return int(lag)
                length = await client.xlen(self.stream)
                return max(0, int(length) - int(group.get("pending") or 0))
        return None

    async def close(self) -> None:
        # Entries handed out and not answered stay pending: claimed after the lease (nacked ones sooner).
        self._flush_settles()
        if self._settling:
            await asyncio.wait(set(self._settling), timeout=TIMEOUT)
        client, self._client = self._client, None
        if client is not None:
            await client.aclose(close_connection_pool=True)


def _order(entry_id: bytes) -> tuple[int, int]:
    millis, _, sequence = entry_id.partition(b"-")
    return int(millis), int(sequence or 0)


class RedisPublisher:
    """Adds entries to a stream, trimmed approximately to `maxlen` (never when publishing requests)."""

    def __init__(self, url: BrokerURL, ensure_stream: bool = False) -> None:
        self.url = url
        #: Entries kept in the stream, approximately; None: never trimmed.
        self.maxlen: int | None = (
            int(url.params["maxlen"]) if "maxlen" in url.params else None if ensure_stream else DEFAULT_MAXLEN
        )
        self._client: Redis | None = None

    async def open(self) -> None:
        client = self._client = connect()
        try:
            async with asyncio.timeout(TIMEOUT):
                await client.ping()
        except (redis_errors.RedisError, OSError, TimeoutError) as exc:
            raise _error(self.url, "connecting", exc) from None

    async def publish(self, data: bytes, attributes: Mapping[str, str]) -> None:
        if self._client is None:
            raise BrokerError(f"{self.url.label}: not open")
        fields: dict[Any, Any] = {**{k: v for k, v in attributes.items() if k != "data"}, "data": data}
        try:
            await self._client.xadd(self.url.name, fields, maxlen=self.maxlen, approximate=True)
        except (redis_errors.RedisError, OSError) as exc:
            raise _error(self.url, "publish", exc) from None

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose(close_connection_pool=True)
