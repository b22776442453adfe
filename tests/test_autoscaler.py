"""Autoscaler arithmetic as plain numbers, and its loop against an in-memory platform."""

from __future__ import annotations

import asyncio

import pytest

from lingo.autoscaler import Autoscaler, MovingAverage, ScaleDecider, desired_replicas
from lingo.autoscaler.loop import RECENT_SCALE_EVENTS
from lingo.models import ModelGroup
from lingo.queue import Priority
from lingo.registry import Registry


def test_moving_average_covers_the_window_only() -> None:
    average = MovingAverage(3)
    for value in (3, 6, 9):
        average.add(value)
    assert average.value == 6
    average.add(0)
    assert average.value == 5
    assert average.samples == [6, 9, 0]


def test_moving_average_restores_persisted_samples() -> None:
    assert MovingAverage(4, [8, 8]).value == 8


@pytest.mark.parametrize(
    ("average", "concurrency", "low", "high", "active", "expected"),
    [
        (0, 10, 0, 3, 0, 0),  # idle: zero
        (1, 10, 0, 3, 1, 1),  # ceil
        (10, 10, 0, 3, 10, 1),  # exactly one replica's worth
        (11, 10, 0, 3, 11, 2),
        (95, 10, 0, 3, 95, 3),  # clamped to max
        (0, 10, 2, 3, 0, 2),  # clamped to min
        (0.01, 10, 0, 3, 0, 1),  # a trickle keeps one replica
        (0, 10, 0, 3, 4, 1),  # average decayed but work is waiting: never zero (Lingo #106)
    ],
)
def test_desired_is_ceil_of_average_over_concurrency_clamped(
    average: float, concurrency: int, low: int, high: int, active: float, expected: int
) -> None:
    assert desired_replicas(average, concurrency, low, high, active) == expected


def test_scale_up_is_immediate() -> None:
    decider = ScaleDecider(delay=30)
    assert decider.decide(now=0, current=1, desired=3) == 3


def test_scale_down_waits_for_the_delay_then_goes_to_the_peak_seen() -> None:
    decider = ScaleDecider(delay=30)
    assert decider.decide(now=0, current=3, desired=1) is None
    assert decider.decide(now=10, current=3, desired=2) is None
    assert decider.decide(now=29, current=3, desired=0) is None
    assert decider.decide(now=30, current=3, desired=0) == 2


def test_a_rise_during_the_delay_cancels_scale_down() -> None:
    decider = ScaleDecider(delay=30)
    assert decider.decide(now=0, current=2, desired=0) is None
    assert decider.decide(now=20, current=2, desired=2) is None
    assert decider.decide(now=40, current=2, desired=0) is None  # the wait starts again
    assert decider.decide(now=70, current=2, desired=0) == 0


class MemoryPlatform:
    """Records replica changes; enough platform for the loop (the thing under test is the loop)."""

    def __init__(self) -> None:
        self.replicas: dict[str, int] = {}
        self.calls: list[tuple[str, int]] = []

    async def get_replicas(self, group: str) -> int:
        return self.replicas.get(group, 0)

    async def set_replicas(self, group: str, replicas: int) -> None:
        self.calls.append((group, replicas))
        self.replicas[group] = replicas


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def setup(concurrency: int = 2, delay: float = 10, max_replicas: int = 3, **kwargs: object):  # type: ignore[no-untyped-def]
    registry = Registry(max_queue=1000)
    registry.sync_models(
        [ModelGroup("m", ("m",), max_replicas=max_replicas, concurrency=concurrency, scale_down_delay=delay)]
    )
    platform = MemoryPlatform()
    clock = Clock()
    scaler = Autoscaler(registry, platform, interval=1, window=3, clock=clock, **kwargs)  # type: ignore[arg-type]
    return registry, platform, clock, scaler


async def test_first_request_at_zero_asks_for_a_replica_without_waiting_for_a_tick() -> None:
    registry, platform, _, scaler = setup()
    registry.on_demand = scaler.wake
    registry.queues["m"].on_demand = scaler.wake
    waiter = asyncio.create_task(registry.queues["m"].acquire(Priority.DEFAULT, 5))
    for _ in range(10):
        await asyncio.sleep(0)
    assert platform.calls == [("m", 1)]
    waiter.cancel()


