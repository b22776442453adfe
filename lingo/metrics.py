"""Prometheus metrics (their names are a stable interface: dashboards and alerts use them).

Gauges of queued and in-flight work are read from the queues at scrape time, so the queue stays the
only owner of those counts. Per-request counters and histograms are plain integers on the hot path
(one event loop, no locks needed) and turned into Prometheus families at scrape time.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from lingo.queue import Priority
from lingo.registry import Registry

_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class _Histogram:
    """Bucket counts and a sum; `observe` is a bisect and two additions."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(_DURATION_BUCKETS) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(_DURATION_BUCKETS, value)] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        cumulative = 0
        out: list[tuple[str, float]] = []
        for bound, count in zip((*_DURATION_BUCKETS, float("inf")), self.counts, strict=True):
            cumulative += count
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), cumulative))
        return out


class RequestCollector(Collector):
    """`lingo_requests_total`, `lingo_request_duration_seconds`, `lingo_queue_wait_seconds`."""

    def __init__(self) -> None:
        #: Answered requests by (model, source, class, code).
        self.requests: dict[tuple[str, str, str, str], int] = {}
        #: Durations by (model, source).
        self.durations: dict[tuple[str, str], _Histogram] = {}
        #: Queue waits by model.
        self.waits: dict[str, _Histogram] = {}

    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        requests = CounterMetricFamily(
            "lingo_requests",
            "Requests answered, by source (http|batch), class (priority|default|flex|batch) and status code.",
            labels=["model", "source", "class", "code"],
        )
        for labels, count in sorted(self.requests.items()):
            requests.add_metric(list(labels), count)
        durations = HistogramMetricFamily(
            "lingo_request_duration_seconds",
            "Time from arrival to the end of the answer.",
            labels=["model", "source"],
        )
        for pair, histogram in sorted(self.durations.items()):
            durations.add_metric(list(pair), histogram.buckets(), histogram.total)
        waits = HistogramMetricFamily(
            "lingo_queue_wait_seconds", "Time a request waited for an endpoint slot.", labels=["model"]
        )
        for model, histogram in sorted(self.waits.items()):
            waits.add_metric([model], histogram.buckets(), histogram.total)
        yield requests
        yield durations
        yield waits


class QueueCollector(Collector):
    """Reads `lingo_requests_queued`, `lingo_requests_in_flight`, `lingo_replicas` and
    `lingo_routing_decisions_total` at scrape time."""

    def __init__(self, registry: Registry, desired: Callable[[], dict[str, int]]) -> None:
        self.registry = registry
        self.desired = desired

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        queued = GaugeMetricFamily(
            "lingo_requests_queued",
            "Requests waiting for an endpoint, by class (priority|default|flex|batch).",
            labels=["model", "class"],
        )
        in_flight = GaugeMetricFamily(
            "lingo_requests_in_flight", "Requests sent to a backend and not finished.", labels=["model"]
        )
        replicas = GaugeMetricFamily(
            "lingo_replicas", "Replicas of a model group.", labels=["model", "state"]
        )
        decisions = CounterMetricFamily(
            "lingo_routing_decisions",
            "Endpoint choices by reason (prefix|home|session|least_load|overflow).",
            labels=["model", "reason"],
        )
        desired = self.desired()
        for name, queue in sorted(self.registry.queues.items()):
            for reason, count in sorted(queue.routing_decisions.items()):
                decisions.add_metric([name, reason], count)
            for priority in Priority:
                queued.add_metric([name, priority.label], queue.queued_by(priority))
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
        yield decisions


class Metrics:
    """All of one lingo process's metrics, in a registry of its own (several can share a process)."""

    def __init__(self, registry: Registry, desired: Callable[[], dict[str, int]] = dict) -> None:
        #: The Prometheus registry `/metrics` renders.
        self.prometheus = CollectorRegistry()
        #: Per-request counters and histograms (plain numbers, rendered at scrape time).
        self.requests = RequestCollector()
        self.prometheus.register(self.requests)
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
        self.batch_backlog = Gauge(
            "lingo_batch_backlog",
            "Batch messages waiting on the broker, as last reported (0 where the broker cannot tell).",
            ["stream"],
            registry=self.prometheus,
        )
        self.batch_jobs = Gauge(
            "lingo_batch_jobs",
            "Batches API batches by status, as stored in the database.",
            ["status"],
            registry=self.prometheus,
        )
        self.batch_job_lines = Counter(
            "lingo_batch_job_lines",
            "Batches API lines run by this process, by outcome (completed|failed|retried).",
            ["outcome"],
            registry=self.prometheus,
        )
        self.prometheus.register(QueueCollector(registry, desired))

    def observe_request(self, model: str, source: str, code: int, duration: float, klass: str) -> None:
        """Count one answered request of class `klass` (priority|default|flex|batch) and its duration."""
        requests = self.requests
        key = (model, source, klass, str(code))
        requests.requests[key] = requests.requests.get(key, 0) + 1
        histogram = requests.durations.get((model, source))
        if histogram is None:
            histogram = requests.durations[(model, source)] = _Histogram()
        histogram.observe(duration)

    def observe_wait(self, model: str, seconds: float) -> None:
        """Record how long a request waited for an endpoint slot."""
        histogram = self.requests.waits.get(model)
        if histogram is None:
            histogram = self.requests.waits[model] = _Histogram()
        histogram.observe(seconds)

    def observe_scale(self, model: str, current: int, target: int) -> None:
        self.scale_events.labels(model, "up" if target > current else "down").inc()

    def render(self) -> bytes:
        return generate_latest(self.prometheus)
