"""What a model group is: the names clients send, and how its replicas scale."""

from __future__ import annotations

from dataclasses import dataclass


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
