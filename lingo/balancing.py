"""Which endpoint gets a request: the choosers a `ModelQueue` delegates its pick to.

Pure decisions, no I/O. Both choosers answer `choose(endpoints, limit, key, avoid)` with an endpoint
that has a free slot (fewer than `limit` in flight), or None when every endpoint is full, so the
queue waits exactly when it did before. `avoid` (the endpoint a retry just failed on) is taken only
when nothing else is free.

- `LeastLoad`: the fewest in flight; the scan start rotates so ties spread.
- `PrefixAware`: cache-aware, within a load bound. An endpoint is *within the bound* when, counting
  the request being placed, its in-flight count stays at most ceil(mean in flight x load factor).
  Among those: the endpoint whose recent routing covers the longest prefix of the prompt's blocks
  (when the match goes beyond the shared set-up); else the prompt's *home* on a consistent-hash
  ring (walking the ring to the first endpoint within the bound), which depends only on the
  endpoint URLs so several lingo replicas agree without sharing state; a `X-Session-Id` goes to its
  home the same way. When no endpoint is within the bound: the least-loaded one, never the
  overloaded owner.
"""

from __future__ import annotations

import logging
import math
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from hashlib import blake2b
from typing import Protocol, TypeVar

from lingo.models import LEAST_LOAD, PREFIX, ModelGroup
from lingo.prompt_key import RoutingKey

log = logging.getLogger(__name__)

#: Points per endpoint on the consistent-hash ring (more points, evener shares).
VIRTUAL_NODES = 128
#: Block hashes remembered per endpoint (2 MiB of prompt, about 1 MB of memory); least recent go first.
INDEX_BLOCKS = 8192

#: Decision reasons, the `reason` label of `lingo_routing_decisions_total`.
REASONS = ("prefix", "home", "session", "least_load", "overflow")


class Slot(Protocol):
    """What a chooser reads of an endpoint."""

    url: str
    in_flight: int


E = TypeVar("E", bound=Slot)


class Chooser(Protocol):
    """One model group's endpoint choice."""

    #: True when the queue should be given a `RoutingKey` for each request.
    wants_key: bool

    def choose(
        self, endpoints: Sequence[E], limit: int, key: RoutingKey | None, avoid: str | None
    ) -> E | None:
        """An endpoint with a free slot under `limit`, or None when all are full."""

    def set_endpoints(self, urls: Iterable[str]) -> None:
        """The endpoints in rotation changed; forget what is known about those that left."""


def make_chooser(group: ModelGroup, decisions: dict[str, int]) -> Chooser:
    """The chooser `group.load_balancing` names; decisions are counted into `decisions`."""
    if group.load_balancing == PREFIX:
        return PrefixAware(group.name, group.load_factor, decisions)
    if group.load_balancing != LEAST_LOAD:
        raise ValueError(f"unknown load balancing {group.load_balancing!r}")
    return LeastLoad(group.name, decisions)


class LeastLoad:
    """The endpoint with the fewest requests in flight and a free slot."""

    wants_key = False

    def __init__(self, model: str, decisions: dict[str, int]) -> None:
        #: Group name (for logs).
        self.model = model
        #: Count of decisions by reason, shared with the queue's metrics.
        self.decisions = decisions
        self._rotation = 0

    def set_endpoints(self, urls: Iterable[str]) -> None:
        return None

    def choose(
        self, endpoints: Sequence[E], limit: int, key: RoutingKey | None, avoid: str | None
    ) -> E | None:
        chosen = self.least_loaded(endpoints, limit, avoid)
        if chosen is not None:
            self.decisions["least_load"] = self.decisions.get("least_load", 0) + 1
        return chosen

    def least_loaded(self, endpoints: Sequence[E], limit: int, avoid: str | None) -> E | None:
        """Fewest in flight below `limit`, preferring one other than `avoid`; ties rotate."""
        count = len(endpoints)
        if count == 0:
            return None
        best: E | None = None
        fallback: E | None = None
        # Rotate the scan start so ties spread across endpoints instead of piling on the first.
        self._rotation = (self._rotation + 1) % count
        for i in range(count):
            endpoint = endpoints[(self._rotation + i) % count]
            if endpoint.in_flight >= limit:
                continue
            if endpoint.url == avoid:
                fallback = endpoint
                continue
            if best is None or endpoint.in_flight < best.in_flight:
                best = endpoint
        return best or fallback


