"""The shared per-model queue, without sockets: order, balancing, bounds and cancellation."""

from __future__ import annotations

import asyncio

import pytest

from lingo.errors import ModelNotFound, NoEndpoint, QueueFull
from lingo.models import ModelGroup
from lingo.queue import Lease, ModelQueue, Priority


def make_queue(concurrency: int = 1, max_queue: int = 100, endpoints: int = 0) -> ModelQueue:
    queue = ModelQueue(ModelGroup("m", ("m",), concurrency=concurrency), max_queue)
    queue.set_endpoints(f"http://e{i}" for i in range(endpoints))
    return queue


async def test_requests_are_served_in_arrival_order_when_a_slot_frees() -> None:
    queue = make_queue(concurrency=1, endpoints=1)
    first = await queue.acquire(Priority.DEFAULT, 5)
    order: list[int] = []

    async def wait(i: int) -> None:
        lease = await queue.acquire(Priority.DEFAULT, 5)
        order.append(i)
        lease.release()

    waiters = [asyncio.create_task(wait(i)) for i in range(5)]
    await asyncio.sleep(0)
    assert queue.queued == 5
    first.release()
    await asyncio.gather(*waiters)
    assert order == [0, 1, 2, 3, 4]
    assert (queue.queued, queue.in_flight) == (0, 0)


async def test_http_waiters_are_served_before_batch_waiters() -> None:
    queue = make_queue(concurrency=1, endpoints=1)
    first = await queue.acquire(Priority.DEFAULT, 5)
    order: list[str] = []

    async def wait(name: str, priority: Priority) -> None:
        lease = await queue.acquire(priority, 5)
        order.append(name)
        await asyncio.sleep(0)
        lease.release()

    tasks = [asyncio.create_task(wait("batch-1", Priority.BATCH))]
    await asyncio.sleep(0)
    tasks.append(asyncio.create_task(wait("http-1", Priority.DEFAULT)))
    tasks.append(asyncio.create_task(wait("batch-2", Priority.BATCH)))
    tasks.append(asyncio.create_task(wait("http-2", Priority.DEFAULT)))
    await asyncio.sleep(0)
    assert (queue.queued_by(Priority.DEFAULT), queue.queued_by(Priority.BATCH)) == (2, 2)
    first.release()
    await asyncio.gather(*tasks)
    assert order == ["http-1", "http-2", "batch-1", "batch-2"]


async def test_a_new_batch_request_does_not_jump_ahead_of_waiting_http() -> None:
    queue = make_queue(concurrency=1, endpoints=1)
    first = await queue.acquire(Priority.DEFAULT, 5)
    http = asyncio.create_task(queue.acquire(Priority.DEFAULT, 5))
    await asyncio.sleep(0)
    first.release()
    batch = asyncio.create_task(queue.acquire(Priority.BATCH, 0.05))
    lease = await http
    with pytest.raises(NoEndpoint):
        await batch
    lease.release()


async def test_endpoint_with_fewest_in_flight_is_picked() -> None:
    queue = make_queue(concurrency=10, endpoints=3)
    leases = [await queue.acquire(Priority.DEFAULT, 1) for _ in range(9)]
    spread = sorted(e.in_flight for e in queue.endpoints.values())
    assert spread == [3, 3, 3]
    for lease in [lease for lease in leases if lease.url == "http://e0"]:
        lease.release()
    nxt = await queue.acquire(Priority.DEFAULT, 1)
    assert nxt.url == "http://e0"


async def test_concurrency_caps_requests_per_endpoint() -> None:
    queue = make_queue(concurrency=2, endpoints=2)
    leases = [await queue.acquire(Priority.DEFAULT, 1) for _ in range(4)]
    assert all(e.in_flight == 2 for e in queue.endpoints.values())
    waiting = asyncio.create_task(queue.acquire(Priority.DEFAULT, 5))
    await asyncio.sleep(0)
    assert queue.queued == 1 and not waiting.done()
    leases[0].release()
    lease = await waiting
    assert lease.url == leases[0].url


