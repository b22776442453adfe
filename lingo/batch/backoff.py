"""Exponential backoff with jitter, and a streak of consecutive errors that sets the next pause."""

from __future__ import annotations

import random


def backoff_delay(attempt: int, base: float, cap: float, jitter: float = 0.2) -> float:
    """Seconds to wait before retry number `attempt` (1, 2, …): `base·2^(attempt-1)`, capped, ±jitter."""
    delay = min(cap, base * 2 ** max(0, min(attempt - 1, 62)))
    return max(0.0, delay * (1 + random.uniform(-jitter, jitter)))


class ErrorStreak:
    """Counts consecutive failures of one kind; the count sets how long to pause before trying again."""

    def __init__(self, base: float, cap: float) -> None:
        #: Pause after the first failure, in seconds.
        self.base = base
        #: Longest pause, in seconds.
        self.cap = cap
        #: Failures since the last success.
        self.count = 0

    def failed(self) -> float:
        """Record a failure; return the pause it calls for."""
        self.count += 1
        return self.delay()

    def succeeded(self) -> None:
        self.count = 0

    def delay(self) -> float:
        """The pause the current streak calls for (0 without failures)."""
        return backoff_delay(self.count, self.base, self.cap) if self.count else 0.0
