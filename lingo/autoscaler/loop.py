"""The autoscaler's loop: sample demand every interval, decide per group, set replicas."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from lingo.autoscaler.decision import MovingAverage, ScaleDecider, desired_replicas
from lingo.platforms.base import Platform
from lingo.registry import Registry

log = logging.getLogger(__name__)

#: Returns queued + in-flight requests per group, summed over every lingo replica.
DemandSource = Callable[[], Awaitable[dict[str, float]]]
#: Called after each replica change with (group, from, to).
ScaleListener = Callable[[str, int, int], None]
#: Replica changes remembered for the status page, newest last.
RECENT_SCALE_EVENTS = 50


@dataclass(frozen=True)
class ScaleEvent:
    """One replica change the autoscaler made, and why."""

    #: Wall-clock time of the change (Unix seconds).
    time: float
    #: Model group that was scaled.
    group: str
    #: Replicas before.
    current: int
    #: Replicas asked for.
    target: int
    #: Why, in words, e.g. "demand 7.5 / concurrency 4".
    reason: str


class StateStore(Protocol):
    """Keeps the moving averages across restarts, so a new leader does not scale down at once."""

    async def load(self) -> dict[str, list[float]]: ...

    async def save(self, state: dict[str, list[float]]) -> None: ...


class Autoscaler:
    """Sets each scalable group's replicas from the moving average of its demand."""

    def __init__(
        self,
        registry: Registry,
        platform: Platform,
        *,
        interval: float,
        window: float,
        is_leader: Callable[[], bool] = lambda: True,
        demand: DemandSource | None = None,
        state: StateStore | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        #: Where the groups and their queues live.
        self.registry = registry
        #: What gets asked for replicas.
        self.platform = platform
        #: Seconds between ticks.
        self.interval = interval
        #: Samples in each moving average.
        self.window_size = max(1, math.ceil(window / interval))
        #: Only the leader changes replica counts; others still sample so they can take over.
        self.is_leader = is_leader
        #: Where demand comes from (default: this process's queues).
        self.demand = demand or self._local_demand
        #: Where averages are persisted, if anywhere.
        self.state = state
        #: Monotonic clock, injectable for tests.
        self.clock = clock
        #: Last replica count asked of the platform, per group (for metrics).
        self.desired: dict[str, int] = {}
        #: Listeners told of every replica change (metrics, the demo's printout).
        self.listeners: list[ScaleListener] = []
        #: The last `RECENT_SCALE_EVENTS` replica changes, oldest first (read by the status page).
        self.events: deque[ScaleEvent] = deque(maxlen=RECENT_SCALE_EVENTS)
        self._averages: dict[str, MovingAverage] = {}
        self._deciders: dict[str, ScaleDecider] = {}
        self._restored: dict[str, list[float]] = {}
        self._waking: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.restore()
        self._loop_task = asyncio.create_task(self._run(), name="autoscaler")

    async def restore(self) -> None:
        """Load persisted averages, so a restarted or new leader takes over instead of starting at 0."""
        if self.state is None:
            return
        try:
            self._restored = await self.state.load()
        except Exception:
            log.warning("could not load autoscaler state; starting from zero", exc_info=True)

    async def stop(self) -> None:
        tasks = [t for t in (self._loop_task, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def average(self, group: str) -> float:
        avg = self._averages.get(group)
        return avg.value if avg else 0.0

    async def _run(self) -> None:
        while True:
            started = self.clock()
            try:
                await self.tick()
            except Exception:
                log.exception("autoscaler tick failed")
            await asyncio.sleep(max(0.0, self.interval - (self.clock() - started)))

    async def _local_demand(self) -> dict[str, float]:
        return {name: float(queue.active) for name, queue in self.registry.queues.items()}

    async def tick(self) -> None:
        """Sample demand once and, as leader, apply any replica change it calls for."""
        activity = await self.demand()
        leader = self.is_leader()
        now = self.clock()
        for name, queue in list(self.registry.queues.items()):
            group = queue.group
            if not group.scalable:
                continue
            backlog = self.registry.backlog(name)
            active = activity.get(name, 0.0) + backlog
            average = self._averages.get(name)
            if average is None:
                average = MovingAverage(self.window_size, self._restored.pop(name, ()))
                self._averages[name] = average
            average.add(active)
            try:
                # Followers read it too (from the platform's cache), so their metrics stay current.
                current = await self.platform.get_replicas(name)
                self.desired[name] = current
                if not leader:
                    continue
                decider = self._deciders.setdefault(name, ScaleDecider(group.scale_down_delay))
                decider.delay = group.scale_down_delay
                # While messages wait on a broker, all the work waiting now counts at once: the
                # average would let replicas creep up over a whole window.
                wanted = desired_replicas(
                    average.value,
                    group.concurrency,
                    group.min_replicas,
                    group.max_replicas,
                    active,
                    immediate=active if backlog else 0.0,
                )
                target = decider.decide(now, current, wanted)
                if target is not None and target != current:
                    if target > current:
                        reason = f"demand {average.value:.1f} / concurrency {group.concurrency}"
                    else:
                        reason = f"demand {average.value:.1f} lower for {group.scale_down_delay:g}s"
                    await self._scale(name, current, target, reason)
            except Exception as exc:  # e.g. the API server is down: try again next tick, quietly
                log.warning("scaling failed", extra={"model": name, "error": repr(exc)})
        for name in set(self._averages) - set(self.registry.queues):
            self._averages.pop(name, None)
            self._deciders.pop(name, None)
            self.desired.pop(name, None)
        if leader and self.state is not None:
            try:
                await self.state.save({name: avg.samples for name, avg in self._averages.items()})
            except Exception as exc:
                log.warning("could not save autoscaler state", extra={"error": repr(exc)})

    def wake(self, group: str) -> None:
        """A request waits for `group` with no endpoint: ask for a replica now, not at the next tick."""
        if group in self._waking or not self.is_leader():
            return
        self._waking.add(group)
        task = asyncio.get_running_loop().create_task(self._wake(group))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _wake(self, group: str) -> None:
        try:
            queue = self.registry.queues.get(group)
            if queue is None or not queue.group.scalable:
                return
            current = await self.platform.get_replicas(group)
            target = min(queue.group.max_replicas, max(1, queue.group.min_replicas))
            if current == 0 and target > 0:
                await self._scale(group, current, target, "request waiting, no ready replica")
        except Exception:
            log.warning("scale from zero failed", extra={"model": group}, exc_info=True)
        finally:
            self._waking.discard(group)

    async def _scale(self, group: str, current: int, target: int, reason: str) -> None:
        await self.platform.set_replicas(group, target)
        self.desired[group] = target
        self.events.append(ScaleEvent(time.time(), group, current, target, reason))
        log.info("scaled", extra={"model": group, "from": current, "to": target, "reason": reason})
        for listener in self.listeners:
            listener(group, current, target)
