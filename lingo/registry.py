"""The models lingo knows right now: which names route to which group, and each group's queue.

Platforms push into it (`sync_models`, `set_endpoints`); the proxy and the batch handler look
names up in it; the autoscaler and metrics read demand from it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping

from lingo.errors import LingoError
from lingo.models import ModelGroup
from lingo.queue import ClassPolicy, ModelQueue

log = logging.getLogger(__name__)

#: Returns how many requests wait outside lingo (e.g. in a broker), per model name.
BacklogSource = Callable[[], Mapping[str, int]]


class Registry:
    """Model groups by name, the names clients may send, and one `ModelQueue` per group."""

    def __init__(
        self,
        max_queue: int,
        on_demand: Callable[[str], None] | None = None,
        policy: ClassPolicy | None = None,
    ) -> None:
        #: Waiting requests per group before 429.
        self.max_queue = max_queue
        #: How the priority classes share each group's slots.
        self.policy = policy or ClassPolicy()
        #: (rank, count) of this process among the lingo replicas (each enforces its share of a cap).
        self.lingo_replicas = (0, 1)
        #: Called with a group name when a request waits while the group has no ready endpoint.
        self.on_demand = on_demand
        #: Called with the URL of every endpoint that leaves the rotation (to drop pooled connections).
        self.on_endpoint_removed: Callable[[str], None] | None = None
        #: Queue of every known group, by group name.
        self.queues: dict[str, ModelQueue] = {}
        self._by_model: dict[str, ModelQueue] = {}
        self._pending_endpoints: dict[str, list[str]] = {}
        self._backlogs: list[BacklogSource] = []

    def lookup(self, model: str) -> ModelQueue | None:
        """The queue of the group serving `model` (a client-facing name), if any."""
        return self._by_model.get(model)

    def model_names(self) -> list[tuple[str, ModelGroup]]:
        """Every client-facing name with its group, sorted by name."""
        return sorted(((name, q.group) for name, q in self._by_model.items()), key=lambda item: item[0])

    def sync_models(self, groups: Iterable[ModelGroup]) -> None:
        """Make the known groups exactly `groups`: add new, update changed, close removed ones."""
        wanted = {group.name: group for group in groups}
        for name in list(self.queues):
            if name not in wanted:
                self.remove(name)
        for name, group in wanted.items():
            queue = self.queues.get(name)
            if queue is None:
                queue = ModelQueue(group, self.max_queue, self.on_demand, self.policy)
                queue.lingo_replicas = self.lingo_replicas
                self.queues[name] = queue
                log.info("model group added", extra={"model": name, "names": ",".join(group.models)})
                if name in self._pending_endpoints:
                    queue.set_endpoints(self._pending_endpoints.pop(name))
            elif queue.group != group:
                queue.group = group
                queue.set_endpoints(list(queue.endpoints))
        self._reindex()

    def upsert(self, group: ModelGroup) -> None:
        """Add or update one group, keeping the others."""
        self.sync_models([*(q.group for q in self.queues.values() if q.group.name != group.name), group])

    def remove(self, name: str, error: LingoError | None = None) -> None:
        """Forget a group; its waiting requests are answered with `error` (404 by default)."""
        queue = self.queues.pop(name, None)
        if queue is not None:
            queue.close(error)
            log.info("model group removed", extra={"model": name})
            self._reindex()

    def set_endpoints(self, group: str, urls: Iterable[str]) -> None:
        """Ready endpoints of `group`; kept for later when the group is not known yet."""
        queue = self.queues.get(group)
        if queue is None:
            self._pending_endpoints[group] = list(urls)
            return
        urls = list(urls)
        gone = set(queue.endpoints) - set(urls)
        queue.set_endpoints(urls)
        if self.on_endpoint_removed is not None:
            for url in gone:
                self.on_endpoint_removed(url)

    def set_lingo_replicas(self, rank: int, count: int) -> None:
        """This process is lingo replica `rank` of `count`: each queue keeps to its share of every cap."""
        if (rank, count) == self.lingo_replicas:
            return
        self.lingo_replicas = (rank, count)
        log.info("lingo replicas changed", extra={"rank": rank, "replicas": count})
        for queue in self.queues.values():
            queue.set_lingo_replicas(rank, count)

    def set_start_error(self, group: str, error: str | None) -> None:
        """Why replicas of `group` cannot start (None once one is ready): told to waiting clients."""
        queue = self.queues.get(group)
        if queue is not None:
            queue.start_error = error

    def add_backlog_source(self, source: BacklogSource) -> None:
        """Count messages waiting outside lingo (a broker backlog) as demand for the models it names."""
        self._backlogs.append(source)

    def remove_backlog_source(self, source: BacklogSource) -> None:
        """Stop counting a backlog (its stream stopped)."""
        if source in self._backlogs:
            self._backlogs.remove(source)

    def backlog(self, group: str) -> int:
        """Requests for `group` (by group name or any of its model names) still waiting outside
        lingo, as told by the backlog sources."""
        queue = self.queues.get(group)
        if queue is None:
            return 0
        names = {group, *queue.group.models}
        total = 0
        for source in self._backlogs:
            try:
                total += sum(max(0, int(count)) for name, count in source().items() if name in names)
            except Exception:  # a broker hiccup must not stop scaling
                log.debug("backlog source failed", exc_info=True)
        return total

    def close_all(self, error: LingoError) -> None:
        """Fail every waiting request with `error` (used on shutdown)."""
        for queue in self.queues.values():
            queue.close(error)

    def _reindex(self) -> None:
        index: dict[str, ModelQueue] = {}
        for queue in self.queues.values():
            for model in queue.group.models:
                if model in index and index[model] is not queue:
                    log.warning(
                        "model name served by two groups; keeping the first",
                        extra={"model": model, "groups": f"{index[model].group.name},{queue.group.name}"},
                    )
                    continue
                index[model] = queue
        self._by_model = index
