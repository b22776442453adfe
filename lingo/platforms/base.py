"""The small interface between lingo and the place its models run."""

from __future__ import annotations

from typing import Protocol

from lingo.registry import Registry


class Platform(Protocol):
    """Lists model groups, reports their ready endpoints, and gets/sets their replica counts.

    A platform pushes what it discovers into the `Registry` it is started with: the full set of
    groups through `registry.sync_models`, ready endpoints through `registry.set_endpoints`.
    """

    async def start(self, registry: Registry) -> None:
        """Begin discovery; return once the first full listing was pushed (or failed loudly)."""

    async def stop(self) -> None:
        """Stop discovery and release what the platform started (local replicas, watches)."""

    def synced(self) -> bool:
        """True once models and endpoints were listed at least once (drives `/readyz`)."""

    async def get_replicas(self, group: str) -> int:
        """The replica count the platform is asked to run now (desired, not ready)."""

    async def set_replicas(self, group: str, replicas: int) -> None:
        """Ask the platform to run `replicas` replicas of `group`."""


class ScalingHooks(Protocol):
    """Optional: a platform with several lingo replicas (Kubernetes) tells the autoscaler who leads,
    where the summed demand comes from and where to keep state. Exposed as `platform.scaling_hooks`.
    """

    def is_leader(self) -> bool: ...

    async def demand(self) -> dict[str, float]: ...

    async def load(self) -> dict[str, list[float]]: ...

    async def save(self, state: dict[str, list[float]]) -> None: ...
