"""The endpoint choosers, without sockets: load bound, prefix following, homes, overflow, churn."""

from __future__ import annotations

import asyncio
import collections
import random

from lingo.balancing import HashRing, LeastLoad, PrefixAware
from lingo.models import LEAST_LOAD, PREFIX, ModelGroup
from lingo.prompt_key import RoutingKey, routing_key
from lingo.queue import Endpoint, Lease, ModelQueue, Priority

SYSTEM = "Shared system prompt for every conversation. " * 30


def endpoints(*loads: int) -> list[Endpoint]:
    out = []
    for i, load in enumerate(loads):
        endpoint = Endpoint(f"http://e{i}")
        endpoint.in_flight = load
        out.append(endpoint)
    return out


def chooser(urls: list[Endpoint], load_factor: float = 1.25) -> PrefixAware:
    prefix = PrefixAware("m", load_factor, {})
    prefix.set_endpoints(e.url for e in urls)
    return prefix


def conversation(name: str, turns: int = 1) -> RoutingKey:
    messages = [{"role": "system", "content": SYSTEM}]
    for turn in range(turns):
        messages.append({"role": "user", "content": f"{name}: question {turn} " * 8})
        if turn < turns - 1:
            messages.append({"role": "assistant", "content": f"answer {turn} " * 8})
    key = routing_key("/v1/chat/completions", {"model": "m", "messages": messages}, "m")
    assert key is not None
    return key


def test_bound_counts_the_request_being_placed() -> None:
    prefix = chooser(endpoints(0, 0, 0, 0))
    assert prefix.bound(endpoints(0, 0, 0, 0)) == 1  # ceil(1 x 1.25 / 4)
    assert prefix.bound(endpoints(3, 3, 3, 2)) == 4  # ceil(12 x 1.25 / 4) = ceil(3.75)
    assert prefix.bound(endpoints(4, 4, 4, 3)) == 5  # ceil(16 x 1.25 / 4)


def test_turns_of_a_conversation_follow_the_endpoint_that_served_the_first_turn() -> None:
    pool = endpoints(0, 0, 0, 0)
    prefix = chooser(pool)
    first = prefix.choose(pool, 10, conversation("ada", 1), None)
    assert first is not None
    for turns in range(2, 6):
        assert prefix.choose(pool, 10, conversation("ada", turns), None) is first
    assert prefix.decisions == {"home": 5}, "the conversation's cache is at its home"


def test_a_conversation_that_overflowed_is_followed_where_its_cache_is() -> None:
    pool = endpoints(0, 0, 0, 0)
    prefix = chooser(pool)
    key = conversation("bob", 1)
    home = prefix.choose(pool, 10, key, None)
    assert home is not None
    home.in_flight = 5  # home is busy: over ceil(6 x 1.25 / 4) = 2
    elsewhere = prefix.choose(pool, 10, conversation("bob", 2), None)
    assert elsewhere is not None and elsewhere is not home
    home.in_flight = 0
    # Turn 3's longest cached prefix is on `elsewhere` (turn 2 went there), not at home.
    assert prefix.choose(pool, 10, conversation("bob", 3), None) is elsewhere
    assert prefix.decisions["prefix"] == 1


