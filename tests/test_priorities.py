"""Priority classes in the queue, without sockets: order, flex wait, batch share, aging, replica shares."""

from __future__ import annotations

import asyncio

import pytest

from lingo.config import ConfigError, load
from lingo.errors import FlexUnavailable, NoEndpoint
from lingo.models import ModelGroup
from lingo.priority import request_class
from lingo.queue import ClassPolicy, Lease, ModelQueue, Priority
from lingo.shares import batch_limit, endpoint_shares


def make_queue(concurrency: int = 1, endpoints: int = 1, **policy: float) -> ModelQueue:
    queue = ModelQueue(ModelGroup("m", ("m",), concurrency=concurrency), 1000, policy=ClassPolicy(**policy))
    queue.set_endpoints(f"http://e{i}" for i in range(endpoints))
    return queue


async def settle() -> None:
    """Let every created task run up to its first wait."""
    for _ in range(3):
        await asyncio.sleep(0)


async def test_waiters_are_served_by_class_then_in_arrival_order_within_a_class() -> None:
    queue = make_queue(concurrency=1)
    held = await queue.acquire(Priority.DEFAULT, 5)
    order: list[str] = []

    async def wait(name: str, priority: Priority) -> None:
        lease = await queue.acquire(priority, 5)
        order.append(name)
        lease.release()

    arrivals = [
        ("batch-1", Priority.BATCH),
        ("flex-1", Priority.FLEX),
        ("default-1", Priority.DEFAULT),
        ("priority-1", Priority.PRIORITY),
        ("batch-2", Priority.BATCH),
        ("default-2", Priority.DEFAULT),
        ("flex-2", Priority.FLEX),
        ("priority-2", Priority.PRIORITY),
    ]
    tasks = []
    for name, priority in arrivals:
        tasks.append(asyncio.create_task(wait(name, priority)))
        await settle()
    assert [queue.queued_by(p) for p in Priority] == [2, 2, 2, 2]
    held.release()
    await asyncio.gather(*tasks)
    assert order == [
        "priority-1",
        "priority-2",
        "default-1",
        "default-2",
        "flex-1",
        "flex-2",
        "batch-1",
        "batch-2",
    ]


async def test_a_flex_request_without_a_slot_is_refused_with_429_after_the_flex_wait() -> None:
    queue = make_queue(concurrency=1, flex_max_wait=0.1)
    held = await queue.acquire(Priority.DEFAULT, 5)
    default = asyncio.create_task(queue.acquire(Priority.DEFAULT, 5))
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(FlexUnavailable) as refused:
        await queue.acquire(Priority.FLEX, 5)
    assert 0.1 <= loop.time() - started < 1.0
    assert refused.value.status == 429 and refused.value.retry_after
    assert queue.queued_by(Priority.FLEX) == 0
    assert not default.done(), "default requests keep waiting up to their own bound"
    held.release()
    (await default).release()


async def test_a_flex_request_gets_a_slot_that_frees_within_the_flex_wait() -> None:
    queue = make_queue(concurrency=1, flex_max_wait=5)
    held = await queue.acquire(Priority.DEFAULT, 5)
    flex = asyncio.create_task(queue.acquire(Priority.FLEX, 5))
    await settle()
    held.release()
    (await flex).release()


async def test_a_shorter_overall_wait_than_the_flex_wait_ends_in_the_usual_503() -> None:
    queue = make_queue(concurrency=1, endpoints=0, flex_max_wait=10)
    with pytest.raises(NoEndpoint):
        await queue.acquire(Priority.FLEX, 0.05)


async def test_a_saturating_batch_leaves_room_so_an_interactive_arrival_gets_a_slot_at_once() -> None:
    queue = make_queue(concurrency=4, endpoints=2, batch_max_share=0.75)
    batch = [asyncio.create_task(queue.acquire(Priority.BATCH, 5)) for _ in range(50)]
    await settle()
    # Without interactive traffic batch fills its whole share: 3 of 4 slots on each endpoint.
    assert queue.in_flight == 6 and queue.queued_by(Priority.BATCH) == 44
    assert {queue.in_flight_on(url) for url in queue.endpoints} == {3}
    arrivals: list[Lease] = []
    for priority in (Priority.PRIORITY, Priority.DEFAULT):
        arrivals.append(await asyncio.wait_for(queue.acquire(priority, 5), 0.01))
    assert queue.in_flight == 8
    # A finished batch request hands its slot to the next batch waiter, never past the share.
    next(task for task in batch if task.done()).result().release()
    await settle()
    assert queue.in_flight == 8 and queue.queued_by(Priority.BATCH) == 43
    for lease in arrivals:
        lease.release()
    await settle()
    assert queue.in_flight == 6, "batch does not take the slots interactive requests gave back"
    for task in batch:
        task.cancel()
    await asyncio.gather(*batch, return_exceptions=True)


