"""Leader election with a `coordination.k8s.io/v1` Lease: only the leader changes replica counts.

Every `retry_period` each replica reads the Lease. The holder renews it; the others take it once it
has gone unrenewed for its duration (judged by their own clocks, see `lease`), or at once when it
was released. A leader that cannot renew within `renew_deadline` stops acting as leader before a
peer may take over, so two replicas never scale at the same time. Timings default to client-go's
(15 s / 10 s / 2 s), which Lingo used too.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from kubernetes_asyncio.client import CoordinationV1Api
from kubernetes_asyncio.client.exceptions import ApiException

from lingo.platforms.kubernetes.lease import LeaseRecord, claim, held_by_other, release, still_leading
from lingo.platforms.kubernetes.watch import describe

log = logging.getLogger(__name__)


class LeaderElector:
    """Competes for one Lease on behalf of this replica; `is_leader()` answers from memory."""

    def __init__(
        self,
        api: CoordinationV1Api,
        namespace: str,
        name: str,
        identity: str,
        *,
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if not retry_period < renew_deadline < lease_duration:
            raise ValueError("leader election needs retry_period < renew_deadline < lease_duration")
        #: Typed client of coordination.k8s.io/v1.
        self.api = api
        #: Namespace of the Lease.
        self.namespace = namespace
        #: Name of the Lease (settings.lease_name).
        self.name = name
        #: This replica's identity, written as the holder (settings.pod_name or the host name).
        self.identity = identity
        #: Seconds an unrenewed lease blocks others.
        self.lease_duration = lease_duration
        #: Seconds a leader may fail to renew before it stops leading.
        self.renew_deadline = renew_deadline
        #: Seconds between attempts.
        self.retry_period = retry_period
        #: Monotonic clock for expiry; injectable for tests.
        self.clock = clock
        #: Wall clock for the times written into the Lease.
        self.wall_clock = wall_clock
        self._leading = False
        self._unreachable = False
        self._renewed_at: float | None = None
        self._observed: LeaseRecord | None = None
        self._observed_at = 0.0
        self._resource_version: str | None = None
        self._request_timeout = max(0.5, renew_deadline / 2)
        #: Set once the first attempt finished (won or not), so startup can wait for it.
        self.attempted = asyncio.Event()

    def is_leader(self) -> bool:
        """True while this replica holds the Lease and renewed it within the renew deadline."""
        return self._leading and still_leading(self._renewed_at, self.renew_deadline, self.clock())

    async def run(self) -> None:
        """Try to acquire or renew every retry period until cancelled."""
        while True:
            await self.attempt()
            self.attempted.set()
            jitter = 0.0 if self._leading else 0.2 * random.random()
            await asyncio.sleep(self.retry_period * (1 + jitter))

    async def attempt(self) -> bool:
        """One acquire-or-renew round; updates and returns whether this replica leads."""
        try:
            won = await self._acquire_or_renew()
        except asyncio.CancelledError:
            raise
        except Exception as error:
            # Once per outage, not every retry period.
            level = logging.DEBUG if self._unreachable else logging.WARNING
            log.log(level, "leader election: cannot reach the Lease", extra={"error": describe(error)})
            self._unreachable, won = True, False
        else:
            if self._unreachable:
                log.info("leader election: the Lease is reachable again")
            self._unreachable = False
        now = self.clock()
        if won:
            self._renewed_at = now
            if not self._leading:
                self._leading = True
                log.info("became leader", extra={"identity": self.identity, "lease": self.name})
        elif self._leading and not still_leading(self._renewed_at, self.renew_deadline, now):
            self._step_down("could not renew the lease in time")
        return self.is_leader()

    async def release(self) -> None:
        """On shutdown: give the Lease up so a peer takes over at once instead of after it expires."""
        if not self._leading or self._observed is None:
            return
        self._leading = False
        body = self._body(release(self._observed, self.wall_clock()), self._resource_version)
        try:
            await self.api.replace_namespaced_lease(
                self.name, self.namespace, body, _request_timeout=self._request_timeout
            )
            log.info("released the leader lease", extra={"identity": self.identity})
        except Exception as error:  # it expires on its own
            log.info("could not release the leader lease", extra={"error": describe(error)})

    def _step_down(self, why: str) -> None:
        self._leading = False
        log.warning("stopped leading", extra={"identity": self.identity, "reason": why})

    def _observe(self, record: LeaseRecord, resource_version: str | None) -> None:
        if record != self._observed:
            self._observed, self._observed_at = record, self.clock()
        self._resource_version = resource_version

    def _body(self, record: LeaseRecord, resource_version: str | None) -> dict[str, Any]:
        metadata: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if resource_version:
            metadata["resourceVersion"] = resource_version
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": metadata,
            "spec": record.to_spec(),
        }

    async def _acquire_or_renew(self) -> bool:
        try:
            lease = await self.api.read_namespaced_lease(
                self.name, self.namespace, _request_timeout=self._request_timeout
            )
        except ApiException as error:
            if error.status != 404:
                raise
            return await self._create()
        spec = self.api.api_client.sanitize_for_serialization(lease.spec)
        current = LeaseRecord.from_spec(spec, self.lease_duration)
        self._observe(current, lease.metadata.resource_version)
        if held_by_other(current, self.identity, self._observed_at, self.clock()):
            if self._leading:
                self._step_down(f"the lease is held by {current.holder}")
            return False
        wanted = claim(current, self.identity, self.lease_duration, self.wall_clock())
        try:
            written = await self.api.replace_namespaced_lease(
                self.name,
                self.namespace,
                self._body(wanted, lease.metadata.resource_version),
                _request_timeout=self._request_timeout,
            )
        except ApiException as error:
            if error.status == 409:  # a peer wrote first; look again next round
                return False
            raise
        self._observe(wanted, written.metadata.resource_version)
        return True

    async def _create(self) -> bool:
        wanted = claim(None, self.identity, self.lease_duration, self.wall_clock())
        try:
            created = await self.api.create_namespaced_lease(
                self.namespace, self._body(wanted, None), _request_timeout=self._request_timeout
            )
        except ApiException as error:
            if error.status == 409:  # a peer created it first
                return False
            raise
        self._observe(wanted, created.metadata.resource_version)
        return True
