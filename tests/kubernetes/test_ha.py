"""Several lingo replicas: one leader scales on everyone's demand, a survivor takes over, and the
autoscaler's averages survive in a ConfigMap."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from typing import Any

import aiohttp

from lingo.platforms.kubernetes.state import DATA_KEY, encode_state
from tests.conftest import fetch_json, wait_for
from tests.fakekube import FakeKube
from tests.kubernetes.conftest import NAMESPACE, LingoProcess, lease_holder, model_deployment
from tests.kubernetes.lingo_replica import FAST_LEASE


def replicas_of(fake: FakeKube, name: str) -> int:
    return int(fake.get_object("apps", "deployments", NAMESPACE, name)["spec"]["replicas"])


def scale_writes(fake: FakeKube, who: str) -> list[Any]:
    return [c for c in fake.calls_by(f"({who})") if c.verb == "update" and c.subresource == "scale"]


async def queue_requests(
    lingo: LingoProcess, count: int, session: aiohttp.ClientSession
) -> list[asyncio.Task]:
    async def one() -> int:
        async with session.post(
            lingo.url() + "/v1/completions", json={"model": "m", "prompt": "x"}
        ) as response:
            return response.status

    tasks = [asyncio.ensure_future(one()) for _ in range(count)]
    await wait_for_stats(lingo, count)
    return tasks


async def wait_for_stats(lingo: LingoProcess, count: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        stats = await fetch_json(lingo.url("stats") + "/stats")
        if stats["activeRequests"].get("m") == count:  # type: ignore[index]
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{lingo.name} /stats never showed {count}: {stats}")
        await asyncio.sleep(0.05)


async def test_one_leader_scales_on_the_sum_of_all_queues_and_a_survivor_takes_over(
    fake: FakeKube, lingo_processes
):
    fake.put(model_deployment("m", "m", concurrency="2", max_replicas="3", scale_down_delay="1s"))
    lingos = {name: lingo_processes(name) for name in ("lingo-a", "lingo-b")}
    for lingo in lingos.values():
        fake.put(lingo.peer_slice())
    await asyncio.gather(*(lingo.wait_ready() for lingo in lingos.values()))
    await wait_for(lambda: lease_holder(fake) in lingos, timeout=10)
    leader = lingos[lease_holder(fake)]
    follower = next(lingo for lingo in lingos.values() if lingo is not leader)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=40)) as session:
        # Work queued on the follower alone makes the leader scale: 3 requests / 2 per replica.
        on_follower = await queue_requests(follower, 3, session)
        await wait_for(lambda: replicas_of(fake, "m") == 2, timeout=10)
        # 3 + 2 = 5 requests need 3 replicas; neither replica alone would ask for that many.
        on_leader = await queue_requests(leader, 2, session)
        await wait_for(lambda: replicas_of(fake, "m") == 3, timeout=10)
        await asyncio.sleep(0.5)
        assert replicas_of(fake, "m") == 3
        assert scale_writes(fake, leader.name)
        assert not scale_writes(fake, follower.name)

        killed = time.monotonic()
        leader.kill()
        fake.delete_object("discovery.k8s.io", "endpointslices", NAMESPACE, f"lingo-{leader.name}")
        await wait_for(lambda: lease_holder(fake) == follower.name, timeout=FAST_LEASE["lease_duration"] + 3)
        # Within the lease duration of the last renewal seen, plus the retry periods around it.
        assert time.monotonic() - killed < FAST_LEASE["lease_duration"] + 3 * FAST_LEASE["retry_period"] + 0.5
        # The new leader scales on what is left (its own 3 requests → 2 replicas), after the delay.
        await wait_for(lambda: replicas_of(fake, "m") == 2, timeout=10)
        assert scale_writes(fake, follower.name)
        assert not on_follower[0].done()
        for task in on_follower + on_leader:
            task.cancel()
        await asyncio.gather(*on_follower, *on_leader, return_exceptions=True)


async def test_a_stopped_leader_releases_the_lease_and_a_peer_leads_at_once(fake: FakeKube, start_lingo):
    first = await start_lingo(pod_name="lingo-a")
    second = await start_lingo(pod_name="lingo-b")
    assert first.platform.is_leader() and not second.platform.is_leader()
    await first.stop()
    assert lease_holder(fake) == ""
    await wait_for(second.platform.is_leader, timeout=FAST_LEASE["retry_period"] * 3)
    assert lease_holder(fake) == "lingo-b"


async def test_saved_averages_keep_replicas_after_a_restart_instead_of_scaling_down_at_once(
    fake: FakeKube, start_lingo
):
    fake.put(
        model_deployment("m", "m", replicas=3, concurrency="2", max_replicas="3", scale_down_delay="0.5s")
    )
    fake.put(model_deployment("idle", "idle", replicas=3, max_replicas="3", scale_down_delay="0.5s"))
    window = [8.0] * 25  # 5 s at 0.2 s per sample, as the previous leader saw it
    fake.put(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "lingo-autoscaler", "namespace": NAMESPACE},
            "data": {DATA_KEY: encode_state({"m": window}, datetime.now(UTC))},
        }
    )
    lingo = await start_lingo(autoscaling_time_window=5.0)
    assert lingo.platform.is_leader()
    # Without saved state "idle" (same spec, no demand) goes to 0 after the 0.5 s delay...
    await wait_for(lambda: replicas_of(fake, "idle") == 0, timeout=5)
    # ...while "m" keeps its replicas: its average starts at 8 and decays over the window.
    await asyncio.sleep(1.0)
    assert replicas_of(fake, "m") == 3
    assert lingo.autoscaler.average("m") > 4
    await wait_for(lambda: replicas_of(fake, "m") == 0, timeout=10)


async def test_averages_are_saved_each_tick_only_when_they_change(fake: FakeKube, start_lingo):
    fake.put(model_deployment("m", "m", replicas=1, min_replicas="1"))
    lingo = await start_lingo()
    async with aiohttp.ClientSession() as session:
        request = asyncio.ensure_future(
            session.post(lingo.url() + "/v1/completions", json={"model": "m", "prompt": "x"})
        )
        await wait_for(lambda: lingo.platform.state.writes >= 2, timeout=5)
        saved = json.loads(fake.get_object("", "configmaps", NAMESPACE, "lingo-autoscaler")["data"][DATA_KEY])
        assert saved["averages"]["m"][-1] == 1.0
        request.cancel()
        await asyncio.gather(request, return_exceptions=True)
    await wait_for(lambda: lingo.autoscaler.average("m") == 0, timeout=5)
    await asyncio.sleep(0.3)
    writes = lingo.platform.state.writes
    await asyncio.sleep(1.0)  # five idle ticks
    assert lingo.platform.state.writes == writes


async def test_a_leader_that_cannot_renew_stops_leading_before_its_lease_could_expire(
    fake: FakeKube, start_lingo
):
    lingo = await start_lingo()
    assert lingo.platform.is_leader()
    fake.fail_next("update", "coordination.k8s.io", "leases", 500, times=8)  # about 2.4 s of renewals
    failing_since = time.monotonic()
    await wait_for(lambda: not lingo.platform.is_leader(), timeout=3)
    lost_after = time.monotonic() - failing_since
    assert (
        FAST_LEASE["renew_deadline"] - FAST_LEASE["retry_period"] <= lost_after < FAST_LEASE["lease_duration"]
    )
    await wait_for(lingo.platform.is_leader, timeout=5)  # renewals work again: it leads again