async def test_with_a_batch_share_of_one_batch_fills_every_slot_and_interactive_work_waits() -> None:
    queue = make_queue(concurrency=4, endpoints=1, batch_max_share=1.0)
    batch = [asyncio.create_task(queue.acquire(Priority.BATCH, 5)) for _ in range(10)]
    await settle()
    assert queue.in_flight == 4
    interactive = asyncio.create_task(queue.acquire(Priority.DEFAULT, 5))
    await settle()
    assert not interactive.done()
    next(task for task in batch if task.done()).result().release()
    (await asyncio.wait_for(interactive, 1)).release()
    for task in batch:
        task.cancel()
    await asyncio.gather(*batch, return_exceptions=True)


async def test_batch_always_gets_one_slot_however_small_the_share() -> None:
    queue = make_queue(concurrency=1, batch_max_share=0.1)
    lease = await asyncio.wait_for(queue.acquire(Priority.BATCH, 5), 0.01)
    lease.release()


async def test_a_waiter_moves_up_a_class_for_each_aging_period_it_waited() -> None:
    aging = 0.2
    queue = make_queue(concurrency=1, aging=aging)
    held = await queue.acquire(Priority.DEFAULT, 5)
    order: list[str] = []

    async def wait(name: str, priority: Priority) -> None:
        lease = await queue.acquire(priority, 10)
        order.append(name)
        lease.release()

    old_flex = asyncio.create_task(wait("flex", Priority.FLEX))
    # The passing of time is what is tested here: two aging periods lift flex to priority's level.
    await asyncio.sleep(2 * aging + 0.05)
    fresh = [asyncio.create_task(wait(f"priority-{i}", Priority.PRIORITY)) for i in range(3)]
    await settle()
    held.release()
    await asyncio.gather(old_flex, *fresh)
    assert order[0] == "flex", "the older waiter of an aged class goes first"
    assert order[1:] == ["priority-0", "priority-1", "priority-2"]


async def test_a_steady_stream_of_priority_requests_does_not_starve_batch() -> None:
    aging = 0.05
    queue = make_queue(concurrency=1, aging=aging)
    loop = asyncio.get_running_loop()
    held = await queue.acquire(Priority.PRIORITY, 5)
    batch = asyncio.create_task(queue.acquire(Priority.BATCH, 10))
    started = loop.time()
    stream: list[asyncio.Task[Lease]] = [asyncio.create_task(queue.acquire(Priority.PRIORITY, 10))]
    await settle()
    # Every time the slot frees, priority requests are waiting — and a new one arrives each time.
    while not batch.done() and loop.time() - started < 5:
        stream.append(asyncio.create_task(queue.acquire(Priority.PRIORITY, 10)))
        await settle()
        held.release()
        await settle()
        running = [task.result() for task in stream if task.done() and not task.result().released]
        if running:
            held = running[0]
        await asyncio.sleep(aging / 5)  # the time one request takes
    assert batch.done(), "batch starved behind the priority stream"
    # Three classes below priority: served after about three aging periods, not at LINGO_MAX_WAIT.
    assert loop.time() - started < 3 * aging + 1.0
    (await batch).release()
    held.release()
    for task in stream:
        task.cancel()
    await asyncio.gather(*stream, return_exceptions=True)


async def test_an_aged_batch_waiter_still_keeps_to_the_batch_share() -> None:
    aging = 0.05
    queue = make_queue(concurrency=4, batch_max_share=0.5, aging=aging)
    batch = [asyncio.create_task(queue.acquire(Priority.BATCH, 10)) for _ in range(3)]
    await settle()
    interactive = [await queue.acquire(Priority.DEFAULT, 1) for _ in range(2)]
    assert queue.in_flight == 4 and queue.queued_by(Priority.BATCH) == 1
    await asyncio.sleep(4 * aging)  # the batch waiter now ranks above any fresh request
    waiting = asyncio.create_task(queue.acquire(Priority.FLEX, 10))
    await settle()
    interactive[0].release()
    lease = await asyncio.wait_for(waiting, 1)
    assert queue.queued_by(Priority.BATCH) == 1, "the freed slot is not batch's to take"
    for held in (lease, interactive[1]):
        held.release()
    for task in batch:
        task.cancel()
    await asyncio.gather(*batch, return_exceptions=True)


def test_each_endpoints_shares_add_up_to_its_cap_and_differ_by_at_most_one() -> None:
    urls = [f"http://10.0.0.{i}:8000" for i in range(6)]
    for concurrency in range(1, 30):
        for replicas in range(1, 6):
            for count in range(1, len(urls) + 1):
                shares = [endpoint_shares(concurrency, r, replicas, urls[:count]) for r in range(replicas)]
                assert all(sum(share.values()) >= 1 for share in shares), "every replica keeps a slot"
                splits = [[share[url] for share in shares] for url in urls[:count]]
                if concurrency >= replicas:
                    assert all(sum(split) == concurrency for split in splits)
                    assert all(max(split) - min(split) <= 1 for split in splits)
                else:  # fewer slots than replicas on a pod: the extra slots are the kept ones only
                    kept = sum(1 for share in shares if sum(share.values()) == 1)
                    assert concurrency * count <= sum(map(sum, splits)) <= concurrency * count + kept


