"""The Kubernetes platform: models are annotated Deployments, endpoints come from EndpointSlices,
replicas are set through the `deployments/scale` subresource.

Two watches (Deployments, and EndpointSlices carrying a `kubernetes.io/service-name` label) keep a
live copy of the namespace; every change recomputes the model groups and their ready endpoints and
pushes them into the registry. Replica counts are read from the Deployment watch (no API call per
autoscaler tick) and written only by the leader. The platform is also the autoscaler's
`ScalingHooks`: who leads (a Lease), the demand summed over every lingo replica (their `/stats`),
and where the moving averages survive restarts (a ConfigMap).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import Any

from kubernetes_asyncio.client import (
    ApiClient,
    AppsV1Api,
    CoordinationV1Api,
    CoreV1Api,
    DiscoveryV1Api,
)
from kubernetes_asyncio.client.exceptions import ApiException

from lingo.backoff import Backoff
from lingo.config import Settings
from lingo.platforms.kubernetes.client import connect
from lingo.platforms.kubernetes.discovery import (
    SERVICE_NAME_LABEL,
    Defaults,
    ModelDeployment,
    endpoint_urls,
    object_name,
    peer_addresses,
    read_deployment,
    replica_rank,
    slices_by_service,
    spec_replicas,
)
from lingo.platforms.kubernetes.leader import LeaderElector
from lingo.platforms.kubernetes.peers import PeerStats
from lingo.platforms.kubernetes.state import ConfigMapState
from lingo.platforms.kubernetes.watch import ResourceWatch
from lingo.registry import Registry

log = logging.getLogger(__name__)

#: Times a scale write is retried after a 409 Conflict (someone else changed the Deployment).
SCALE_CONFLICT_RETRIES = 5


class KubernetesPlatform:
    """Runs models as Deployments in one namespace; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        *,
        kubeconfig: str | None = None,
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        peer_timeout: float = 1.0,
        peer_staleness: float = 10.0,
        max_backoff: float = 30.0,
        watch_timeout: float = 300.0,
        request_timeout: float = 10.0,
        sync_timeout: float = 60.0,
    ) -> None:
        #: Parsed settings (namespace, lease, state ConfigMap, peer Service, defaults).
        self.settings = settings
        #: Namespace whose Deployments are models.
        self.namespace = settings.namespace
        #: This replica's name for leader election and in its User-Agent.
        self.identity = settings.pod_name or socket.gethostname()
        #: kubeconfig file to use instead of in-cluster config or KUBECONFIG.
        self.kubeconfig = kubeconfig
        #: Lease timings (seconds): duration, renew deadline, retry period.
        self.lease_timings = (lease_duration, renew_deadline, retry_period)
        #: Longest pause between attempts to reach an API server that is away.
        self.max_backoff = max_backoff
        #: Server-side timeout of each watch (each asks for between one and two times this).
        self.watch_timeout = watch_timeout
        #: Seconds an ordinary API call may take.
        self.request_timeout = request_timeout
        #: How long `start` waits for the first listing before going on unsynced (retrying behind).
        self.sync_timeout = sync_timeout
        #: Values used where a Deployment has no valid annotation.
        self.defaults = Defaults(settings.concurrency, settings.scale_down_delay)
        #: The model Deployments, by group (= Deployment) name.
        self.models: dict[str, ModelDeployment] = {}
        #: `host:port` of the other lingo replicas' `/stats`.
        self.peers: list[str] = []
        #: Reads and sums the peers' demand.
        self.peer_stats = PeerStats(timeout=peer_timeout, staleness=peer_staleness)
        #: The Lease election (set up by `start`).
        self.elector: LeaderElector | None = None
        #: The ConfigMap keeping the autoscaler's averages (set up by `start`).
        self.state: ConfigMapState | None = None
        #: Deployments in the namespace (set up by `start`).
        self.deployments: ResourceWatch | None = None
        #: EndpointSlices that belong to a Service (set up by `start`).
        self.endpoint_slices: ResourceWatch | None = None
        #: The autoscaler's hooks: this platform itself (leader, summed demand, state store).
        self.scaling_hooks = self
        self._registry: Registry | None = None
        self._api: ApiClient | None = None
        self._apps: AppsV1Api | None = None
        self._published: dict[str, list[str]] = {}
        self._problems: dict[str, list[str]] = {}
        self._tasks: list[asyncio.Task[None]] = []

    # -- Platform -----------------------------------------------------------------------------------

    async def start(self, registry: Registry) -> None:
        self._registry = registry
        self._api = api = await connect(self.identity, self.kubeconfig)
        self._apps = AppsV1Api(api)
        watch_options: dict[str, Any] = {
            "namespace": self.namespace,
            "on_change": self._refresh,
            "watch_timeout": self.watch_timeout,
            "request_timeout": max(self.request_timeout, 30.0),
        }
        self.deployments = ResourceWatch(
            "deployments",
            self._apps.list_namespaced_deployment,
            api.sanitize_for_serialization,
            backoff=Backoff(cap=self.max_backoff),
            **watch_options,
        )
        self.endpoint_slices = ResourceWatch(
            "endpointslices",
            DiscoveryV1Api(api).list_namespaced_endpoint_slice,
            api.sanitize_for_serialization,
            label_selector=SERVICE_NAME_LABEL,
            backoff=Backoff(cap=self.max_backoff),
            **watch_options,
        )
        duration, deadline, retry = self.lease_timings
        self.elector = LeaderElector(
            CoordinationV1Api(api),
            self.namespace,
            self.settings.lease_name,
            self.identity,
            lease_duration=duration,
            renew_deadline=deadline,
            retry_period=retry,
        )
        self.state = ConfigMapState(
            CoreV1Api(api), self.namespace, self.settings.state_configmap, self.request_timeout
        )
        loop = asyncio.get_running_loop()
        for name, job in (
            ("deployments", self.deployments.run()),
            ("endpointslices", self.endpoint_slices.run()),
            ("leader-election", self.elector.run()),
        ):
            self._tasks.append(loop.create_task(job, name=f"kubernetes-{name}"))
        try:
            async with asyncio.timeout(self.sync_timeout):
                await self.deployments.synced.wait()
                await self.endpoint_slices.synced.wait()
                await self.elector.attempted.wait()
        except TimeoutError:
            log.error(
                "Kubernetes API not synced yet; serving what is known and retrying",
                extra={"namespace": self.namespace, "waited": self.sync_timeout},
            )
        log.info(
            "kubernetes platform started",
            extra={
                "namespace": self.namespace,
                "identity": self.identity,
                "models": len(self.models),
                "leader": self.is_leader(),
            },
        )

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self.elector is not None:
            await self.elector.release()
        await self.peer_stats.close()
        if self._api is not None:
            await self._api.close()
            self._api = None

    def synced(self) -> bool:
        return bool(
            self.deployments is not None
            and self.endpoint_slices is not None
            and self.deployments.synced.is_set()
            and self.endpoint_slices.synced.is_set()
        )

    async def get_replicas(self, group: str) -> int:
        """`spec.replicas` from the Deployment watch: no API call."""
        deployment = self.deployments.objects.get(group) if self.deployments else None
        if deployment is None:
            raise LookupError(f"Deployment {group!r} is not known (deleted?)")
        return spec_replicas(deployment)

    async def set_replicas(self, group: str, replicas: int) -> None:
        """Read the Deployment's scale, write it back with the new count; retry on 409 Conflict."""
        if self._apps is None:
            raise RuntimeError("the kubernetes platform is not started")
        for _ in range(SCALE_CONFLICT_RETRIES):
            scale = await self._apps.read_namespaced_deployment_scale(
                group, self.namespace, _request_timeout=self.request_timeout
            )
            if scale.spec is not None and scale.spec.replicas == replicas:
                self._remember_replicas(group, replicas)
                return
            body = {
                "apiVersion": "autoscaling/v1",
                "kind": "Scale",
                "metadata": {
                    "name": group,
                    "namespace": self.namespace,
                    "resourceVersion": scale.metadata.resource_version,
                },
                "spec": {"replicas": replicas},
            }
            try:
                await self._apps.replace_namespaced_deployment_scale(
                    group, self.namespace, body, _request_timeout=self.request_timeout
                )
            except ApiException as error:
                if error.status == 409:
                    continue
                raise
            self._remember_replicas(group, replicas)
            return
        raise RuntimeError(
            f"scaling Deployment {group!r}: still conflicting after {SCALE_CONFLICT_RETRIES} tries"
        )

    # -- ScalingHooks -------------------------------------------------------------------------------

    def is_leader(self) -> bool:
        """True while this replica holds the leader Lease: only then does it change replicas."""
        return self.elector is not None and self.elector.is_leader()

    async def demand(self) -> dict[str, float]:
        """Queued + in-flight requests per group, this replica's own plus every peer's."""
        registry = self._registry
        local = {name: float(q.active) for name, q in registry.queues.items()} if registry else {}
        return await self.peer_stats.total(local, self.peers)

    async def load(self) -> dict[str, list[float]]:
        return await self.state.load() if self.state is not None else {}

    async def save(self, state: dict[str, list[float]]) -> None:
        if self.state is not None:
            await self.state.save(state)

    # -- discovery ----------------------------------------------------------------------------------

    def _remember_replicas(self, group: str, replicas: int) -> None:
        # Write-through, so the next tick does not read the old count before the watch delivers it.
        objects = self.deployments.objects if self.deployments else {}
        cached = objects.get(group)
        if cached is not None:
            objects[group] = {**cached, "spec": {**(cached.get("spec") or {}), "replicas": replicas}}

    def _refresh(self) -> None:
        """Recompute models, endpoints and peers from the watched objects; push changes to the registry."""
        if self._registry is None or not self.synced():
            return
        assert self.deployments is not None and self.endpoint_slices is not None
        models: dict[str, ModelDeployment] = {}
        for obj in self.deployments.objects.values():
            model, problems = read_deployment(obj, self.defaults)
            self._report(f"deployment/{object_name(obj)}", problems)
            if model is not None:
                models[model.group.name] = model
        for key in [k for k in self._problems if k.startswith("deployment/")]:
            if key.removeprefix("deployment/") not in self.deployments.objects:
                del self._problems[key]
        self.models = models
        by_service = slices_by_service(self.endpoint_slices.objects.values())
        peer_slices = by_service.get(self.settings.peer_service, ())
        # Shares first, so no request is handed a slot under the old count of lingo replicas.
        self._registry.set_lingo_replicas(*replica_rank(peer_slices, self.identity))
        self._registry.sync_models(model.group for model in models.values())
        for name, model in models.items():
            urls, problems = endpoint_urls(by_service.get(model.service, ()), model.port)
            self._report(f"endpoints/{name}", problems)
            if self._published.get(name) != urls:
                self._published[name] = urls
                self._registry.set_endpoints(name, urls)
                log.info(
                    "endpoints changed", extra={"model": name, "service": model.service, "ready": len(urls)}
                )
        for name in set(self._published) - set(models):
            del self._published[name]
            self._problems.pop(f"endpoints/{name}", None)
        self.peers = peer_addresses(peer_slices, self.identity, self.settings.stats_address[1])

    def _report(self, key: str, problems: list[str]) -> None:
        """Log a warning for each problem once, not again on every watch event."""
        if problems == self._problems.get(key, []):
            return
        for problem in problems:
            log.warning(problem)
        if problems:
            self._problems[key] = problems
        else:
            self._problems.pop(key, None)
