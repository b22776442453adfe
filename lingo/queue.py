"""The shared per-model queue: every request, HTTP or batch, waits here for a free endpoint slot.

A `ModelQueue` owns all counts of waiting and running work for one model group; the autoscaler,
the metrics and `/stats` read them from here and nowhere else. Waiting is FIFO within four classes
(`priority` > `default` > `flex` > batch); a waiter moves up one class for every `aging` seconds it
has waited, so no class starves. A request may take an endpoint with a free slot: below this lingo
replica's share of the endpoint's `concurrency` (see `lingo.shares`), and for batch work also below
the batch share of those slots, so interactive arrivals find a free slot while a big batch runs.
Which of those endpoints it gets is the group's chooser's decision (`lingo.balancing`: fewest in
flight, or cache-aware).

Costs stay flat with many waiters: enqueue, hand-off and cancellation are O(1) (cancelled waiters
are skipped lazily and compacted in bulk; a hand-off looks at the head of each of the four lines);
only the endpoint pick scans, and endpoints are few.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import IntEnum

from lingo.balancing import Chooser, make_chooser
from lingo.errors import FlexUnavailable, LingoError, ModelNotFound, NoEndpoint, QueueFull
from lingo.models import ModelGroup
from lingo.prompt_key import RoutingKey
from lingo.shares import batch_limit, endpoint_shares

#: The slot limit handed to the chooser: the queue gives it only endpoints with a free slot already.
NO_LIMIT = 1 << 30
#: Seconds suggested to clients in `Retry-After` when the queue is full.
QUEUE_FULL_RETRY_AFTER = 1.0
#: Seconds suggested to clients in `Retry-After` when no endpoint became ready in time.
NO_ENDPOINT_RETRY_AFTER = 10.0


#: Seconds suggested to flex clients in `Retry-After` when no slot was free in time.
FLEX_RETRY_AFTER = 10.0


class Priority(IntEnum):
    """Waiting class; lower values are served first."""

    PRIORITY = 0
    DEFAULT = 1
    FLEX = 2
    BATCH = 3

    @property
    def label(self) -> str:
        """The class as metrics and docs name it: priority, default, flex or batch."""
        return self.name.lower()


@dataclass(frozen=True)
class ClassPolicy:
    """How the classes share a model's slots (the same for every model of one lingo process)."""

    #: Seconds a flex request may wait for a slot before it is refused with 429.
    flex_max_wait: float = 10.0
    #: Fraction of an endpoint's slots batch work may fill (it always gets at least one).
    batch_max_share: float = 0.75
    #: Seconds of waiting that move a waiter up one class, so lower classes never starve.
    aging: float = 15.0


class Endpoint:
    """One ready server of a group and the requests it is serving now."""

    __slots__ = ("batch_in_flight", "in_flight", "slots", "url")

    def __init__(self, url: str) -> None:
        #: Base URL, e.g. `http://10.0.0.7:8000`.
        self.url = url
        #: Requests handed this endpoint and not yet released.
        self.in_flight = 0
        #: The part of `in_flight` that is batch work (kept within the batch share).
        self.batch_in_flight = 0
        #: Requests this lingo replica may run here at once: its share of the group's `concurrency`.
        self.slots = 0


class Lease:
    """A slot on one endpoint, held from hand-off until `release()`; releasing twice is harmless."""

    __slots__ = ("_queue", "batch", "endpoint", "released")

    def __init__(self, queue: ModelQueue, endpoint: Endpoint, batch: bool) -> None:
        self._queue = queue
        #: The endpoint this request goes to.
        self.endpoint = endpoint
        #: True when the slot counts against the batch share.
        self.batch = batch
        #: True once the slot was given back.
        self.released = False

    @property
    def url(self) -> str:
        return self.endpoint.url

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._queue._release(self.endpoint, self.batch)


class _Waiter:
    __slots__ = ("avoid", "future", "key", "since")

    def __init__(
        self, future: asyncio.Future[Lease], avoid: str | None, key: RoutingKey | None, since: float
    ) -> None:
        self.future = future
        self.avoid = avoid
        #: The request's routing key, for a cache-aware chooser.
        self.key = key
        #: Loop time the waiter started waiting (for aging).
        self.since = since


