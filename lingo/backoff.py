"""Capped exponential backoff with jitter: the one implementation behind every retry loop in lingo
(batch retries and receive loops, Kubernetes watches, leader election, API calls)."""

from __future__ import annotations

import random
from collections.abc import Callable


def backoff_delay(
    attempt: int,
    base: float,
    cap: float,
    jitter: float = 0.5,
    random_fraction: Callable[[], float] = random.random,
) -> float:
    """Seconds before retry `attempt` (1, 2, …): `base·2^(attempt-1)` capped at `cap`, then drawn from
    its upper `jitter` share, so many clients that failed together do not retry in the same instant."""
    ceiling = min(cap, base * 2 ** max(0, min(attempt - 1, 62)))
    return ceiling * (1 - jitter) + ceiling * jitter * random_fraction()


class Backoff:
    """Counts consecutive failures; the count sets the pause before the next try."""

    def __init__(
        self,
        initial: float = 0.5,
        cap: float = 30.0,
        jitter: float = 0.5,
        random_fraction: Callable[[], float] = random.random,
    ) -> None:
        #: First delay (before jitter).
        self.initial = initial
        #: Largest delay.
        self.cap = cap
        #: Share of each delay that is random (0: none; 0.5: the upper half of the range).
        self.jitter = jitter
        #: Source of jitter in [0, 1); injectable for tests.
        self.random_fraction = random_fraction
        #: Failures since the last `reset()`.
        self.failures = 0

    def next(self) -> float:
        """Count one more failure; return the pause it calls for."""
        self.failures += 1
        return self.current()

    def current(self) -> float:
        """The pause the current streak of failures calls for (0 without failures)."""
        if not self.failures:
            return 0.0
        return backoff_delay(self.failures, self.initial, self.cap, self.jitter, self.random_fraction)

    def reset(self) -> None:
        """The last attempt succeeded: start again from `initial`."""
        self.failures = 0
