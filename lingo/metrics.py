"""Prometheus metrics (names are part of the contract, SPEC §7).

Gauges of queued and in-flight work are read from the queues at scrape time, so the queue stays the
only owner of those counts; counters and histograms are updated on the request path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from lingo.registry import Registry

_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class QueueCollector(Collector):
    """Reads `lingo_requests_queued`, `lingo_requests_in_flight` and `lingo_replicas` at scrape time."""

    def __init__(self, registry: Registry, desired: Callable[[], dict[str, int]]) -> None:
        self.registry = registry
        self.desired = desired

    def collect(self) -> Iterator[GaugeMetricFamily]:
        queued = GaugeMetricFamily(
            "lingo_requests_queued", "Requests waiting for an endpoint.", labels=["model"]
        )
        in_flight = GaugeMetricFamily(
            "lingo_requests_in_flight", "Requests sent to a backend and not finished.", labels=["model"]
        )
        replicas = GaugeMetricFamily(
            "lingo_replicas", "Replicas of a model group.", labels=["model", "state"]
        )
        desired = self.desired()
        for name, queue in sorted(self.registry.queues.items()):
            queued.add_metric([name], queue.queued)
            in_flight.add_metric([name], queue.in_flight)
            group = queue.group
            replicas.add_metric([name, "ready"], len(queue.endpoints))
            if group.scalable:
                replicas.add_metric([name, "desired"], desired.get(name, 0))
                replicas.add_metric([name, "min"], group.min_replicas)
                replicas.add_metric([name, "max"], group.max_replicas)
        yield queued
        yield in_flight
        yield replicas


class Metrics:
    """All of one lingo process's metrics, in a registry of its own (several can share a process)."""

    def __init__(self, registry: Registry, desired: Callable[[], dict[str, int]] = dict) -> None:
        #: The Prometheus registry `/metrics` renders.
        self.prometheus = CollectorRegistry()
        self.requests = Counter(
            "lingo_requests",
            "Requests answered, by source (http|batch) and status code.",
            ["model", "source", "code"],
            registry=self.prometheus,
        )
        self.request_duration = Histogram(
            "lingo_request_duration_seconds",
            "Time from arrival to the end of the answer.",
            ["model", "source"],
            buckets=_DURATION_BUCKETS,
            registry=self.prometheus,
        )
        self.queue_wait = Histogram(
            "lingo_queue_wait_seconds",
            "Time a request waited for an endpoint slot.",
            ["model"],
            buckets=_DURATION_BUCKETS,
            registry=self.prometheus,
        )
        self.scale_events = Counter(
            "lingo_scale_events",
            "Replica changes made by the autoscaler.",
            ["model", "direction"],
            registry=self.prometheus,
        )
        self.batch_messages = Counter(
            "lingo_batch_messages",
            "Batch messages by outcome (answered|error|retried|invalid|nacked).",
            ["stream", "outcome"],
            registry=self.prometheus,
        )
        self.batch_in_flight = Gauge(
            "lingo_batch_in_flight",
            "Batch messages being handled now.",
            ["stream"],
            registry=self.prometheus,
        )
        self.prometheus.register(QueueCollector(registry, desired))
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self._waits: dict[str, Histogram] = {}

    def observe_request(self, model: str, source: str, code: int, duration: float) -> None:
        """Count one answered request and its duration (cached label children: hot path)."""
        key = (model, source, code)
        children = self._children.get(key)
        if children is None:
            children = (
                self.requests.labels(model, source, str(code)),
                self.request_duration.labels(model, source),
            )
            self._children[key] = children
        children[0].inc()
        children[1].observe(duration)

    def observe_wait(self, model: str, seconds: float) -> None:
        """Record how long a request waited for an endpoint slot."""
        child = self._waits.get(model)
        if child is None:
            child = self._waits[model] = self.queue_wait.labels(model)
        child.observe(seconds)

    def observe_scale(self, model: str, current: int, target: int) -> None:
        self.scale_events.labels(model, "up" if target > current else "down").inc()

    def render(self) -> bytes:
        return generate_latest(self.prometheus)
