"""Autoscaling arithmetic, free of I/O: moving averages and when to change replica counts."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable


class MovingAverage:
    """Mean of the last `size` samples (fewer while the window fills)."""

    def __init__(self, size: int, initial: Iterable[float] = ()) -> None:
        #: Samples kept: window length divided by the sampling interval.
        self.size = max(1, size)
        self._samples: deque[float] = deque(initial, maxlen=self.size)
        self._sum = sum(self._samples)

    def add(self, value: float) -> None:
        if len(self._samples) == self.size:
            self._sum -= self._samples[0]
        self._samples.append(value)
        self._sum += value

    @property
    def value(self) -> float:
        return self._sum / len(self._samples) if self._samples else 0.0

    @property
    def samples(self) -> list[float]:
        """The window's samples, oldest first (what gets persisted across restarts)."""
        return list(self._samples)


def desired_replicas(
    average: float,
    concurrency: int,
    min_replicas: int,
    max_replicas: int,
    active_now: float,
    immediate: float = 0.0,
) -> int:
    """ceil(max(average, immediate) / concurrency) clamped to [min, max]; never 0 while work is
    active now.

    `active_now` guards against a decayed average scaling a model away under requests that are
    still queued for a slow cold start (Lingo #106). `immediate` is demand known to be waiting
    right now (a broker backlog): it scales up at once instead of creeping in through the average.
    """
    wanted = math.ceil(max(average, immediate) / max(1, concurrency) - 1e-9)
    if active_now > 0:
        wanted = max(wanted, 1)
    return max(min_replicas, min(max_replicas, wanted))


class ScaleDecider:
    """Turns a stream of desired counts into replica changes: up at once, down after a delay.

    Scale-down waits until desired stayed below the current count for `delay` seconds, then goes to
    the highest desired count seen during that wait, so a brief dip does not remove replicas.
    """

    def __init__(self, delay: float) -> None:
        #: Seconds desired must stay lower before replicas are removed.
        self.delay = delay
        #: When desired first dropped below the current count, or None.
        self.lower_since: float | None = None
        #: Highest desired count seen since `lower_since`.
        self.lower_peak = 0

    def decide(self, now: float, current: int, desired: int) -> int | None:
        """The new replica count, or None to leave `current` as it is."""
        if desired > current:
            self.lower_since = None
            return desired
        if desired == current:
            self.lower_since = None
            return None
        if self.lower_since is None:
            self.lower_since, self.lower_peak = now, desired
        else:
            self.lower_peak = max(self.lower_peak, desired)
        if now - self.lower_since >= self.delay:
            target = self.lower_peak
            self.lower_since = None
            return target
        return None