async def test_full_queue_refuses_with_429_and_retry_after() -> None:
    queue = make_queue(max_queue=3)
    tasks = [asyncio.create_task(queue.acquire(Priority.DEFAULT, 5)) for _ in range(3)]
    await asyncio.sleep(0)
    with pytest.raises(QueueFull) as refused:
        await queue.acquire(Priority.DEFAULT, 5)
    assert refused.value.status == 429 and refused.value.retry_after
    for task in tasks:
        task.cancel()


async def test_no_endpoint_within_wait_limit_gives_503_and_frees_place() -> None:
    queue = make_queue()
    with pytest.raises(NoEndpoint) as refused:
        await queue.acquire(Priority.DEFAULT, 0.05)
    assert refused.value.status == 503 and refused.value.retry_after
    assert queue.queued == 0


async def test_cancelled_waiter_leaves_queue_at_once() -> None:
    queue = make_queue(max_queue=2000)
    tasks = [asyncio.create_task(queue.acquire(Priority.BATCH, 30)) for _ in range(1000)]
    await asyncio.sleep(0)
    assert queue.queued == 1000
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert queue.queued == 0
    # Compaction keeps memory proportional to live waiters, not to everyone who ever waited.
    assert len(queue._waiting[Priority.BATCH]) <= 64


async def test_waiters_get_endpoints_when_they_appear_and_demand_is_signalled() -> None:
    woken: list[str] = []
    queue = ModelQueue(ModelGroup("m", ("m",), concurrency=1), 10, on_demand=woken.append)
    task = asyncio.create_task(queue.acquire(Priority.DEFAULT, 5))
    await asyncio.sleep(0)
    assert woken == ["m"]
    queue.set_endpoints(["http://new"])
    lease = await task
    assert lease.url == "http://new" and queue.in_flight == 1


async def test_removed_model_fails_waiters_with_404() -> None:
    queue = make_queue()
    task = asyncio.create_task(queue.acquire(Priority.DEFAULT, 5))
    await asyncio.sleep(0)
    queue.close()
    with pytest.raises(ModelNotFound):
        await task
    assert queue.queued == 0
    with pytest.raises(ModelNotFound):
        await queue.acquire(Priority.DEFAULT, 5)


async def test_release_is_idempotent_and_counts_survive_endpoint_removal() -> None:
    queue = make_queue(concurrency=5, endpoints=1)
    lease: Lease = await queue.acquire(Priority.DEFAULT, 1)
    queue.set_endpoints([])
    assert queue.in_flight_on("http://e0") == 1
    lease.release()
    lease.release()
    assert queue.in_flight == 0 and queue.in_flight_on("http://e0") == 0 and not queue.retired


async def test_retry_prefers_another_endpoint() -> None:
    queue = make_queue(concurrency=5, endpoints=2)
    for _ in range(10):
        lease = await queue.acquire(Priority.DEFAULT, 1, avoid="http://e0")
        assert lease.url == "http://e1"
        lease.release()
    queue.set_endpoints(["http://e0"])
    lease = await queue.acquire(Priority.DEFAULT, 1, avoid="http://e0")
    assert lease.url == "http://e0"  # the only one left is still used


async def test_ten_thousand_waiters_are_served_in_order() -> None:
    queue = make_queue(concurrency=100, max_queue=10_000)
    served: list[int] = []

    async def wait(i: int) -> None:
        lease = await queue.acquire(Priority.DEFAULT, 60)
        served.append(i)
        lease.release()

    tasks = [asyncio.create_task(wait(i)) for i in range(10_000)]
    await asyncio.sleep(0)
    assert queue.queued == 10_000
    queue.set_endpoints(["http://a", "http://b"])
    await asyncio.gather(*tasks)
    assert served == sorted(served) and len(served) == 10_000
    assert (queue.queued, queue.in_flight) == (0, 0)
