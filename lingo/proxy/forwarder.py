"""Sends one request to a model's endpoints through the shared queue, with retries.

The HTTP proxy and the batch handler both call `Forwarder.exchange`: the one path from a request
to a backend response, so both kinds of traffic are queued, balanced, retried and counted alike.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from lingo.errors import BackendUnreachable, UpstreamTimeout
from lingo.prompt_key import RoutingKey
from lingo.proxy.upstream import UpstreamError, UpstreamPool, UpstreamResponse, UpstreamTimeoutError
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

    def close(self) -> None:
        """Give back the connection (or close it, if the body was not read) and the endpoint slot."""
        self.response.release()
        self.lease.release()


class Forwarder:
    """Queue, pick, send, retry: gets a backend response for one request."""

    def __init__(self, pool: UpstreamPool, retries: int, max_wait: float) -> None:
        #: Shared upstream connection pool.
        self.pool = pool
        #: Extra attempts after a connection error or a 502/503/504 answer.
        self.retries = retries
        #: Default seconds a request may wait for an endpoint slot, over all attempts.
        self.max_wait = max_wait

    def exchange(
        self,
        queue: ModelQueue,
        method: str,
        path: str,
        headers: Mapping[str, str] | Iterable[tuple[str, str]],
        body: bytes,
        priority: Priority,
        timeout: float | None = None,
        key: RoutingKey | None = None,
    ) -> _ExchangeContext:
        """`async with forwarder.exchange(...) as exchange:` — the slot is held until the block ends."""
        return _ExchangeContext(self.send(queue, method, path, headers, body, priority, timeout, key))

    async def send(
        self,
        queue: ModelQueue,
        method: str,
        path: str,
        headers: Mapping[str, str] | Iterable[tuple[str, str]],
        body: bytes,
        priority: Priority,
        timeout: float | None = None,
        key: RoutingKey | None = None,
    ) -> Exchange:
        """The backend's response, holding an endpoint slot until `Exchange.close()`.

        `key` is the request's routing key (prompt blocks, session) for a cache-aware group.

        Retries resend the whole body to a freshly picked endpoint, only before any byte of a
        response was handed to the caller. The last attempt's 502/503/504 passes through as it is.
        Every attempt is one send at most: a request reaches backends `retries + 1` times at most.
        A backend that sends no response head in time is not retried (it may still be running the
        request): 504.
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
            lease = await queue.acquire(priority, max(0.0, deadline - queued_at), avoid, key)
            waited += loop.time() - queued_at
            try:
                response = await self.pool.request(lease.url, method, path, header_items, body)
            except UpstreamTimeoutError as exc:
                lease.release()
                raise UpstreamTimeout(f"model group {queue.group.name!r}: {exc}") from None
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
            return Exchange(response, lease, waited, attempt)
        raise BackendUnreachable(
            f"model group {queue.group.name!r} unreachable after {attempts} attempt(s): {last_error}"
        )


class _ExchangeContext:
    """Runs `Forwarder.send` on entry and closes the exchange on exit (a class: cheaper than a
    generator-based context manager on the hot path)."""

    __slots__ = ("_exchange", "_sending")

    def __init__(self, sending: Coroutine[Any, Any, Exchange]) -> None:
        self._sending = sending
        self._exchange: Exchange | None = None

    async def __aenter__(self) -> Exchange:
        self._exchange = await self._sending
        return self._exchange

    async def __aexit__(self, *exc_info: object) -> None:
        if self._exchange is not None:
            self._exchange.close()