async def test_loop_scales_with_queue_depth_and_back_down_after_delay() -> None:
    registry, platform, clock, scaler = setup()
    queue = registry.queues["m"]
    waiters = [asyncio.create_task(queue.acquire(Priority.DEFAULT, 60)) for _ in range(5)]
    await asyncio.sleep(0)
    await scaler.tick()
    assert platform.replicas["m"] == 3  # ceil(5 / 2) = 3, the max
    for waiter in waiters:
        waiter.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    changes: list[tuple[float, int]] = []
    for second in range(1, 40):
        clock.now = second
        before = platform.replicas["m"]
        await scaler.tick()
        if platform.replicas["m"] != before:
            changes.append((clock.now, platform.replicas["m"]))
    # The first sample after the burst still averages 2.5 (→ 2 replicas); each step down waits the
    # full 10 s delay and goes to the highest count wanted during that wait.
    assert changes == [(11, 2), (22, 0)]


async def test_backlog_counts_as_demand() -> None:
    registry, platform, _, scaler = setup()
    registry.add_backlog_source(lambda: {"m": 6})
    await scaler.tick()
    assert platform.replicas["m"] == 3


def test_immediate_demand_scales_up_at_once_whatever_the_average() -> None:
    # 1,000 messages waiting on a broker, concurrency 8, at most 4 replicas; the average is still low.
    assert desired_replicas(2.0, 8, 0, 4, active_now=1000, immediate=1000) == 4
    assert desired_replicas(2.0, 8, 0, 4, active_now=1000) == 1


async def test_a_backlog_jumps_past_a_window_of_idle_samples() -> None:
    registry, platform, _, scaler = setup()
    for _ in range(5):
        await scaler.tick()  # idle samples: the average alone would creep up
    registry.add_backlog_source(lambda: {"m": 6})
    await scaler.tick()
    assert scaler.average("m") == 2  # alone: 1 replica
    assert platform.replicas["m"] == 3


async def test_followers_sample_but_never_scale() -> None:
    registry, platform, _, scaler = setup(is_leader=lambda: False)
    registry.add_backlog_source(lambda: {"m": 6})
    await scaler.tick()
    scaler.wake("m")
    await asyncio.sleep(0)
    assert platform.calls == [] and scaler.average("m") == 6


async def test_restored_state_prevents_an_instant_scale_down() -> None:
    class State:
        saved: dict[str, list[float]] = {}

        async def load(self) -> dict[str, list[float]]:
            return {"m": [9.0, 9.0, 9.0]}

        async def save(self, state: dict[str, list[float]]) -> None:
            self.saved = state

    state = State()
    _registry, platform, _, scaler = setup(state=state, delay=0)
    platform.replicas["m"] = 3
    await scaler.restore()
    await scaler.tick()  # one idle sample next to two busy ones: average 6 → still 3 replicas
    assert platform.calls == []
    assert state.saved == {"m": [9.0, 9.0, 0.0]}


async def test_scale_events_are_remembered_with_their_reasons_newest_last_and_bounded() -> None:
    registry, _platform, clock, scaler = setup(delay=0)
    queue = registry.queues["m"]
    waiters = [asyncio.create_task(queue.acquire(Priority.DEFAULT, 60)) for _ in range(3)]
    await asyncio.sleep(0)
    await scaler.tick()
    for waiter in waiters:
        waiter.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    for second in range(1, 6):
        clock.now = second
        await scaler.tick()
    events = [(e.group, e.current, e.target, e.reason) for e in scaler.events]
    assert events[0] == ("m", 0, 2, "demand 3.0 / concurrency 2")
    assert events[-1][2] == 0 and events[-1][3].endswith("lower for 0s")
    for _ in range(RECENT_SCALE_EVENTS + 5):
        await scaler._scale("m", 0, 1, "test")
    assert len(scaler.events) == RECENT_SCALE_EVENTS