def test_the_remainder_slots_spread_over_the_replicas_across_pods() -> None:
    urls = [f"http://10.0.{i // 250}.{i % 250}:8000" for i in range(400)]
    totals = [sum(endpoint_shares(3, rank, 2, urls).values()) for rank in range(2)]
    assert sum(totals) == 1200 and abs(totals[0] - totals[1]) < 120


def test_a_pod_coming_or_going_changes_no_other_pods_split() -> None:
    urls = [f"http://10.0.0.{i}:8000" for i in range(5)]
    for rank in range(3):
        before = endpoint_shares(4, rank, 3, urls)
        after = endpoint_shares(4, rank, 3, [*urls[:2], "http://10.0.0.99:8000", *urls[3:]])
        assert {url: before[url] for url in after if url in before} == {
            u: after[u] for u in after if u in before
        }


def test_with_fewer_slots_than_lingo_replicas_each_replica_still_keeps_one() -> None:
    assert [endpoint_shares(1, rank, 2, ["http://e0"]) for rank in range(2)] == [{"http://e0": 1}] * 2
    assert endpoint_shares(5, 0, 1, ["http://e0", "http://e1"]) == {"http://e0": 5, "http://e1": 5}
    assert endpoint_shares(5, 0, 3, []) == {}


def test_the_batch_limit_is_the_share_of_the_slots_and_at_least_one() -> None:
    assert [batch_limit(share, 0.75) for share in (1, 2, 3, 4, 8, 100)] == [1, 1, 2, 3, 6, 75]
    assert batch_limit(4, 1.0) == 4
    assert batch_limit(10, 0.7) == 7


async def test_each_lingo_replica_keeps_to_its_share_and_gets_all_slots_when_alone() -> None:
    queue = make_queue(concurrency=3)
    rank = next(r for r in range(2) if endpoint_shares(3, r, 2, queue.endpoints) == {"http://e0": 1})
    queue.set_lingo_replicas(rank, 2)
    first = await queue.acquire(Priority.DEFAULT, 5)
    second = asyncio.create_task(queue.acquire(Priority.DEFAULT, 5))
    await settle()
    assert not second.done(), "this replica holds 1 of the 3 slots"
    queue.set_lingo_replicas(0, 1)  # the peer left: this replica gets every slot
    (await asyncio.wait_for(second, 1)).release()
    first.release()


@pytest.mark.parametrize(
    ("header", "document", "expected"),
    [
        (None, None, Priority.DEFAULT),
        (None, {"model": "m"}, Priority.DEFAULT),
        (None, {"service_tier": "priority"}, Priority.PRIORITY),
        (None, {"service_tier": "default"}, Priority.DEFAULT),
        (None, {"service_tier": "auto"}, Priority.DEFAULT),
        (None, {"service_tier": "flex"}, Priority.FLEX),
        (None, {"service_tier": "scale"}, Priority.DEFAULT),
        (None, {"service_tier": "Flex"}, Priority.FLEX),
        (None, {"service_tier": "platinum"}, Priority.DEFAULT),
        (None, {"service_tier": 3}, Priority.DEFAULT),
        (None, {"service_tier": None}, Priority.DEFAULT),
        (None, ["service_tier"], Priority.DEFAULT),
        ("priority", None, Priority.PRIORITY),
        ("flex", {"service_tier": "priority"}, Priority.FLEX),
        (" PRIORITY ", {"service_tier": "flex"}, Priority.PRIORITY),
        ("default", {"service_tier": "flex"}, Priority.DEFAULT),
        ("batch", None, Priority.DEFAULT),
        ("urgent", {"service_tier": "flex"}, Priority.DEFAULT),
        ("", {"service_tier": "flex"}, Priority.FLEX),
    ],
)
def test_the_class_comes_from_the_header_else_the_service_tier_and_unknown_means_default(
    header: str | None, document: object, expected: Priority
) -> None:
    assert request_class(header, document) is expected


@pytest.mark.parametrize(
    ("env", "value"),
    [("LINGO_BATCH_MAX_SHARE", "0"), ("LINGO_BATCH_MAX_SHARE", "1.5"), ("LINGO_PRIORITY_AGING", "0s")],
)
def test_a_share_or_aging_lingo_cannot_use_fails_at_start_naming_the_setting(env: str, value: str) -> None:
    with pytest.raises(ConfigError, match=env):
        load(environ={env: value})
