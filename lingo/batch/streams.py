"""Batch streams: receive loops feeding `MessageHandler`s, bounded, resilient, drained on shutdown.

Each stream runs up to `max_handlers` messages at once and asks the broker for no more than it has
free handlers, so messages wait on the broker rather than in lingo. Consecutive errors (receiving or
publishing) slow its receive loop, up to `MESSENGER_ERROR_MAX_BACKOFF`; a subscription that fails
is closed and reopened with backoff (Lingo #100, #116). No broker error ends the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping

from lingo.access_log import AccessLog
from lingo.backoff import Backoff
from lingo.batch.backlog import BacklogSplit
from lingo.batch.brokers import (
    PayloadTooLarge,
    Publisher,
    ReceiveOptions,
    Subscription,
    open_publisher,
    open_subscription,
)
from lingo.batch.delivery import Delivery, DeliveryCounter
from lingo.batch.envelope import DEFAULT_PATHS
from lingo.batch.handler import PUBLISH_TIMEOUT, MessageHandler, RetryPolicy
from lingo.batch.urls import StreamSpec, parse_streams
from lingo.config import Settings
from lingo.metrics import Metrics
from lingo.proxy.forwarder import Forwarder
from lingo.registry import Registry

log = logging.getLogger(__name__)

#: Longest wait for messages in one receive call; bounds how long a stop or a reopen can lag.
RECEIVE_TIMEOUT = 5.0
#: Pause after the first error; doubled per consecutive error up to the configured maximum.
ERROR_BACKOFF_BASE = 0.5
#: Longest pause between backlog refreshes (a quarter of the autoscaling interval when shorter).
BACKLOG_INTERVAL = 1.0
#: Longest pause between keepalive sweeps over the messages in flight.
KEEPALIVE_TICK = 1.0
#: Consecutive publish failures after which the publisher is closed and reopened.
PUBLISHER_REOPEN_AFTER = 3
#: Seconds a message is expected to take on a backend once it got a slot (sets Pub/Sub leases).
REQUEST_TIME_ALLOWANCE = 600.0


class BatchStream:
    """One configured stream: its subscription, its publisher and the messages in flight."""

    def __init__(
        self,
        spec: StreamSpec,
        registry: Registry,
        forwarder: Forwarder,
        metrics: Metrics,
        *,
        max_error_backoff: float = 180.0,
        allowed_paths: frozenset[str] = DEFAULT_PATHS,
        retry: RetryPolicy | None = None,
        backlog_interval: float = BACKLOG_INTERVAL,
    ) -> None:
        #: Where from, where to, how many at once.
        self.spec = spec
        #: Name in logs and metrics: the requests URL without credentials.
        self.label = spec.label
        #: Known models: where backlog sources are registered.
        self.registry = registry
        #: Where messages are counted.
        self.metrics = metrics
        #: Retries of transient failures (also sets how long Pub/Sub leases are kept).
        self.retry = retry or RetryPolicy()
        #: The broker's backlog, split by model as demand for the autoscaler.
        self.backlog_split = BacklogSplit(spec.requests.model)
        #: Seconds between backlog refreshes.
        self.backlog_interval = backlog_interval
        #: Deliveries per message id, for brokers that do not count them.
        self.delivery_counter = DeliveryCounter()
        #: Handles one message end to end.
        self.handler = MessageHandler(
            registry,
            forwarder,
            metrics,
            self.publish,
            self.label,
            allowed_paths=allowed_paths,
            retry=self.retry,
            nack_delay=self._nack_delay,
            on_model=self.backlog_split.received,
        )
        #: Consecutive receive failures.
        self.receive_errors = Backoff(ERROR_BACKOFF_BASE, max_error_backoff)
        #: Consecutive publish failures.
        self.publish_errors = Backoff(ERROR_BACKOFF_BASE, max_error_backoff)
        #: Set while the subscription is open.
        self.opened = asyncio.Event()
        #: Times the subscription was opened: 1, plus one per reopening after a failure.
        self.opens = 0
        # Pub/Sub must be told up front how long to keep extending a message's lease.
        lease = self.retry.max_attempts * (forwarder.max_wait + self.retry.cap) + REQUEST_TIME_ALLOWANCE
        self._receive_options = ReceiveOptions(
            max_outstanding=spec.max_handlers, max_lease=lease, max_deliveries=self.retry.max_deliveries
        )
        self._subscription: Subscription | None = None
        self._publisher: Publisher | None = None
        self._publisher_lock = asyncio.Lock()
        self._deliveries: set[Delivery] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._slot_freed = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._backlog_task: asyncio.Task[None] | None = None
        self._keepalive_task: asyncio.Task[None] | None = None
        self._in_flight = metrics.batch_in_flight.labels(self.label)
        self._stopping = False

    @property
    def backlog(self) -> int:
        """Messages waiting on the broker, as last reported (0 where the broker cannot tell)."""
        return self.backlog_split.total

    @property
    def in_flight(self) -> int:
        """Messages received and not settled yet."""
        return len(self._deliveries)

    def start(self) -> None:
        """Start receiving in the background; opening the subscription is retried until it works."""
        self._loop_task = asyncio.create_task(self._receive_loop(), name=f"batch {self.label}")
        self._keepalive_task = asyncio.create_task(self._keep_alive(), name=f"keepalive {self.label}")
        self.registry.add_backlog_source(self.backlog_split.demand)
        self._backlog_task = asyncio.create_task(self._refresh_backlog(), name=f"backlog {self.label}")

    async def stop(self, grace: float) -> None:
        """Stop receiving, let handlers finish within `grace` seconds, nack what is left, close."""
        self._stopping = True
        for task in (self._loop_task, self._backlog_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        unsettled = [delivery for delivery in self._deliveries if delivery.settled is None]
        if unsettled:
            log.info(
                "returning unfinished batch messages", extra={"stream": self.label, "count": len(unsettled)}
            )
        for delivery in unsettled:
            self.metrics.batch_messages.labels(self.label, "nacked").inc()
            await delivery.nack()
        if self._keepalive_task is not None:
            self._keepalive_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keepalive_task
        self.registry.remove_backlog_source(self.backlog_split.demand)
        self.backlog_split.total = 0
        await self._close_subscription()
        async with self._publisher_lock:
            await self._close_publisher()

    # -- receiving ----------------------------------------------------------------------------------

    async def _receive_loop(self) -> None:
        while not self._stopping:
            delay = max(self.receive_errors.current(), self.publish_errors.current())
            if delay:
                await asyncio.sleep(delay)
            try:
                if self._subscription is None:
                    await self._open_subscription()
                free = await self._free_slots()
                assert self._subscription is not None
                messages = await self._subscription.receive(free, RECEIVE_TIMEOUT)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.receive_errors.next()
                log.warning(
                    "batch stream failed; reopening",
                    extra={
                        "stream": self.label,
                        "errors": self.receive_errors.failures,
                        "retry_in": round(self.receive_errors.current(), 2),
                        "error": repr(exc),
                    },
                )
                await self._close_subscription()
                continue
            self.receive_errors.reset()
            now = asyncio.get_running_loop().time()
            for message in messages:
                self._spawn(Delivery(message, self.label, now, self.delivery_counter.observe(message)))

    async def _open_subscription(self) -> None:
        subscription = open_subscription(self.spec.requests, self._receive_options)
        try:
            await subscription.open()
        except BaseException:
            with contextlib.suppress(Exception):
                await subscription.close()
            raise
        self._subscription = subscription
        self.opens += 1
        self.opened.set()
        log.info(
            "batch stream receiving", extra={"stream": self.label, "max_handlers": self.spec.max_handlers}
        )

    async def _close_subscription(self) -> None:
        subscription, self._subscription = self._subscription, None
        self.opened.clear()
        if subscription is not None:
            try:
                await subscription.close()
            except Exception as exc:
                log.debug("closing subscription failed", extra={"stream": self.label, "error": repr(exc)})

    async def _free_slots(self) -> int:
        """Free handlers, once a quarter of them are free: the broker is asked for messages in
        batches rather than once per finished message."""
        wanted = max(1, self.spec.max_handlers // 4)
        while self.spec.max_handlers - len(self._deliveries) < wanted:
            self._slot_freed.clear()
            await self._slot_freed.wait()
        return self.spec.max_handlers - len(self._deliveries)

    def _spawn(self, delivery: Delivery) -> None:
        self._deliveries.add(delivery)
        self._in_flight.inc()
        task = asyncio.create_task(self._handle(delivery))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, delivery: Delivery) -> None:
        try:
            await self.handler.handle(delivery)
        finally:
            # Unsettled after cancellation: stop() nacks it once its task is gone.
            if delivery.settled is not None or not self._stopping:
                self._deliveries.discard(delivery)
            if delivery.settled == "ack":
                self.delivery_counter.forget(delivery.message.id)
            self._in_flight.dec()
            self._slot_freed.set()

    async def _keep_alive(self) -> None:
        """In-progress acks for messages held longer than their broker's keepalive interval (NATS),
        so a message waiting for a cold start is not redelivered. One task for the whole stream."""
        loop = asyncio.get_running_loop()
        while True:
            tick = KEEPALIVE_TICK
            now = loop.time()
            for delivery in list(self._deliveries):
                interval = delivery.message.keepalive
                if interval is None or delivery.settled is not None:
                    continue
                tick = min(tick, interval / 3)
                if now - delivery.alive_at >= interval:
                    await delivery.in_progress(now)
            await asyncio.sleep(max(0.05, tick))

    async def _refresh_backlog(self) -> None:
        while True:
            subscription = self._subscription
            if subscription is not None:
                try:
                    async with asyncio.timeout(5):
                        count = await subscription.backlog()
                    self.backlog_split.total = count or 0
                    self.metrics.batch_backlog.labels(self.label).set(self.backlog)
                except Exception as exc:
                    log.debug("backlog refresh failed", extra={"stream": self.label, "error": repr(exc)})
            await asyncio.sleep(self.backlog_interval)

    # -- publishing ---------------------------------------------------------------------------------

    async def publish(self, data: bytes, attributes: Mapping[str, str]) -> None:
        """Publish one response, opening (or reopening) the publisher as needed; raises on failure."""
        try:
            publisher = await self._get_publisher()
            await publisher.publish(data, attributes)
        except PayloadTooLarge:
            raise  # this message's fault, not the broker's: no backoff, no reopening
        except Exception:
            self.publish_errors.next()
            if self.publish_errors.failures % PUBLISHER_REOPEN_AFTER == 0:
                async with self._publisher_lock:
                    await self._close_publisher()
            raise
        self.publish_errors.reset()

    async def _get_publisher(self) -> Publisher:
        publisher = self._publisher
        if publisher is not None:
            return publisher
        async with self._publisher_lock:
            if self._publisher is None:
                publisher = open_publisher(self.spec.responses)
                try:
                    async with asyncio.timeout(PUBLISH_TIMEOUT):
                        await publisher.open()
                except BaseException:
                    with contextlib.suppress(Exception):
                        await publisher.close()
                    raise
                self._publisher = publisher
            return self._publisher

    async def _close_publisher(self) -> None:
        publisher, self._publisher = self._publisher, None
        if publisher is not None:
            try:
                await publisher.close()
            except Exception as exc:
                log.debug("closing publisher failed", extra={"stream": self.label, "error": repr(exc)})

    def _nack_delay(self) -> float:
        return max(self.publish_errors.current(), ERROR_BACKOFF_BASE)


class BatchStreams:
    """Every batch stream of one lingo process (`--messenger`), started and stopped together."""

    def __init__(self, streams: list[BatchStream]) -> None:
        #: The streams, in configuration order.
        self.streams = streams

    @classmethod
    def from_settings(
        cls, settings: Settings, registry: Registry, forwarder: Forwarder, metrics: Metrics
    ) -> BatchStreams:
        """Streams from `settings.messengers`; a bad spec raises ConfigError naming it."""
        specs = parse_streams(settings.messengers)
        retry = RetryPolicy(max_deliveries=settings.batch_max_deliveries)
        # Fresh backlog numbers at every autoscaler tick, so a backlog scales up within one interval.
        backlog_interval = max(0.05, min(BACKLOG_INTERVAL, settings.autoscaling_interval / 4))
        streams = [
            BatchStream(
                spec,
                registry,
                forwarder,
                metrics,
                max_error_backoff=settings.messenger_error_max_backoff,
                retry=retry,
                backlog_interval=backlog_interval,
            )
            for spec in specs
        ]
        access_log = AccessLog(settings.access_log)
        for stream in streams:
            stream.handler.access_log = access_log
        return cls(streams)

    async def start(self, wait: float = 5.0) -> None:
        """Start every stream; wait up to `wait` seconds for their subscriptions to open.

        A broker that is down does not stop lingo from starting: its stream keeps retrying.
        """
        for stream in self.streams:
            stream.start()
        pending = [asyncio.create_task(stream.opened.wait()) for stream in self.streams]
        if pending:
            _, late = await asyncio.wait(pending, timeout=wait)
            for task in late:
                task.cancel()
            for stream in self.streams:
                if not stream.opened.is_set():
                    log.warning(
                        "batch stream not open yet; retrying in the background",
                        extra={"stream": stream.label},
                    )

    async def stop(self, grace: float) -> None:
        """Stop receiving everywhere, finish in-flight messages within `grace`, nack the rest."""
        await asyncio.gather(*(stream.stop(grace) for stream in self.streams))
