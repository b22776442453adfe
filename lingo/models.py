"""What a model group is: the names clients send, and how its replicas scale."""

from __future__ import annotations

from dataclasses import dataclass

#: Endpoint choice by fewest requests in flight (cache-blind).
LEAST_LOAD = "least-load"
#: Endpoint choice by cached prompt prefix and conversation home, within a load bound.
PREFIX = "prefix"
#: The strategies a group may name.
LOAD_BALANCING = (LEAST_LOAD, PREFIX)
#: Strategy of groups that name none.
DEFAULT_LOAD_BALANCING = LEAST_LOAD
#: Default load bound: an endpoint carries at most ceil(mean in flight x this).
DEFAULT_LOAD_FACTOR = 1.25


@dataclass(frozen=True)
class ModelGroup:
    """A set of identical replicas serving one or more model names."""

    #: Group name: the Deployment (Kubernetes) or models-file entry (local) behind it.
    name: str
    #: Model names clients may send that route to this group.
    models: tuple[str, ...]
    #: Replicas kept even without demand.
    min_replicas: int = 0
    #: Upper bound the autoscaler never exceeds.
    max_replicas: int = 3
    #: Requests in flight per replica: the routing cap and the autoscaler's target.
    concurrency: int = 100
    #: Seconds demand must stay lower before replicas are removed.
    scale_down_delay: float = 30.0
    #: False for static endpoints that lingo routes to but never scales.
    scalable: bool = True
    #: How an endpoint is chosen: `least-load` or `prefix` (cache-aware, see docs/routing.md).
    load_balancing: str = DEFAULT_LOAD_BALANCING
    #: `prefix` keeps every endpoint at most ceil(mean in flight x load_factor); at least 1.
    load_factor: float = DEFAULT_LOAD_FACTOR