class ModelQueue:
    """Requests waiting for, and running on, the endpoints of one model group."""

    def __init__(
        self,
        group: ModelGroup,
        max_queue: int,
        on_demand: Callable[[str], None] | None = None,
        policy: ClassPolicy | None = None,
    ) -> None:
        #: Routing decisions by reason (`lingo_routing_decisions_total`), kept across chooser changes.
        self.routing_decisions: dict[str, int] = {}
        #: Picks the endpoint for each request, as the group's `load_balancing` says.
        self.chooser: Chooser = make_chooser(group, self.routing_decisions)
        self._group = group
        #: Waiting requests beyond which new ones are refused with 429.
        self.max_queue = max_queue
        #: Called with the group name when a request waits while no endpoint is ready.
        self.on_demand = on_demand
        #: Flex wait, batch share and aging.
        self.policy = policy or ClassPolicy()
        #: (rank, count) of this process among the lingo replicas sharing the endpoints' slots.
        self.lingo_replicas = (0, 1)
        #: Ready endpoints by URL.
        self.endpoints: dict[str, Endpoint] = {}
        #: Endpoints taken out of rotation while requests were still running on them.
        self.retired: dict[str, Endpoint] = {}
        self._waiting: tuple[deque[_Waiter], ...] = tuple(deque() for _ in Priority)
        self._queued = [0] * len(Priority)
        self._in_flight = 0
        self._closed: LingoError | None = None
        #: Why the platform cannot start a replica right now (told to clients whose wait ends), or None.
        self.start_error: str | None = None

    @property
    def group(self) -> ModelGroup:
        """The group's spec; replaced when the platform reports a change."""
        return self._group

    @group.setter
    def group(self, group: ModelGroup) -> None:
        if (group.load_balancing, group.load_factor) != (self._group.load_balancing, self._group.load_factor):
            self.chooser = make_chooser(group, self.routing_decisions)
            self.chooser.set_endpoints(self.endpoints)
        self._group = group

    # -- counts read by the autoscaler, metrics and /stats -------------------------------------------

    @property
    def queued(self) -> int:
        """Requests waiting for an endpoint slot, all classes."""
        return sum(self._queued)

    def queued_by(self, priority: Priority) -> int:
        return self._queued[priority]

    @property
    def in_flight(self) -> int:
        """Requests handed an endpoint and not yet finished."""
        return self._in_flight

    @property
    def active(self) -> int:
        """Queued plus in flight: the demand this process sees for the group."""
        return sum(self._queued) + self._in_flight

    # -- platform events ----------------------------------------------------------------------------

    def set_endpoints(self, urls: Iterable[str]) -> None:
        """Replace the set of ready endpoints; requests on removed ones finish where they are."""
        wanted = dict.fromkeys(urls)
        for url in list(self.endpoints):
            if url not in wanted:
                endpoint = self.endpoints.pop(url)
                if endpoint.in_flight:
                    self.retired[url] = endpoint
        for url in wanted:
            if url not in self.endpoints:
                self.endpoints[url] = self.retired.pop(url) if url in self.retired else Endpoint(url)
        self._reshare()
        self.chooser.set_endpoints(self.endpoints)
        self._dispatch()

    def set_lingo_replicas(self, rank: int, count: int) -> None:
        """This process is replica `rank` (0-based) of `count` lingo replicas sharing each endpoint."""
        self.lingo_replicas = (rank, count)
        self._reshare()
        self._dispatch()

    def in_flight_on(self, url: str) -> int:
        """Requests running on the endpoint at `url`, in rotation or retired."""
        endpoint = self.endpoints.get(url) or self.retired.get(url)
        return endpoint.in_flight if endpoint else 0

    def close(self, error: LingoError | None = None) -> None:
        """Refuse new requests and fail the waiting ones (model deleted, or lingo shutting down)."""
        self._closed = error or ModelNotFound(f"model group {self.group.name!r} was removed")
        for waiters in self._waiting:
            while waiters:
                waiter = waiters.popleft()
                if not waiter.future.done():
                    waiter.future.set_exception(self._closed)
        self._queued = [0] * len(Priority)

    @property
    def closed(self) -> bool:
        return self._closed is not None

    # -- the request path ---------------------------------------------------------------------------

    async def acquire(
        self, priority: Priority, timeout: float, avoid: str | None = None, key: RoutingKey | None = None
    ) -> Lease:
        """Wait (FIFO within `priority`) for an endpoint slot; raise 429, 503 or 404 errors.

        `key` (the request's prompt blocks or session) guides a cache-aware chooser."""
        if self._closed is not None:
            raise self._closed
        if not any(self._queued[: priority + 1]):
            endpoint = self._pick(avoid, key, self._candidates(priority))
            if endpoint is not None:
                return self._lease(endpoint, priority)
        if self.queued >= self.max_queue:
            raise QueueFull(
                f"too many requests waiting for model group {self.group.name!r} ({self.max_queue})",
                retry_after=QUEUE_FULL_RETRY_AFTER,
            )
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Lease] = loop.create_future()
        waiters = self._waiting[priority]
        waiters.append(_Waiter(future, avoid, key, loop.time()))
        self._queued[priority] += 1
        if not self.endpoints and self.on_demand is not None:
            self.on_demand(self.group.name)
        flex = priority is Priority.FLEX and self.policy.flex_max_wait < timeout
        try:
            async with asyncio.timeout(self.policy.flex_max_wait if flex else timeout):
                return await future
        except BaseException as exc:
            if future.done() and not future.cancelled() and future.exception() is None:
                # Handed a slot in the same instant we gave up: give it back.
                future.result().release()
            elif not future.done() or future.cancelled():
                future.cancel()
                self._queued[priority] -= 1
                self._compact(waiters, priority)
            if isinstance(exc, TimeoutError) and flex:
                raise FlexUnavailable(
                    f"no capacity for flex requests to model group {self.group.name!r} within "
                    f"{self.policy.flex_max_wait:g}s; retry later or use the default service tier",
                    retry_after=FLEX_RETRY_AFTER,
                ) from None
            if isinstance(exc, TimeoutError):
                reason = f"; a replica cannot start: {self.start_error}" if self.start_error else ""
                raise NoEndpoint(
                    f"no ready endpoint for model group {self.group.name!r} within {timeout:g}s{reason}",
                    retry_after=NO_ENDPOINT_RETRY_AFTER,
                ) from None
            raise

    def _lease(self, endpoint: Endpoint, priority: Priority) -> Lease:
        batch = priority is Priority.BATCH
        endpoint.in_flight += 1
        endpoint.batch_in_flight += batch
        self._in_flight += 1
        return Lease(self, endpoint, batch)

    def _reshare(self) -> None:
        """Give every endpoint this replica's share of its slots (after endpoints or peers changed)."""
        shares = endpoint_shares(self.group.concurrency, *self.lingo_replicas, self.endpoints)
        for url, endpoint in self.endpoints.items():
            endpoint.slots = shares[url]

    def _candidates(self, priority: Priority) -> list[Endpoint]:
        """Endpoints with a free slot for a request of `priority`: below this replica's share of
        their slots, and for batch also below the batch share of those."""
        if priority is not Priority.BATCH:
            return [e for e in self.endpoints.values() if e.in_flight < e.slots]
        share = self.policy.batch_max_share
        return [
            e
            for e in self.endpoints.values()
            if e.in_flight < e.slots and e.batch_in_flight < batch_limit(e.slots, share)
        ]

    def _pick(self, avoid: str | None, key: RoutingKey | None, endpoints: list[Endpoint]) -> Endpoint | None:
        """Of `endpoints` (all with a free slot for the request's class), the one the chooser picks."""
        return self.chooser.choose(endpoints, NO_LIMIT, key, avoid)

    def _release(self, endpoint: Endpoint, batch: bool) -> None:
        endpoint.in_flight -= 1
        endpoint.batch_in_flight -= batch
        self._in_flight -= 1
        if not endpoint.in_flight and self.retired.get(endpoint.url) is endpoint:
            del self.retired[endpoint.url]
        if any(self._queued):
            self._dispatch()

    def _dispatch(self) -> None:
        """Hand free slots to waiters, the head of the best class first (see `_next_class`)."""
        skip_batch = False
        while True:
            priority = self._next_class(skip_batch)
            if priority is None:
                return
            waiters = self._waiting[priority]
            waiter = waiters[0]
            endpoint = self._pick(waiter.avoid, waiter.key, self._candidates(priority))
            if endpoint is None:
                if priority is Priority.BATCH:
                    # Batch is held back by its share; interactive waiters may still fit.
                    skip_batch = True
                    continue
                return  # no slot for interactive work means none for batch either
            waiters.popleft()
            self._queued[priority] -= 1
            waiter.future.set_result(self._lease(endpoint, priority))

    def _next_class(self, skip_batch: bool) -> Priority | None:
        """The class whose head waiter goes next: the best class after aging, older first on a tie.

        A waiter counts one class better for every `policy.aging` seconds it has waited, so a
        steady stream of a higher class delays a lower one by a bounded time, never forever.
        Cancelled heads are dropped on the way.
        """
        now: float | None = None
        best: Priority | None = None
        best_key = (0.0, 0.0)
        for priority in Priority:
            if not self._queued[priority] or (skip_batch and priority is Priority.BATCH):
                continue
            waiters = self._waiting[priority]
            while waiters[0].future.done():
                waiters.popleft()
            head = waiters[0]
            if now is None:
                now = asyncio.get_running_loop().time()
            key = (priority - (now - head.since) // self.policy.aging, head.since)
            if best is None or key < best_key:
                best, best_key = priority, key
        return best

    def _compact(self, waiters: deque[_Waiter], priority: int) -> None:
        # Cancelled waiters are skipped lazily; rebuild once they outnumber the live ones, so a
        # storm of disconnects costs O(1) amortised each and memory returns to the live size.
        if len(waiters) > 64 and len(waiters) > 2 * self._queued[priority]:
            live = [w for w in waiters if not w.future.done()]
            waiters.clear()
            waiters.extend(live)
