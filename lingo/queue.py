"""The shared per-model queue: every request, HTTP or batch, waits here for a free endpoint slot.

A `ModelQueue` owns all counts of waiting and running work for one model group; the autoscaler,
the metrics and `/stats` read them from here and nowhere else. Waiting is FIFO within two priority
classes (HTTP before batch). Which endpoint with a free slot (`concurrency` per endpoint) a request
is handed is the group's chooser's decision (`lingo.balancing`: fewest in flight, or cache-aware).

Costs stay flat with many waiters: enqueue, hand-off and cancellation are O(1) (cancelled waiters
are skipped lazily and compacted in bulk); only the endpoint pick scans, and endpoints are few.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable
from enum import IntEnum

from lingo.balancing import Chooser, make_chooser
from lingo.errors import LingoError, ModelNotFound, NoEndpoint, QueueFull
from lingo.models import ModelGroup
from lingo.prompt_key import RoutingKey

#: Seconds suggested to clients in `Retry-After` when the queue is full.
QUEUE_FULL_RETRY_AFTER = 1.0
#: Seconds suggested to clients in `Retry-After` when no endpoint became ready in time.
NO_ENDPOINT_RETRY_AFTER = 10.0


class Priority(IntEnum):
    """Waiting class; lower values are served first."""

    HTTP = 0
    BATCH = 1


class Endpoint:
    """One ready server of a group and the requests it is serving now."""

    __slots__ = ("in_flight", "url")

    def __init__(self, url: str) -> None:
        #: Base URL, e.g. `http://10.0.0.7:8000`.
        self.url = url
        #: Requests handed this endpoint and not yet released.
        self.in_flight = 0


class Lease:
    """A slot on one endpoint, held from hand-off until `release()`; releasing twice is harmless."""

    __slots__ = ("_queue", "endpoint", "released")

    def __init__(self, queue: ModelQueue, endpoint: Endpoint) -> None:
        self._queue = queue
        #: The endpoint this request goes to.
        self.endpoint = endpoint
        #: True once the slot was given back.
        self.released = False

    @property
    def url(self) -> str:
        return self.endpoint.url

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._queue._release(self.endpoint)


class _Waiter:
    __slots__ = ("avoid", "future", "key")

    def __init__(self, future: asyncio.Future[Lease], avoid: str | None, key: RoutingKey | None) -> None:
        self.future = future
        self.avoid = avoid
        self.key = key


class ModelQueue:
    """Requests waiting for, and running on, the endpoints of one model group."""

    def __init__(
        self,
        group: ModelGroup,
        max_queue: int,
        on_demand: Callable[[str], None] | None = None,
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
        #: Ready endpoints by URL.
        self.endpoints: dict[str, Endpoint] = {}
        #: Endpoints taken out of rotation while requests were still running on them.
        self.retired: dict[str, Endpoint] = {}
        self._waiting: tuple[deque[_Waiter], deque[_Waiter]] = (deque(), deque())
        self._queued = [0, 0]
        self._in_flight = 0
        self._closed: LingoError | None = None

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
        return self._queued[0] + self._queued[1]

    def queued_by(self, priority: Priority) -> int:
        return self._queued[priority]

    @property
    def in_flight(self) -> int:
        """Requests handed an endpoint and not yet finished."""
        return self._in_flight

    @property
    def active(self) -> int:
        """Queued plus in flight: the demand this process sees for the group."""
        return self._queued[0] + self._queued[1] + self._in_flight

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
                self.endpoints[url] = self.retired.pop(url, None) or Endpoint(url)
        self.chooser.set_endpoints(self.endpoints)
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
        self._queued = [0, 0]

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
        if not self._waiting_ahead(priority):
            endpoint = self._pick(avoid, key)
            if endpoint is not None:
                return self._lease(endpoint)
        if self.queued >= self.max_queue:
            raise QueueFull(
                f"too many requests waiting for model group {self.group.name!r} ({self.max_queue})",
                retry_after=QUEUE_FULL_RETRY_AFTER,
            )
        future: asyncio.Future[Lease] = asyncio.get_running_loop().create_future()
        waiters = self._waiting[priority]
        waiters.append(_Waiter(future, avoid, key))
        self._queued[priority] += 1
        if not self.endpoints and self.on_demand is not None:
            self.on_demand(self.group.name)
        try:
            async with asyncio.timeout(timeout):
                return await future
        except BaseException as exc:
            if future.done() and not future.cancelled() and future.exception() is None:
                # Handed a slot in the same instant we gave up: give it back.
                future.result().release()
            elif not future.done() or future.cancelled():
                future.cancel()
                self._queued[priority] -= 1
                self._compact(waiters, priority)
            if isinstance(exc, TimeoutError):
                raise NoEndpoint(
                    f"no ready endpoint for model group {self.group.name!r} within {timeout:g}s",
                    retry_after=NO_ENDPOINT_RETRY_AFTER,
                ) from None
            raise

    def _waiting_ahead(self, priority: Priority) -> bool:
        if priority == Priority.HTTP:
            return self._queued[0] > 0
        return self._queued[0] + self._queued[1] > 0

    def _lease(self, endpoint: Endpoint) -> Lease:
        endpoint.in_flight += 1
        self._in_flight += 1
        return Lease(self, endpoint)

    def _pick(self, avoid: str | None, key: RoutingKey | None) -> Endpoint | None:
        """An endpoint with a free slot, as the chooser decides; None when all are full."""
        return self.chooser.choose(list(self.endpoints.values()), self.group.concurrency, key, avoid)

    def _release(self, endpoint: Endpoint) -> None:
        endpoint.in_flight -= 1
        self._in_flight -= 1
        if not endpoint.in_flight and self.retired.get(endpoint.url) is endpoint:
            del self.retired[endpoint.url]
        if self._queued[0] or self._queued[1]:
            self._dispatch()

    def _dispatch(self) -> None:
        """Hand free slots to waiters in order: all HTTP waiters before any batch waiter."""
        for priority, waiters in enumerate(self._waiting):
            while waiters and self._queued[priority]:
                waiter = waiters[0]
                if waiter.future.done():
                    waiters.popleft()
                    continue
                endpoint = self._pick(waiter.avoid, waiter.key)
                if endpoint is None:
                    return
                waiters.popleft()
                self._queued[priority] -= 1
                waiter.future.set_result(self._lease(endpoint))

    def _compact(self, waiters: deque[_Waiter], priority: int) -> None:
        # Cancelled waiters are skipped lazily; rebuild once they outnumber the live ones, so a
        # storm of disconnects costs O(1) amortised each and memory returns to the live size.
        if len(waiters) > 64 and len(waiters) > 2 * self._queued[priority]:
            live = [w for w in waiters if not w.future.done()]
            waiters.clear()
            waiters.extend(live)
