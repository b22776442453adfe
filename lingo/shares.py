"""How many of an endpoint's slots one lingo replica, and batch work within it, may fill.

Pure arithmetic. Every lingo replica counts only its own requests, so each endpoint's `concurrency`
is split between the replicas: the shares of one endpoint add up to exactly `concurrency`, so the
pod never sees more than that at once — except when there are fewer slots in all than lingo
replicas, where a replica keeps one slot rather than none.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable


def endpoint_shares(concurrency: int, rank: int, replicas: int, urls: Iterable[str]) -> dict[str, int]:
    """Slots on each endpoint for lingo replica `rank` (0-based, in an order all replicas agree on).

    Each endpoint's `concurrency // replicas` slots go to every replica; its remainder slots go to
    `concurrency % replicas` replicas in a row, starting at a position derived from the endpoint's
    URL. The remainder so spreads over the replicas across pods, and a pod coming or going changes
    no other pod's split. A replica left without any slot keeps one on one endpoint.
    """
    urls = list(urls)
    if replicas <= 1:
        return dict.fromkeys(urls, concurrency)
    base, extra = divmod(concurrency, replicas)
    shares = {}
    for url in urls:
        start = zlib.crc32(url.encode()) % replicas
        shares[url] = base + (1 if (rank - start) % replicas < extra else 0)
    if urls and not any(shares.values()):
        shares[sorted(urls)[rank % len(urls)]] = 1
    return shares


def batch_limit(slots: int, max_share: float) -> int:
    """Batch requests an endpoint with `slots` slots (for this replica) may run at once.

    `max_share` of the slots, rounded down, so the rest stays free for interactive arrivals; at
    least one, or batch work would never run.
    """
    return max(1, math.floor(slots * max_share + 1e-9))
