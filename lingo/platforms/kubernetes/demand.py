"""Summing demand across lingo replicas, free of I/O: each peer's last answer, for a short while."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class PeerAnswer:
    """What one peer's `/stats` said, and when."""

    #: Queued + in-flight requests per model group.
    counts: Mapping[str, float]
    #: Monotonic time of the answer.
    at: float


class DemandTable:
    """The last answer of every peer; a peer that stops answering counts with its last value for
    `staleness` seconds, then as 0, so one slow or dead peer neither freezes nor inflates scaling."""

    def __init__(self, staleness: float = 10.0) -> None:
        #: Seconds a peer's last answer keeps counting after it stopped answering.
        self.staleness = staleness
        #: Last answer per peer address.
        self.answers: dict[str, PeerAnswer] = {}

    def record(self, peer: str, counts: Mapping[str, float], now: float) -> None:
        """`peer` answered `counts` at `now`."""
        self.answers[peer] = PeerAnswer(dict(counts), now)

    def total(self, local: Mapping[str, float], peers: Iterable[str], now: float) -> dict[str, float]:
        """`local` plus every current peer's fresh-enough counts; peers no longer listed are forgotten."""
        current = set(peers)
        for gone in set(self.answers) - current:
            del self.answers[gone]
        total = {name: float(count) for name, count in local.items()}
        for peer in current:
            answer = self.answers.get(peer)
            if answer is None or now - answer.at > self.staleness:
                continue
            for name, count in answer.counts.items():
                total[name] = total.get(name, 0.0) + count
        return total


def parse_stats(body: object) -> dict[str, float]:
    """The counts in a peer's `/stats` body `{"activeRequests": {group: n}}`; ValueError if malformed."""
    if not isinstance(body, dict) or not isinstance(body.get("activeRequests"), dict):
        raise ValueError("not a /stats body: missing activeRequests")
    counts: dict[str, float] = {}
    for name, value in body["activeRequests"].items():
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ValueError(f"bad count for {name!r}: {value!r}")
        counts[str(name)] = float(value)
    return counts