class HashRing:
    """Consistent hashing of endpoint URLs: adding or removing one endpoint moves ~1/N of the homes."""

    def __init__(self, urls: Iterable[str] = (), virtual_nodes: int = VIRTUAL_NODES) -> None:
        #: Points per endpoint.
        self.virtual_nodes = virtual_nodes
        #: The endpoint URLs on the ring.
        self.urls: frozenset[str] = frozenset()
        self._points: list[int] = []
        self._owners: list[str] = []
        self.set_urls(urls)

    def set_urls(self, urls: Iterable[str]) -> None:
        self.urls = frozenset(urls)
        ring = sorted(
            (int.from_bytes(blake2b(f"{url}#{i}".encode(), digest_size=8).digest(), "little"), url)
            for url in self.urls
            for i in range(self.virtual_nodes)
        )
        self._points = [point for point, _ in ring]
        self._owners = [url for _, url in ring]

    def owner(self, point: int) -> str | None:
        """The endpoint owning `point`: the first one clockwise."""
        if not self._owners:
            return None
        return self._owners[bisect_left(self._points, point) % len(self._owners)]

    def walk(self, point: int) -> Iterable[str]:
        """Endpoints clockwise from `point`, each once."""
        owners = self._owners
        count = len(owners)
        if not count:
            return
        start = bisect_left(self._points, point)
        seen: set[str] = set()
        for i in range(count):
            url = owners[(start + i) % count]
            if url not in seen:
                seen.add(url)
                yield url
                if len(seen) == len(self.urls):
                    return


class PrefixAware:
    """Cache-aware choice within a load bound (see the module docs)."""

    wants_key = True

    def __init__(
        self, model: str, load_factor: float, decisions: dict[str, int], index_blocks: int = INDEX_BLOCKS
    ) -> None:
        #: Group name (for logs).
        self.model = model
        #: An endpoint may carry up to ceil(mean in flight x load_factor) requests.
        self.load_factor = load_factor
        #: Count of decisions by reason, shared with the queue's metrics.
        self.decisions = decisions
        #: Block hashes remembered per endpoint.
        self.index_blocks = index_blocks
        #: The consistent-hash ring of the endpoints in rotation.
        self.ring = HashRing()
        #: Recently routed block hashes per endpoint URL, least recent first.
        self.index: dict[str, OrderedDict[int, None]] = {}
        self._least = LeastLoad(model, decisions)

    def set_endpoints(self, urls: Iterable[str]) -> None:
        wanted = set(urls)
        if wanted != self.ring.urls:
            self.ring.set_urls(wanted)
        for url in [url for url in self.index if url not in wanted]:
            del self.index[url]

    def bound(self, endpoints: Sequence[Slot]) -> int:
        """Most requests one endpoint may carry, counting the request being placed."""
        total = sum(endpoint.in_flight for endpoint in endpoints) + 1
        return math.ceil(total * self.load_factor / len(endpoints) - 1e-9)

    def choose(
        self, endpoints: Sequence[E], limit: int, key: RoutingKey | None, avoid: str | None
    ) -> E | None:
        if key is None:
            return self._least.choose(endpoints, limit, avoid=avoid, key=None)
        if not endpoints:
            return None
        bound = min(self.bound(endpoints), limit)
        within = {e.url: e for e in endpoints if e.in_flight < bound and e.url != avoid}
        chosen: E | None = None
        reason = "overflow"
        if within:
            if key.session:
                chosen, reason = self._home(key.home, within), "session"
            else:
                owner = within.get(self.ring.owner(key.home) or "")
                chosen, matched = self._longest(key.blocks, within, owner)
                if chosen is not owner and matched > key.preamble_blocks:
                    reason = "prefix"
                else:
                    chosen, reason = owner or self._home(key.home, within), "home"
        if chosen is None:
            chosen = self._least.least_loaded(endpoints, limit, avoid)
            if chosen is None:
                return None
        self.decisions[reason] = self.decisions.get(reason, 0) + 1
        if key.blocks:
            self._remember(chosen.url, key.blocks)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "routed",
                extra={"model": self.model, "endpoint": chosen.url, "reason": reason, "bound": bound},
            )
        return chosen

    def _home(self, point: int, within: dict[str, E]) -> E | None:
        for url in self.ring.walk(point):
            endpoint = within.get(url)
            if endpoint is not None:
                return endpoint
        return None

    def _longest(self, blocks: tuple[int, ...], within: dict[str, E], home: E | None) -> tuple[E | None, int]:
        """The endpoint whose index covers the most leading blocks; on ties the ring owner `home` (so
        that several lingo replicas agree), else the fewest in flight."""
        best: E | None = None
        best_length = 0
        ordered = within.items() if home is None else [(home.url, home), *within.items()]
        for url, endpoint in ordered:
            index = self.index.get(url)
            if not index:
                continue
            length = 0
            for block in blocks:
                if block not in index:
                    break
                length += 1
            if length > best_length or (
                length == best_length
                and best is not None
                and best is not home
                and endpoint.in_flight < best.in_flight
            ):
                best, best_length = endpoint, length
        return best, best_length

    def _remember(self, url: str, blocks: tuple[int, ...]) -> None:
        if url not in self.ring.urls:
            return
        index = self.index.get(url)
        if index is None:
            index = self.index[url] = OrderedDict()
        # Last block first: the first blocks end up most recent, so eviction cuts prefixes from the
        # tail (as a model server's cache does) rather than leaving tails without their head.
        for block in reversed(blocks):
            if block in index:
                index.move_to_end(block)
            else:
                index[block] = None
        while len(index) > self.index_blocks:
            index.popitem(last=False)
