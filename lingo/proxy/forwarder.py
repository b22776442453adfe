"""Sends one request to a model's endpoints through the shared queue, with retries.

The HTTP proxy and the batch handler both call `Forwarder.exchange`: the one path from a request
to a backend response, so both kinds of traffic are queued, balanced, retried and counted alike.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp

from lingo.errors import BackendUnreachable
from lingo.queue import Lease, ModelQueue, Priority

log = logging.getLogger(__name__)

#: Backend statuses worth another endpoint: the backend is overloaded, restarting or gone.
RETRY_STATUSES = frozenset({502, 503, 504})
#: Headers aiohttp would add by itself; the client's own (or none) are sent instead.
_SKIP_AUTO_HEADERS = ("Accept", "Accept-Encoding", "Content-Type", "User-Agent")


@dataclass
class Exchange:
    """A backend response being read, and the endpoint slot it holds until the exchange ends."""

    #: The backend's response; its body has not been read yet.
    response: aiohttp.ClientResponse
    #: The endpoint slot; released when the exchange ends.
    lease: Lease
    #: Seconds spent waiting in the queue (all attempts).
    waited: float
    #: Attempts made, 1 when the first one answered.
    attempts: int


def new_session(limit: int = 0) -> aiohttp.ClientSession:
    """The upstream connection pool.

    The keep-alive is shorter than common model servers' idle timeouts (uvicorn: 5 s), so lingo
    drops a pooled connection before the backend does, instead of reusing one it is closing.
    """
    connector = aiohttp.TCPConnector(limit=limit, keepalive_timeout=4.0, ttl_dns_cache=10)
    return aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
        skip_auto_headers=_SKIP_AUTO_HEADERS,
    )


class Forwarder:
    """Queue, pick, send, retry: gets a backend response for one request."""

    def __init__(self, session: aiohttp.ClientSession, retries: int, max_wait: float) -> None:
        #: Shared upstream connection pool.
        self.session = session
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
        headers: Mapping[str, str],
        body: bytes,
        priority: Priority,
        timeout: float | None = None,
    ) -> AsyncIterator[Exchange]:
        """Yield the backend's response; the slot is held until the `async with` block ends.

        Retries resend the whole body to a freshly picked endpoint, only before any byte of a
        response was handed to the caller. The last attempt's 502/503/504 passes through as it is.
        """
        loop = asyncio.get_running_loop()
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
                response = await self.session.request(
                    method, lease.url + path, headers=headers, data=body, allow_redirects=False
                )
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError) as exc:
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
