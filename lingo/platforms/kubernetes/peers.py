"""Reading the other lingo replicas' `/stats`, so the leader scales on the demand of all of them."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence

import aiohttp

from lingo.platforms.kubernetes.demand import DemandTable, parse_stats

log = logging.getLogger(__name__)


class PeerStats:
    """Fetches every peer's `/stats` concurrently (each bounded by `timeout`) and sums them with the
    local counts; peers that do not answer count as their last answer for a while (`DemandTable`)."""

    def __init__(
        self,
        *,
        timeout: float = 1.0,
        staleness: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        #: Seconds one peer may take to answer.
        self.timeout = timeout
        #: The last answers and the staleness rule.
        self.table = DemandTable(staleness)
        #: Monotonic clock; injectable for tests.
        self.clock = clock
        self._session: aiohttp.ClientSession | None = None
        self._failing: set[str] = set()

    async def total(self, local: Mapping[str, float], peers: Sequence[str]) -> dict[str, float]:
        """`local` plus the counts of every peer (`host:port`) in `peers`."""
        self._failing &= set(peers)
        if peers:
            if self._session is None:
                self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
            await asyncio.gather(*(self._fetch(self._session, peer) for peer in peers))
        return self.table.total(local, peers, self.clock())

    async def _fetch(self, session: aiohttp.ClientSession, peer: str) -> None:
        try:
            async with session.get(f"http://{peer}/stats") as response:
                response.raise_for_status()
                counts = parse_stats(await response.json(content_type=None))
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:
            if peer not in self._failing:
                self._failing.add(peer)
                log.warning(
                    "peer did not answer /stats; using its last counts for a while",
                    extra={"peer": peer, "error": f"{type(error).__name__}: {error}".rstrip(": ")},
                )
            return
        if peer in self._failing:
            self._failing.discard(peer)
            log.info("peer answers /stats again", extra={"peer": peer})
        self.table.record(peer, counts, self.clock())

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
