"""How many of an endpoint's slots one lingo replica, and batch work within it, may fill.

Pure arithmetic; the queue asks it on every pick. Every lingo replica counts only its own requests,
so the endpoint's `concurrency` is split between the replicas: shares differ by at most one and add
up to exactly `concurrency`, so the pod never sees more than `concurrency` at once — except when
there are more lingo replicas than slots, where each replica keeps one slot rather than none.
"""

from __future__ import annotations

import math


def replica_share(concurrency: int, rank: int, replicas: int) -> int:
    """Slots per endpoint for lingo replica `rank` (0-based, in an order all replicas agree on).

    `concurrency // replicas` each, the remainder to the lowest ranks; never fewer than one.
    """
    if replicas <= 1:
        return concurrency
    base, extra = divmod(concurrency, replicas)
    return max(1, base + (1 if rank < extra else 0))


def batch_limit(share: int, max_share: float) -> int:
    """Requests in flight on an endpoint below which batch work may start another one there.

    Batch only fills the endpoint up to `max_share` of this replica's slots, so at least the rest
    stays free for interactive arrivals; it always may use one slot, or it would never run.
    """
    return max(1, math.floor(share * max_share + 1e-9))