def test_an_overloaded_owner_is_never_chosen_and_no_endpoint_goes_above_the_bound() -> None:
    pool = endpoints(0, 0, 0, 0)
    prefix = chooser(pool)
    hot = conversation("hot", 3)
    for _ in range(200):
        total = sum(e.in_flight for e in pool) + 1
        bound = -(-total * 5 // (4 * len(pool)))  # ceil(total x 1.25 / n) in integers
        chosen = prefix.choose(pool, 1000, hot, None)
        assert chosen is not None and chosen.in_flight + 1 <= bound
        chosen.in_flight += 1
    assert max(e.in_flight for e in pool) <= 63  # ceil(200 x 1.25 / 4) = 63; all four carry the hot prefix
    assert min(e.in_flight for e in pool) >= 40


def test_when_no_endpoint_is_within_the_bound_the_least_loaded_is_chosen() -> None:
    pool = endpoints(9, 0, 9)
    prefix = chooser(pool)
    key = conversation("carol")
    # The only endpoint within the bound is the one a retry must avoid: overflow to the least loaded
    # of the others that still has a slot, never the owner that is over the bound.
    chosen = prefix.choose(pool, 10, key, avoid=pool[1].url)
    assert chosen is not None and chosen.in_flight == 9
    assert prefix.decisions == {"overflow": 1}
    pool[0].in_flight = 10
    assert prefix.choose(pool, 10, key, avoid=pool[1].url) is pool[2]
    assert prefix.choose(endpoints(10, 10), 10, key, None) is None, "all full: the request waits"


def test_session_id_pins_to_the_ring_home_under_the_bound() -> None:
    pool = endpoints(0, 0, 0)
    prefix = chooser(pool)
    first = RoutingKey(conversation("dan", 1).blocks, 0, 12345, session=True)
    later = RoutingKey(conversation("dan", 4).blocks, 0, 12345, session=True)
    home = prefix.choose(pool, 10, first, None)
    assert prefix.choose(pool, 10, later, None) is home
    assert home is not None and home.url == prefix.ring.owner(12345)
    home.in_flight = 4
    assert prefix.choose(pool, 10, later, None) is not home
    assert prefix.decisions == {"session": 3}


def test_distinct_conversations_spread_over_their_homes() -> None:
    pool = endpoints(0, 0, 0, 0)
    prefix = chooser(pool)
    spread = collections.Counter()
    for i in range(400):
        chosen = prefix.choose(pool, 10, conversation(f"user-{i}"), None)
        assert chosen is not None
        spread[chosen.url] += 1
    assert len(spread) == 4 and min(spread.values()) > 50, spread


def test_adding_an_endpoint_moves_only_about_one_in_n_homes() -> None:
    urls = [f"http://10.0.0.{i}:8000" for i in range(4)]
    before, after = HashRing(urls), HashRing([*urls, "http://10.0.0.9:8000"])
    rng = random.Random(7)
    points = [rng.getrandbits(64) for _ in range(5000)]
    moved = [p for p in points if before.owner(p) != after.owner(p)]
    assert all(after.owner(p) == "http://10.0.0.9:8000" for p in moved), "homes only move to the new endpoint"
    assert 0.12 < len(moved) / len(points) < 0.28  # ~1/5
    assert HashRing(reversed(urls)).owner(points[0]) == before.owner(points[0]), "order does not matter"


def test_index_of_an_endpoint_that_leaves_is_forgotten_and_bounded() -> None:
    pool = endpoints(0, 0)
    prefix = PrefixAware("m", 1.25, {}, index_blocks=50)
    prefix.set_endpoints(e.url for e in pool)
    for i in range(30):
        chosen = prefix.choose(pool, 10, conversation(f"c{i}"), None)
        assert chosen is not None
    assert all(len(index) <= 50 for index in prefix.index.values())
    prefix.set_endpoints([pool[0].url])
    assert set(prefix.index) <= {pool[0].url}


def test_least_load_ignores_the_key_and_rotates_ties() -> None:
    pool = endpoints(0, 0, 0)
    least = LeastLoad("m", {})
    key = conversation("eve")
    picked = {least.choose(pool, 10, key, None).url for _ in range(3)}  # type: ignore[union-attr]
    assert len(picked) == 3
    assert least.decisions == {"least_load": 3}


async def test_counts_stay_exact_when_endpoints_flap_while_requests_run() -> None:
    queue = ModelQueue(ModelGroup("m", ("m",), concurrency=4, load_balancing=PREFIX), max_queue=10_000)
    urls = [f"http://e{i}" for i in range(4)]
    queue.set_endpoints(urls)
    rng = random.Random(11)
    held: list[Lease] = []

    def check() -> None:
        for endpoint in [*queue.endpoints.values(), *queue.retired.values()]:
            assert endpoint.in_flight >= 0
        running = sum(e.in_flight for e in [*queue.endpoints.values(), *queue.retired.values()])
        # Leases handed to waiters that have not resumed yet are counted but not in `held` yet.
        assert running == queue.in_flight >= sum(not lease.released for lease in held)

    async def request(i: int) -> None:
        key = conversation(f"c{i % 7}", 1 + i % 3)
        lease = await queue.acquire(Priority.DEFAULT, 10, key=key)
        held.append(lease)
        await asyncio.sleep(rng.random() * 0.002)
        lease.release()
        lease.release()  # twice is harmless

    tasks = [asyncio.create_task(request(i)) for i in range(400)]
    for _ in range(300):
        # An endpoint flaps: removed and re-added (sometimes twice) while requests run on it.
        present = [u for u in urls if rng.random() < 0.7] or [urls[0]]
        queue.set_endpoints(present)
        check()
        await asyncio.sleep(0)
        queue.set_endpoints(urls)
        check()
        await asyncio.sleep(0)
        if all(t.done() for t in tasks):
            break
    await asyncio.wait_for(asyncio.gather(*tasks), 20)
    check()
    assert queue.in_flight == 0 and not queue.retired
    assert all(e.in_flight == 0 for e in queue.endpoints.values())
    assert sum(queue.routing_decisions.values()) == 400


async def test_group_change_to_least_load_swaps_the_chooser_and_keeps_the_counts() -> None:
    queue = ModelQueue(ModelGroup("m", ("m",), load_balancing=PREFIX), max_queue=10)
    queue.set_endpoints(["http://a", "http://b"])
    (await queue.acquire(Priority.DEFAULT, 1, key=conversation("f"))).release()
    queue.group = ModelGroup("m", ("m",), load_balancing=LEAST_LOAD)
    assert isinstance(queue.chooser, LeastLoad)
    (await queue.acquire(Priority.DEFAULT, 1, key=conversation("f"))).release()
    assert queue.routing_decisions == {"home": 1, "least_load": 1}
