"""Which models a stream's broker backlog is for: pure bookkeeping, no I/O.

A broker tells how many messages wait, not for which model. A stream with `?model=NAME` counts
them all for that model; otherwise they are split in proportion to the models of the messages the
stream received most recently — the best guess of what the waiting ones hold.
"""

from __future__ import annotations

import math
from collections import Counter, deque

#: Received messages whose models set the split.
RECENT_MESSAGES = 200


class BacklogSplit:
    """A stream's backlog as demand per model name."""

    def __init__(self, model: str | None = None, window: int = RECENT_MESSAGES) -> None:
        #: The model every waiting message counts for (`?model=`), None to split by recent models.
        self.model = model
        #: Messages waiting on the broker, as last reported (0 where the broker cannot tell).
        self.total = 0
        self._recent: deque[str] = deque(maxlen=window)
        self._counts: Counter[str] = Counter()

    def received(self, model: str) -> None:
        """A message for `model` was received."""
        if len(self._recent) == self._recent.maxlen:
            oldest = self._recent[0]
            self._counts[oldest] -= 1
            if not self._counts[oldest]:
                del self._counts[oldest]
        self._recent.append(model)
        self._counts[model] += 1

    def demand(self) -> dict[str, int]:
        """Waiting messages per model name; rounded up, so a share is never lost to rounding."""
        if self.total <= 0:
            return {}
        if self.model is not None:
            return {self.model: self.total}
        seen = len(self._recent)
        return {model: math.ceil(self.total * count / seen) for model, count in self._counts.items()}
