"""Sends one request to a model's endpoints through the shared queue, with retries.

The HTTP proxy and the batch handler both call `Forwarder.exchange`: the one path from a request
to a backend response, so both kinds of traffic are queued, balanced, retried and counted alike.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

from lingo.errors import BackendUnreachable
from lingo.proxy.upstream import UpstreamError, UpstreamPool, UpstreamResponse
from lingo.queue import Lease, ModelQueue, Priority

log = logging.getLogger(__name__)

#: Backend statuses worth another endpoint: the backend is overloaded, restarting or gone.
RETRY_STATUSES = frozenset({502, 503, 504})


@dataclass
class Exchange:
    """A backend response being read, and the endpoint slot it holds until the exchange ends."""

    #: The backend's response; its body may still be arriving.
    response: UpstreamResponse
    #: The endpoint slot; released when the exchange ends.
    lease: Lease
    #: Seconds spent waiting in the queue (all attempts).
    waited: float
    #: Attempts made, 1 when the first one answered.
    attempts: int


class Forwarder:
    """Queue, pick, send, retry: gets a backend response for one request."""

    def __init__(self, pool: UpstreamPool, retries: int, max_wait: float) -> None:
        #: Shared upstream connection pool.
        self.pool = pool
        #: Extra attempts after a connection error or a 502/503/504 answer.
        self.retries = retries
        #: Default seconds a request may wait for an endpoint slot, over all attempts.
        self.max_wait = max_wait

    @asynccontextmanager
    async def exchange(
        self,
        queue: ModelQueue,
        method: str,
        path: str,
        headers: Mapping[str, str] | Iterable[tuple[str, str]],
        body: bytes,
        priority: Priority,
        timeout: float | None = None,
    ) -> AsyncIterator[Exchange]:
        """Yield the backend's response; the slot is held until the `async with` block ends.

        Retries resend the whole body to a freshly picked endpoint, only before any byte of a
        response was handed to the caller. The last attempt's 502/503/504 passes through as it is.
        """
        loop = asyncio.get_running_loop()
        header_items = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
        deadline = loop.time() + (self.max_wait if timeout is None else timeout)
        attempts = self.retries + 1
        avoid: str | None = None
        waited = 0.0
        last_error: Exception | None = None
        for attempt in range(1, attempts + 1):
            queued_at = loop.time()
            lease = await queue.acquire(priority, max(0.0, deadline - queued_at), avoid)
            waited += loop.time() - queued_at
            try:
                response = await self.pool.request(lease.url, method, path, header_items, body)
            except (UpstreamError, OSError) as exc:
                lease.release()
                last_error, avoid = exc, lease.url
                log.debug("backend connection failed", extra={"endpoint": lease.url, "attempt": attempt})
                continue
            except BaseException:
                lease.release()
                raise
            if response.status in RETRY_STATUSES and attempt < attempts:
                response.release()
                lease.release()
                avoid = lease.url
                continue
            try:
                yield Exchange(response, lease, waited, attempt)
            finally:
                response.release()
                lease.release()
            return
        raise BackendUnreachable(
            f"model group {queue.group.name!r} unreachable after {attempts} attempt(s): {last_error}"
        )
