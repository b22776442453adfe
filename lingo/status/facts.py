"""The facts behind `/status.json`, `/status` and `lingo status`, read from their owners.

Nothing here keeps counts of its own: queued and in-flight work come from the queues, replicas
from the autoscaler and the registry, scale events from the autoscaler's ring, batch outcomes from
the metrics counters, backlogs from the batch streams. `gather()` returns plain JSON-ready data.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from lingo import __version__
from lingo.autoscaler import Autoscaler
from lingo.metrics import Metrics
from lingo.queue import ModelQueue, Priority
from lingo.registry import Registry

#: Returns the Batches API jobs to show (dicts with at least `id`, `status`, `request_counts`);
#: may be a coroutine function.
JobsProvider = Callable[[], "list[dict[str, Any]] | Awaitable[list[dict[str, Any]]]"]
#: Scale events shown per model group, newest first.
SCALE_EVENTS_PER_GROUP = 10
#: Batch outcomes always listed, even at zero (the metric's label values).
BATCH_OUTCOMES = ("answered", "error", "retried", "invalid", "nacked")


class StatusFacts:
    """Gathers one snapshot of a lingo process: model groups, batch streams and jobs."""

    def __init__(
        self,
        registry: Registry,
        autoscaler: Autoscaler,
        metrics: Metrics,
        *,
        platform: str,
        ready: Callable[[], bool],
        streams: Callable[[], Iterable[Any]] = tuple,
    ) -> None:
        #: Model groups and their queues.
        self.registry = registry
        #: Desired replicas, leadership and the recent scale events.
        self.autoscaler = autoscaler
        #: Counters of answered requests and batch outcomes.
        self.metrics = metrics
        #: Name of the platform models run on (local or kubernetes).
        self.platform = platform
        #: Whether the process is ready (what `/readyz` answers).
        self.ready = ready
        #: The batch streams running now (`BatchStream` objects).
        self.streams = streams
        #: Optional source of Batches API jobs; set by whoever runs the Batches API.
        self.jobs: JobsProvider | None = None
        #: Monotonic start time, for the uptime.
        self.started = time.monotonic()

    async def gather(self) -> dict[str, Any]:
        """One snapshot of every fact, as JSON-ready data."""
        return {
            "version": __version__,
            "time": time.time(),
            "uptime": round(time.monotonic() - self.started, 1),
            "platform": self.platform,
            "ready": self.ready(),
            "leader": self.autoscaler.is_leader(),
            "classes": [priority.name.lower() for priority in Priority],
            "groups": [self._group(queue) for _, queue in sorted(self.registry.queues.items())],
            "streams": [self._stream(stream) for stream in self.streams()],
            "jobs": await self._jobs(),
        }

    def _group(self, queue: ModelQueue) -> dict[str, Any]:
        group = queue.group
        name = group.name
        endpoints = [
            {"url": url, "in_flight": endpoint.in_flight, "retired": False}
            for url, endpoint in sorted(queue.endpoints.items())
        ] + [
            {"url": url, "in_flight": endpoint.in_flight, "retired": True}
            for url, endpoint in sorted(queue.retired.items())
        ]
        events = [event for event in reversed(self.autoscaler.events) if event.group == name]
        return {
            "name": name,
            "models": list(group.models),
            "scalable": group.scalable,
            "concurrency": group.concurrency,
            "replicas": {
                "desired": self.autoscaler.desired.get(name, 0) if group.scalable else len(queue.endpoints),
                "ready": len(queue.endpoints),
                "min": group.min_replicas if group.scalable else None,
                "max": group.max_replicas if group.scalable else None,
            },
            "queued": {priority.name.lower(): queue.queued_by(priority) for priority in Priority},
            "queued_total": queue.queued,
            "in_flight": queue.in_flight,
            "backlog": self.registry.backlog(name),
            "demand_average": round(self.autoscaler.average(name), 2),
            "requests": self._codes(name),
            "endpoints": endpoints,
            "scale_events": [
                {"time": event.time, "from": event.current, "to": event.target, "reason": event.reason}
                for event in events[:SCALE_EVENTS_PER_GROUP]
            ],
        }

    def _codes(self, group: str) -> dict[str, int]:
        """Answered requests of the group by status code, HTTP and batch together."""
        codes: dict[str, int] = {}
        for (model, _source, _class, code), count in self.metrics.requests.requests.items():
            if model == group:
                codes[code] = codes.get(code, 0) + count
        return dict(sorted(codes.items()))

    def _stream(self, stream: Any) -> dict[str, Any]:
        outcomes = dict.fromkeys(BATCH_OUTCOMES, 0)
        for family in self.metrics.batch_messages.collect():
            for sample in family.samples:
                if sample.name.endswith("_total") and sample.labels.get("stream") == stream.label:
                    outcome = sample.labels["outcome"]
                    outcomes[outcome] = outcomes.get(outcome, 0) + int(sample.value)
        return {
            "stream": stream.label,
            "responses": stream.spec.responses.label,
            "model": stream.spec.requests.model,
            "open": stream.opened.is_set(),
            "in_flight": stream.in_flight,
            "max_handlers": stream.spec.max_handlers,
            "backlog": stream.backlog,
            "outcomes": outcomes,
        }

    async def _jobs(self) -> list[dict[str, Any]]:
        if self.jobs is None:
            return []
        result = self.jobs()
        if inspect.isawaitable(result):
            result = await result
        return list(result)
