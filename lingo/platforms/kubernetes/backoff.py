"""Capped exponential backoff with jitter, for talking to an API server that may be away."""

from __future__ import annotations

import random
from collections.abc import Callable


class Backoff:
    """Delays that double from `initial` up to `cap`, each drawn from its upper half (equal jitter),
    so many replicas that lost the API server together do not all come back in the same instant."""

    def __init__(
        self, initial: float = 0.5, cap: float = 30.0, random_fraction: Callable[[], float] = random.random
    ) -> None:
        #: First delay (before jitter).
        self.initial = initial
        #: Largest delay.
        self.cap = cap
        #: Source of jitter in [0, 1); injectable for tests.
        self.random_fraction = random_fraction
        #: Failures since the last `reset()`.
        self.failures = 0

    def next(self) -> float:
        """The delay before the next attempt; each call counts one more failure."""
        ceiling = min(self.cap, self.initial * 2 ** min(self.failures, 32))
        self.failures += 1
        return ceiling / 2 + ceiling / 2 * self.random_fraction()

    def reset(self) -> None:
        """The last attempt succeeded: start again from `initial`."""
        self.failures = 0
